"""Render requests over the channel layer: render workers on other hosts.

Shape::

    ASGI process ──RemoteRenderPool.render(state)──▶ "render" channel (Redis) ──▶ any render_worker
        ◀── reply channel of that ASGI process ◀── accepted / alive … / reply ◀──┘

* The request carries the whole view state (as its validated dict) and the *name* of a
  volume source, exactly like a local :class:`~rendering.workers.RenderPool` request, so
  any worker can serve any session; workers keep nothing but their volume cache.
* ``render`` is a plain channel: each request goes to one worker, and a worker only pulls
  a request when it has a free render process, so an idle worker takes the next one.
* Liveness, not a render-time limit, decides a retry: a worker answers ``accepted`` as
  soon as it takes a request and ``alive`` every :data:`HEARTBEAT_S` while it renders.
  When an accepted request goes silent for ``silence_s`` (default 1 s) its worker is taken
  for dead and the request is sent again, to whichever worker is free; a request nobody
  accepts within ``queue_s`` is sent again too (and the worker that finally pulls the
  stale copy drops it). The first reply wins; a late duplicate is ignored.
* Every message is HMAC-SHA256 signed under the render key (``GATEWAY_RENDER_KEY``), so a
  client of Redis that is not a gateway process can neither ask a worker for a picture of
  a series nor slip a forged frame to a viewer. Redis must still be private (see
  docs/deployment.md): the frames themselves are not encrypted by this layer.
* Frames, probe results and geometry cross as plain msgpack-able dicts, never pickles.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
from channels.exceptions import ChannelFull
from channels.layers import BaseChannelLayer, get_channel_layer

from gateway.i18n import gettext_noop
from rendering.engine.core import RenderError
from rendering.operations import Operation, OperationClient, operation_named
from rendering.said import SaidError
from rendering.viewstate import ViewState, viewstate_from_dict, viewstate_to_dict
from rendering.workers import (
    ERRORS,
    PoolClosed,
    RenderPool,
    RenderTimeout,
    WorkerCrashed,
    error_from_wire,
    error_wire,
)

logger = logging.getLogger(__name__)

HEARTBEAT_S = 0.25
REMOTE_ERRORS: dict[str, type[SaidError]] = {
    **ERRORS, "RenderTimeout": RenderTimeout, "WorkerCrashed": WorkerCrashed,
}


class RemoteUnavailable(WorkerCrashed):
    """No render worker took the request (or every one that did died) within the attempts."""


# --- the render key and signatures -----------------------------------------------------------


def render_key() -> bytes:
    """``GATEWAY_RENDER_KEY(_FILE)``, or a key generated under ``KEYS_DIR`` where that is allowed.

    Every ASGI process and every render worker must hold the same key; on one host the
    generated file is shared, across hosts it is supplied like the other secrets.
    """
    from django.conf import settings

    from gateway.config import ConfigurationError, private_file_check, private_file_write, secret

    configured = secret("GATEWAY_RENDER_KEY")
    if configured:
        return configured.encode()
    if not settings.KEYS_GENERATE:
        raise ConfigurationError("GATEWAY_RENDER_KEY or GATEWAY_RENDER_KEY_FILE must be set "
                                 "for remote rendering")
    path = Path(settings.KEYS_DIR) / "render-key"
    private_file_write(path, secrets.token_urlsafe(48).encode())
    private_file_check(path)
    return path.read_bytes().strip()


def _digest(key: bytes, message: dict[str, Any]) -> str:
    body = {name: value for name, value in message.items() if name != "sig"}
    return hmac.new(key, msgpack.packb(body, use_bin_type=True), hashlib.sha256).hexdigest()


def sign(key: bytes, message: dict[str, Any]) -> dict[str, Any]:
    return {**message, "sig": _digest(key, message)}


def verify(key: bytes, message: dict[str, Any]) -> bool:
    given = message.get("sig")
    return isinstance(given, str) and hmac.compare_digest(given, _digest(key, message))


# --- the requesting side -------------------------------------------------------------------------


@dataclass
class _LoopState:
    layer: BaseChannelLayer
    reply_channel: str
    receiver: asyncio.Task
    waiters: dict[str, asyncio.Queue] = field(default_factory=dict)


class RemoteRenderPool(OperationClient):
    """The :class:`~rendering.workers.RenderPool` request API, served by remote render workers.

    Parameters
    ----------
    channel:
        The channel render workers listen on.
    layer_alias:
        Which ``CHANNEL_LAYERS`` entry carries the requests.
    silence_s:
        An accepted request whose worker sends nothing for this long is sent again.
    queue_s:
        A request no worker accepts for this long is sent again.
    attempts:
        How many times a request is sent before it fails with :class:`RemoteUnavailable`.
    """

    def __init__(self, *, channel: str = "render", layer_alias: str = "render", key: bytes,
                 silence_s: float = 1.0, queue_s: float = 5.0, attempts: int = 3) -> None:
        self.channel = channel
        self.layer_alias = layer_alias
        self.key = key
        self.silence_s = silence_s
        self.queue_s = queue_s
        self.attempts = attempts
        self._loops: dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self.retries = 0

    def close(self) -> None:
        for state in self._loops.values():
            state.receiver.cancel()
        self._loops.clear()

    async def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._loops.get(loop)
        if state is None or state.receiver.done():
            layer = get_channel_layer(self.layer_alias)
            if layer is None:
                raise RenderError(f"no channel layer {self.layer_alias!r} for remote rendering")
            reply_channel = await layer.new_channel(prefix="render-reply")
            waiters: dict[str, asyncio.Queue] = {}
            receiver = loop.create_task(self._receive(layer, reply_channel, waiters),
                                        name="render-replies")
            state = _LoopState(layer, reply_channel, receiver, waiters)
            self._loops = {known: value for known, value in self._loops.items() if not known.is_closed()}
            self._loops[loop] = state
        return state

    async def _receive(self, layer: BaseChannelLayer, channel: str,
                       waiters: dict[str, asyncio.Queue]) -> None:
        while True:
            try:
                message = await layer.receive(channel)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("render replies: the channel layer failed; retrying")
                await asyncio.sleep(0.5)
                continue
            waiter = waiters.get(message.get("id", ""))
            if waiter is not None:
                waiter.put_nowait(message)

    async def request(self, name: str, state: ViewState, *, source: str, **arguments: Any) -> Any:
        """Run operation ``name`` on whichever remote worker is free; see the module docstring."""
        operation = operation_named(name)
        loop_state = await self._state()
        payload = {"state": viewstate_to_dict(state), "source": source, "arguments": arguments}
        for attempt in range(self.attempts):
            request_id = uuid.uuid4().hex
            inbox: asyncio.Queue = asyncio.Queue()
            loop_state.waiters[request_id] = inbox
            try:
                message = sign(self.key, {
                    "type": "render.request", "id": request_id, "op": name, "payload": payload,
                    "reply": loop_state.reply_channel, "accept_by": time.time() + self.queue_s,
                    "attempt": attempt})
                try:
                    await loop_state.layer.send(self.channel, message)
                except ChannelFull:
                    raise RenderError(gettext_noop("the render queue is full; try again")) from None
                outcome = await self._await_reply(inbox, operation)
            finally:
                loop_state.waiters.pop(request_id, None)
            if outcome is not None:
                return outcome.value
            self.retries += 1
            logger.warning("render request %s (%s) got no live worker; sending it again", request_id, name)
        raise RemoteUnavailable(gettext_noop("no render worker served the request after %(tries)s tries"),
                                tries=self.attempts)

    async def _await_reply(self, inbox: asyncio.Queue, operation: Operation) -> _Outcome | None:
        accepted = False
        while True:
            try:
                message = await asyncio.wait_for(
                    inbox.get(), timeout=self.silence_s if accepted else self.queue_s)
            except TimeoutError:
                return None
            if not verify(self.key, message):
                logger.error("dropped a render reply with a bad signature")
                continue
            kind = message.get("type")
            if kind in {"render.accepted", "render.alive"}:
                accepted = True
                continue
            if message.get("ok"):
                return _Outcome(operation.from_wire(message["result"]))
            raise error_from_wire(REMOTE_ERRORS, str(message.get("error", "")),
                                  str(message.get("message", "")), message.get("said"))


@dataclass(frozen=True)
class _Outcome:
    value: Any


# --- the serving side (manage.py render_worker) ------------------------------------------------------


@dataclass
class ServeStats:
    served: int = 0
    failed: int = 0
    dropped: int = 0


async def render_serve(*, pool: RenderPool, key: bytes, channel: str = "render",
                       layer_alias: str = "render", concurrency: int | None = None,
                       name: str | None = None, stop: asyncio.Event | None = None,
                       stats: ServeStats | None = None) -> ServeStats:
    """Serve render requests from ``channel`` with ``pool`` until ``stop`` is set.

    At most ``concurrency`` requests (default: the pool's size) are taken at once, so a
    busy worker leaves the queue to the others.
    """
    layer = get_channel_layer(layer_alias)
    if layer is None:
        raise RenderError(f"no channel layer {layer_alias!r}")
    name = name or f"{socket.gethostname()}:{os.getpid()}"
    stop = stop or asyncio.Event()
    stats = stats or ServeStats()
    slots = asyncio.Semaphore(concurrency or pool.size)
    running: set[asyncio.Task] = set()

    async def serve_one(message: dict) -> None:
        try:
            await _serve_request(layer, pool, key, name, message, stats)
        except Exception:
            stats.failed += 1
            logger.exception("render worker: could not serve a request")
        finally:
            slots.release()

    try:
        while not stop.is_set():
            await slots.acquire()
            receive = asyncio.ensure_future(layer.receive(channel))
            stopped = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({receive, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if receive not in done:
                receive.cancel()
                slots.release()
                break
            stopped.cancel()
            if receive.exception() is not None:
                logger.error("render worker: the channel layer failed (%r); retrying", receive.exception())
                slots.release()
                await asyncio.sleep(0.5)
                continue
            task = asyncio.create_task(serve_one(receive.result()))
            running.add(task)
            task.add_done_callback(running.discard)
    finally:
        for task in list(running):
            with contextlib.suppress(asyncio.CancelledError):
                await task
    return stats


async def _serve_request(layer: BaseChannelLayer, pool: RenderPool, key: bytes, name: str,
                         message: dict, stats: ServeStats) -> None:
    if not verify(key, message) or message.get("type") != "render.request":
        stats.dropped += 1
        logger.error("render worker: dropped a request with a bad signature")
        return
    if time.time() > float(message.get("accept_by", 0)):
        stats.dropped += 1
        return
    request_id, op, reply = message["id"], message["op"], message["reply"]

    async def tell(body: dict) -> None:
        with contextlib.suppress(ChannelFull):
            await layer.send(reply, sign(key, {"id": request_id, "worker": name, **body}))

    await tell({"type": "render.accepted"})

    async def heartbeat() -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            await tell({"type": "render.alive"})

    beating = asyncio.create_task(heartbeat())
    try:
        operation = operation_named(op)
        payload = message["payload"]
        state = viewstate_from_dict(payload["state"])
        result = await pool.request(operation.name, state, source=payload["source"], **payload["arguments"])
        body: dict[str, Any] = {"type": "render.reply", "ok": True, "result": operation.to_wire(result)}
        stats.served += 1
    except PoolClosed:
        raise
    except Exception as exc:
        name, text, words = error_wire(exc, REMOTE_ERRORS)
        body = {"type": "render.reply", "ok": False, "error": name, "message": text, "said": words}
        stats.failed += 1
    finally:
        beating.cancel()
    await tell(body)
