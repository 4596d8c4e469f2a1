"""Retrieving a study from the PACS through the same ingest as every other door.

A doctor or nurse asks for a study the worklist found in the PACS; a
:class:`~imaging.models.Retrieval` is queued and ``pacs_worker`` runs it, never
the web process. The job lists the study's series (C-FIND, series level) and
retrieves them one at a time, so the first series can be read while the rest
arrive:

- **C-GET**: the PACS sends the instances back on the job's own association;
  each goes through :class:`~imaging.services.IngestBatch` (validation,
  de-identification, identity/clinical split, encryption) as it arrives.
- **C-MOVE**: the PACS sends them to the gateway's SCP (``run_scp``), where the
  PACS's calling AE title must be a registered device; the job follows the
  sub-operation counts.

When a series is complete its volume is built and it opens in the viewer; until
then the viewer lists it as arriving. Progress (instances received / expected, per
series) is saved as it goes. A PACS that goes away mid-transfer fails the job
with what was received kept (each instance is written whole or not at all); asking
again resumes, since an instance already stored is a duplicate, not an error.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.db import close_old_connections, connections
from django.utils import timezone
from django.utils.translation import gettext
from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import build_role, evt

from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from gateway.i18n import gettext_noop
from gateway.policy import Permission, may
from imaging import conf
from imaging.dicom_net import STUDY_ROOT_GET, STUDY_ROOT_MOVE, Peer, SendError, associated, entity
from imaging.dicomweb_client import DicomwebError, wado_series
from imaging.identity.models import PatientIdentity, RemoteStudy, StudyIdentity
from imaging.models import DicomDestination, JobState, Retrieval, RetrieveMethod, Series, Study, VolumeState
from imaging.pacs_query import PENDING, Criteria, QueryError, find, local_study_of, pacs_answers, pacs_sources
from imaging.services import IngestBatch, Status, patient_pseudonym, uid_replacement_of
from rendering.said import SaidError

log = logging.getLogger(__name__)

UNFINISHED = (JobState.QUEUED, JobState.RUNNING)
PREFETCH_WINDOW = timedelta(days=1)
RESULT_MODALITIES = frozenset({"", "SR", "SEG", "REG", "KO", "PR", "DOC"})
"""Only studies that arrived this recently have their priors prefetched (not the whole archive at once)."""
STALE_AFTER = timedelta(minutes=2)
"""A running job whose worker has not written for this long is taken over by another worker."""
SAVE_EVERY_S = 0.5
GET_STORAGE_CLASSES = 120
"""Storage contexts offered on a C-GET association (with the C-GET context, under the 128 limit)."""
GET_TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                         ExplicitVRBigEndian, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLosslessSV1,
                         JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000, RLELossless]
"""Every syntax ingest decodes, so the PACS sends what it holds instead of transcoding."""


class RetrieveError(SaidError, RuntimeError):
    """The retrieval cannot be asked for or cannot go on; the message is for the page."""


def retrieval_request(*, principal: Any, remote_study_id: int, reason: str = "open",
                      source_ip: str = "") -> Retrieval:
    """Queue the retrieval of a study a PACS answered with (or return the one already under way)."""
    if not may(principal, Permission.STUDY_RETRIEVE):
        raise PermissionError("retrieving from the PACS is not granted")
    remote = RemoteStudy.objects.filter(pk=remote_study_id).first()
    source = (DicomDestination.objects.filter(pk=remote.source, active=True).exclude(retrieve="").first()
              if remote is not None else None)
    if remote is None or source is None:
        audit_record(actor=principal, action=Action.PACS_RETRIEVE, outcome=Outcome.FAILURE,
                     source_ip=source_ip,
                     details={"step": "requested", "why": "the PACS answer is no longer known"})
        raise RetrieveError(gettext_noop("that PACS answer is no longer known: search again"))
    requested_by = str(getattr(principal, "username", principal))
    return _retrieval_queue(remote, source, reason=reason, requested_by=requested_by, actor=principal,
                            source_ip=source_ip)


def _retrieval_queue(remote: RemoteStudy, source: DicomDestination, *, reason: str, requested_by: str,
                     actor: Any, source_ip: str = "") -> Retrieval:
    study_uid = uid_replacement_of(remote.original_study_instance_uid)
    pseudonym = patient_pseudonym(issuer=remote.issuer_of_patient_id, patient_id=remote.patient_id)
    under_way = Retrieval.objects.filter(study_instance_uid=study_uid, state__in=UNFINISHED).first()
    if under_way is not None:
        return under_way
    retrieval = Retrieval.objects.create(
        source=source, remote_study=remote.pk, study_instance_uid=study_uid, pseudonym=pseudonym,
        method=source.retrieve, reason=reason, expected=remote.instance_count or 0, requested_by=requested_by)
    audit_record(actor=actor, action=Action.PACS_RETRIEVE, outcome=Outcome.SUCCESS, source_ip=source_ip,
                 patient_pseudonym=pseudonym, study=study_uid,
                 details={"pacs": source.name, "method": source.retrieve, "step": "requested",
                          "reason": reason, "retrieval": retrieval.pk})
    return retrieval


def retrieval_cancel(*, retrieval: Retrieval) -> bool:
    """Stop a queued or running retrieval after the instance in flight; what arrived is kept."""
    return bool(Retrieval.objects.filter(pk=retrieval.pk, state__in=UNFINISHED).update(
        state=JobState.CANCELLED, finished_at=timezone.now()))


def retrieval_claim() -> Retrieval | None:
    """The oldest queued retrieval (or one whose worker went silent), now running for this worker."""
    stale = timezone.now() - STALE_AFTER
    for candidate in Retrieval.objects.filter(state=JobState.QUEUED).order_by("requested_at")[:5]:
        if Retrieval.objects.filter(pk=candidate.pk, state=JobState.QUEUED).update(
                state=JobState.RUNNING, started_at=timezone.now(), heartbeat_at=timezone.now()):
            candidate.refresh_from_db()
            return candidate
    for candidate in Retrieval.objects.filter(state=JobState.RUNNING, heartbeat_at__lt=stale)[:5]:
        if Retrieval.objects.filter(pk=candidate.pk, heartbeat_at=candidate.heartbeat_at).update(
                heartbeat_at=timezone.now()):
            candidate.refresh_from_db()
            return candidate
    return None


def priors_prefetch(*, study: Study) -> list[Retrieval]:
    """Queue the retrieval of the patient's newest earlier studies in the PACS.

    How many: ``GATEWAY_PACS_PREFETCH_PRIORS``.

    Same modality as the arrived study unless ``GATEWAY_PACS_PREFETCH_ANY_MODALITY``; studies
    already here or under way are skipped. Marks the study as checked whatever the outcome,
    so a PACS that is down costs one try, not one per pass."""
    Study.objects.filter(pk=study.pk).update(priors_checked_at=timezone.now())
    wanted = conf.pacs_prefetch_priors()
    identity = PatientIdentity.objects.filter(pseudonym=study.patient.pseudonym).first()
    real = StudyIdentity.objects.filter(study_instance_uid=study.study_instance_uid).first()
    if wanted <= 0 or identity is None:
        return []
    modalities = set(study.series.values_list("modality", flat=True)) - RESULT_MODALITIES
    queued: list[Retrieval] = []
    for source in pacs_sources():
        try:
            answers = pacs_answers(source, Criteria(patient_id=identity.patient_id))
        except QueryError as error:
            log.warning("priors of %s not asked of %s: %s", study.study_instance_uid, source.name, error)
            continue
        earlier = [a for a in answers
                   if a.issuer_of_patient_id == identity.issuer_of_patient_id
                   and a.original_study_instance_uid != (real.original_study_instance_uid if real else "")
                   and (real is None or real.study_date is None or a.study_date is None
                        or a.study_date <= real.study_date)
                   and (conf.pacs_prefetch_any_modality() or modalities & set(a.modalities.split("\\")))
                   and not local_study_of(a)]
        earlier.sort(key=lambda a: a.study_date or dt.date.min, reverse=True)
        for answer in earlier[:wanted - len(queued)]:
            queued.append(_retrieval_queue(answer, source, reason="prefetch", requested_by="prefetch",
                                           actor="pacs-prefetch"))
    return queued


def priors_prefetch_due(*, limit: int = 5) -> int:
    """Prefetch the priors of studies that arrived in the last day and were not checked yet.

    A prior fetched this way does not fetch its own priors: only what arrives or is opened does."""
    if conf.pacs_prefetch_priors() <= 0 or not pacs_sources():
        return 0
    since = timezone.now() - PREFETCH_WINDOW
    prefetched = Retrieval.objects.filter(reason="prefetch").values("study_instance_uid")
    recent = (Study.objects.filter(priors_checked_at__isnull=True, created_at__gte=since)
              .exclude(study_instance_uid__in=prefetched).select_related("patient").order_by("created_at")[:limit])
    return sum(len(priors_prefetch(study=study)) for study in recent)


def retrieval_under_way(*, study_uid: str) -> Retrieval | None:
    return Retrieval.objects.filter(study_instance_uid=study_uid, state__in=UNFINISHED).first()


def series_arriving(*, study_uid: str) -> dict[str, str]:
    """Series UID -> 'arriving from the PACS (n of m)' for each series an unfinished retrieval still fills
    (in the active language: the viewer says it)."""
    arriving: dict[str, str] = {}
    for retrieval in Retrieval.objects.filter(study_instance_uid=study_uid, state__in=UNFINISHED):
        for entry in retrieval.series:
            if not entry.get("complete"):
                counts = {"received": entry.get("received", 0), "expected": entry.get("expected") or "?"}
                arriving[entry["uid"]] = gettext("arriving from the PACS (%(received)s of %(expected)s "
                                                 "images)") % counts
    return arriving


# --- the job --------------------------------------------------------------------------------


@dataclass
class Progress:
    """What the job has seen, saved to the row at most every ``SAVE_EVERY_S``."""

    retrieval: Retrieval
    originals: list[str] = field(default_factory=list)
    """Each series' original UID, in the order of ``retrieval.series`` (kept in memory only)."""
    saved_at: float = 0.0
    checked_at: float = 0.0
    stopped: bool = False
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def series_add(self, answers: list[Dataset]) -> None:
        answers.sort(key=lambda ds: (_int(ds.get("SeriesNumber")) or 0, str(ds.SeriesInstanceUID)))
        self.retrieval.series = []
        for ds in answers:
            original = str(ds.SeriesInstanceUID)
            self.originals.append(original)
            self.retrieval.series.append({
                "uid": uid_replacement_of(original), "modality": str(ds.get("Modality", "")),
                "description": str(ds.get("SeriesDescription", ""))[:64],
                "expected": _int(ds.get("NumberOfSeriesRelatedInstances")) or 0, "received": 0,
                "complete": False})
        counted = sum(entry["expected"] for entry in self.retrieval.series)
        self.retrieval.expected = counted or self.retrieval.expected
        self.save(force=True)

    def arrived(self, position: int, *, count: int = 1) -> None:
        with self.lock:
            self.retrieval.series[position]["received"] += count
            self.retrieval.received += count
        self.save()

    def not_sent(self, position: int, *, count: int, why: str) -> None:
        """``count`` images of the series the PACS reported it could not send."""
        with self.lock:
            entry = self.retrieval.series[position]
            entry["failed"] = entry.get("failed", 0) + count
            self.retrieval.failed += count
            self.failures.append(f"{entry['modality']} {entry['description']}".strip() + f": {count} ({why})")
        self.save(force=True)

    def complete(self, position: int) -> None:
        self.retrieval.series[position]["complete"] = True
        self.save(force=True)

    def save(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.saved_at < SAVE_EVERY_S:
            return
        with self.lock:
            self.saved_at = now
            Retrieval.objects.filter(pk=self.retrieval.pk, state=JobState.RUNNING).update(
                series=self.retrieval.series, expected=self.retrieval.expected,
                received=self.retrieval.received, failed=self.retrieval.failed, heartbeat_at=timezone.now())

    def cancelled(self) -> bool:
        """Read again at most every ``SAVE_EVERY_S``: asked per image, it must not be a query per image."""
        now = time.monotonic()
        if not self.stopped and now - self.checked_at >= SAVE_EVERY_S:
            self.checked_at = now
            self.stopped = Retrieval.objects.filter(pk=self.retrieval.pk, state=JobState.CANCELLED).exists()
        return self.stopped


def retrieval_run(retrieval: Retrieval) -> Retrieval:
    """Run a claimed retrieval to its end (done, failed or cancelled); returns the row as it ends."""
    progress = Progress(retrieval)
    remote = RemoteStudy.objects.filter(pk=retrieval.remote_study).first()
    try:
        if remote is None:
            raise RetrieveError("the PACS answer it was asked from has been forgotten: search again")
        progress.series_add(_series_of(retrieval.source, remote))
        for position, (entry, original) in enumerate(zip(list(retrieval.series), progress.originals,
                                                         strict=True)):
            if progress.cancelled():
                break
            _retrieve_series(retrieval, remote, original, position, progress)
            _series_ready(entry["uid"])
            progress.complete(position)
    except (RetrieveError, QueryError, SendError) as error:
        return _finish(retrieval, progress, JobState.FAILED, str(error))
    except Exception as error:
        log.exception("retrieval %s failed", retrieval.pk)
        return _finish(retrieval, progress, JobState.FAILED, f"unexpected error: {type(error).__name__}")
    if progress.cancelled():
        return _finish(retrieval, progress, JobState.CANCELLED, "cancelled")
    missing = f"images the PACS could not send: {'; '.join(progress.failures)}" if progress.failures else ""
    return _finish(retrieval, progress, JobState.DONE, missing)


def _series_of(source: DicomDestination, remote: RemoteStudy) -> list[Dataset]:
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = remote.original_study_instance_uid
    for keyword in ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
                    "NumberOfSeriesRelatedInstances"):
        setattr(query, keyword, "")
    answers = list(find(source, query, limit=10_000, level="series"))
    if not answers:
        raise RetrieveError("the PACS holds no series of that study any more")
    return answers


def _retrieve_series(retrieval: Retrieval, remote: RemoteStudy, original_series: str, position: int,
                     progress: Progress) -> None:
    query = Dataset()
    query.QueryRetrieveLevel = "SERIES"
    query.StudyInstanceUID = remote.original_study_instance_uid
    query.SeriesInstanceUID = original_series
    if retrieval.method == RetrieveMethod.C_MOVE:
        _move(retrieval.source, query, position, progress)
    elif retrieval.method == RetrieveMethod.WADO_RS:
        _wado(retrieval.source, query, position, progress)
    else:
        _get(retrieval.source, query, position, progress)


def _get(source: DicomDestination, query: Dataset, position: int, progress: Progress) -> None:
    from imaging.scp import accepted_storage_classes

    classes = accepted_storage_classes()[:GET_STORAGE_CLASSES]
    ae = entity(timeout_s=60)
    ae.add_requested_context(STUDY_ROOT_GET)
    for sop_class in classes:
        ae.add_requested_context(sop_class, GET_TRANSFER_SYNTAXES)
    roles = [build_role(sop_class, scp_role=True) for sop_class in classes]
    batch = IngestBatch(actor=f"pacs:{source.name}", actor_role="pacs", door="c-get", source_ip=source.host,
                        build_volumes=False)
    handlers = [(evt.EVT_C_STORE, _get_store(batch, position, progress)),
                (evt.EVT_RELEASED, _connections_close), (evt.EVT_ABORTED, _connections_close)]
    try:
        with associated(ae, Peer.of(source), ext_neg=roles, evt_handlers=handlers) as association:
            _follow(association.send_c_get(query, STUDY_ROOT_GET), progress,
                    position, counts_arrivals=False)
    finally:
        batch.close()


def _get_store(batch: IngestBatch, position: int, progress: Progress) -> Callable[[Any], int]:
    def handle(event: Any) -> int:
        outcome = batch.ingest(event.encoded_dataset())
        if outcome.status is Status.REJECTED:
            return 0xA700  # the PACS counts it as a failed sub-operation: the series reports it
        progress.arrived(position)
        return 0x0000
    return handle


def _wado(source: DicomDestination, query: Dataset, position: int, progress: Progress) -> None:
    host = urllib.parse.urlsplit(source.dicomweb_url).hostname or ""
    batch = IngestBatch(actor=f"pacs:{source.name}", actor_role="pacs", door="wado-rs", source_ip=host,
                        build_volumes=False)

    def ingest(data: bytes) -> None:
        if batch.ingest(data).status is Status.REJECTED:
            progress.not_sent(position, count=1, why="refused by ingest")
        else:
            progress.arrived(position)
        if progress.cancelled():
            raise RetrieveError("cancelled")

    try:
        wado_series(source.dicomweb_url, str(query.StudyInstanceUID), str(query.SeriesInstanceUID), ingest)
    except DicomwebError as error:
        raise RetrieveError(str(error)) from error
    finally:
        batch.close()


def _connections_close(_event: Any) -> None:
    # Handlers run on the association's own thread: the connections it opened end with it.
    connections.close_all()


def _move(source: DicomDestination, query: Dataset, position: int, progress: Progress) -> None:
    ae = entity(timeout_s=120)
    ae.add_requested_context(STUDY_ROOT_MOVE)
    with associated(ae, Peer.of(source)) as association:
        answers = association.send_c_move(query, conf.scp_ae_title(),
                                          STUDY_ROOT_MOVE)
        _follow(answers, progress, position, counts_arrivals=True)


def _follow(answers: Any, progress: Progress, position: int, *, counts_arrivals: bool) -> None:
    """Read a C-GET/C-MOVE's responses to the end; C-MOVE's sub-operation counts are its progress.

    Images the PACS could not send (failed sub-operations) are counted against the series and the
    rest of the study still comes; a failure with nothing failed in it ends the retrieval."""
    seen = 0
    for status, _identifier in answers:
        code = getattr(status, "Status", None)
        if code is None:
            raise RetrieveError(f"the PACS went away after {progress.retrieval.received} of "
                                f"{progress.retrieval.expected or '?'} images (what arrived is kept; "
                                "ask again to resume)")
        done = int(status.get("NumberOfCompletedSuboperations", 0) or 0) + int(
            status.get("NumberOfWarningSuboperations", 0) or 0)
        if counts_arrivals and done > seen:
            progress.arrived(position, count=done - seen)
            seen = done
        if code in PENDING:
            continue
        failed = int(status.get("NumberOfFailedSuboperations", 0) or 0)
        if failed:
            progress.not_sent(position, count=failed, why=f"0x{code:04X}")
        elif code not in (0x0000, 0xB000):
            raise RetrieveError(f"the PACS answered the retrieval with 0x{code:04X}")


def _series_ready(series_uid: str) -> None:
    from imaging.volumes import series_volume_build

    series = Series.objects.filter(series_instance_uid=series_uid).first()
    if series is not None and series.volume_state == VolumeState.PENDING:
        series_volume_build(series=series)


def _finish(retrieval: Retrieval, progress: Progress, state: str, error: str) -> Retrieval:
    progress.save(force=True)
    Retrieval.objects.filter(pk=retrieval.pk).exclude(state=JobState.CANCELLED).update(
        state=state, error=error[:2000], finished_at=timezone.now())
    retrieval.refresh_from_db()
    audit_record(actor=f"pacs:{retrieval.source.name}", actor_role="pacs", action=Action.PACS_RETRIEVE,
                 outcome=Outcome.SUCCESS if retrieval.state == JobState.DONE else Outcome.FAILURE,
                 patient_pseudonym=retrieval.pseudonym, study=retrieval.study_instance_uid,
                 details={"pacs": retrieval.source.name, "method": retrieval.method, "step": retrieval.state,
                          "received": retrieval.received, "expected": retrieval.expected,
                          "failed": retrieval.failed, "retrieval": retrieval.pk,
                          "requested_by": retrieval.requested_by})
    close_old_connections()
    return retrieval


def _int(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
