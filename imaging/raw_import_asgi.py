"""The raw import door in front of Django: a large body only for someone who may import.

Every request body is limited to ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (2.5 MB) by
:class:`gateway.body_limit.BodyLimit`, before Django reads it. A raw volume is
larger, up to ``GATEWAY_MAX_OBJECT_BYTES``. :class:`RawImportGate` looks at a
``POST`` to the ``imaging:raw_import`` route on its headers alone, before any
body byte is read:

* the session named by the cookie must be alive, both factors passed, and its
  user granted ``study.import_raw`` (asked of the policy); otherwise Django
  gets the request with an empty body (``Content-Length: 0``), so the route's
  usual answers follow (sign-in redirect, 403 recorded in the audit log) and
  the body is never read;
* a declared ``Content-Length`` over the raw import limit is refused with 413
  at once (audited as a failed ingest); an admitted body without one is
  counted as it streams by ``BodyLimit`` with that limit;
* one import at a time per server process (reading and converting a volume
  holds a few copies of it in memory): another admitted upload meanwhile is
  answered 429 with ``Retry-After`` before its body is sent.

Admission only widens the body limit: Django's middleware, the route table
and the view decide again on the request itself.
"""

from __future__ import annotations

import io
from importlib import import_module
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY
from django.core.handlers.asgi import ASGIRequest
from django.urls import Resolver404, resolve
from django.utils.crypto import constant_time_compare
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.models import Device

from accounts.models import User
from accounts.sessions import SessionVerdict, session_verdict
from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from gateway.body_limit import BODY_LIMIT_KEY
from gateway.net import scope_address
from gateway.policy import Permission, may
from imaging import conf
from imaging.raw_import import DOOR
from imaging.stow_asgi import _refused_by_middleware, empty_body

RAW_IMPORT_VIEW = "imaging:raw_import"
FORM_OVERHEAD = 1 << 20  # the form's other fields and the multipart framing, beside the file
IMPORTS_PER_PROCESS = 1
RETRY_AFTER_S = 30


def raw_import_body_limit() -> int:
    """The largest raw import request: one file of ``GATEWAY_MAX_OBJECT_BYTES`` and the form."""
    return conf.max_object_bytes() + FORM_OVERHEAD


def _is_raw_import(scope: dict[str, Any]) -> bool:
    if scope.get("type") != "http" or scope.get("method") != "POST":
        return False
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    try:
        return resolve(path).view_name == RAW_IMPORT_VIEW
    except Resolver404:
        return False


def _declared_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


def raw_import_admitted(scope: dict[str, Any]) -> User | None:
    """The session's user when it may import raw volumes, judged on the headers; else None."""
    if _refused_by_middleware(scope):
        return None
    request = ASGIRequest(scope, io.BytesIO())
    key = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
    if not key:
        return None
    store = import_module(settings.SESSION_ENGINE).SessionStore(key)
    user = User.objects.filter(pk=store.get(SESSION_KEY), is_active=True).first() \
        if store.get(SESSION_KEY) is not None else None
    if user is None or not constant_time_compare(str(store.get(HASH_SESSION_KEY, "")),
                                                 user.get_session_auth_hash()):
        return None
    if session_verdict(store) is not SessionVerdict.ACTIVE:
        return None
    device = Device.from_persistent_id(str(store.get(DEVICE_ID_SESSION_KEY) or ""))
    if device is None or getattr(device, "user_id", None) != user.pk or not device.confirmed:
        return None
    user.otp_device = device  # type: ignore[attr-defined]
    user.is_verified = lambda: True  # type: ignore[attr-defined]
    return user if may(user, Permission.STUDY_IMPORT_RAW) else None


def _oversize_record(user: User, source_ip: str, declared: int, limit: int) -> None:
    audit_record(actor=user, action=Action.INGEST, outcome=Outcome.FAILURE, source_ip=source_ip or None,
                 details={"door": DOOR, "reason": "request over the raw import limit",
                          "declared": declared, "limit": limit})


def _bodiless(scope: dict[str, Any]) -> dict[str, Any]:
    """The scope of the request as Django will see it: with an empty body, declared as such."""
    headers = [(name, value) for name, value in scope.get("headers", [])
               if name.lower() not in (b"content-length", b"transfer-encoding")]
    return {**scope, "headers": [*headers, (b"content-length", b"0")]}


async def _answer(send: Any, status: int, text: str, *extra: tuple[bytes, bytes]) -> None:
    body = f"{text}\n".encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"), *extra]})
    await send({"type": "http.response.body", "body": body})


class RawImportGate:
    """ASGI middleware: admits raw import uploads on their headers (see the module docstring)."""

    def __init__(self, application: Any) -> None:
        self.application = application
        self.in_flight = 0  # admitted imports of this process (one event loop: no lock needed)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not _is_raw_import(scope):
            await self.application(scope, receive, send)
            return
        user = await database_sync_to_async(raw_import_admitted)(scope)
        if user is None:  # the route's own refusal (sign-in, 403 audited), the body left unread
            await self.application(_bodiless(scope), empty_body(), send)
            return
        limit = raw_import_body_limit()
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await database_sync_to_async(_oversize_record)(user, scope_address(scope) or "", declared, limit)
            await _answer(send, 413, f"A raw import is limited to {limit} bytes.")
            return
        if self.in_flight >= IMPORTS_PER_PROCESS:
            await _answer(send, 429, "Another raw import is in progress here; try again shortly.",
                          (b"retry-after", str(RETRY_AFTER_S).encode()))
            return
        self.in_flight += 1
        try:
            await self.application({**scope, BODY_LIMIT_KEY: limit}, receive, send)
        finally:
            self.in_flight -= 1
