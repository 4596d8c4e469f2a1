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
    return int(getattr(settings, "IMAGING_STOW_MAX_BYTES", 1 << 30))
