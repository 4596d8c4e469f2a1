"""The imaging app's settings, with their defaults (see README's configuration table)."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings


def storage_dir() -> Path:
    """``GATEWAY_STORAGE_DIR``: where encrypted objects and volumes live (default ``var/objects``)."""
    return Path(getattr(settings, "IMAGING_STORAGE_DIR", Path(settings.VAR_DIR) / "objects"))


def max_object_bytes() -> int:
    """``GATEWAY_MAX_OBJECT_BYTES``: larger instances are rejected (default 1 GiB)."""
    return int(getattr(settings, "IMAGING_MAX_OBJECT_BYTES", 1 << 30))


def scp_ae_title() -> str:
    return str(getattr(settings, "IMAGING_SCP_AE_TITLE", "FUSIONGW"))


def scp_port() -> int:
    return int(getattr(settings, "IMAGING_SCP_PORT", 11112))


def stow_max_bytes() -> int:
    """``GATEWAY_STOW_MAX_BYTES``: the largest STOW-RS request body, declared or streamed (default 1 GiB)."""
    return int(getattr(settings, "IMAGING_STOW_MAX_BYTES", 1 << 30))


def stow_max_parts() -> int:
    """``GATEWAY_STOW_MAX_PARTS``: the most parts (instances) in one STOW-RS request (default 10000)."""
    return int(getattr(settings, "IMAGING_STOW_MAX_PARTS", 10_000))


def stow_concurrent_per_device() -> int:
    """``GATEWAY_STOW_CONCURRENT_PER_DEVICE``: STOW-RS uploads one device may have in flight
    in one server process (default 2)."""
    return int(getattr(settings, "IMAGING_STOW_CONCURRENT_PER_DEVICE", 2))


def stow_spool_dir() -> Path:
    """Where a STOW-RS body is spooled while it arrives (``var/stow``; the files are unlinked)."""
    return Path(getattr(settings, "IMAGING_STOW_SPOOL_DIR", Path(settings.VAR_DIR) / "stow"))


def store_budget_bytes() -> int:
    """``GATEWAY_STORE_BUDGET_BYTES``: the size the store of studies retrieved from the PACS is kept under
    by ``manage.py store evict`` (default 0: unbounded, nothing is ever evicted)."""
    return int(getattr(settings, "IMAGING_STORE_BUDGET_BYTES", 0))


def store_keep_opened_s() -> int:
    """``GATEWAY_STORE_KEEP_OPENED_S``: a study opened in the viewer this recently is never evicted
    (default 12 h, the longest a session lives)."""
    return int(getattr(settings, "IMAGING_STORE_KEEP_OPENED_S", 12 * 3600))


def pacs_prefetch_priors() -> int:
    """``GATEWAY_PACS_PREFETCH_PRIORS``: when a study arrives, retrieve this many of the patient's
    newest earlier studies from the PACS (default 0: none)."""
    return int(getattr(settings, "IMAGING_PACS_PREFETCH_PRIORS", 0))


def pacs_prefetch_any_modality() -> bool:
    """``GATEWAY_PACS_PREFETCH_ANY_MODALITY``: priors of any modality, not only the arrived study's."""
    return bool(getattr(settings, "IMAGING_PACS_PREFETCH_ANY_MODALITY", False))


def raw_import_spool_dir() -> Path:
    """Where an uploaded raw volume (NIfTI, NRRD, MetaImage) is written while it is imported
    (``var/raw-import``; each upload in a private directory removed afterwards)."""
    return Path(getattr(settings, "IMAGING_RAW_IMPORT_SPOOL_DIR", Path(settings.VAR_DIR) / "raw-import"))
