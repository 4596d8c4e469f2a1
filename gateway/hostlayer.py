"""The embedded channel layer: in memory, with group messages relayed to this host's other processes.

``make run`` serves the gateway from several ASGI processes (``manage.py serve``)
without Redis. Channels' in-memory layer stays the delivery mechanism inside a
process; what must cross processes is a group message, such as "this session
changed" or "this share was revoked", sent by the process that handled the
sign-out to the sockets held by any process. Each process that holds a group
member binds one Unix datagram socket in ``directory`` (0700, files 0600), and
``group_send`` writes the message to every other socket there.

Why not a broker: Redis is the deployment's layer (``REDIS_URL``); the embedded
default must run with nothing installed. Datagrams on a Unix socket are
reliable and ordered; a full peer queue drops the notice with a warning, and
the sockets' watchdog remains the bounded-staleness backstop (``accounts.broadcast``).
Messages are msgpack, as channels_redis writes them: data, never code.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import secrets
import socket
from pathlib import Path
from typing import Any

import msgpack
from channels.layers import InMemoryChannelLayer

from gateway.config import private_directory_make

log = logging.getLogger(__name__)

MAX_DATAGRAM = 16 * 1024
SUFFIX = ".sock"


class HostChannelLayer(InMemoryChannelLayer):
    """:class:`InMemoryChannelLayer` whose group messages also reach the other processes on the host."""

    def __init__(self, directory: str | os.PathLike[str], **config: Any) -> None:
        super().__init__(**config)
        self._directory = Path(directory)
        self._inbox: socket.socket | None = None
        self._inbox_path: Path | None = None
        self._reader_loop: asyncio.AbstractEventLoop | None = None
        self._outbox: socket.socket | None = None
        self._private: bool | None = None

    def _directory_private(self) -> bool:
        """Relay only through a directory of ours (else: this process's sockets only, and say so)."""
        if self._private is None:
            try:
                private_directory_make(self._directory)
                self._private = True
            except OSError as error:
                log.error("group messages stay in this process: %s (%s); sockets elsewhere close "
                          "at their next session check", self._directory, error)
                self._private = False
        return self._private

    async def group_add(self, group: str, channel: str) -> None:
        await super().group_add(group, channel)
        self._listen(asyncio.get_running_loop())

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        datagram = _encoded(group, message)
        await super().group_send(group, message)
        self._relay(datagram, message)

    async def close(self) -> None:
        self._stop_listening()
        await super().close()

    # --- receiving ----------------------------------------------------------------------------

    def _listen(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._reader_loop is loop or not self._directory_private():
            return
        if self._inbox is None:
            self._inbox = self._bind()
        elif self._reader_loop is not None and not self._reader_loop.is_closed():
            self._reader_loop.remove_reader(self._inbox.fileno())
        loop.add_reader(self._inbox.fileno(), self._drain, loop)
        self._reader_loop = loop

    def _bind(self) -> socket.socket:
        path = self._directory / f"{os.getpid()}-{secrets.token_hex(4)}{SUFFIX}"
        inbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        inbox.setblocking(False)
        inbox.bind(str(path))
        os.chmod(path, 0o600)
        self._inbox_path = path
        atexit.register(self._stop_listening)
        return inbox

    def _drain(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._inbox is not None:
            try:
                datagram = self._inbox.recv(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            decoded = _decoded(datagram)
            if decoded is None:
                log.warning("dropped a malformed relayed channel message (%d bytes)", len(datagram))
                continue
            loop.create_task(self._deliver(*decoded))

    async def _deliver(self, group: str, message: dict[str, Any]) -> None:
        try:
            await InMemoryChannelLayer.group_send(self, group, message)
        except (TypeError, ValueError):
            log.warning("dropped a relayed channel message for an invalid group")

    def _stop_listening(self) -> None:
        if self._inbox is None:
            return
        if self._reader_loop is not None and not self._reader_loop.is_closed():
            self._reader_loop.remove_reader(self._inbox.fileno())
        self._inbox.close()
        self._inbox = self._reader_loop = None
        if self._inbox_path is not None:
            self._inbox_path.unlink(missing_ok=True)
            self._inbox_path = None

    # --- sending ------------------------------------------------------------------------------

    def _relay(self, datagram: bytes, message: dict[str, Any]) -> None:
        if not self._directory_private():
            return
        if self._outbox is None:
            self._outbox = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._outbox.setblocking(False)
        for peer in self._peers():
            try:
                self._outbox.sendto(datagram, str(peer))
            except ConnectionRefusedError:
                peer.unlink(missing_ok=True)  # nobody bound: a process that died without cleaning up
            except FileNotFoundError:
                continue
            except BlockingIOError:
                log.warning("process socket %s is full: dropped %s", peer.name, message.get("type"))

    def _peers(self) -> list[Path]:
        try:
            entries = list(self._directory.iterdir())
        except FileNotFoundError:
            return []
        return [entry for entry in entries if entry.name.endswith(SUFFIX) and entry != self._inbox_path]


def _encoded(group: str, message: dict[str, Any]) -> bytes:
    datagram = msgpack.packb([group, message], use_bin_type=True)
    if len(datagram) > MAX_DATAGRAM:
        raise ValueError(f"a group message relayed between processes is at most {MAX_DATAGRAM} bytes")
    return datagram


def _decoded(datagram: bytes) -> tuple[str, dict[str, Any]] | None:
    try:
        group, message = msgpack.unpackb(datagram, raw=False)
    except (ValueError, TypeError, msgpack.UnpackException):
        return None
    if not isinstance(group, str) or not isinstance(message, dict):
        return None
    if not isinstance(message.get("type"), str):
        return None
    return group, message
