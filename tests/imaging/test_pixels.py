"""Pixel checks at ingest: the JPEG scan-header repair and the scoped decoder log."""

from __future__ import annotations

import logging
import threading

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1

from imaging.pixels import (
    DECODER_LOGGER,
    decode_failure_describe,
    decoder_attempts_demoted,
    jpeg_scan_headers_repair,
    pixels_decode,
)


def test_the_repair_gives_the_corrected_copy_that_pydicom_ships():
    """pydicom's corpus holds JPEG-lossy.dcm and JPGExtended.dcm, the same stream with Se=63."""
    broken = pydicom.dcmread(get_testdata_file("JPEG-lossy.dcm"))
    corrected = pydicom.dcmread(get_testdata_file("JPGExtended.dcm"))
    original = broken.PixelData
    assert jpeg_scan_headers_repair(ds=broken, syntax=JPEGExtended12Bit) == 1
    assert sum(a != b for a, b in zip(original, broken.PixelData, strict=True)) == 1
    assert broken.PixelData == corrected.PixelData
    assert jpeg_scan_headers_repair(ds=corrected, syntax=JPEGExtended12Bit) == 0


def _codestream(frame_marker: int) -> bytes:
    frame = bytes([0xFF, frame_marker, 0x00, 0x0B, 8, 0, 1, 0, 1, 1, 1, 0x11, 0])
    scan = bytes([0xFF, 0xDA, 0x00, 0x08, 1, 1, 0x00, 0, 0, 0])
    return b"\xff\xd8" + frame + scan + b"\x12\xff\x00\x34" + b"\xff\xd9"


@pytest.mark.parametrize(("frame_marker", "syntax", "repaired"), [
    (0xC0, JPEGBaseline8Bit, 1),    # baseline: Se must be 63
    (0xC2, JPEGBaseline8Bit, 0),    # progressive: Ss=Se=0 is a DC scan
    (0xC3, JPEGLosslessSV1, 0),     # lossless: Ss is the predictor, Se is 0
])
def test_only_sequential_dct_scan_headers_are_repaired(frame_marker, syntax, repaired):
    ds = Dataset()
    ds.PixelData = encapsulate([_codestream(frame_marker)] * 2)
    before = ds.PixelData
    assert jpeg_scan_headers_repair(ds=ds, syntax=syntax) == 2 * repaired
    assert (ds.PixelData != before) is bool(repaired)


def test_failed_decoder_attempts_go_to_debug_with_their_traceback(caplog):
    ds = pydicom.dcmread(get_testdata_file("JPEG2000-embedded-sequence-delimiter.dcm"))
    decoder_log = logging.getLogger(DECODER_LOGGER)
    filters = list(decoder_log.filters)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(RuntimeError) as raised:
        pixels_decode(ds=ds)
    assert decoder_log.filters == filters
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    demoted = [r for r in caplog.records if r.name == "imaging.pixels" and r.exc_info]
    assert len(demoted) == 2 and {r.levelno for r in demoted} == {logging.DEBUG}
    described = decode_failure_describe(error=raised.value)
    assert described.startswith("pylibjpeg: Error decoding the J2K data") and "; pillow: " in described
    assert "\n" not in described


def test_other_threads_decoder_errors_are_left_alone(caplog):
    def fail_elsewhere() -> None:
        try:
            raise ValueError("another thread's decode")
        except ValueError as exc:
            logging.getLogger(DECODER_LOGGER).exception(exc)

    with decoder_attempts_demoted():
        elsewhere = threading.Thread(target=fail_elsewhere)
        elsewhere.start()
        elsewhere.join()
    assert [r.levelno for r in caplog.records if r.name == DECODER_LOGGER] == [logging.ERROR]
