"""Per-view frame scheduling: latest state wins, bounded frames in flight, a still after input.

The consumer submits every new view state; the scheduler decides what is
rendered and sent. While frames are outstanding (rendering, or sent and not
yet acknowledged by the client), newer input only replaces the pending
state, so a fast scroll never queues stale work. A frame older than one
already sent is dropped. When input stops for ``still_delay`` seconds, the
latest state is rendered once more at still (diagnostic, lossless) quality;
new input cancels a still not yet delivered, so the pool drops it unless a
worker has already started it (the pool serves stills after interactive work).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from enum import IntEnum
from typing import Any

logger = logging.getLogger("rendering.scheduler")


class Quality(IntEnum):
    INTERACTIVE = 0
    STILL = 1


RenderCall = Callable[[Any, Quality], Awaitable[Any]]
PushCall = Callable[[int, Quality, Any], Awaitable[None]]
FailureCall = Callable[[int, BaseException], Awaitable[None]]


class ViewScheduler:
    """Coalesces the view states of one view into frames.

    ``render(state, quality)`` produces a frame off the event loop;
    ``push(sequence, quality, frame)`` sends it; ``on_failure(sequence, error)``
    reports a frame that could not be rendered. Sequence numbers increase with
    every submitted state, so the client can match frames to its input.
    """

    def __init__(self, *, render: RenderCall, push: PushCall, on_failure: FailureCall,
                 max_in_flight: int = 2, still_delay: float = 0.12) -> None:
        self._render = render
        self._push = push
        self._on_failure = on_failure
        self._max_in_flight = max_in_flight
        self._still_delay = still_delay
        self._pending: tuple[int, Any] | None = None
        self._latest: tuple[int, Any] | None = None
        self._sequence = 0
        self._rendering = 0
        self._unacknowledged: set[int] = set()
        self._last_sent = 0
        self._still_sent_for = 0
        self._still_timer: asyncio.TimerHandle | None = None
        self._still_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @property
    def outstanding(self) -> int:
        return self._rendering + len(self._unacknowledged)

    def submit(self, state: Any) -> int:
        """Make ``state`` the latest; returns its sequence number."""
        if self._closed:
            raise RuntimeError("scheduler is closed")
        self._sequence += 1
        self._pending = self._latest = (self._sequence, state)
        self._cancel_still()
        if self._still_task is not None and not self._still_task.done():
            self._still_task.cancel()
        self._dispatch()
        return self._sequence

    def acknowledge(self, sequence: int) -> None:
        """The client has displayed frame ``sequence`` (and so every earlier one)."""
        self._unacknowledged = {seq for seq in self._unacknowledged if seq > sequence}
        self._dispatch()
        self._schedule_still()

    async def close(self) -> None:
        self._closed = True
        self._cancel_still()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _dispatch(self) -> None:
        if self._closed or self._pending is None or self.outstanding >= self._max_in_flight:
            return
        sequence, state = self._pending
        self._pending = None
        self._start(sequence, state, Quality.INTERACTIVE)

    def _start(self, sequence: int, state: Any, quality: Quality) -> asyncio.Task[None]:
        self._rendering += 1
        task = asyncio.get_running_loop().create_task(self._produce(sequence, state, quality))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _produce(self, sequence: int, state: Any, quality: Quality) -> None:
        try:
            frame = await self._render(state, quality)
        except asyncio.CancelledError:
            self._rendering -= 1
            self._dispatch()
            raise
        except Exception as error:  # any render failure is reported, never fatal
            logger.warning("frame %s failed: %s", sequence, error)
            self._rendering -= 1
            await self._on_failure(sequence, error)
            self._dispatch()
            return
        self._rendering -= 1
        if self._closed:
            return
        if sequence > self._last_sent or (quality is Quality.STILL and sequence == self._last_sent):
            self._last_sent = sequence
            self._unacknowledged.add(sequence)
            await self._push(sequence, quality, frame)
        self._dispatch()
        self._schedule_still()

    def _schedule_still(self) -> None:
        if self._pending is not None or self._latest is None or self._closed:
            return
        sequence, _ = self._latest
        if sequence != self._last_sent or self._still_sent_for == sequence:
            return
        self._cancel_still()
        loop = asyncio.get_running_loop()
        self._still_timer = loop.call_later(self._still_delay, self._render_still, sequence)

    def _render_still(self, sequence: int) -> None:
        self._still_timer = None
        if self._closed or self._latest is None or self._latest[0] != sequence:
            return
        if self.outstanding >= self._max_in_flight:
            return
        self._still_sent_for = sequence
        self._still_task = self._start(sequence, self._latest[1], Quality.STILL)

    def _cancel_still(self) -> None:
        if self._still_timer is not None:
            self._still_timer.cancel()
            self._still_timer = None
