"""Authentication outcomes reported by Django's signals become audit events.

A sign-in is recorded by the two-factor view once both factors pass (Django's
``user_logged_in`` fires after the password step alone, so it is not one).
A refused password is recorded here, from ``user_login_failed``, whichever
path called ``authenticate``; sign-out likewise from ``user_logged_out``.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_out, user_login_failed

from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from gateway.net import client_address


def _login_failed(sender: Any, credentials: dict[str, Any], request: Any = None,
                  **kwargs: Any) -> None:
    attempted = str(credentials.get("username", ""))[:150] or "anonymous"
    audit_record(actor=attempted, action=Action.LOGIN_FAILED, outcome=Outcome.DENIED,
                 source_ip=client_address(request), details={"factor": "password"})


def _logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    if user is None:
        return
    audit_record(actor=user, action=Action.LOGOUT, outcome=Outcome.SUCCESS,
                 source_ip=client_address(request))


def connect() -> None:
    user_login_failed.connect(_login_failed, dispatch_uid="audit.login_failed")
    user_logged_out.connect(_logged_out, dispatch_uid="audit.logged_out")
