"""Websocket authentication and the session guard every session-bound consumer uses.

``GatewayAuthStack`` is Channels' session + auth stack plus the second
factor: ``scope["user"]`` gains ``otp_device`` and ``is_verified()`` exactly as
django-otp's HTTP middleware gives them. It only annotates; consumers decide.

``session_alive(scope)`` re-reads the session from its store and answers
whether it may still be used: it exists, its account is active and its
session hash still matches (so "log out everywhere" and a password change
end it), both factors were passed, and it is inside the idle and absolute
limits. An expired session is deleted and the timeout audited.

``SessionGuardedConsumer`` applies it at connect, when told that the session
may have changed (:mod:`accounts.broadcast`) and from a watchdog task, and
closes the socket with code 4401 once the session is over. The check is one
overridable method, :meth:`SessionGuardedConsumer.guard_alive`, which also
names the principal the consumer acts for (``self.principal``): the viewer's
base, ``gateway.sharing.websocket.PrincipalGuardedConsumer``, extends it to
accept a consultant session bound to a share as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from importlib import import_module
from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.middleware import BaseMiddleware
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.utils.crypto import constant_time_compare
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.models import Device

from accounts import clock, conf
from accounts.broadcast import account_group, session_group
from accounts.models import Role, User
from accounts.sessions import TOUCH_GRANULARITY, SessionVerdict, session_touch, session_verdict
from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from gateway.net import scope_address

CLOSE_SESSION_OVER = 4401


def _device_for(session: Any, user: Any) -> Device | None:
    persistent_id = session.get(DEVICE_ID_SESSION_KEY)
    if not persistent_id or not getattr(user, "is_authenticated", False):
        return None
    device = Device.from_persistent_id(persistent_id)
    if device is None or device.user_id != user.pk or not device.confirmed:
        return None
    return device


def _is_verified(user: Any) -> bool:
    return getattr(user, "otp_device", None) is not None


class OTPWebsocketMiddleware(BaseMiddleware):
    """Give ``scope["user"]`` its ``otp_device`` and ``is_verified()`` (after AuthMiddleware)."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        user = scope.get("user")
        session = scope.get("session")
        if user is not None:
            device = await database_sync_to_async(_device_for)(session or {}, user)
            user.otp_device = device
            user.is_verified = functools.partial(_is_verified, user)
        return await super().__call__(scope, receive, send)


def GatewayAuthStack(inner: Any) -> Any:
    return AuthMiddlewareStack(OTPWebsocketMiddleware(inner))


def _session_alive(session_key: str | None, address: str, touch: bool) -> bool:
    if not session_key:
        return False
    store = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    user_id = store.get(SESSION_KEY)
    if user_id is None or store.get(BACKEND_SESSION_KEY) is None:
        return False
    user = User.objects.filter(pk=user_id, is_active=True).first()
    if user is None or user.role == Role.DEVICE:
        return False
    if not constant_time_compare(str(store.get(HASH_SESSION_KEY, "")), user.get_session_auth_hash()):
        store.delete()
        return False
    if _device_for(store, user) is None:
        return False
    verdict = session_verdict(store)
    if verdict is not SessionVerdict.ACTIVE:
        store.delete()
        audit_record(actor=user, action=Action.SESSION_TIMEOUT, outcome=Outcome.SUCCESS,
                     source_ip=address or None, details={"limit": verdict.value, "channel": "websocket"})
        return False
    if touch and session_touch(store, granularity=TOUCH_GRANULARITY):
        store.save()
    return True


async def session_alive(scope: dict[str, Any], *, touch: bool = True) -> bool:
    """May this websocket's session still be used? ``touch`` counts it as activity."""
    session = scope.get("session")
    key = getattr(session, "session_key", None)
    return bool(await database_sync_to_async(_session_alive)(key, scope_address(scope), touch))


class SessionGuardedConsumer(AsyncWebsocketConsumer):
    """A websocket consumer that lives exactly as long as its two-factor session.

    The session is checked at connect, then only when something may have
    ended it (a ``session.changed`` message, :mod:`accounts.broadcast`) and by
    a watchdog every ``GATEWAY_WEBSOCKET_SESSION_CHECK_SECONDS``; a message
    arriving when a check is due runs it first. Otherwise a message costs no
    database round trip. Messages count as activity: the next check touches
    the session when any arrived since the last one.

    A refused socket is accepted and then closed with its code (4401, 4403,
    4404): closing before accepting makes daphne answer the handshake with
    HTTP 403, and a browser would only ever see 1006.

    Subclasses implement :meth:`session_connect` (return False to refuse) and
    :meth:`session_receive`; they must not override ``connect``/``receive``.
    """

    _watchdog: asyncio.Task[None] | None = None
    _active = False
    _accepted = False
    _over = False
    _checked_at = float("-inf")
    _groups: tuple[str, ...] = ()

    refusal_code = CLOSE_SESSION_OVER
    over_code = CLOSE_SESSION_OVER

    @property
    def principal(self) -> Any:
        """Who this socket acts for (the session's user here)."""
        return self.scope["user"]

    async def guard_alive(self, *, touch: bool) -> bool:
        """May the socket still be used? Called at connect, on change and by the watchdog."""
        return await session_alive(self.scope, touch=touch)

    async def connect(self) -> None:
        admitted = await self.guard_alive(touch=True)
        self._checked_at = clock.timestamp()
        code = self.over_code
        if admitted:
            admitted = await self.session_connect()
            code = self.refusal_code
        await self.accept()
        self._accepted = True
        if not admitted or self._over:  # refused, or ended while connecting
            self._over = True
            await self.close(code=code if not admitted else self.over_code)
            return
        await self._join(self.session_groups())
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        await self.session_ready()

    def session_groups(self) -> list[str]:
        """The channel-layer groups that announce a change of this socket's session."""
        groups = []
        user_id = getattr(self.scope.get("user"), "pk", None)
        if user_id is not None:
            groups.append(account_group(user_id))
        key = getattr(self.scope.get("session"), "session_key", None)
        if key:
            groups.append(session_group(key))
        return groups

    async def _join(self, groups: list[str]) -> None:
        if self.channel_layer is None:
            return
        for group in groups:
            if group not in self._groups:
                await self.channel_layer.group_add(group, self.channel_name)
                self._groups = (*self._groups, group)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch without its ``close_old_connections`` on the sync thread per message.

        That call is a hop to asgiref's one shared thread for every frame a client
        sends (an input and an ack per frame; 8 % of daphne's samples at 8 scrolling
        clients). Nothing here uses the database outside ``database_sync_to_async``,
        which closes stale connections itself on either side of each call.
        """
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self._over:
            return
        self._active = True
        due = clock.timestamp() - self._checked_at >= conf.websocket_session_check_seconds()
        if due and not await self._recheck(touch=True):
            return
        await self.session_receive(text_data, bytes_data)

    async def session_changed(self, event: dict[str, Any]) -> None:
        """Channel-layer message: the session or its account changed; check it now."""
        await self._recheck(touch=False)

    async def _recheck(self, *, touch: bool) -> bool:
        if self._over:
            return False
        if touch:
            self._active = False
        if await self.guard_alive(touch=touch):
            self._checked_at = clock.timestamp()
            return True
        await self.session_over()
        return False

    async def disconnect(self, code: int) -> None:
        self._over = True
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        if self.channel_layer is not None:
            for group in self._groups:
                await self.channel_layer.group_discard(group, self.channel_name)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(conf.websocket_session_check_seconds())
            if not await self._recheck(touch=self._active):
                return

    async def session_over(self) -> None:
        self._over = True
        await self.close(code=self.over_code)

    async def session_connect(self) -> bool:
        """Decide whether to accept; set ``refusal_code`` before returning False."""
        return True

    async def session_ready(self) -> None:
        """Runs once the socket is accepted (send the first messages here)."""

    async def session_receive(self, text_data: str | None, bytes_data: bytes | None) -> None:
        raise NotImplementedError
