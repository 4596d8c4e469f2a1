"""View decorators that put the policy in front of a view.

Middleware only establishes who is asking; this asks the policy whether
they may, and records a refusal in the audit log (repeated refusals are how
an auditor spots someone probing).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponseBase
from django.template.response import TemplateResponse

from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from gateway.net import client_address
from gateway.policy import Permission, may

View = Callable[..., HttpResponseBase]


def require(permission: Permission, *, audit_as: Action) -> Callable[[View], View]:
    """Refuse (403, audited as ``audit_as``/denied) unless ``may(user, permission)``."""

    def decorator(view: View) -> View:
        @functools.wraps(view)
        def guarded(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            if not may(request.user, permission):
                audit_record(actor=request.user, action=audit_as, outcome=Outcome.DENIED,
                             source_ip=client_address(request),
                             details={"permission": permission.value, "path": request.path})
                return TemplateResponse(request, "gateway/denied.html", status=403)
            return view(request, *args, **kwargs)

        return guarded

    return decorator
