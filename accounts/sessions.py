"""Session policy: 30 minutes idle, 12 hours in all, checked on the server.

The session records when the password was accepted (``started``) and when
it was last used (``seen``). :func:`session_verdict` is the one rule; the HTTP
middleware (``accounts.middleware.SessionPolicyMiddleware``) and the
websocket guard (``accounts.websocket``) both apply it.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from enum import StrEnum
from typing import Any

from accounts import clock, conf

STARTED = "gw.session.started"
SEEN = "gw.session.seen"
# A websocket refreshes ``seen`` at most this often (seconds), not on every message.
TOUCH_GRANULARITY = 60


class SessionVerdict(StrEnum):
    ACTIVE = "active"
    IDLE = "idle"
    ABSOLUTE = "absolute"


def session_begin(session: MutableMapping[str, Any]) -> None:
    now = clock.timestamp()
    session[STARTED] = now
    session[SEEN] = now


def session_verdict(session: Mapping[str, Any], now: float | None = None) -> SessionVerdict:
    now = clock.timestamp() if now is None else now
    started = float(session.get(STARTED, now))
    seen = float(session.get(SEEN, started))
    if now - started >= conf.session_absolute_seconds():
        return SessionVerdict.ABSOLUTE
    if now - seen >= conf.session_idle_seconds():
        return SessionVerdict.IDLE
    return SessionVerdict.ACTIVE


def session_touch(session: MutableMapping[str, Any], *, granularity: float = 0) -> bool:
    """Record use now; returns True when the session changed."""
    now = clock.timestamp()
    if STARTED not in session:
        session_begin(session)
        return True
    if now - float(session.get(SEEN, 0)) >= granularity:
        session[SEEN] = now
        return True
    return False
