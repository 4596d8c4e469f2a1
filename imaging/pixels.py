"""Pixel data at ingest: repair one known encoder defect, then prove a decoder reads it.

pydicom tries each installed decoding plugin in turn and logs every failed
attempt at ERROR, traceback included, on ``pydicom.pixels.decoders.base``,
even when a later plugin succeeds or the caller handles the final
``RuntimeError`` (which names each plugin's reason). An import reports a
refused file in one line; :func:`pixels_decode` therefore turns those
records into DEBUG records on this module's logger for the duration of its
own decode, in its own thread, and leaves every other record alone.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

from pydicom.dataset import Dataset
from pydicom.uid import UID, JPEGBaseline8Bit, JPEGExtended12Bit

log = logging.getLogger(__name__)

DECODER_LOGGER = "pydicom.pixels.decoders.base"
SEQUENTIAL_JPEG_SYNTAXES = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit})

_ITEM = b"\xfe\xff\x00\xe0"
_SOI, _EOI, _SOS = 0xD8, 0xD9, 0xDA
_SEQUENTIAL_DCT = frozenset({0xC0, 0xC1})  # SOF0 baseline, SOF1 extended sequential (Huffman)
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7
_NOT_A_MARKER = frozenset({0x00, 0xFF, *range(0xD0, 0xD8)})  # stuffing, fill, restarts
_ALL_PLUGINS_FAILED = "Unable to decode as exceptions were raised by all available plugins:"


class _DecoderAttemptsDemoted(logging.Filter):
    """Drop failed-attempt records (ERROR with a traceback) of one thread; log them at DEBUG here."""

    def __init__(self, thread: int) -> None:
        super().__init__()
        self.thread = thread

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is None or threading.get_ident() != self.thread:
            return True
        log.debug("decoding plugin attempt failed: %s", record.getMessage(), exc_info=record.exc_info)
        return False


@contextlib.contextmanager
def decoder_attempts_demoted() -> Iterator[None]:
    """Within the block, this thread's failed decoder attempts go to DEBUG, not to the console.

    The filter is added to pydicom's decoder logger on entry and removed on
    exit, whatever happens inside; other threads' records pass unchanged.
    """
    logger = logging.getLogger(DECODER_LOGGER)
    demoted = _DecoderAttemptsDemoted(threading.get_ident())
    logger.addFilter(demoted)
    try:
        yield
    finally:
        logger.removeFilter(demoted)


def _fragments(buffer: bytearray) -> Iterator[tuple[int, int]]:
    """(start, end) of each fragment of encapsulated pixel data, the Basic Offset Table skipped."""
    position, first = 0, True
    while position + 8 <= len(buffer) and buffer[position:position + 4] == _ITEM:
        start = position + 8
        end = min(start + int.from_bytes(buffer[position + 4:position + 8], "little"), len(buffer))
        if not first:
            yield start, end
        first, position = False, end


def _scan_headers_repair(buffer: bytearray, start: int, end: int) -> int:
    """Repair the scan headers of the JPEG codestream at ``buffer[start:end]``; the number repaired."""
    position, frame_marker, repaired = start + 2, 0, 0
    while position + 4 <= end and buffer[position] == 0xFF:
        marker = buffer[position + 1]
        if marker == 0xFF:
            position += 1
            continue
        if marker == _EOI:
            break
        if marker in _STANDALONE:
            position += 2
            continue
        length = int.from_bytes(buffer[position + 2:position + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            frame_marker = marker
        if marker != _SOS:
            position += 2 + length
            continue
        parameters = position + 5 + 2 * buffer[position + 4]  # Ss, Se, Ah/Al after the components
        if (frame_marker in _SEQUENTIAL_DCT and parameters + 3 <= end
                and buffer[parameters:parameters + 3] == b"\0\0\0"):
            buffer[parameters + 1] = 63
            repaired += 1
        position += 2 + length
        # Skip the entropy-coded segment: up to the next byte pair that is a real marker.
        while (position := buffer.find(b"\xff", position, end)) != -1 and position + 1 < end \
                and buffer[position + 1] in _NOT_A_MARKER:
            position += 1 if buffer[position + 1] == 0xFF else 2
        if position == -1:
            break
    return repaired


def jpeg_scan_headers_repair(*, ds: Dataset, syntax: UID) -> int:
    """Repair sequential JPEG scan headers written as all zeros; return how many were repaired.

    Some encoders write Ss=0, Se=0, Ah=Al=0 in the start-of-scan header of a
    sequential DCT image, where the standard requires Se=63. The IJG library
    (dcmtk, GDCM) only warns and decodes; libjpeg, the one installed decoder of
    12-bit JPEG Extended, refuses it ("scan stop must be 63"). The repair sets
    Se to 63 in such headers and changes no other byte, so the stored object
    decodes with every conforming decoder to what IJG decodes from the original.

    Parameters
    ----------
    ds : Dataset
        The instance; its encapsulated ``PixelData`` is rewritten when a header is repaired.
    syntax : UID
        Its transfer syntax; only JPEG Baseline and JPEG Extended are looked at.

    Returns
    -------
    int
        The number of scan headers repaired (0: the pixel data is unchanged).
    """
    if syntax not in SEQUENTIAL_JPEG_SYNTAXES or "PixelData" not in ds:
        return 0
    buffer = bytearray(ds.PixelData)
    repaired = 0
    for start, end in _fragments(buffer):
        if buffer[start:start + 2] == b"\xff\xd8":
            repaired += _scan_headers_repair(buffer, start, end)
    if repaired:
        ds.PixelData = bytes(buffer)
        log.debug("repaired %d JPEG scan header(s) with Se=0 (SOPInstanceUID %s)",
                  repaired, ds.get("SOPInstanceUID", ""))
    return repaired


def decode_failure_describe(*, error: Exception) -> str:
    """One line naming why each decoding plugin refused the pixel data."""
    message = str(error)
    if message.startswith(_ALL_PLUGINS_FAILED):
        attempts = [line.strip() for line in message[len(_ALL_PLUGINS_FAILED):].splitlines()]
        return "; ".join(attempt for attempt in attempts if attempt)
    return f"{type(error).__name__}: {' '.join(message.split())}"


def pixels_decode(*, ds: Dataset) -> None:
    """Decode the pixel data once, to prove that an installed decoder reads it.

    Parameters
    ----------
    ds : Dataset
        The instance.

    Raises
    ------
    Exception
        Whatever the decoders raised; :func:`decode_failure_describe` words it.
        The failed attempts along the way are logged at DEBUG only
        (:func:`decoder_attempts_demoted`).
    """
    with decoder_attempts_demoted():
        ds.pixel_array  # noqa: B018 - the decode is the point
