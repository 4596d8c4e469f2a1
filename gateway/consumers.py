"""Websocket consumers of the gate itself."""

from channels.generic.websocket import AsyncWebsocketConsumer

CLOSE_NO_SUCH_ROUTE = 4404


class RefuseConsumer(AsyncWebsocketConsumer):
    """Default deny: a websocket path that no route names is closed with 4404.

    Accepted first, so that the client sees the code (a close before accept
    becomes an HTTP 403 handshake and a bare 1006 in a browser).
    """

    async def connect(self) -> None:
        await self.accept()
        await self.close(code=CLOSE_NO_SUCH_ROUTE)
