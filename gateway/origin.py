"""Websocket Origin check: the page's origin must be this gateway's own, scheme, host and port.

Channels' ``AllowedHostsOriginValidator`` compares only the Origin's host
with ``ALLOWED_HOSTS`` (which carry no port), so a page served on any other
port of an allowed host — another service on the same machine, whose cookies
SameSite does not separate — could open the viewer with the user's session.
This validator applies the rule Django's CSRF check applies to form posts:
the Origin must equal ``<scheme>://<Host header>`` of the request itself
(with the Host allowed by ``ALLOWED_HOSTS``), or be listed in
``CSRF_TRUSTED_ORIGINS``. A missing Origin is refused: browsers always send
one on a websocket handshake. A refused handshake is answered before any
consumer runs (HTTP 403): a foreign page is told nothing more.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import split_domain_port, validate_host

DEFAULT_PORTS = {"http": 80, "https": 443}


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _normalised(origin: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    return scheme, parts.hostname.lower(), port or DEFAULT_PORTS[scheme]


def _request_scheme(scope: dict[str, Any]) -> str:
    if scope.get("scheme") == "wss":
        return "https"
    proxy_header = getattr(settings, "SECURE_PROXY_SSL_HEADER", None)
    if proxy_header:  # the same trusted header HttpRequest.is_secure reads
        name, secure_value = proxy_header
        header = name.removeprefix("HTTP_").replace("_", "-").lower().encode("latin-1")
        value = (_header(scope, header) or "").split(",", 1)[0].strip()
        return "https" if value == secure_value else "http"
    return "http"


def _own_origin(scope: dict[str, Any]) -> tuple[str, str, int] | None:
    host = _header(scope, b"host")
    if not host:
        return None
    domain, _port = split_domain_port(host)
    if not domain or not validate_host(domain, settings.ALLOWED_HOSTS):
        return None
    return _normalised(f"{_request_scheme(scope)}://{host}")


def origin_allowed(scope: dict[str, Any]) -> bool:
    """Is the handshake's Origin this gateway's own origin, or an explicitly trusted one?"""
    origin = _header(scope, b"origin")
    if origin is None:
        return False
    claimed = _normalised(origin)
    if claimed is None:
        return False
    if claimed == _own_origin(scope):
        return True
    return any(claimed == _normalised(trusted) for trusted in settings.CSRF_TRUSTED_ORIGINS)


class SameOriginValidator:
    """ASGI middleware: refuse a websocket handshake whose Origin is not the gateway's own."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket" and not origin_allowed(scope):
            return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)
