"""Request bodies handed to the application as they arrive, with backpressure (daphne).

Stock daphne 4.2 starts the ASGI application only when Twisted has received
the whole body (spooled to a temporary file), and then puts every 8 KiB chunk
of it on the application's queue in one loop, so the whole body sits in
memory until the application reads it. No application can refuse a request
before its last byte: a hostile ``Content-Length`` costs the server memory
and time, authenticated or not.

:class:`StreamingWebRequest` starts the application as soon as the headers
are in, passes each chunk on as it arrives and stops reading the socket
while more than ``HIGH_WATER`` bytes wait unread, so TCP flow control holds
the client back. ``Expect: 100-continue`` is answered when the application
first asks for the body, as the ASGI specification suggests, so a refusal
sent before that keeps a polite client from sending the body at all.

When the application answers before the body is complete, the response goes
out with ``Connection: close``; then the gateway closes its sending side and
reads and discards whatever the client still sends (a "lingering close", as
nginx and Apache do: closing outright with unread data makes the kernel send
a reset, which can destroy the response before the client reads it) for at
most ``LINGER_SECONDS``, then drops the connection. Nothing of the discarded
body is kept.

:func:`bodies_streamed` installs it; requests without a body and websocket
upgrades keep daphne's own path. Pinned to daphne 4.x (pyproject), whose
``WebRequest.process`` the scope built here mirrors.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import Any, cast
from urllib.parse import unquote

from daphne import http_protocol, server
from daphne.utils import HEADER_NAME_RE, INVALID_HEADER_VALUE_BYTES, parse_x_forwarded_for
from twisted.internet import reactor
from twisted.internet.interfaces import IPushProducer
from twisted.web import http

log = logging.getLogger(__name__)

HIGH_WATER = 1 << 20  # unread body bytes queued before the socket stops being read
LOW_WATER = 1 << 18  # ... and resumed once the application has drained below this
LINGER_SECONDS = 5.0


class _BodyQueue(asyncio.Queue):
    """The application's receive queue; it counts the body bytes waiting in it."""

    def __init__(self, request: StreamingWebRequest) -> None:
        super().__init__()
        self.request = request
        self.waiting = 0

    async def get(self) -> dict[str, Any]:
        self.request.body_wanted()
        return await super().get()

    def get_nowait(self) -> dict[str, Any]:
        message = super().get_nowait()
        if message.get("type") == "http.request":
            self.waiting -= len(message.get("body", b""))
            self.request.body_taken()
        return message


def _discard(data: bytes) -> None:
    """What a lingering connection does with the rest of an unwanted body."""


class StreamingWebRequest(http_protocol.WebRequest):
    """daphne's request, with the body streamed to the application (see the module docstring)."""

    streaming = False
    body_complete = False
    _continue_pending = False
    _paused = False

    # --- Twisted's side -----------------------------------------------------------------------

    def gotLength(self, length: int | None) -> None:
        channel = self.channel
        if (length == 0 or not isinstance(channel, http.HTTPChannel)
                or self.requestHeaders.hasHeader(b"Upgrade")
                or not hasattr(channel, "_command")):
            super().gotLength(length)
            return
        self.streaming = True
        self.method, self.clientproto = channel._command, channel._version
        self.uri = cast(bytes, channel._path)  # the request target, as Twisted's lineReceived split it
        self.path = self.uri.split(b"?", 1)[0]
        expect = self.requestHeaders.getRawHeaders(b"Expect")
        if expect and expect[0].lower() == b"100-continue" and self.clientproto == b"HTTP/1.1":
            # Twisted would answer at once; answer when the application asks for the body.
            self.requestHeaders.removeHeader(b"Expect")
            self._continue_pending = True
        self._start()

    def handleContentChunk(self, data: bytes) -> None:
        if not self.streaming:
            super().handleContentChunk(data)
            return
        queue = self.application_queue
        if queue is None or self.finished:
            return
        queue.waiting += len(data)
        queue.put_nowait({"type": "http.request", "body": data, "more_body": True})
        if queue.waiting > HIGH_WATER:
            self._pause()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self.streaming:
            super().requestReceived(command, path, version)
            return
        # From here on the channel owns the transport's pausing (pipelined requests).
        self.body_complete = True
        self._paused = False
        if self.application_queue is not None and not self.finished:
            self.application_queue.put_nowait({"type": "http.request", "body": b"", "more_body": False})

    def handle_reply(self, message: dict[str, Any]) -> None:
        if (self.streaming and not self.body_complete and message.get("type") == "http.response.start"
                and not self.finished and self.channel is not None):
            super().handle_reply(message)
            self.responseHeaders.setRawHeaders(b"Connection", [b"close"])
            return
        super().handle_reply(message)

    def finish(self) -> None:
        if not self.streaming or self.body_complete or self.finished or self.channel is None:
            super().finish()
            return
        channel = self.channel
        transport = channel.transport
        channel.dataReceived = _discard  # type: ignore[method-assign]
        channel.persistent = True  # so that requestDone leaves the closing to the linger below
        super().finish()
        if transport is None or not getattr(transport, "connected", False):
            return
        if IPushProducer.providedBy(transport):
            transport.resumeProducing()
        try:
            transport.loseWriteConnection()
        except (AttributeError, NotImplementedError):
            transport.loseConnection()
            return

        def drop() -> None:
            if getattr(transport, "connected", False):
                transport.abortConnection()

        cast(Any, reactor).callLater(LINGER_SECONDS, drop)

    # --- the application's side ---------------------------------------------------------------

    def body_wanted(self) -> None:
        """The application asked for the body: now is the time for ``100 Continue``."""
        if self._continue_pending and not self._response_started and not self.finished:
            self._continue_pending = False
            if self.channel is not None and self.channel.transport is not None:
                self.channel.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def body_taken(self) -> None:
        queue = self.application_queue
        if self._paused and queue is not None and queue.waiting < LOW_WATER:
            self._resume()

    def _pause(self) -> None:
        transport = self.channel.transport if self.channel is not None else None
        if not self._paused and transport is not None and IPushProducer.providedBy(transport):
            self._paused = True
            transport.pauseProducing()

    def _resume(self) -> None:
        self._paused = False
        if self.body_complete or self.finished or self.channel is None:
            return
        transport = self.channel.transport
        if transport is not None and IPushProducer.providedBy(transport):
            transport.resumeProducing()

    def _refuse_soon(self, why: str) -> None:
        """400, once Twisted has finished with the bytes at hand (not from inside its parser)."""

        def refuse() -> None:
            if not self.finished and self.channel is not None:
                self.basic_error(400, b"Bad Request", why)

        cast(Any, reactor).callLater(0, refuse)

    def _start(self) -> None:
        """Build the scope as ``WebRequest.process`` does and start the application."""
        self.request_start = time.time()
        self.application_queue = None
        for name, values in self.requestHeaders.getAllRawHeaders():
            if not HEADER_NAME_RE.fullmatch(name):
                self._refuse_soon("Invalid header name")
                return
            for value in values:
                if INVALID_HEADER_VALUE_BYTES.intersection(value):
                    self._refuse_soon("Invalid header value")
                    return
        if hasattr(self.client, "host") and hasattr(self.client, "port"):
            self.client_addr = [str(self.client.host), self.client.port]
            self.server_addr = [str(self.host.host), self.host.port]
        self.client_scheme = "https" if self.isSecure() else "http"
        if self.server.proxy_forwarded_address_header:
            self.client_addr, self.client_scheme = parse_x_forwarded_for(
                self.requestHeaders,
                self.server.proxy_forwarded_address_header,
                self.server.proxy_forwarded_port_header,
                self.server.proxy_forwarded_proto_header,
                self.client_addr,
                self.client_scheme,
            )
        try:
            self.path.decode("ascii")
        except UnicodeDecodeError:
            self.path = b"/"
            self._refuse_soon("Invalid characters in path")
            return
        self.query_string = b""
        uri = cast(bytes, self.uri)
        if b"?" in uri:
            self.query_string = uri.split(b"?", 1)[1]
            try:
                self.query_string.decode("ascii")
            except UnicodeDecodeError:
                self._refuse_soon("Invalid query string")
                return
        self.clean_headers = []
        self.root_path = self.server.root_path
        for name, values in self.requestHeaders.getAllRawHeaders():
            if b"_" in name:  # CVE-2015-0219, as daphne
                continue
            for value in values:
                if name.lower() == b"daphne-root-path":
                    self.root_path = unquote(value.decode("ascii"))
                else:
                    self.clean_headers.append((name.lower(), value))
        if self._continue_pending:
            self.clean_headers.append((b"expect", b"100-continue"))
        scope = {
            "type": "http",
            "http_version": self.clientproto.split(b"/")[-1].decode("ascii"),
            "method": self.method.decode("ascii"),
            "path": unquote(self.path.decode("ascii")),
            "raw_path": self.path,
            "root_path": self.root_path,
            "scheme": self.client_scheme,
            "query_string": self.query_string,
            "headers": self.clean_headers,
            "client": self.client_addr,
            "server": self.server_addr,
            "asgi": {"version": "3.0"},
        }
        # As Server.create_application, with a queue that counts what waits in it.
        connections = self.server.connections
        if self not in connections or "application_instance" in connections[self]:
            return
        queue = _BodyQueue(self)
        instance = self.server.application(scope=scope, receive=queue.get,
                                           send=partial(self.server.handle_reply, self))
        connections[self]["application_instance"] = asyncio.ensure_future(
            instance, loop=asyncio.get_event_loop())
        self.application_queue = queue


class StreamingHTTPFactory(http_protocol.HTTPFactory):
    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = StreamingWebRequest
        return protocol


def bodies_streamed(application: Any) -> Any:
    """Make daphne (when it is the server) stream request bodies; returns ``application``.

    daphne's ``Server.run`` builds its HTTP factory after importing the
    application, so calling this from the ASGI module is early enough.
    """
    server.HTTPFactory = StreamingHTTPFactory  # type: ignore[misc]
    return application
