"""Fixtures for imaging tests: a private key directory, an empty object store, a phantom."""

from __future__ import annotations

from pathlib import Path

import pytest

from imaging.phantom import phantom_write
from imaging.services import ingest_caches_clear

PHANTOM_SLICES = 40


@pytest.fixture
def store(keys_dir, tmp_path: Path, settings) -> Path:
    """An empty object store and fresh keys; identity caches forgotten around the test."""
    directory = tmp_path / "objects"
    settings.IMAGING_STORAGE_DIR = directory
    ingest_caches_clear()
    yield directory
    ingest_caches_clear()


@pytest.fixture(scope="session")
def phantom(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("imaging-phantom")
    return out, phantom_write(out_dir=out, slices=PHANTOM_SLICES, patients=2, seed=7)


def phantom_files(out: Path) -> list[Path]:
    return sorted(out.rglob("*.dcm"))
