"""A process killed in the middle of an import leaves nothing that breaks anything."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from gateway import keys
from imaging import storage
from tests.conftest import REPO, ZONES, child_environment, manage
from tests.imaging.conftest import phantom_files


def _child_env(var: Path) -> dict[str, str]:
    return {"GATEWAY_VAR_DIR": str(var), "DJANGO_SETTINGS_MODULE": "gateway.settings.local"}


def _rows(var: Path, table: str, database: str = "clinical") -> int:
    with sqlite3.connect(var / "db" / f"{database}.sqlite3") as db:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]  # noqa: S608


def test_killed_import_then_retry_stores_everything_once(phantom, tmp_path, settings):
    out, _ = phantom
    var = tmp_path / "var"
    env = _child_env(var)
    for zone in ZONES:
        assert manage("migrate", "--database", zone, "--noinput", env=env).returncode == 0
    total = len(phantom_files(out))
    child_env = child_environment()
    child = subprocess.Popen(
        [sys.executable, str(REPO / "manage.py"), "import_dicom", "--no-progress", str(out)],
        cwd=REPO, env={**child_env, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    objects = var / "objects"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if len(list(objects.glob("??/??/dcm-*"))) >= 10:
            break
        time.sleep(0.01)
    os.killpg(child.pid, signal.SIGKILL)  # the command and its worker processes, mid-write
    child.wait()
    time.sleep(0.5)
    stored_before = _rows(var, "imaging_instance")
    assert 0 < stored_before < total, "the import was not killed mid-way"

    again = manage("import_dicom", "--no-progress", str(out), env=env)
    assert again.returncode == 0, again.stderr
    assert f"stored {total - stored_before}, duplicates {stored_before}" in again.stdout
    assert _rows(var, "imaging_instance") == total
    assert _rows(var, "imaging_series") == 4

    settings.KEYS_DIR = var / "keys"
    settings.IMAGING_STORAGE_DIR = objects
    keys.keyrings_forget()
    try:
        with sqlite3.connect(var / "db" / "clinical.sqlite3") as db:
            ids = [row[0] for row in db.execute("SELECT object_id FROM imaging_instance")]
            volumes = [row[0] for row in db.execute("SELECT volume_object FROM imaging_series")]
        for object_id in [*ids, *volumes]:
            assert storage.object_get(object_id)[:0] == b""
        assert set(storage.storage_objects()) == set(ids) | set(volumes)
    finally:
        keys.keyrings_forget()
