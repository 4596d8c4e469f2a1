"""Turn a consultant session into its principal, verifying the share on every request.

A session that redeemed a share (token + PIN) carries the token; each
request re-verifies it (signature, share chain state, expiry, client
address) and then sets ``request.user``/``request.principal`` to the
:class:`~gateway.sharing.principal.ConsultantPrincipal`, so the access gate
and the views ask the policy about it like any principal. A token that no
longer verifies ends the session (audited as ``share.deny``). The idle and
absolute session limits apply as for any session. Placed after
``OTPMiddleware`` and before ``AccessGate``; it only annotates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import Resolver404, resolve

from accounts.sessions import SessionVerdict, session_touch, session_verdict
from gateway.net import client_address
from gateway.policy import Stage, route_rule
from gateway.sharing.services import (
    ShareRefused,
    capability_verify,
    share_deny_record,
    share_refusal,
)

SESSION_TOKEN = "gw.share.token"  # noqa: S105 - a session key name, not a secret
SESSION_PENDING = "gw.share.pending"
SESSION_ENDED = "gw.share.ended"
"""Set when a consultant's share stops verifying: their next visit to a consultant page is told so."""
SHARE_KEYS = (SESSION_TOKEN, SESSION_PENDING, SESSION_ENDED)


def capability_from_session(session: Any, address: str | None) -> Any:
    """The consultant principal of a session, None when there is none; ends a dead one."""
    token = session.get(SESSION_TOKEN)
    if token is None:
        return None
    verdict = session_verdict(session)
    try:
        if verdict is not SessionVerdict.ACTIVE:
            raise share_refusal(f"session {verdict.value}", token=token)
        return capability_verify(token, client_ip=address)
    except ShareRefused as refusal:
        share_deny_record(refusal=refusal, source_ip=address)
        session.flush()
        session[SESSION_ENDED] = True
        return None


class CapabilityMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request.principal = request.user  # type: ignore[attr-defined]
        session = request.session
        if SESSION_TOKEN in session:
            if request.user.is_authenticated:
                for key in SHARE_KEYS:  # a user signed in here: the consultant session is over
                    session.pop(key, None)
            else:
                principal = capability_from_session(session, client_address(request))
                if principal is not None:
                    session_touch(session)
                    request.user = request.principal = principal  # type: ignore[attr-defined]
        if session.get(SESSION_ENDED) and not request.user.is_authenticated and _consultant_page(request):
            return render(request, "sharing/ended.html", status=403)
        return self.get_response(request)


def _consultant_page(request: HttpRequest) -> bool:
    """A page a consultant session reaches (the staff sign-in would be the wrong answer there)."""
    try:
        name = resolve(request.path_info).view_name
    except Resolver404:
        return False
    rule = route_rule(name)
    return rule is not None and (rule.stage is Stage.CAPABILITY or rule.capability)
