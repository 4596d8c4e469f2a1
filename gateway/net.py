"""Where a request came from."""

from __future__ import annotations

import ipaddress
from typing import Any


def client_address(request: Any) -> str:
    """The peer address as the server saw it (daphne applies proxy headers when told to)."""
    if request is None:
        return ""
    raw = request.META.get("REMOTE_ADDR", "") if hasattr(request, "META") else ""
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return ""


def scope_address(scope: dict[str, Any]) -> str:
    """The peer address of an ASGI connection scope."""
    client = scope.get("client") or ("", 0)
    try:
        return str(ipaddress.ip_address(client[0]))
    except ValueError:
        return ""
