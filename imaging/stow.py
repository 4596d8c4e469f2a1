"""STOW-RS intake: refuse before the body, stream the multipart to disk, store only a whole request.

A STOW-RS request (``POST /dicomweb/studies``, PS3.18 10.5) is received in
three stages, each of which may refuse it:

1. **Admission**, on the headers alone, before a byte of the body is read
   (:func:`stow_admit`): the bearer token names an active device account
   (401) and the policy grants it ``study.ingest`` (403); the body is
   ``multipart/related`` with a boundary (415); its length is declared,
   by ``Content-Length`` or the chunked transfer coding (411), and a declared
   length is not over ``GATEWAY_STOW_MAX_BYTES`` (413); the device has fewer
   than ``GATEWAY_STOW_CONCURRENT_PER_DEVICE`` uploads in flight on this
   host, whichever server process holds them (429, ``Retry-After``).
2. **Reception** (:class:`StowUpload`): the body is parsed as it arrives
   (python-multipart's callback parser) and the parts' bytes written to one
   temporary file under the var dir, unlinked from the start, so memory stays
   flat whatever the size. A body that grows past ``GATEWAY_STOW_MAX_BYTES``
   (chunked uploads have no declared length) or holds more than
   ``GATEWAY_STOW_MAX_PARTS`` parts is refused with 413, a malformed one,
   or one that ends without its closing delimiter, with 400.
3. **Storage** (:func:`stow_store`), only once the whole multipart has
   parsed, closing delimiter included: a request refused or cut off at any
   point stores nothing. Each part then goes through the same
   ``IngestBatch``/``instance_ingest`` as every other door; a part larger than
   ``GATEWAY_MAX_OBJECT_BYTES`` is refused as ``oversize`` without being read.

Under ASGI, :class:`imaging.stow_asgi.StowGate` runs stages 1 and 2 in front of
Django and hands the view a :class:`StowReceipt`; without it (WSGI, Django's
test client) the view runs them itself on the request stream. Either way the
view audits refusals and answers.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser

from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from gateway.config import private_directory_make
from gateway.policy import Permission, may
from imaging import conf
from imaging.devices import device_by_token
from imaging.scp import STATUS_FOR_REASON
from imaging.services import IngestBatch, IngestOutcome, Reason, Status

SCOPE_KEY = "fusion_gateway.stow"  # the ASGI scope entry StowGate hands Django
RETRY_AFTER_SECONDS = 5
MAX_PART_HEADERS = 16


@dataclass(frozen=True)
class Refusal:
    """An HTTP refusal: status, message for the client, reason for the audit trail."""

    status: int
    message: str
    reason: str
    headers: tuple[tuple[str, str], ...] = ()


class StowRefused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def _too_large(limit: int) -> Refusal:
    return Refusal(413, f"the request exceeds {limit} bytes", "request over GATEWAY_STOW_MAX_BYTES")


class _InFlight:
    """Uploads in flight per device on this host, across every server process.

    One lock file per (device, slot) under ``var/run/stow-slots``; an upload
    holds an exclusive ``flock`` on one slot. The kernel drops the lock when
    the holder closes it or dies, so a crashed process never leaks a slot.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[Any, list[int]] = {}

    @staticmethod
    def _directory() -> Path:
        from django.conf import settings

        directory = Path(settings.VAR_DIR) / "run" / "stow-slots"
        private_directory_make(directory)
        return directory

    def _slot_files(self, key: Any, limit: int) -> list[Path]:
        return [self._directory() / f"{key}.{slot}" for slot in range(limit)]

    def acquire(self, key: Any, limit: int) -> bool:
        for path in self._slot_files(key, limit):
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            with self._lock:
                self._held.setdefault(key, []).append(fd)
            return True
        return False

    def release(self, key: Any) -> None:
        with self._lock:
            held = self._held.get(key, [])
            fd = held.pop() if held else None
            if not held:
                self._held.pop(key, None)
        if fd is not None:
            os.close(fd)  # closing the last descriptor releases the flock

    def count(self, key: Any) -> int:
        """Slots of ``key`` held by any process on this host now."""
        busy = 0
        for path in self._directory().glob(f"{key}.*"):
            fd = os.open(path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                busy += 1
            finally:
                os.close(fd)
        return busy


in_flight = _InFlight()


@dataclass(frozen=True)
class StowPart:
    content_type: str
    offset: int
    length: int


class StowUpload:
    """One request body, parsed as it arrives; the parts' bytes spooled to one unlinked file.

    Parameters
    ----------
    boundary : bytes
        The multipart boundary from the request's Content-Type.
    max_bytes : int
        The body may not grow past this many bytes (413).
    max_parts : int
        The body may not hold more parts than this (413).
    """

    def __init__(self, *, boundary: bytes, max_bytes: int, max_parts: int) -> None:
        self.max_bytes = max_bytes
        self.max_parts = max_parts
        self.received = 0
        self.complete = False
        self.parts: list[StowPart] = []
        spool_dir = conf.stow_spool_dir()
        spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._spool: IO[bytes] = tempfile.TemporaryFile(dir=spool_dir)  # noqa: SIM115 - closed by close()
        self._headers: dict[str, str] = {}
        self._field = bytearray()
        self._value = bytearray()
        self._offset = 0
        self._parser = MultipartParser(boundary, {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }, max_header_count=MAX_PART_HEADERS)

    # parser callbacks
    def _part_begin(self) -> None:
        if len(self.parts) >= self.max_parts:
            raise StowRefused(Refusal(413, f"the request holds more than {self.max_parts} parts",
                                      "request over GATEWAY_STOW_MAX_PARTS"))
        self._headers = {}

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def _header_end(self) -> None:
        name = self._field.decode("latin-1").strip().lower()
        self._headers[name] = self._value.decode("latin-1").strip()
        self._field.clear()
        self._value.clear()

    def _headers_finished(self) -> None:
        self._offset = self._spool.tell()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._spool.write(memoryview(data)[start:end])

    def _part_end(self) -> None:
        content_type = self._headers.get("content-type", "application/dicom")
        self.parts.append(StowPart(content_type.split(";")[0].strip().lower(), self._offset,
                                   self._spool.tell() - self._offset))

    def _end(self) -> None:
        self.complete = True

    # the caller's side
    def feed(self, data: bytes) -> None:
        """Parse the next piece of the body; raises :class:`StowRefused` (413, 400)."""
        self.received += len(data)
        if self.received > self.max_bytes:
            raise StowRefused(_too_large(self.max_bytes))
        if self.complete or not data:
            return  # an epilogue after the closing delimiter is ignored (RFC 2046)
        try:
            self._parser.write(data)
        except MultipartParseError as error:
            raise StowRefused(Refusal(400, f"malformed multipart body ({error})",
                                      "malformed multipart")) from error

    def finish(self) -> None:
        """The body ended; raises :class:`StowRefused` (400) unless the multipart was complete."""
        if not self.complete:
            raise StowRefused(Refusal(400, "the multipart body ends without its closing delimiter",
                                      "multipart without closing delimiter"))

    def read(self, part: StowPart) -> bytes:
        """A complete part's bytes; safe while the body is still arriving (the write position is kept)."""
        end = self._spool.tell()
        self._spool.seek(part.offset)
        try:
            return self._spool.read(part.length)
        finally:
            self._spool.seek(end)

    def close(self) -> None:
        self._spool.close()


@dataclass
class StowReceipt:
    """What the view is handed: who sent the request, and a refusal or a complete upload.

    The receipt holds the device's in-flight slot and the spool file until
    :meth:`close`; whoever stores the upload :meth:`claim` s it first, so the
    door in front does not close it under a store still running.
    """

    source_ip: str
    device: Any = None
    refusal: Refusal | None = None
    upload: StowUpload | None = None
    _slot: Any = None
    _claimed: bool = False
    _closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def refuse(self, refusal: Refusal) -> None:
        self.refusal = refusal
        if self.upload is not None:
            self.upload.close()
            self.upload = None

    def feed(self, data: bytes) -> bool:
        """Pass on a piece of the body; False once the request is refused."""
        if self.refusal is not None or self.upload is None:
            return False
        try:
            self.upload.feed(data)
        except StowRefused as refused:
            self.refuse(refused.refusal)
            return False
        return True

    def finish(self) -> bool:
        if self.refusal is not None or self.upload is None:
            return False
        try:
            self.upload.finish()
        except StowRefused as refused:
            self.refuse(refused.refusal)
            return False
        return True

    def claim(self) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._claimed = True
            return True

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self.upload is not None:
            self.upload.close()
        if self._slot is not None:
            in_flight.release(self._slot)

    def close_unclaimed(self) -> None:
        with self._lock:
            if self._claimed:
                return
        self.close()


def _boundary(content_type: str) -> bytes | None:
    kind, _, parameters = content_type.partition(";")
    if kind.strip().lower() != "multipart/related":
        return None
    for parameter in parameters.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "boundary":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            if 1 <= len(value) <= 70:  # RFC 2046 5.1.1
                return value.encode("latin-1")
    return None


def stow_admit(*, headers: Mapping[str, str], source_ip: str) -> StowReceipt:
    """Decide on a STOW-RS request from its headers alone (stage 1 of the module docstring).

    Parameters
    ----------
    headers : mapping
        The request headers (any case).
    source_ip : str
        The client's address, for the audit trail.

    Returns
    -------
    StowReceipt
        With a :class:`Refusal`, or with an open :class:`StowUpload` and the
        device's in-flight slot taken (release both with ``close``).
    """
    headers = {name.lower(): value for name, value in headers.items()}
    receipt = StowReceipt(source_ip=source_ip)
    scheme, _, token = headers.get("authorization", "").partition(" ")
    device = device_by_token(token.strip()) if scheme.lower() == "bearer" else None
    if device is None:
        receipt.refusal = Refusal(401, "a device bearer token is required", "no valid device token",
                                  (("WWW-Authenticate", 'Bearer realm="dicomweb"'),))
        return receipt
    receipt.device = device
    if not may(device, Permission.STUDY_INGEST):
        receipt.refusal = Refusal(403, "this account may not store instances", "not permitted")
        return receipt
    boundary = _boundary(headers.get("content-type", ""))
    if boundary is None:
        receipt.refusal = Refusal(415, 'expected multipart/related; type="application/dicom" '
                                       "with a boundary", "not multipart/related")
        return receipt
    limit = conf.stow_max_bytes()
    declared = headers.get("content-length", "").strip()
    chunked = "chunked" in headers.get("transfer-encoding", "").lower()
    if not declared and not chunked:
        receipt.refusal = Refusal(411, "a Content-Length or chunked transfer coding is required",
                                  "no declared length")
        return receipt
    if declared and (not declared.isdigit() or int(declared) > limit):
        receipt.refusal = _too_large(limit) if declared.isdigit() else Refusal(
            400, "Content-Length is not a number", "malformed Content-Length")
        return receipt
    if not in_flight.acquire(device.pk, conf.stow_concurrent_per_device()):
        receipt.refusal = Refusal(
            429, f"at most {conf.stow_concurrent_per_device()} uploads at once per device",
            "too many concurrent uploads", (("Retry-After", str(RETRY_AFTER_SECONDS)),))
        return receipt
    receipt._slot = device.pk
    try:
        receipt.upload = StowUpload(boundary=boundary, max_bytes=limit, max_parts=conf.stow_max_parts())
    except BaseException:
        receipt.close()
        raise
    return receipt


def stow_refusal_record(receipt: StowReceipt, refusal: Refusal) -> None:
    """Audit a refused request: ``ingest`` denied, with the reason."""
    details: dict[str, Any] = {"door": "stow-rs", "reason": refusal.reason}
    if receipt.device is not None:
        details["status"] = refusal.status
    audit_record(actor=receipt.device or "stow:unknown", action=Action.INGEST,
                 outcome=Outcome.DENIED, source_ip=receipt.source_ip, details=details)


def _item(outcome: IngestOutcome) -> dict[str, Any]:
    item: dict[str, Any] = {}
    if outcome.sop_class_uid:
        item["00081150"] = {"vr": "UI", "Value": [outcome.sop_class_uid]}
    if outcome.sop_instance_uid:
        item["00081155"] = {"vr": "UI", "Value": [outcome.sop_instance_uid]}
    if outcome.status is Status.REJECTED:
        code = STATUS_FOR_REASON.get(outcome.reason, 0xC000)  # type: ignore[arg-type]
        item["00081197"] = {"vr": "US", "Value": [code]}
        item["00000902"] = {"vr": "LO", "Value": [f"{outcome.reason}: {outcome.detail}"[:64]]}
    return item


def stow_store(*, device: Any, upload: StowUpload, source_ip: str) -> tuple[int, dict[str, Any]]:
    """Ingest every part of a complete upload; returns (HTTP status, Store Instances Response).

    200 when all were stored (or already stored), 202 when some failed, 409
    when none was stored. The response lists ReferencedSOPSequence
    (00081199) and FailedSOPSequence (00081198) items with FailureReason and
    ErrorComment.
    """
    batch = IngestBatch(actor=device, door="stow-rs", source_ip=source_ip, build_volumes=False)
    limit = conf.max_object_bytes()
    for part in upload.parts:
        if part.content_type != "application/dicom":
            batch.reject(IngestOutcome(Status.REJECTED, Reason.NOT_DICOM,
                                       f"part of type {part.content_type} is not application/dicom"))
        elif part.length > limit:
            batch.reject(IngestOutcome(Status.REJECTED, Reason.OVERSIZE,
                                       f"{part.length} bytes exceeds the limit of {limit} bytes"))
        else:
            batch.ingest(upload.read(part))
    batch.close()
    stored = [o for o in batch.outcomes if o.status is not Status.REJECTED]
    failed = [o for o in batch.outcomes if o.status is Status.REJECTED]
    document: dict[str, Any] = {}
    if stored:
        document["00081199"] = {"vr": "SQ", "Value": [_item(o) for o in stored]}
    if failed:
        document["00081198"] = {"vr": "SQ", "Value": [_item(o) for o in failed]}
    return (200 if stored and not failed else 202 if stored else 409), document
