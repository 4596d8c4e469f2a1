"""Every request body but STOW-RS's is bounded before Django reads it.

Django's ASGI handler takes in a whole request body (spooled to disk past 2.5 MB) before any
middleware or view runs, so ``DATA_UPLOAD_MAX_MEMORY_SIZE`` is only checked after a hostile
body has been received. :class:`BodyLimit` answers 413 on the headers when ``Content-Length``
declares more than that limit, and when a body without one (chunked) passes it, stops reading
and answers 413 then. STOW-RS bodies (instances, hundreds of MB) are admitted and streamed by
:class:`imaging.stow_asgi.StowGate`, which hands Django an empty body: they pass untouched.
A raw volume import admitted on its headers by :class:`imaging.raw_import_asgi.RawImportGate`
carries its own, larger limit in the scope (``BODY_LIMIT_KEY``).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings

from imaging.stow import SCOPE_KEY

BODY_LIMIT_KEY = "fusion_gateway.body_limit"
"""Scope entry a gate in front sets for a request it admitted on its headers: that request's own
limit (:class:`imaging.raw_import_asgi.RawImportGate`). Clients cannot set scope entries."""


def _declared_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


async def _refuse(send: Any, limit: int) -> None:
    body = f"The request body is limited to {limit} bytes.\n".encode()
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()),
        (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware for HTTP: 413 for a body over ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (STOW-RS excepted)."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or SCOPE_KEY in scope:
            await self.application(scope, receive, send)
            return
        limit = int(scope.get(BODY_LIMIT_KEY) or settings.DATA_UPLOAD_MAX_MEMORY_SIZE)
        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await _refuse(send, limit)
            return
        received = 0
        over = False

        async def counted() -> dict[str, Any]:
            nonlocal received, over
            message = await receive()
            if message.get("type") == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    over = True
                    return {"type": "http.disconnect"}  # Django stops reading and answers nothing
            return message

        await self.application(scope, counted, send)
        if over:
            await _refuse(send, limit)
