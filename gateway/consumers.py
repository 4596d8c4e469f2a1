"""Websocket consumers of the gate itself."""

from channels.generic.websocket import AsyncWebsocketConsumer


class RefuseConsumer(AsyncWebsocketConsumer):
    """Default deny: a websocket path that no route names is closed unaccepted."""

    async def connect(self) -> None:
        await self.close()
