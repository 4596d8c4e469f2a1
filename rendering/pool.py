"""The render pool of this server process, started on first use and stopped at exit."""

from __future__ import annotations

import atexit
import threading

from asgiref.sync import sync_to_async
from django.conf import settings

from rendering.sources import clinical_spec_arguments
from rendering.workers import RenderPool, SourceSpec

CLINICAL = "clinical"
_pool: RenderPool | None = None
_lock = threading.Lock()


def render_pool() -> RenderPool:
    """The running pool (blocking while it starts: call from a thread, not the event loop)."""
    global _pool
    with _lock:
        if _pool is None:
            sources = {CLINICAL: SourceSpec("rendering.sources:ClinicalVolumes",
                                            clinical_spec_arguments())}
            _pool = RenderPool(sources=sources, size=settings.RENDER_WORKERS or None,
                               cache_bytes=settings.RENDER_CACHE_MB * 1024 * 1024).start()
            atexit.register(_pool.close)
        return _pool


async def render_pool_async() -> RenderPool:
    if _pool is not None:
        return _pool
    return await sync_to_async(render_pool, thread_sensitive=False)()


def render_pool_stop() -> None:
    """Stop the pool (tests, and a server reloading its settings)."""
    global _pool
    with _lock:
        if _pool is not None:
            _pool.close()
            _pool = None
