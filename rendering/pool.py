"""The render pool of this server process, chosen by ``GATEWAY_RENDER_MODE``.

``local`` (the default): worker processes started with the server on first use and
stopped at exit (:class:`~rendering.workers.RenderPool`). ``remote``: requests go over the
channel layer to ``manage.py render_worker`` processes on any host
(:class:`~rendering.remote.RemoteRenderPool`). Both answer the same awaitables,
``request(name, state, …)`` for every operation registered in :mod:`rendering.operations`
(and its shortcuts ``render``, ``probe``, ``describe``), so the viewer consumer does not know
which it has.
"""

from __future__ import annotations

import atexit
import logging
import threading

from asgiref.sync import sync_to_async
from django.conf import settings

from rendering.operations import OperationClient
from rendering.sources import clinical_spec_arguments
from rendering.workers import RenderPool, SourceSpec

logger = logging.getLogger(__name__)

CLINICAL = "clinical"
LOCAL = "local"
REMOTE = "remote"
RENDER_MODES = (LOCAL, REMOTE)
_pool: RenderPool | None = None
_remote = None
_lock = threading.Lock()


RenderBackend = OperationClient
"""What the viewer consumer needs of a pool: ``request`` (every call carries the whole view state)."""


def local_pool_build(*, size: int | None = None) -> RenderPool:
    """A (not yet started) pool of worker processes over the clinical store of these settings."""
    sources = {CLINICAL: SourceSpec("rendering.sources:ClinicalVolumes", clinical_spec_arguments())}
    return RenderPool(sources=sources, size=size or settings.RENDER_WORKERS or None,
                      cache_bytes=settings.RENDER_CACHE_MB * 1024 * 1024)


def render_pool() -> RenderPool:
    """The running local pool (blocking while it starts: call from a thread, not the event loop)."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = local_pool_build().start()
            atexit.register(_pool.close)
        return _pool


def render_pool_prestart() -> None:
    """Start the local pool in the background now (a server process that is about to need it)."""
    if settings.RENDER_MODE == LOCAL:
        threading.Thread(target=_prestart, name="render-pool-prestart", daemon=True).start()


def _prestart() -> None:
    try:
        render_pool()
    except Exception:
        logger.exception("the render workers could not be started ahead of the first viewer")


def remote_pool():
    """The remote pool of this process (no processes to start: the workers run elsewhere)."""
    global _remote
    from rendering.remote import RemoteRenderPool, render_key

    with _lock:
        if _remote is None:
            _remote = RemoteRenderPool(
                channel=settings.RENDER_CHANNEL, layer_alias=settings.RENDER_CHANNEL_LAYER,
                key=render_key(), silence_s=settings.RENDER_REMOTE_SILENCE_MS / 1000,
                queue_s=settings.RENDER_REMOTE_QUEUE_MS / 1000)
        return _remote


async def render_pool_async() -> RenderBackend:
    if settings.RENDER_MODE == REMOTE:
        return _remote if _remote is not None else remote_pool()
    if _pool is not None:
        return _pool
    return await sync_to_async(render_pool, thread_sensitive=False)()


def render_pool_stop() -> None:
    """Stop the pool (tests, and a server reloading its settings)."""
    global _pool, _remote
    with _lock:
        if _pool is not None:
            _pool.close()
            _pool = None
        if _remote is not None:
            _remote.close()
            _remote = None
