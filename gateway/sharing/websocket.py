"""A websocket consumer for either kind of principal: a two-factor user session, or a
consultant session bound to a share.

For a user session nothing changes (``SessionGuardedConsumer``). For a
consultant, :meth:`PrincipalGuardedConsumer.guard_alive` re-verifies the share
token (signature, chain state, expiry, client address) and asks whether it
still grants the socket's resource, at connect, on a session change and from
the watchdog — not per message. Three things close the socket promptly with
4403: a ``share.ended`` message on the channel-layer group of any share of
the chain (sent on revocation or burn), a timer set at the share's expiry,
and the watchdog's periodic re-verification.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from importlib import import_module
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings

from accounts.sessions import TOUCH_GRANULARITY, session_touch
from accounts.websocket import SessionGuardedConsumer
from gateway.net import scope_address
from gateway.policy import Permission, may
from gateway.sharing.middleware import SESSION_TOKEN, capability_from_session
from gateway.sharing.services import ShareRefused, share_deny_record, share_group

CLOSE_SHARE_OVER = 4403


def _session_store(scope: dict[str, Any]) -> Any:
    key = getattr(scope.get("session"), "session_key", None)
    if not key:
        return None
    return import_module(settings.SESSION_ENGINE).SessionStore(key)


def _consultant_alive(scope: dict[str, Any], resource: str | None,
                      touch: bool) -> tuple[bool, Any]:
    """(is this a consultant session, its principal if it may still act on ``resource``).

    ``touch`` counts the message as activity, as for user sessions, so a
    consultant working only in the viewer is not timed out as idle.
    """
    store = _session_store(scope)
    if store is None or store.get(SESSION_TOKEN) is None:
        return False, None
    address = scope_address(scope)
    principal = capability_from_session(store, address)
    if principal is None:
        return True, None
    if touch and session_touch(store, granularity=TOUCH_GRANULARITY):
        store.save()
    if resource is not None and not may(principal, Permission.STUDY_VIEW, resource):
        share_deny_record(refusal=ShareRefused.of(principal, "resource"),
                          source_ip=address, study=resource, channel="websocket")
        return True, None
    return True, principal


class PrincipalGuardedConsumer(SessionGuardedConsumer):
    """Lives as long as its user session, or as long as its share grants its resource."""

    _principal: Any = None
    _groups_joined: tuple[str, ...] = ()
    _expiry_task: asyncio.Task[None] | None = None

    def capability_resource(self) -> str | None:
        """The resource a consultant must be granted for this socket (a study UID)."""
        return None

    @property
    def principal(self) -> Any:
        return self._principal if self._principal is not None else self.scope["user"]

    async def guard_alive(self, *, touch: bool) -> bool:
        consultant, principal = await database_sync_to_async(_consultant_alive)(
            self.scope, self.capability_resource(), touch)
        if not consultant:
            if self._principal is not None:
                return False  # a consultant socket whose session lost its share
            return await super().guard_alive(touch=touch)
        self.over_code = self.refusal_code = CLOSE_SHARE_OVER
        if principal is None:
            return False
        first = self._principal is None
        self._principal = principal
        if first:
            await self._follow(principal)
        return True

    async def _follow(self, principal: Any) -> None:
        layer = self.channel_layer
        if layer is not None:
            self._groups_joined = tuple(share_group(share_id) for share_id in principal.chain_ids)
            for group in self._groups_joined:
                await layer.group_add(group, self.channel_name)
        delay = max(0.0, (principal.expires_at - _now()).total_seconds())
        self._expiry_task = asyncio.get_running_loop().create_task(self._expire(delay))

    async def _expire(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._share_over("expired")

    async def share_ended(self, event: dict[str, Any]) -> None:
        """Channel-layer message: a share of this socket's chain was revoked or burned."""
        await self._share_over("revoked")

    async def _share_over(self, reason: str) -> None:
        if self._over:
            return
        self._over = True
        if not self._accepted:
            return  # connect() closes it with the code once accepted
        with contextlib.suppress(Exception):
            await self.send(text_data=json.dumps({"type": "closing", "reason": f"share {reason}"}))
        await self.close(code=CLOSE_SHARE_OVER)

    async def disconnect(self, code: int) -> None:
        if self._expiry_task is not None:
            self._expiry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry_task
        layer = self.channel_layer
        if layer is not None:
            for group in self._groups_joined:
                await layer.group_discard(group, self.channel_name)
        await super().disconnect(code)


def _now() -> Any:
    from django.utils import timezone

    return timezone.now()
