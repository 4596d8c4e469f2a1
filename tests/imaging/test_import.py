"""``import_dicom`` on awkward files: one line per refusal, no traceback, each pydicom warning once."""

from __future__ import annotations

import io
import logging
import shutil
import sqlite3
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from django.core.management import call_command
from pydicom.data import get_testdata_file
from pydicom.uid import JPEGExtended12Bit

from gateway import keys
from imaging import storage
from imaging.management.commands.import_dicom import notices_collected
from imaging.models import Instance
from tests.conftest import ZONES, manage
from tests.imaging.conftest import phantom_files

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



TOO_LONG_LO = "Fusion Gateway test scanner " * 3  # 84 characters: LO allows 64


@pytest.fixture
def defective_copies(phantom, tmp_path) -> list[Path]:
    """Nine phantom PET slices whose Manufacturer is too long for its VR: pydicom warns when it reads one."""
    out, _ = phantom
    folder = tmp_path / "defective"
    folder.mkdir()
    copies = []
    for index, path in enumerate(phantom_files(out / "patient_01" / "PT")[:9]):
        ds = pydicom.dcmread(path)
        with pydicom.config.disable_value_validation():
            ds.Manufacturer = TOO_LONG_LO
        copies.append(folder / f"{index:03d}.dcm")
        ds.save_as(copies[-1])
    return copies


@pytest.mark.django_db(databases=ZONES, transaction=True)
@pytest.mark.parametrize(("files", "jobs"), [(3, 1), (9, 2)], ids=["in-process", "worker-processes"])
def test_a_repeated_pydicom_warning_is_printed_once_with_its_count(store, defective_copies, files, jobs,
                                                                   caplog):
    err, out = io.StringIO(), io.StringIO()
    logger = logging.getLogger("pydicom")
    handlers, propagate = list(logger.handlers), logger.propagate

    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        call_command("import_dicom", *map(str, defective_copies[:files]), jobs=jobs, stdout=out, stderr=err)

    message = "The value length (84) exceeds the maximum length of 64 allowed for VR LO."
    once = f"warning (\N{MULTIPLICATION SIGN}{files}): UserWarning: {message}"
    bar, summary = err.getvalue().split(once)
    assert f"{files}/{files}" in bar and message not in bar  # the progress bar is kept, then the summary
    assert summary == "\n"
    assert f"stored {files}, duplicates 0, rejected 0" in out.getvalue()
    assert Instance.objects.count() == files
    assert escaped == [] and not [r for r in caplog.records if r.name.startswith("pydicom")]
    assert (logger.handlers, logger.propagate) == (handlers, propagate)


def test_notices_count_pydicom_log_records_and_warnings_once_each_and_nest():
    pydicom_logger = logging.getLogger("pydicom.pixels.decoders.base")
    with notices_collected() as outer:
        with notices_collected() as inner:
            pydicom.misc.warn_and_log("twin")  # logged at WARNING and warned: one notice
            pydicom_logger.error("no decoder")
            pydicom_logger.error("no decoder")
        warnings.warn("after the file", DeprecationWarning, stacklevel=1)
    assert inner == {("UserWarning", "twin"): 1, ("pydicom error", "no decoder"): 2}
    assert outer == {("DeprecationWarning", "after the file"): 1}
