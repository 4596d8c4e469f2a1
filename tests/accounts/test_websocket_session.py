"""Websockets live exactly as long as their two-factor session (a tiny guarded consumer)."""

import pytest
from asgiref.sync import sync_to_async
from channels.routing import URLRouter
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.urls import path, reverse

from accounts.services import user_logout_everywhere
from accounts.websocket import CLOSE_SESSION_OVER, GatewayAuthStack, SessionGuardedConsumer
from gateway.audit.models import AuditEvent
from tests.accounts.conftest import password_step, sign_in
from tests.conftest import ZONES
from tests.sockets import socket_open

pytestmark = pytest.mark.django_db(databases=ZONES, transaction=True)


class EchoConsumer(SessionGuardedConsumer):
    async def session_receive(self, text_data=None, bytes_data=None):
        await self.send(text_data=f"echo {text_data}")


application = GatewayAuthStack(URLRouter([path("ws/echo/", EchoConsumer.as_asgi())]))


def _communicator(client: Client) -> WebsocketCommunicator:
    cookie = f"gateway-session={client.cookies['gateway-session'].value}"
    return WebsocketCommunicator(application, "/ws/echo/", headers=[(b"cookie", cookie.encode())])


async def _closed(communicator: WebsocketCommunicator, within: float = 5) -> bool:
    output = await communicator.receive_output(timeout=within)
    return output == {"type": "websocket.close", "code": CLOSE_SESSION_OVER}


@pytest.fixture
def verified(person, clock):
    user = person()
    client = Client()
    sign_in(client, user, clock)
    return user, client


async def test_a_verified_session_connects_and_an_idle_one_is_closed(verified, clock):
    _, client = verified
    communicator = _communicator(client)
    connected, _ = await communicator.connect()
    assert connected
    await communicator.send_to(text_data="hello")
    assert await communicator.receive_from() == "echo hello"
    clock.advance(31 * 60)
    await communicator.send_to(text_data="still there?")
    assert await _closed(communicator)
    event = await sync_to_async(AuditEvent.objects.get)(action="auth.timeout")
    assert '"channel":"websocket"' in event.details


async def test_messages_count_as_activity(verified, clock):
    _, client = verified
    communicator = _communicator(client)
    assert (await communicator.connect())[0]
    for _ in range(3):
        clock.advance(20 * 60)
        await communicator.send_to(text_data="x")
        assert await communicator.receive_from() == "echo x"
    await communicator.disconnect()


async def test_a_password_only_session_and_no_session_are_refused(person):
    user = await sync_to_async(person)()
    client = Client()
    await sync_to_async(password_step)(client, user.username)
    assert await socket_open(_communicator(client), quiet=True) == (False, CLOSE_SESSION_OVER)
    assert await socket_open(WebsocketCommunicator(application, "/ws/echo/"),
                             quiet=True) == (False, CLOSE_SESSION_OVER)


async def test_log_out_everywhere_closes_an_open_socket(verified):
    user, client = verified
    communicator = _communicator(client)
    assert (await communicator.connect())[0]
    await sync_to_async(user_logout_everywhere)(user=user, actor=user)
    assert await _closed(communicator, within=1.0)


async def test_the_watchdog_closes_a_silent_socket_at_the_absolute_limit(verified, clock, settings):
    settings.ACCOUNTS_WEBSOCKET_SESSION_CHECK_SECONDS = 0.01
    _, client = verified
    communicator = _communicator(client)
    assert (await communicator.connect())[0]
    clock.advance(12 * 3600)
    assert await _closed(communicator)
    assert await sync_to_async(lambda: client.get(reverse("home")).status_code)() == 302


async def test_deactivating_the_account_closes_an_open_socket_within_a_second(verified):
    user, client = verified
    communicator = _communicator(client)
    assert (await communicator.connect())[0]
    user.is_active = False
    await sync_to_async(user.save)()
    assert await _closed(communicator, within=1.0)


async def test_a_sign_in_elsewhere_leaves_an_open_socket_alone(verified):
    user, client = verified
    communicator = _communicator(client)
    assert (await communicator.connect())[0]
    await sync_to_async(user.save)(update_fields=["last_login"])
    await communicator.send_to(text_data="still here")
    assert await communicator.receive_from() == "echo still here"
    await communicator.disconnect()
