"""Tell open websockets that their session may have ended, instead of asking on every message.

A websocket checks its session at connect, then only when told: a
``session.changed`` message on the channel-layer group of its account or of
its session key, sent after commit by whatever can end a session (sign-out,
"log out everywhere", a second-factor reset, an account saved with a new
role, password or active flag, an authenticator removed), and by its own
watchdog as a bounded-staleness backstop for idle and absolute expiry. The
socket then re-checks the session once and closes if it is over.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import transaction

log = logging.getLogger(__name__)

CHANGED = {"type": "session.changed"}


def account_group(user_id: Any) -> str:
    return f"account-{user_id}"


def session_group(session_key: str) -> str:
    # Group names may reach Redis: never the session key itself.
    return "session-" + hashlib.sha256(session_key.encode()).hexdigest()[:40]


def groups_tell(groups: list[str], message: dict[str, str]) -> None:
    """Send ``message`` to each channel-layer group now; a failure is logged, never raised.

    Callers keep a backstop (the sockets' watchdog), so a lost notice only
    delays a close; it never keeps a socket open for good.
    """
    layer = get_channel_layer()
    if layer is None:
        return
    for group in groups:
        try:
            async_to_sync(layer.group_send)(group, message)
        except Exception:
            log.exception("could not send %s to websocket group %s", message.get("type"), group)


def sessions_changed(*, user_id: Any = None, session_key: str | None = None) -> None:
    """After commit, have every open websocket of this account or session re-check itself."""
    groups = []
    if user_id is not None:
        groups.append(account_group(user_id))
    if session_key:
        groups.append(session_group(session_key))
    if groups:
        transaction.on_commit(lambda: groups_tell(groups, CHANGED), robust=True)
