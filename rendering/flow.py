"""How many client messages a viewer socket acts on: a token bucket counted at arrival.

Acknowledgements are flow control, not input: they are never counted or
dropped (a dropped ack would leave a view frozen on its last lossy frame).
Every other message takes a token; ``rate`` tokens are added a second, up to
``burst``. A message without a token is dropped unprocessed, and the client
is told at most once per ``notice_seconds`` (``rate_limited``, with how long
to wait). Input itself is coalesced downstream — view state changes are
cheap and the scheduler renders only the latest — so a burst never becomes a
queue of stale frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Request = TypeVar("Request")


class MessageBudget:
    def __init__(self, *, rate: float, burst: float, notice_seconds: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._notice_seconds = notice_seconds
        self._clock = clock
        self._tokens = burst
        self._updated = clock()
        self._noticed_at = float("-inf")
        self.dropped = 0

    def _refill(self) -> float:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        return now

    def take(self) -> bool:
        """Spend a token for one arriving message; False means drop it."""
        self._refill()
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        self.dropped += 1
        return False

    def notice_due(self) -> bool:
        """Should the client be told now that messages are being dropped?"""
        now = self._clock()
        if now - self._noticed_at < self._notice_seconds:
            return False
        self._noticed_at = now
        return True

    def retry_after_ms(self) -> int:
        """How long until a message would be accepted again."""
        self._refill()
        return max(0, round((1 - self._tokens) / self.rate * 1000))


class LatestWins(Generic[Request]):
    """One request of a kind in flight per socket; a newer one replaces the one still waiting.

    Probes, measurements and charts: a cursor or a dragged handle sends many, the last counts.
    """

    def __init__(self, run: Callable[[Request], Awaitable[None]]) -> None:
        self._run = run
        self._wanted: Request | None = None
        self._task: asyncio.Task[None] | None = None

    def submit(self, request: Request) -> None:
        self._wanted = request
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        while self._wanted is not None:
            request, self._wanted = self._wanted, None
            await self._run(request)

    async def cancel(self) -> None:
        self._wanted = None
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
