"""The STOW-RS door in front of Django: admit on the headers, receive the body as it streams.

Django's ASGI handler reads a whole request body before any middleware or
view runs, so a check in the view comes after the server has taken in a
hostile ``Content-Length``. :class:`StowGate` takes ``POST`` requests for the
``dicomweb:stow`` route itself: it admits them on their headers
(:func:`imaging.stow.stow_admit`, before reading anything), receives the
body chunk by chunk into :class:`imaging.stow.StowUpload` (parsing off the
event loop), and then calls Django with an empty body and the
:class:`~imaging.stow.StowReceipt` in the scope, so that the middleware
(hosts, security headers, the route table) and the view still answer, audit
and store. Every other request passes through untouched.

A refused request is answered while the client may still be sending; the
rest of its body is never read by the application. With daphne this needs
``gateway.bodies`` (daphne otherwise starts the application only after the
last byte).
"""

from __future__ import annotations

import asyncio
import io
import re
from typing import Any

from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.asgi import ASGIRequest
from django.urls import Resolver404, resolve

from gateway.net import scope_address
from imaging.stow import SCOPE_KEY, Refusal, StowReceipt, stow_admit

FEED_BYTES = 1 << 20  # body bytes gathered before each hand-over to the parser thread
STOW_VIEW = "dicomweb:stow"


def _is_stow(scope: dict[str, Any]) -> bool:
    if scope.get("type") != "http" or scope.get("method") != "POST":
        return False
    path, root = scope.get("path", ""), scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):]
    try:
        return resolve(path).view_name == STOW_VIEW
    except Resolver404:
        return False


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope.get("headers", []):
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]},{value}" if name in headers else value
    return headers


def _refused_by_middleware(scope: dict[str, Any]) -> bool:
    """Would Django's middleware refuse this request whatever its body (host, HTTPS)?

    Asked of Django's own ``ASGIRequest`` (with no body), so the answer stays
    the one ``CommonMiddleware`` and ``SecurityMiddleware`` will give.
    """
    request = ASGIRequest(scope, io.BytesIO())
    try:
        request.get_host()
    except DisallowedHost:
        return True
    if not settings.SECURE_SSL_REDIRECT or request.is_secure():
        return False
    path = request.path.lstrip("/")
    return not any(re.search(pattern, path) for pattern in settings.SECURE_REDIRECT_EXEMPT)


async def _receive_body(receipt: StowReceipt, receive: Any) -> bool:
    """Read the body into the receipt's upload; False when the client went away."""
    pending = bytearray()
    feed = sync_to_async(receipt.feed, thread_sensitive=False)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return False
        pending += message.get("body", b"")
        more = message.get("more_body", False)
        if len(pending) >= FEED_BYTES or not more:
            data = bytes(pending)
            pending.clear()
            if not await feed(data):
                return True  # refused: the rest is left unread
        if not more:
            await sync_to_async(receipt.finish, thread_sensitive=False)()
            return True


def empty_body() -> Any:
    """Django's receive: an empty body, then nothing (see StowGate.__call__)."""
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    return receive


class StowGate:
    """ASGI middleware: STOW-RS requests are admitted and received here, then answered by Django.

    Django is never told of a disconnect after the body: once a whole
    multipart has arrived it is stored to the end, not abandoned half-way.
    """

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if not _is_stow(scope):
            await self.application(scope, receive, send)
            return
        headers = _headers(scope)
        source_ip = scope_address(scope)
        if _refused_by_middleware(scope):
            receipt = StowReceipt(source_ip=source_ip, refusal=Refusal(
                400, "request refused before its body", "refused by middleware"))
        else:
            receipt = await database_sync_to_async(stow_admit)(headers=headers, source_ip=source_ip)
        try:
            if receipt.refusal is None and not await _receive_body(receipt, receive):
                return  # the client went away mid-body: nothing to answer, nothing stored
            await self.application({**scope, SCOPE_KEY: receipt}, empty_body(), send)
        finally:
            receipt.close_unclaimed()
