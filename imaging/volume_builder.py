"""The volume builder: builds pending series one at a time, off every ingest door's path.

Ingest (C-STORE, STOW-RS) only marks the series it touched ``pending``. A
builder process (``manage.py build_volumes --watch``, which ``run_scp``
also starts beside its listeners) claims them one at a time with
:func:`imaging.volumes.volume_claim` and builds each; several builders, on one
host or several sharing a PostgreSQL database, never build one series at
once, and a claim left by a builder that died lapses after its lease.

Memory is bounded by one series: the instances are read one at a time and
only their rescaled slices kept, the stored form costs one copy of the voxels,
and glibc is told to return large buffers to the system once freed (its
default keeps the peak of the largest build mapped for the life of the
process).
"""

from __future__ import annotations

import ctypes
import logging
import signal
import sys
import threading
import time
from types import FrameType

from django.db import close_old_connections, connections

from imaging.volumes import CLAIM_LEASE_S, volumes_build_pending

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD = -3  # glibc mallopt(3)
MMAP_THRESHOLD_BYTES = 1 << 20


def _large_buffers_returned() -> None:
    if sys.platform != "linux":
        return
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):  # not glibc
        log.debug("mallopt is not available; freed volumes may stay mapped")


def volume_builder_run(*, watch: bool, interval_s: float = 1.0, lease_s: float = CLAIM_LEASE_S,
                       stop: threading.Event | None = None) -> int:
    """Build every pending series; with ``watch``, keep doing so until ``stop`` (or SIGTERM).

    Parameters
    ----------
    watch : bool
        Poll for pending series every ``interval_s`` seconds instead of returning
        once none is left.
    interval_s : float
        How long an idle watcher sleeps between looks.
    lease_s : float
        The lease of each claim (renewed while a build runs).
    stop : threading.Event, optional
        Set to end a watch; SIGTERM ends it too when this runs in the main thread.

    Returns
    -------
    int
        How many series were built.
    """
    _large_buffers_returned()
    stop = stop or threading.Event()
    if watch and threading.current_thread() is threading.main_thread():
        def _terminate(signum: int, frame: FrameType | None) -> None:
            stop.set()
            raise SystemExit(0)  # a build under way releases its claim on the way out

        signal.signal(signal.SIGTERM, _terminate)
    built = 0
    try:
        while not stop.is_set():
            close_old_connections()
            try:
                done = volumes_build_pending(limit=20, lease_s=lease_s)
            except Exception:
                if not watch:
                    raise
                log.exception("volume build round failed; retrying")
                connections.close_all()
                done = 0
            built += done
            if done:
                continue
            if not watch:
                break
            stop.wait(interval_s)
    finally:
        connections.close_all()
    return built


def volume_builder_forever() -> None:
    """Entry point of a builder child process (``run_scp``): watch until terminated."""
    started = time.monotonic()
    built = volume_builder_run(watch=True)
    log.info("volume builder stopped after %.0f s, %d series built", time.monotonic() - started, built)
