"""``import_dicom`` on the awkward files of the pydicom corpus: one line per refusal, no traceback."""

from __future__ import annotations

import io
import shutil
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import JPEGExtended12Bit

from gateway import keys
from imaging import storage
from tests.conftest import ZONES, manage

TWELVE_BIT_JPEG = "JPEG-lossy.dcm"  # JPEG Extended, BitsStored 12, scan header written Se=0
# Each makes every decoding plugin fail (J2K header, then Pillow's decompression-bomb check).
UNDECODABLE = "JPEG2000-embedded-sequence-delimiter.dcm"


def _dcmdjpeg() -> str:
    path = shutil.which("dcmdjpeg")
    if path is None:
        pytest.fail("dcmdjpeg is not on PATH: apt-get install dcmtk (make test installs it)")
    return path


def _independent_decode(path: Path, tmp_path: Path) -> np.ndarray:
    """dcmtk (IJG 12-bit) decompresses to Explicit VR Little Endian; pydicom only reads raw pixels."""
    raw = tmp_path / "dcmdjpeg.dcm"
    done = subprocess.run([_dcmdjpeg(), str(path), str(raw)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    ds = pydicom.dcmread(raw)
    assert not ds.file_meta.TransferSyntaxUID.is_compressed
    return ds.pixel_array


def test_import_says_one_line_per_refused_file_and_stores_12_bit_jpeg_extended(tmp_path, settings):
    folder = tmp_path / "in"
    (folder / "media").mkdir(parents=True)
    twelve_bit = Path(get_testdata_file(TWELVE_BIT_JPEG))
    shutil.copy(twelve_bit, folder / TWELVE_BIT_JPEG)
    shutil.copy(get_testdata_file(UNDECODABLE), folder / UNDECODABLE)
    shutil.copy(get_testdata_file("dicomdirtests/DICOMDIR"), folder / "media" / "DICOMDIR")
    var = tmp_path / "var"
    env = {"GATEWAY_VAR_DIR": str(var), "DJANGO_SETTINGS_MODULE": "gateway.settings.local"}
    for zone in ZONES:
        assert manage("migrate", "--database", zone, "--noinput", env=env).returncode == 0

    done = manage("import_dicom", "--no-progress", str(folder), env=env)

    console = done.stdout + done.stderr
    assert done.returncode == 0, console
    assert "Traceback" not in console and " ERROR " not in console, console
    rejected = [line for line in console.splitlines() if line.startswith("rejected ")]
    assert len(rejected) == 2, console
    by_file = {Path(line.split(":")[0].removeprefix("rejected ")).name: line for line in rejected}
    assert by_file["DICOMDIR"].endswith(
        ": not-image: DICOMDIR (a media directory, not an instance); import the folder it indexes")
    assert ": undecodable: pixel data in transfer syntax JPEG 2000" in by_file[UNDECODABLE]
    assert "pylibjpeg: " in by_file[UNDECODABLE] and "pillow: " in by_file[UNDECODABLE]
    assert "stored 1, duplicates 0, rejected 2" in done.stdout

    with sqlite3.connect(var / "db" / "clinical.sqlite3") as db:
        rows = db.execute("SELECT object_id, transfer_syntax_uid FROM imaging_instance").fetchall()
    assert [syntax for _, syntax in rows] == [JPEGExtended12Bit]
    settings.KEYS_DIR = var / "keys"
    settings.IMAGING_STORAGE_DIR = var / "objects"
    keys.keyrings_forget()
    try:
        stored = pydicom.dcmread(io.BytesIO(storage.object_get(rows[0][0])))
    finally:
        keys.keyrings_forget()
    assert stored.BitsStored == 12 and stored.file_meta.TransferSyntaxUID == JPEGExtended12Bit
    ours = stored.pixel_array
    theirs = _independent_decode(twelve_bit, tmp_path)
    assert ours.shape == theirs.shape == (1024, 256)
    difference = np.abs(ours.astype(np.int32) - theirs.astype(np.int32))
    # Lossy JPEG decoders may differ by one in a sample (IDCT rounding, ISO/IEC 10918-2).
    assert difference.max() <= 1 and (difference > 0).mean() < 0.02, difference.max()
    assert theirs.max() - theirs.min() > 100  # an image, not a blank frame
