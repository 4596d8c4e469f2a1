"""The websocket stack: foreign origins are refused at the handshake, unrouted paths with 4404."""

import pytest
from channels.testing import WebsocketCommunicator

from gateway.asgi import application
from tests.sockets import socket_open

pytestmark = pytest.mark.django_db(databases=["default"], transaction=True)


async def _connects(path: str, origin: bytes | None) -> bool:
    headers = [(b"host", b"127.0.0.1")]
    if origin is not None:
        headers.append((b"origin", origin))
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await communicator.connect()
    await communicator.disconnect()
    return connected


@pytest.mark.parametrize("origin", [b"http://evil.example", b"http://127.0.0.1.evil.example",
                                    b"null", b"file://"])
async def test_a_foreign_origin_is_refused(origin):
    assert not await _connects("/ws/viewer/", origin)


@pytest.mark.parametrize("path", ["/ws/anything/", "/", "/ws/viewer/../../etc/passwd"])
async def test_a_path_no_route_names_is_refused_even_from_our_origin(path):
    communicator = WebsocketCommunicator(application, path, headers=[
        (b"host", b"127.0.0.1"), (b"origin", b"http://127.0.0.1")])
    assert await socket_open(communicator, quiet=True) == (False, 4404)
