"""Where render workers get their volumes: the gateway's encrypted clinical store.

Runs inside a render worker process. The worker is a fresh interpreter, so
the source sets Django up itself, with the parent's settings module and the
few settings that must match the parent exactly (database files, keys,
object store) passed in explicitly.
"""

from __future__ import annotations

import os
from typing import Any

from rendering.hostvolumes import HostVolumes
from rendering.volume import Volume


def clinical_spec_arguments() -> dict[str, Any]:
    """What a worker needs to open the same clinical store as this process (picklable)."""
    from django.conf import settings

    return {
        "settings_module": os.environ.get("DJANGO_SETTINGS_MODULE", "gateway.settings.local"),
        "database": {key: (str(value) if key == "NAME" else value)
                     for key, value in settings.DATABASES["default"].items()
                     if key in {"ENGINE", "NAME", "USER", "PASSWORD", "HOST", "PORT", "OPTIONS"}},
        "keys_dir": str(settings.KEYS_DIR),
        "storage_dir": str(settings.IMAGING_STORAGE_DIR),
        "shared_dir": settings.RENDER_SHARED_DIR,
        "shared_bytes": settings.RENDER_SHARED_MB * 1024 * 1024,
    }


class ClinicalVolumes:
    """``VolumeSource`` over imaging's ready-built volumes, keyed by series UID."""

    def __init__(self, *, settings_module: str, database: dict[str, Any], keys_dir: str,
                 storage_dir: str, shared_dir: str = "", shared_bytes: int = 0) -> None:
        os.environ["DJANGO_SETTINGS_MODULE"] = settings_module
        import django
        from django.conf import settings

        settings.DATABASES["default"].update(database)
        settings.KEYS_DIR = keys_dir
        settings.IMAGING_STORAGE_DIR = storage_dir
        django.setup()
        from rendering.derived_volumes import DerivedVolumes
        from rendering.segmentation_volumes import SegmentationMaps

        self._host = HostVolumes(shared_dir, shared_bytes) if shared_dir and shared_bytes else None
        self._segmentations = SegmentationMaps(self.load)
        self._derived = DerivedVolumes(self.load)

    def load(self, series_id: str) -> Volume:
        from django.db import close_old_connections

        from imaging.derived import LAYER_PREFIX as DERIVED_PREFIX
        from imaging.models import Series
        from imaging.segmentations import LAYER_PREFIX
        from imaging.volumes import load_volume

        close_old_connections()
        if series_id.startswith(LAYER_PREFIX):
            return self._segmentations.build(series_id)
        if series_id.startswith(DERIVED_PREFIX):
            return self._derived.build(series_id)
        series = Series.objects.filter(series_instance_uid=series_id).first()
        if series is None:
            raise KeyError(series_id)
        if self._host is None:
            return load_volume(series)
        key = _version_key(series)
        shared = self._host.get(key, series_id) if key is not None else None
        if shared is not None:
            return shared
        volume = load_volume(series)
        if key is None:  # built (or waited for) just now: share what was recorded
            series.refresh_from_db()
            key = _version_key(series)
        return self._host.put(key, volume) if key is not None else volume


def _version_key(series: Any) -> str | None:
    """Names this build of the series' volume: the encrypted object is rewritten (new inode) on rebuild."""
    from imaging import storage
    from imaging.models import VolumeState

    if series.volume_state != VolumeState.READY or not series.volume_object:
        return None
    try:
        stat = os.stat(storage.object_path(series.volume_object))
    except OSError:
        return None
    return f"{series.series_instance_uid}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}"
