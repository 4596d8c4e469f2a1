"""The one ingest service behind every door (files, C-STORE, STOW-RS).

``instance_ingest`` validates one DICOM instance, splits its identity from its
content, de-identifies it, stores it encrypted and records it; it answers
with an :class:`IngestOutcome` (stored, duplicate, or rejected with a reason)
and never raises for a bad instance. ``IngestBatch`` groups the outcomes of
one import, association or STOW request: it writes the audit events (one per
study, one for the rejects) and, for the import command only, builds the
volumes of the series it touched; the SCP and STOW-RS leave them ``pending``
for the volume builder (:mod:`imaging.volumes`).

Order of writes, so that a process killed at any point leaves nothing that
breaks anything: identity rows first (idempotent, harmless alone), then the
encrypted object (atomic rename; its id derives from the replacement SOP
Instance UID, so a retry rewrites the same file), then the clinical rows in
one transaction. A killed ingest leaves at most an unreferenced object or
identity row, which the retry reuses.

Durability: an outcome ``stored`` is returned only once the object and its
directory entry are fsynced (:func:`imaging.storage.object_put`) and the rows
are committed with a synced write-ahead log (on SQLite the ingest
connections run ``synchronous=FULL``; PostgreSQL syncs each commit by
default). Every instance pays its own syncs: a C-STORE's status may only
say "success" once its data would survive a power cut, and a peer sends the
next instance of an association only after that status, so there is no
batch to share them with.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import io
import logging
import re
import secrets
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pydicom
from django.db import IntegrityError, connections, transaction
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MediaStorageDirectoryStorage,
)

from gateway import keys
from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from gateway.routers import CLINICAL, IDENTITY
from imaging import conf, storage
from imaging.deid import Deidentifier, uid_replacement
from imaging.identity.models import PatientDateShift, PatientIdentity, StudyIdentity, UIDMap
from imaging.models import Instance, Patient, Series, Study, VolumeState
from imaging.objects import object_class_name
from imaging.pixels import decode_failure_describe, jpeg_scan_headers_repair, pixels_decode

log = logging.getLogger(__name__)

DATE_SHIFT_DAYS = (-3650, -366)
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
REQUIRED_UIDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")


class Status(StrEnum):
    STORED = "stored"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


class Reason(StrEnum):
    """Why an instance was refused; the value is the machine-readable code."""

    OVERSIZE = "oversize"
    NOT_DICOM = "not-dicom"
    TRUNCATED = "truncated"
    MISSING_UID = "missing-uid"
    NOT_IMAGE = "not-image"
    UNDECODABLE = "undecodable"
    UNAUTHORISED = "unauthorised"
    INTERNAL = "internal-error"


class Rejected(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class IngestOutcome:
    status: Status
    reason: Reason | None = None
    detail: str = ""
    sop_class_uid: str = ""
    sop_instance_uid: str = ""  # as sent (the sender knows it)
    pseudonym: str = ""
    study_instance_uid: str = ""  # replacement
    series_id: int | None = None

    @property
    def message(self) -> str:
        if self.status is Status.REJECTED:
            return f"rejected ({self.reason}): {self.detail}"
        return self.status.value


# --- identity -------------------------------------------------------------------


def patient_pseudonym(*, issuer: str, patient_id: str) -> str:
    """HMAC-SHA256 of (issuer, patient ID) under the active pseudonym key, hex."""
    key = keys.keyring(keys.KeyPurpose.PSEUDONYM).active.material
    message = issuer.encode() + b"\x1f" + patient_id.encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _uid_key() -> bytes:
    return hmac.new(keys.keyring(keys.KeyPurpose.PSEUDONYM).active.material, b"uid-replacement",
                    hashlib.sha256).digest()


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, list | tuple | pydicom.multival.MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _date(value: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(value[:8], "%Y%m%d").date()  # noqa: DTZ007
    except ValueError:
        return None


_cache_lock = threading.Lock()
_patient_cache: dict[tuple[str, str], tuple[str, int]] = {}
_uid_cache: dict[str, str] = {}
_study_identity_cache: set[str] = set()  # replacement study UIDs whose identity row exists
_series_cache: dict[str, int] = {}  # replacement series UID -> pk, once its row (and its study's) exists
_CACHE_LIMIT = 100_000


def ingest_caches_clear() -> None:
    """Forget cached identity lookups and row ids (tests; after a database is emptied)."""
    with _cache_lock:
        _patient_cache.clear()
        _uid_cache.clear()
        _study_identity_cache.clear()
        _series_cache.clear()


def _cache_put(cache: dict[Any, Any] | set[Any], key: Any, value: Any = None) -> None:
    with _cache_lock:
        if len(cache) > _CACHE_LIMIT:
            cache.clear()
        if isinstance(cache, set):
            cache.add(key)
        else:
            cache[key] = value


def _commits_durable() -> None:
    """Make this thread's ingest commits survive a power cut on SQLite.

    The settings run SQLite's WAL with ``synchronous=NORMAL``, which may roll
    back the last commits after a power cut; an instance acknowledged as
    stored must not be among them. The pragma is per connection, and cheap.
    """
    for alias in (CLINICAL, IDENTITY):
        connection = connections[alias]
        if connection.vendor == "sqlite" and not connection.in_atomic_block:
            with connection.cursor() as cursor:
                cursor.execute("PRAGMA synchronous=FULL")


def _patient_identity(ds: Dataset) -> tuple[str, int]:
    """(pseudonym, date shift) of the instance's patient, creating the identity rows once."""
    issuer = _text(ds, "IssuerOfPatientID")
    patient_id = _text(ds, "PatientID")
    if not patient_id:
        # No patient ID: each study stands alone rather than merging strangers.
        issuer, patient_id = "urn:fusion-gateway:no-patient-id", _text(ds, "StudyInstanceUID")
    cache_key = (issuer, patient_id)
    with _cache_lock:
        if cache_key in _patient_cache:
            return _patient_cache[cache_key]
    identity = PatientIdentity.objects.filter(
        issuer_of_patient_id=issuer, patient_id=patient_id).first()
    if identity is None:
        try:
            with transaction.atomic(using=IDENTITY):
                identity = PatientIdentity.objects.create(
                    pseudonym=patient_pseudonym(issuer=issuer, patient_id=patient_id),
                    issuer_of_patient_id=issuer[:64], patient_id=patient_id[:64],
                    patient_name=_text(ds, "PatientName")[:324],
                    patient_birth_date=_date(_text(ds, "PatientBirthDate")),
                    patient_sex=_text(ds, "PatientSex")[:16],
                    patient_address=_text(ds, "PatientAddress"),
                )
        except IntegrityError:
            identity = PatientIdentity.objects.get(issuer_of_patient_id=issuer, patient_id=patient_id)
    shift = PatientDateShift.objects.filter(pseudonym=identity.pseudonym).first()
    if shift is None:
        low, high = DATE_SHIFT_DAYS
        try:
            with transaction.atomic(using=IDENTITY):
                shift = PatientDateShift.objects.create(
                    pseudonym=identity.pseudonym, days=low + secrets.randbelow(high - low + 1))
        except IntegrityError:
            shift = PatientDateShift.objects.get(pseudonym=identity.pseudonym)
    result = (identity.pseudonym, shift.days)
    with _cache_lock:
        if len(_patient_cache) > _CACHE_LIMIT:
            _patient_cache.clear()
        _patient_cache[cache_key] = result
    return result


def _uids_in(ds: Dataset) -> set[str]:
    found: set[str] = set()

    def visit(dataset: Dataset, element: Any) -> None:
        if element.VR == "UI" and element.value:
            values = element.value if element.VM > 1 else [element.value]
            found.update(str(v).strip().rstrip("\0") for v in values)

    ds.walk(visit)
    return found


def _known_uid_replacements(originals: set[str]) -> dict[str, str]:
    """Replacements already recorded (they may predate a pseudonym key rotation)."""
    known: dict[str, str] = {}
    missing = []
    with _cache_lock:
        for uid in originals:
            if uid in _uid_cache:
                known[uid] = _uid_cache[uid]
            else:
                missing.append(uid)
    for start in range(0, len(missing), 500):
        chunk = missing[start:start + 500]
        known.update(UIDMap.objects.filter(original__in=chunk).values_list("original", "replacement"))
    return known


def uid_replacement_of(original: str) -> str:
    """The replacement ingest gives (or gave) ``original``: known before the object arrives."""
    known = _known_uid_replacements({original})
    return known.get(original) or uid_replacement(_uid_key(), original)


def _uid_map_record(uid_map: dict[str, str], pseudonym: str) -> None:
    with _cache_lock:
        fresh = {o: r for o, r in uid_map.items() if _uid_cache.get(o) != r}
    if fresh:
        UIDMap.objects.bulk_create(
            [UIDMap(original=o[:64], replacement=r, pseudonym=pseudonym) for o, r in fresh.items()],
            ignore_conflicts=True)
        with _cache_lock:
            if len(_uid_cache) > _CACHE_LIMIT:
                _uid_cache.clear()
            _uid_cache.update(fresh)


def _study_identity(ds: Dataset, *, pseudonym: str, study_uid: str) -> None:
    with _cache_lock:
        if study_uid in _study_identity_cache:
            return
    if StudyIdentity.objects.filter(study_instance_uid=study_uid).exists():
        _cache_put(_study_identity_cache, study_uid)
        return
    with contextlib.suppress(IntegrityError), transaction.atomic(using=IDENTITY):
        StudyIdentity.objects.create(
            pseudonym=pseudonym,
            study_instance_uid=study_uid,
            original_study_instance_uid=_text(ds, "StudyInstanceUID")[:64],
            accession_number=_text(ds, "AccessionNumber")[:64],
            study_id=_text(ds, "StudyID")[:64],
            study_date=_date(_text(ds, "StudyDate")),
            study_time=_text(ds, "StudyTime")[:32],
            study_description=_text(ds, "StudyDescription")[:128],
            referring_physician_name=_text(ds, "ReferringPhysicianName")[:324],
            performing_physician_names=_text(ds, "PerformingPhysicianName"),
            operators_names=_text(ds, "OperatorsName"),
            institution_name=_text(ds, "InstitutionName")[:128],
            institution_address=_text(ds, "InstitutionAddress"),
            station_names=_text(ds, "StationName"),
        )
    _cache_put(_study_identity_cache, study_uid)


# --- validation -------------------------------------------------------------------


def _parse(data: bytes) -> Dataset:
    if len(data) > conf.max_object_bytes():
        raise Rejected(Reason.OVERSIZE, f"{len(data)} bytes exceeds the limit of "
                                        f"{conf.max_object_bytes()} bytes")
    has_preamble = data[128:132] == b"DICM"
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=not has_preamble)
        # Reading is lazy per element: convert every value now, inside this try.
        for _ in ds.iterall():
            pass
    except InvalidDicomError as exc:
        raise Rejected(Reason.NOT_DICOM, f"not a DICOM file ({exc})") from exc
    except (EOFError, OSError) as exc:
        raise Rejected(Reason.TRUNCATED, f"truncated or corrupt ({exc})") from exc
    except Exception as exc:
        if has_preamble:
            raise Rejected(Reason.TRUNCATED, f"corrupt DICOM ({type(exc).__name__}: {exc})") from exc
        raise Rejected(Reason.NOT_DICOM, "not a DICOM file") from exc
    if not has_preamble and not any(tag.group in (0x0008, 0x0020) for tag in ds.keys()):  # noqa: SIM118
        raise Rejected(Reason.NOT_DICOM, "not a DICOM file (no DICM prefix, no DICOM attributes)")
    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        # No meta header: record the encoding the dataset was actually read with.
        ds.file_meta = meta if meta is not None else FileMetaDataset()
        if ds.is_little_endian is False:
            ds.file_meta.TransferSyntaxUID = ExplicitVRBigEndian
        elif ds.is_implicit_VR is False:
            ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        else:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    return ds


def _check_not_directory(ds: Dataset) -> None:
    meta = getattr(ds, "file_meta", None)
    media_class = meta.get("MediaStorageSOPClassUID") if meta is not None else None
    if media_class == MediaStorageDirectoryStorage or "DirectoryRecordSequence" in ds:
        raise Rejected(Reason.NOT_IMAGE, "DICOMDIR (a media directory, not an instance); "
                                         "import the folder it indexes")


def _check_uids(ds: Dataset) -> None:
    for keyword in REQUIRED_UIDS:
        value = _text(ds, keyword).rstrip("\0")
        if not value:
            raise Rejected(Reason.MISSING_UID, f"{keyword} is missing")
        if len(value) > 64 or not _UID.match(value):
            raise Rejected(Reason.MISSING_UID, f"{keyword} is not a valid UID")


def _transfer_syntax(ds: Dataset) -> UID:
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(syntax)) if syntax else ImplicitVRLittleEndian


def _check_pixels(ds: Dataset) -> None:
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        if object_class_name(_text(ds, "SOPClassUID")) is not None:
            return
        raise Rejected(Reason.NOT_IMAGE,
                       f"no pixel data (SOP class {ds.SOPClassUID}): only images, presentation states, "
                       "structured reports, registrations, segmentations and RT structure sets are accepted")
    syntax = _transfer_syntax(ds)
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.BitsAllocated)
        expected = (int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1))
                    * frames * bits + 7) // 8
    except (AttributeError, TypeError, ValueError) as exc:
        raise Rejected(Reason.UNDECODABLE, f"image pixel module incomplete ({exc})") from exc
    if expected > 4 * conf.max_object_bytes():
        raise Rejected(Reason.OVERSIZE, f"decoded image would take {expected} bytes")
    if not syntax.is_encapsulated and "PixelData" in ds:
        if str(ds.get("PhotometricInterpretation", "")) == "YBR_FULL_422":
            expected = expected * 2 // 3
        if len(ds.PixelData) < expected:
            raise Rejected(Reason.TRUNCATED,
                           f"pixel data holds {len(ds.PixelData)} of {expected} bytes")
    jpeg_scan_headers_repair(ds=ds, syntax=syntax)
    try:
        pixels_decode(ds=ds)
    except Exception as exc:
        raise Rejected(Reason.UNDECODABLE,
                       f"pixel data in transfer syntax {syntax.name} cannot be decoded "
                       f"({decode_failure_describe(error=exc)[:300]})") from exc


def _encode(ds: Dataset, syntax: UID) -> bytes:
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    fresh = FileMetaDataset()
    fresh.MediaStorageSOPClassUID = ds.SOPClassUID
    fresh.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    fresh.TransferSyntaxUID = syntax
    if "ImplementationClassUID" in meta:
        fresh.ImplementationClassUID = meta.ImplementationClassUID
    ds.file_meta = fresh
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def object_id_for(sop_instance_uid: str) -> str:
    return "dcm-" + hashlib.sha256(sop_instance_uid.encode()).hexdigest()


# --- the service ---------------------------------------------------------------


def instance_ingest(*, data: bytes) -> IngestOutcome:
    """Validate, de-identify, encrypt and record one DICOM instance.

    Parameters
    ----------
    data : bytes
        A DICOM file (Part 10, with or without preamble and meta header).

    Returns
    -------
    IngestOutcome
        ``stored``, ``duplicate`` (the same SOP instance already stored: nothing
        changes) or ``rejected`` with a :class:`Reason` and a detail.
    """
    sop_class = sop_instance = ""
    try:
        _commits_durable()
        ds = _parse(data)
        sop_class = _text(ds, "SOPClassUID")[:64]
        sop_instance = _text(ds, "SOPInstanceUID")[:64]
        _check_not_directory(ds)
        _check_uids(ds)
        _check_pixels(ds)
        return _ingest_valid(ds)
    except Rejected as rejected:
        return IngestOutcome(Status.REJECTED, rejected.reason, " ".join(rejected.detail.split()),
                             sop_class_uid=sop_class, sop_instance_uid=sop_instance)
    except Exception as exc:
        log.exception("ingest failed for one instance")
        return IngestOutcome(Status.REJECTED, Reason.INTERNAL,
                             f"internal error ({type(exc).__name__})",
                             sop_class_uid=sop_class, sop_instance_uid=sop_instance)


def _ingest_valid(ds: Dataset) -> IngestOutcome:
    original_sop = _text(ds, "SOPInstanceUID")
    sop_class = _text(ds, "SOPClassUID")
    syntax = _transfer_syntax(ds)
    pseudonym, shift_days = _patient_identity(ds)
    deid = Deidentifier(uid_key=_uid_key(), date_shift_days=shift_days, pseudonym=pseudonym)
    deid.report.uid_map.update(_known_uid_replacements(_uids_in(ds)))
    identifying = {kw: ds.get(kw) for kw in (
        "StudyInstanceUID", "AccessionNumber", "StudyID", "StudyDate", "StudyTime",
        "StudyDescription", "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
        "InstitutionName", "InstitutionAddress", "StationName")}
    snapshot = Dataset()
    for keyword, value in identifying.items():
        if value is not None:
            setattr(snapshot, keyword, value)
    report = deid.apply(ds)
    study_uid, series_uid, new_sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    _uid_map_record(report.uid_map, pseudonym)
    _study_identity(snapshot, pseudonym=pseudonym, study_uid=study_uid)

    outcome = IngestOutcome(Status.STORED, sop_class_uid=sop_class, sop_instance_uid=original_sop,
                            pseudonym=pseudonym, study_instance_uid=study_uid)
    existing = Instance.objects.filter(sop_instance_uid=new_sop).values_list("series_id", flat=True)
    if existing:
        outcome.status, outcome.series_id = Status.DUPLICATE, existing[0]
        return outcome

    encoded = _encode(ds, syntax)
    object_id = object_id_for(new_sop)
    storage.object_put(object_id, encoded)
    try:
        with transaction.atomic(using=CLINICAL):
            series_pk = _series_row(ds, study_uid=study_uid, series_uid=series_uid, pseudonym=pseudonym,
                                    pixels_may_identify=report.pixels_may_identify)
            Instance.objects.create(
                series_id=series_pk, sop_instance_uid=new_sop, sop_class_uid=sop_class[:64],
                transfer_syntax_uid=str(syntax), instance_number=_int(ds.get("InstanceNumber")),
                number_of_frames=_int(ds.get("NumberOfFrames")) or 1,
                object_id=object_id, size=len(encoded))
    except IntegrityError:
        # A concurrent ingest of the same instance won the race: same object, same rows.
        existing = Instance.objects.filter(sop_instance_uid=new_sop).values_list("series_id", flat=True)
        if not existing:
            raise
        outcome.status, outcome.series_id = Status.DUPLICATE, existing[0]
        return outcome
    outcome.series_id = series_pk
    return outcome


def _series_row(ds: Dataset, *, study_uid: str, series_uid: str, pseudonym: str,
                pixels_may_identify: bool) -> int:
    """The series' pk, its row (and its study's and patient's) created on first sight.

    Inside the instance's transaction. A series that existed is marked
    ``pending`` by an UPDATE even when it already is: on PostgreSQL the row
    lock it takes until commit makes a builder claiming the series wait for
    this instance, and a builder already building it loses its claim
    (:mod:`imaging.volumes`). The pk is cached per process once the row exists.
    """
    with _cache_lock:
        cached = _series_cache.get(series_uid)
    if cached is not None:
        updates: dict[str, Any] = {"volume_state": VolumeState.PENDING}
        if pixels_may_identify:
            updates["pixels_may_identify"] = True
        if Series.objects.filter(pk=cached).update(**updates):
            return cached
        with _cache_lock:
            _series_cache.pop(series_uid, None)  # the row went away: take the long way
    patient, _ = Patient.objects.get_or_create(pseudonym=pseudonym)
    study, _ = Study.objects.get_or_create(
        study_instance_uid=study_uid,
        defaults={"patient": patient, "study_date": _date(_text(ds, "StudyDate")),
                  "study_time": _text(ds, "StudyTime")[:32],
                  "study_description": _text(ds, "StudyDescription")[:128]})
    series, created = Series.objects.get_or_create(
        series_instance_uid=series_uid,
        defaults={"study": study, "modality": _text(ds, "Modality")[:16],
                  "series_number": _int(ds.get("SeriesNumber")),
                  "series_description": _text(ds, "SeriesDescription")[:128],
                  "frame_of_reference_uid": _text(ds, "FrameOfReferenceUID")[:64],
                  "pixels_may_identify": pixels_may_identify})
    if not created:
        updates = {"volume_state": VolumeState.PENDING}
        if pixels_may_identify and not series.pixels_may_identify:
            updates["pixels_may_identify"] = True
        Series.objects.filter(pk=series.pk).update(**updates)
    transaction.on_commit(lambda: _cache_put(_series_cache, series_uid, series.pk), using=CLINICAL)
    return series.pk


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


# --- batches, audit, volumes -------------------------------------------------------


@dataclass
class IngestBatch:
    """Outcomes of one import run, association or STOW request, audited together.

    Parameters
    ----------
    actor : user or str
        The device account (or ``cli:<user>`` for the import command).
    door : str
        ``import``, ``c-store`` or ``stow-rs``.
    build_volumes : bool
        Build the volume of every touched series on :meth:`close` (the import
        command). The SCP and STOW-RS pass False: their series stay
        ``pending`` for the volume builder, so neither an association's release
        nor a STOW request waits for, or holds in memory, a volume.
    """

    actor: Any
    door: str
    actor_role: str = ""
    source_ip: str = ""
    build_volumes: bool = True
    outcomes: list[IngestOutcome] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def ingest(self, data: bytes) -> IngestOutcome:
        outcome = instance_ingest(data=data)
        with self._lock:
            self.outcomes.append(outcome)
        return outcome

    def record(self, outcome: IngestOutcome) -> None:
        """Add an outcome produced elsewhere (a worker process, a refused part)."""
        with self._lock:
            self.outcomes.append(outcome)

    def reject(self, outcome: IngestOutcome) -> None:
        with self._lock:
            self.outcomes.append(outcome)

    def counts(self) -> Counter[str]:
        return Counter(outcome.status.value for outcome in self.outcomes)

    def close(self) -> None:
        """Audit the batch (per study, and the rejects), then build touched volumes."""
        by_study: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
        rejects: Counter[str] = Counter()
        series_ids: set[int] = set()
        for outcome in self.outcomes:
            if outcome.status is Status.REJECTED:
                rejects[str(outcome.reason)] += 1
                continue
            by_study[(outcome.pseudonym, outcome.study_instance_uid)][outcome.status.value] += 1
            if outcome.status is Status.STORED and outcome.series_id is not None:
                series_ids.add(outcome.series_id)
        role = self.actor_role or _role(self.actor)
        for (pseudonym, study_uid), counts in sorted(by_study.items()):
            audit_record(actor=self.actor, actor_role=role, action=Action.INGEST,
                         outcome=Outcome.SUCCESS, patient_pseudonym=pseudonym, study=study_uid,
                         source_ip=self.source_ip,
                         details={"door": self.door, "stored": counts["stored"],
                                  "duplicates": counts["duplicate"]})
        if rejects:
            audit_record(actor=self.actor, actor_role=role, action=Action.INGEST,
                         outcome=Outcome.FAILURE, source_ip=self.source_ip,
                         details={"door": self.door, "rejected": sum(rejects.values()),
                                  "reasons": dict(sorted(rejects.items()))})
        if self.build_volumes and series_ids:
            from imaging.volumes import series_volume_build

            for series in Series.objects.filter(pk__in=series_ids):
                series_volume_build(series=series)


def _role(actor: Any) -> str:
    return "" if isinstance(actor, str) else str(getattr(actor, "role", ""))
