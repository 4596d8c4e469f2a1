"""Request middleware of the accounts app.

``SessionPolicyMiddleware`` ends a session past its idle or absolute limit
before anything else sees the request. ``AccessGate`` asks the policy
(:func:`gateway.policy.route_access`) about the route being requested: a
route the policy does not name is refused, a session that has not passed
both factors reaches only the sign-in pages, and a permission the role lacks
is refused and recorded. Views and decorators still check again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.contrib.auth.views import redirect_to_login
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from accounts.sessions import SessionVerdict, session_touch, session_verdict
from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from gateway.net import client_address
from gateway.policy import Access, Permission, authenticated, route_access, route_rule

logger = logging.getLogger(__name__)

# The audit action under which a refusal of each permission is recorded.
DENIAL_ACTIONS: dict[Permission, Action] = {
    Permission.PATIENT_SEARCH: Action.PATIENT_SEARCH,
    Permission.STUDY_VIEW: Action.STUDY_OPEN,
    Permission.STUDY_MEASURE: Action.STUDY_OPEN,
    Permission.STUDY_REPORT: Action.STUDY_OPEN,
    Permission.STUDY_SHARE: Action.SHARE_MINT,
    Permission.SHARE_MANAGE: Action.SHARE_REVOKE,
    Permission.STUDY_INGEST: Action.INGEST,
    Permission.AUDIT_READ: Action.AUDIT_READ,
    Permission.AUDIT_EXPORT: Action.AUDIT_EXPORT,
    Permission.AUDIT_VERIFY: Action.AUDIT_VERIFY,
    Permission.AUDIT_RESOLVE: Action.AUDIT_RESOLVE,
    Permission.USER_MANAGE: Action.ADMIN_USER,
    Permission.DEVICE_MANAGE: Action.ADMIN_DEVICE,
    Permission.KEY_MANAGE: Action.ADMIN_KEY,
    Permission.LAYOUT_MANAGE: Action.ADMIN_LAYOUT,
    Permission.PATIENT_DEMOGRAPHICS: Action.PATIENT_SEARCH,
    Permission.SCHEDULE_MANAGE: Action.PATIENT_SEARCH,
}


class SessionPolicyMiddleware:
    """Idle (30 min) and absolute (12 h) session limits; place after AuthenticationMiddleware."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            verdict = session_verdict(request.session)
            if verdict is not SessionVerdict.ACTIVE:
                audit_record(actor=user, action=Action.SESSION_TIMEOUT, outcome=Outcome.SUCCESS,
                             source_ip=client_address(request),
                             details={"limit": verdict.value, "channel": "http"})
                request.session.flush()
                request.user = AnonymousUser()
            else:
                session_touch(request.session)
        return self.get_response(request)


def refused(request: HttpRequest, reason: str) -> HttpResponse:
    return TemplateResponse(request, "accounts/refused.html", {"reason": reason}, status=403)


class AccessGate:
    """Apply the route table of ``gateway.policy`` to every resolved view."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(self, request: HttpRequest, view_func: Callable[..., Any], view_args: Any,
                     view_kwargs: Any) -> HttpResponse | None:
        match = request.resolver_match
        name = match.view_name if match else None
        rule = route_rule(name)
        user: Any = request.user
        access = route_access(user, rule)
        if access is Access.ALLOW:
            return None
        if access is Access.SIGN_IN:
            return redirect_to_login(request.get_full_path())
        if rule is None:
            logger.warning("refused %s: route %r is not in the access matrix", request.path, name)
            return refused(request, "unlisted")
        if not authenticated(user):
            return refused(request, "second-factor")
        if rule.permission is not None:
            audit_record(actor=user, action=rule.denied_as or DENIAL_ACTIONS[rule.permission],
                         outcome=Outcome.DENIED,
                         source_ip=client_address(request),
                         details={"permission": rule.permission.value, "path": request.path})
        return refused(request, "permission")
