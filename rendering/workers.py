"""A pool of render worker processes with crash recovery and an asyncio-friendly API.

Shape::

    event loop ──await pool.render(state, source=…)──▶ per-worker queue ─▶ dispatcher thread
        ◀── asyncio future resolved (thread-safe) ◀── socket ◀── worker process (RenderEngine + LRU)

* Each worker is a separate process (a fresh interpreter: no inherited locks, sockets,
  event loop or VTK state) holding one :class:`~rendering.engine.RenderEngine` and an LRU volume cache
  with a byte budget. Nothing else survives between requests.
* A request carries the whole view state (as its validated dict, re-validated in the
  worker) and the *name* of a volume source; the worker loads volumes by series id
  through that source. No voxel array ever crosses the pipe.
* One dispatcher thread per worker sends a request and waits on the worker's socket;
  a dead process shows as end-of-file. If the process dies mid-frame it is replaced and the request is
  re-run once on the replacement; a second death fails the request with
  :class:`WorkerCrashed` (a poison request cannot take the pool down in a loop).
  A request that runs past ``timeout_s`` kills and replaces its worker and fails with
  :class:`RenderTimeout`.
* Routing prefers the worker chosen by a hash of the first layer's series id (cache
  affinity) and falls back to the least-busy worker when that one has a backlog.
* A worker's queue serves a viewer's opening ``describe`` first, then interactive
  requests and probes in arrival order; stills wait behind all of them, so a still
  nobody is looking at yet never delays another session's scroll, and a still
  cancelled by newer input never reaches a worker.
* ``await pool.render(...)`` never blocks the event loop: the caller's loop only puts a
  job on a queue and awaits a wrapped ``concurrent.futures.Future``. Cancelling the
  awaiting task drops the job if it has not been sent yet (latest-wins callers).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import itertools
import logging
import os
import queue
import socket
import subprocess
import sys
import threading
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from gateway.i18n import gettext_noop
from rendering.encoding import Encoding
from rendering.engine.core import (
    FrameOfReferenceError,
    MissingVolumeError,
    RenderedFrame,
    RenderError,
)
from rendering.operations import OperationClient, Urgency, WorkerContext, operation_named
from rendering.said import Said, SaidError
from rendering.viewstate import ViewState, ViewStateError, viewstate_from_dict, viewstate_to_dict
from rendering.volume import Volume, VolumeSource

logger = logging.getLogger(__name__)

DEFAULT_CACHE_BYTES = 1 << 30
ROOT = str(Path(__file__).resolve().parents[1])
AFFINITY_SLACK = 1


class WorkerCrashed(RenderError):
    """The worker died twice while serving this request."""


class RenderTimeout(RenderError):
    """The request ran past the pool's time limit; its worker was replaced."""


class PoolClosed(RenderError):
    """The pool is not running."""


ERRORS: dict[str, type[SaidError]] = {
    "ViewStateError": ViewStateError,
    "RenderError": RenderError,
    "FrameOfReferenceError": FrameOfReferenceError,
    "MissingVolumeError": MissingVolumeError,
}


@dataclass(frozen=True)
class SourceSpec:
    """How a worker builds a :class:`VolumeSource`: ``"package.module:callable"`` plus keyword arguments.

    The callable runs inside the worker process, so the arguments must be picklable; a
    source that needs Django must call ``django.setup()`` itself.
    """

    factory: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    def build(self) -> VolumeSource:
        module_name, _, attribute = self.factory.partition(":")
        target = getattr(importlib.import_module(module_name), attribute)
        return target(**dict(self.kwargs))


class VolumeCache:
    """LRU of volumes keyed by (source, series id) within a byte budget.

    A volume larger than the whole budget is served but not kept.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._items: OrderedDict[tuple[str, str], Volume] = OrderedDict()
        self.hits = self.misses = 0

    @property
    def used_bytes(self) -> int:
        return sum(volume.nbytes for volume in self._items.values())

    def get(self, source_name: str, series_id: str, source: VolumeSource) -> Volume:
        key = (source_name, series_id)
        if key in self._items:
            self.hits += 1
            self._items.move_to_end(key)
            return self._items[key]
        self.misses += 1
        volume = source.load(series_id)
        if volume.nbytes <= self.budget_bytes:
            while self._items and self.used_bytes + volume.nbytes > self.budget_bytes:
                self._items.popitem(last=False)
            self._items[key] = volume
        return volume


# --- worker process ---------------------------------------------------------------------------


def worker_entry() -> None:
    """Entry point of a worker process: ``python -c ... <socket fd>`` (see ``RenderPool._spawn``).

    A fresh interpreter rather than multiprocessing's spawn, so the parent's ``__main__``
    (a server, a test runner, a script without a main guard) is never re-imported.
    """
    conn = Connection(int(sys.argv[1]))
    sources, cache_bytes = conn.recv()
    _worker_main(conn, sources, cache_bytes)


def _worker_main(conn: Connection, sources: dict[str, SourceSpec], cache_bytes: int) -> None:
    """Serve requests until the socket closes or ``None`` arrives."""
    os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from rendering.engine.core import RenderEngine

    engine = RenderEngine()
    cache = VolumeCache(cache_bytes)
    built = _sources_built(sources)
    contexts: dict[str, WorkerContext] = {}
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        name, payload = message
        try:
            if name == "ping":
                reply: Any = {"pid": os.getpid(), "cache_bytes": cache.used_bytes,
                              "hits": cache.hits, "misses": cache.misses}
            else:
                operation = operation_named(name)
                state = viewstate_from_dict(payload["state"])
                source = payload["source"]
                if source not in sources:
                    raise RenderError(f"unknown volume source {source!r}")
                if source not in built:
                    built[source] = sources[source].build()
                context = contexts.setdefault(source, WorkerContext(engine, source))
                volumes = _volumes(cache, source, built[source], state)
                reply = operation.run(context, state, volumes, payload["arguments"])
            conn.send(("ok", reply))
        except Exception as exc:
            conn.send(("error", *error_wire(exc, ERRORS)))


def error_wire(exc: Exception, known: Mapping[str, type[SaidError]]) -> tuple[str, str, dict[str, Any]]:
    """(its kind, its English, its words as data) for an error that crosses to the asker.

    A ``RenderError`` or ``ViewStateError`` of any kind (an operation's own, such as an edit that
    cannot be made) is meant for the reader: its words cross, to be translated where they are
    shown. Anything else is logged here and named only.
    """
    if not isinstance(exc, SaidError) or not isinstance(exc, RenderError | ViewStateError):
        logger.exception("render worker: request failed")
        words = Said.made(gettext_noop("render failed (%(kind)s)"), {"kind": type(exc).__name__})
        return "RenderError", str(words), words.wire()
    name = type(exc).__name__ if type(exc).__name__ in known else "RenderError"
    return name, str(exc), exc.said.wire()


def error_from_wire(known: Mapping[str, type[SaidError]], name: str, text: str,
                    words: Mapping[str, Any] | None) -> SaidError:
    """The error :func:`error_wire` described (its words, where it sent them)."""
    return known.get(name, RenderError)(Said.from_wire(words) if isinstance(words, Mapping) else text)


def _sources_built(sources: dict[str, SourceSpec]) -> dict[str, VolumeSource]:
    """Every source set up before the worker says it is ready, so no viewer waits on it (~1 s).

    A source that cannot be set up now is tried again on its first request, which then
    fails with the reason.
    """
    built = {}
    for name, spec in sources.items():
        try:
            built[name] = spec.build()
        except Exception:
            logger.exception("render worker: volume source %r could not be set up; retrying on use", name)
    return built


def _volumes(cache: VolumeCache, source_name: str, source: VolumeSource,
             state: ViewState) -> dict[str, Volume]:
    volumes = {}
    for series_id in state.series_ids:
        try:
            volumes[series_id] = cache.get(source_name, series_id, source)
        except KeyError:
            raise MissingVolumeError(f"series {series_id} is not available") from None
    return volumes


# --- pool -------------------------------------------------------------------------------------


class _Crash(Exception):
    pass


class _Timeout(Exception):
    pass


STOP = len(Urgency)  # after every operation in a worker's queue


@dataclass
class _Job:
    op: str
    payload: dict
    future: Future
    attempts: int = 0
    priority: int = Urgency.INTERACTIVE



class _Slot:
    def __init__(self, index: int) -> None:
        self.index = index
        self.process: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self.jobs: queue.PriorityQueue[tuple[int, int, _Job | None]] = queue.PriorityQueue()
        self.order = itertools.count()
        self.pending = 0
        self.restarts = 0
        self.served = 0
        self.thread: threading.Thread | None = None


class RenderPool(OperationClient):
    """Render worker processes; see the module docstring for the contract.

    Parameters
    ----------
    sources:
        Named volume sources the workers may use; a request names one.
    size:
        Number of worker processes (default: the CPU cores available to this process).
    cache_bytes:
        Volume cache budget per worker.
    timeout_s:
        Longest a single request may run before its worker is replaced.
    """

    def __init__(self, *, sources: Mapping[str, SourceSpec], size: int | None = None,
                 cache_bytes: int = DEFAULT_CACHE_BYTES, timeout_s: float = 60.0,
                 start_timeout_s: float = 60.0) -> None:
        self.sources = dict(sources)
        self.size = size or len(os.sched_getaffinity(0))
        self.cache_bytes = cache_bytes
        self.timeout_s = timeout_s
        self.start_timeout_s = start_timeout_s
        self._slots = [_Slot(i) for i in range(self.size)]
        self._lock = threading.Lock()
        self._running = False

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> RenderPool:
        """Start every worker and wait until each is ready (imports done, engine built)."""
        if self._running:
            return self
        for slot in self._slots:
            self._spawn(slot, wait_ready=False)
        for slot in self._slots:
            self._await_ready(slot)
            slot.thread = threading.Thread(target=self._dispatch, args=(slot,),
                                           name=f"render-dispatch-{slot.index}", daemon=True)
            slot.thread.start()
        self._running = True
        return self

    def close(self) -> None:
        """Stop the workers; pending requests fail with :class:`PoolClosed`."""
        if not self._running:
            return
        self._running = False
        for slot in self._slots:
            slot.jobs.put((STOP, next(slot.order), None))
        for slot in self._slots:
            if slot.thread is not None:
                slot.thread.join(timeout=self.timeout_s + 5)
            self._stop_process(slot)

    def __enter__(self) -> RenderPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> RenderPool:
        await asyncio.get_running_loop().run_in_executor(None, self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def worker_pids(self) -> list[int]:
        return [slot.process.pid for slot in self._slots if slot.process and slot.process.pid]

    def stats(self) -> list[dict]:
        return [{"index": s.index, "pid": s.process.pid if s.process else None, "pending": s.pending,
                 "served": s.served, "restarts": s.restarts} for s in self._slots]

    # --- requests -----------------------------------------------------------------------------

    async def request(self, name: str, state: ViewState, *, source: str, **arguments: Any) -> Any:
        """Run operation ``name`` on ``state`` in a worker, loading volumes from the named source."""
        return await asyncio.wrap_future(self._submit(name, state, source, arguments))

    def request_sync(self, name: str, state: ViewState, *, source: str, **arguments: Any) -> Any:
        """Blocking variant for threads, scripts and benchmarks (never call on an event loop)."""
        return self._submit(name, state, source, arguments).result()

    def render_sync(self, state: ViewState, *, source: str,
                    encoding: Encoding | None = None) -> RenderedFrame:
        return self.request_sync("render", state, source=source,
                                 encoding=encoding.value if encoding else None)

    async def ping(self) -> list[dict]:
        """Each worker's pid and cache figures (one request per worker)."""
        futures = [self._enqueue(slot, _Job("ping", {}, Future())) for slot in self._slots]
        return [await asyncio.wrap_future(f) for f in futures]

    def _submit(self, name: str, state: ViewState, source: str, arguments: dict) -> Future:
        if not self._running:
            raise PoolClosed(gettext_noop("the render pool is not running"))
        if source not in self.sources:
            raise RenderError(f"unknown volume source {source!r}")
        operation = operation_named(name)
        payload = {"state": viewstate_to_dict(state), "source": source, "arguments": arguments}
        job = _Job(name, payload, Future(), priority=operation.urgency(state))
        return self._enqueue(self._route(state.layers[0].series_id), job)

    def _route(self, series_id: str) -> _Slot:
        with self._lock:
            preferred = self._slots[zlib.crc32(series_id.encode()) % self.size]
            idle = min(self._slots, key=lambda s: s.pending)
            return preferred if preferred.pending <= idle.pending + AFFINITY_SLACK else idle

    def _enqueue(self, slot: _Slot, job: _Job) -> Future:
        with self._lock:
            slot.pending += 1
        slot.jobs.put((job.priority, next(slot.order), job))
        return job.future

    # --- dispatcher thread ----------------------------------------------------------------------

    def _dispatch(self, slot: _Slot) -> None:
        while True:
            _, _, job = slot.jobs.get()
            if job is None:
                return
            try:
                if job.future.set_running_or_notify_cancel():
                    self._run(slot, job)
            finally:
                with self._lock:
                    slot.pending -= 1

    def _run(self, slot: _Slot, job: _Job) -> None:
        limit = self._limit(job.op)
        while True:
            try:
                reply = self._exchange(slot, (job.op, job.payload), limit)
            except _Timeout:
                logger.error("render worker %s timed out; replacing it", slot.index)
                self._replace(slot)
                job.future.set_exception(RenderTimeout(gettext_noop("render took longer than %(limit)g s"),
                                                       limit=limit))
                return
            except _Crash:
                logger.error("render worker %s died (attempt %s); replacing it", slot.index, job.attempts + 1)
                try:
                    self._replace(slot)
                except Exception as exc:
                    job.future.set_exception(WorkerCrashed(gettext_noop("render worker could not restart: "
                                                                        "%(error)s"), error=exc))
                    return
                if job.attempts >= 1:
                    job.future.set_exception(WorkerCrashed(gettext_noop("render worker died twice on this "
                                                                        "request")))
                    return
                job.attempts += 1
                continue
            slot.served += 1
            if reply[0] == "ok":
                job.future.set_result(reply[1])
            else:
                job.future.set_exception(error_from_wire(ERRORS, *reply[1:]))
            return

    def _limit(self, name: str) -> float:
        """The operation's own time limit (a job), else the pool's."""
        try:
            own = operation_named(name).timeout_s
        except RenderError:
            own = None
        return own if own is not None else self.timeout_s

    def _exchange(self, slot: _Slot, message: tuple, limit: float) -> tuple:
        """Send one request and wait for its reply; a dead worker shows as EOF on its socket."""
        conn = slot.conn
        if conn is None:
            raise _Crash
        try:
            conn.send(message)
            if not conn.poll(limit):
                raise _Timeout
            return conn.recv()
        except (OSError, EOFError):
            raise _Crash from None

    # --- processes ------------------------------------------------------------------------------

    def _spawn(self, slot: _Slot, *, wait_ready: bool = True) -> None:
        parent_sock, child_sock = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([ROOT, *filter(None, [env.get("PYTHONPATH")])])
        env.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
        process = subprocess.Popen(  # noqa: S603  (fixed interpreter and code, no shell)
            [sys.executable, "-c", "from rendering.workers import worker_entry; worker_entry()",
             str(child_sock.fileno())],
            pass_fds=[child_sock.fileno()], env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
        )
        child_sock.close()
        conn = Connection(parent_sock.detach())
        slot.process, slot.conn = process, conn
        conn.send((self.sources, self.cache_bytes))
        if wait_ready:
            self._await_ready(slot)

    def _await_ready(self, slot: _Slot) -> None:
        conn = slot.conn
        if conn is None or not conn.poll(self.start_timeout_s):
            self._stop_process(slot)
            raise RenderError(f"render worker {slot.index} did not start")
        try:
            message = conn.recv()
        except (EOFError, OSError):
            self._stop_process(slot)
            raise RenderError(f"render worker {slot.index} exited while starting") from None
        if message[0] != "ready":
            raise RenderError(f"render worker {slot.index} sent {message[0]!r} instead of ready")

    def _replace(self, slot: _Slot) -> None:
        self._stop_process(slot)
        slot.restarts += 1
        self._spawn(slot)

    def _stop_process(self, slot: _Slot) -> None:
        process, conn = slot.process, slot.conn
        if conn is not None:
            with contextlib.suppress(OSError, ValueError):
                if process is not None and process.poll() is None:
                    conn.send(None)
            conn.close()
        if process is not None:
            try:
                process.wait(timeout=2)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        slot.process, slot.conn = None, None
