"""A phantom study ingested into a fresh object store, with the render pool around it stopped."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def phantom_study(out: Path, truth: dict, settings: Any, objects: Path) -> Iterator[tuple[Any, dict]]:
    """(the Study, truth of its patient) of the phantom files under ``out``, ingested through the
    import door into ``objects``; render workers started for it are stopped afterwards."""
    from imaging.models import Study
    from imaging.services import IngestBatch, ingest_caches_clear
    from rendering import pool as pool_module

    settings.IMAGING_STORAGE_DIR = objects
    ingest_caches_clear()
    pool_module.render_pool_stop()
    batch = IngestBatch(actor="cli:test", door="import")
    for path in sorted(out.rglob("*.dcm")):
        batch.ingest(path.read_bytes())
    batch.close()
    try:
        yield Study.objects.get(), truth["patients"][0]
    finally:
        pool_module.render_pool_stop()
        ingest_caches_clear()
