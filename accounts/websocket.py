"""Websocket authentication and the session guard every session-bound consumer uses.

``GatewayAuthStack`` is Channels' session + auth stack plus the second
factor: ``scope["user"]`` gains ``otp_device`` and ``is_verified()`` exactly as
django-otp's HTTP middleware gives them. It only annotates; consumers decide.

``session_alive(scope)`` re-reads the session from its store and answers
whether it may still be used: it exists, its account is active and its
session hash still matches (so "log out everywhere" and a password change
end it), both factors were passed, and it is inside the idle and absolute
limits. An expired session is deleted and the timeout audited.

``SessionGuardedConsumer`` applies it at connect, on every message (which
also counts as activity) and from a watchdog task, and closes the socket
with code 4401 once the session is over. The check is one overridable
method, :meth:`SessionGuardedConsumer.guard_alive`, which also names the
principal the consumer acts for (``self.principal``): the viewer's base,
``gateway.sharing.websocket.PrincipalGuardedConsumer``, extends it to accept
a consultant session bound to a share as well.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from importlib import import_module
from typing import Any

from channels.auth import AuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.middleware import BaseMiddleware
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.utils.crypto import constant_time_compare
from django_otp import DEVICE_ID_SESSION_KEY
from django_otp.models import Device

from accounts import conf
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

    Subclasses implement :meth:`session_connect` (return False to refuse) and
    :meth:`session_receive`; they must not override ``connect``/``receive``.
    """

    _watchdog: asyncio.Task[None] | None = None

    refusal_code = CLOSE_SESSION_OVER
    over_code = CLOSE_SESSION_OVER

    @property
    def principal(self) -> Any:
        """Who this socket acts for (the session's user here)."""
        return self.scope["user"]

    async def guard_alive(self, *, touch: bool) -> bool:
        """May the socket still be used? Called at connect, per message and by the watchdog."""
        return await session_alive(self.scope, touch=touch)

    async def connect(self) -> None:
        if not await self.guard_alive(touch=True):
            await self.close(code=self.over_code)
            return
        if not await self.session_connect():
            await self.close(code=self.refusal_code)
            return
        await self.accept()
        self._watchdog = asyncio.get_running_loop().create_task(self._watch())
        await self.session_ready()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if not await self.guard_alive(touch=True):
            await self.session_over()
            return
        await self.session_receive(text_data, bytes_data)

    async def disconnect(self, code: int) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(conf.websocket_session_check_seconds())
            if not await self.guard_alive(touch=False):
                await self.session_over()
                return

    async def session_over(self) -> None:
        await self.close(code=self.over_code)

    async def session_connect(self) -> bool:
        """Decide whether to accept; set ``refusal_code`` before returning False."""
        return True

    async def session_ready(self) -> None:
        """Runs once the socket is accepted (send the first messages here)."""

    async def session_receive(self, text_data: str | None, bytes_data: bytes | None) -> None:
        raise NotImplementedError
