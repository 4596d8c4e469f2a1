"""Results sent back to the PACS, re-identified for it alone, through a durable queue.

Every result the gateway adds to a study (SR, SEG, REG, KOS, Encapsulated PDF:
:func:`imaging.findings_dicom.derived_series_store`) is queued, in the same
transaction, to each active peer registered with ``send_results``. ``pacs_worker``
drains the queue: objects are read from the encrypted store, re-identified in
memory for that destination (the patient's name, ID, birth date and sex, and the
study's accession number, ID, real date and referring physician from the identity
zone; every replacement UID mapped back to the hospital's original), and sent with
C-STORE. A PACS that is down keeps its rows queued, retried with back-off (5 s
doubling to 10 minutes) for as long as it takes; a restart loses nothing, the queue
is rows in the clinical zone. The stored object itself is never re-identified.
"""

from __future__ import annotations

import copy
import io
import logging
from collections.abc import Iterable
from datetime import timedelta

import pydicom
from django.db import transaction
from django.utils import timezone
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from imaging import storage
from imaging.dicom_net import SendError, SendResult, dicom_send
from imaging.dicomweb_client import stow_send
from imaging.identity.models import PatientIdentity, StudyIdentity, UIDMap
from imaging.models import DicomDestination, Instance, JobState, PacsSend, Study

log = logging.getLogger(__name__)

BATCH = 50
BACKOFF_FIRST_S = 5
BACKOFF_MAX_S = 600
DEIDENTIFICATION_MARKS = ("PatientIdentityRemoved", "DeidentificationMethod",
                          "DeidentificationMethodCodeSequence")


def results_queue(*, study: Study, sop_instance_uids: Iterable[str], modality: str) -> int:
    """Queue results just added to ``study`` for every peer that takes them; returns rows queued.

    Call inside the transaction that adds them, so they are queued exactly when they exist."""
    destinations = list(DicomDestination.objects.filter(active=True, send_results=True))
    now = timezone.now()
    uids = list(sop_instance_uids)
    rows = [PacsSend(destination=destination, sop_instance_uid=uid, modality=modality, next_attempt_at=now,
                     study_instance_uid=study.study_instance_uid)
            for destination in destinations for uid in uids]
    PacsSend.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)


def reidentified(ds: Dataset, *, study_uid: str, pseudonym: str) -> Dataset:
    """``ds`` as the hospital's PACS knows the patient and study (a copy; ``ds`` is left alone)."""
    out = copy.deepcopy(ds)  # the UIDs are restored in place, element by element
    patient = PatientIdentity.objects.filter(pseudonym=pseudonym).first()
    study = StudyIdentity.objects.filter(study_instance_uid=study_uid).first()
    if patient is None or study is None:
        raise LookupError("the identity zone holds no identity for this study")
    out.PatientName = patient.patient_name
    out.PatientID = patient.patient_id
    if patient.issuer_of_patient_id:
        out.IssuerOfPatientID = patient.issuer_of_patient_id
    out.PatientBirthDate = patient.patient_birth_date.strftime("%Y%m%d") if patient.patient_birth_date else ""
    out.PatientSex = patient.patient_sex
    out.AccessionNumber = study.accession_number
    out.StudyID = study.study_id
    out.StudyDate = study.study_date.strftime("%Y%m%d") if study.study_date else ""
    out.StudyTime = study.study_time
    out.ReferringPhysicianName = study.referring_physician_name
    for keyword in DEIDENTIFICATION_MARKS:
        if keyword in out:
            delattr(out, keyword)
    _uids_restore(out)
    return out


def _uids_restore(ds: Dataset) -> None:
    elements: list[DataElement] = []

    def collect(_dataset: Dataset, element: DataElement) -> None:
        if element.VR == "UI" and element.value:
            elements.append(element)

    ds.walk(collect)
    values = {str(v) for element in elements for v in _values(element)}
    originals = dict(UIDMap.objects.filter(replacement__in=values).values_list("replacement", "original"))
    for element in elements:
        restored = [originals.get(str(v), str(v)) for v in _values(element)]
        element.value = restored if element.VM > 1 else restored[0]
    meta = getattr(ds, "file_meta", None)
    if meta is not None and str(meta.get("MediaStorageSOPInstanceUID", "")) in originals:
        meta.MediaStorageSOPInstanceUID = pydicom.uid.UID(originals[str(meta.MediaStorageSOPInstanceUID)])


def _values(element: DataElement) -> list[object]:
    return list(element.value) if element.VM > 1 else [element.value]


def sends_due(*, limit: int = BATCH) -> list[PacsSend]:
    return list(PacsSend.objects.filter(state=JobState.QUEUED, next_attempt_at__lte=timezone.now())
                .select_related("destination").order_by("next_attempt_at", "id")[:limit])


def sends_drain(*, limit: int = BATCH) -> int:
    """Send what is due, one association per destination; returns how many were delivered."""
    due = sends_due(limit=limit)
    delivered = 0
    for destination in {send.destination for send in due}:
        delivered += _send_to(destination, [send for send in due if send.destination_id == destination.pk])
    return delivered


def _send_to(destination: DicomDestination, sends: list[PacsSend]) -> int:
    if not destination.active:
        PacsSend.objects.filter(pk__in=[s.pk for s in sends]).update(
            state=JobState.CANCELLED, last_error="the destination was withdrawn")
        return 0
    prepared: dict[str, tuple[PacsSend, Dataset]] = {}
    for send in sends:
        try:
            prepared[send.sop_instance_uid] = (send, _prepared(send))
        except (LookupError, storage.StorageError, ValueError) as error:
            _retry_later(send, f"cannot be prepared: {error}")
    if not prepared:
        return 0
    datasets = [ds for _, ds in prepared.values()]
    try:
        result = _deliver(destination, datasets)
    except SendError as error:
        for send, _ in prepared.values():
            _retry_later(send, str(error))
        _audit(destination, [s for s, _ in prepared.values()], outcome=Outcome.FAILURE, why=str(error))
        return 0
    replacement_of = {str(ds.SOPInstanceUID): uid for uid, (_, ds) in prepared.items()}
    failed = {replacement_of.get(uid, uid): why for uid, why in result.failed}
    delivered = [send for uid, (send, _) in prepared.items() if uid not in failed]
    PacsSend.objects.filter(pk__in=[s.pk for s in delivered]).update(
        state=JobState.DONE, sent_at=timezone.now(), last_error="")
    for uid, why in failed.items():
        _retry_later(prepared[uid][0], why)
    if delivered:
        _audit(destination, delivered, outcome=Outcome.SUCCESS, why="")
    if failed:
        _audit(destination, [prepared[uid][0] for uid in failed], outcome=Outcome.FAILURE,
               why="; ".join(sorted(set(failed.values())))[:500])
    return len(delivered)


def _deliver(destination: DicomDestination, datasets: list[Dataset]) -> SendResult:
    if destination.dicomweb_url:
        return stow_send(destination.dicomweb_url, [(str(ds.SOPInstanceUID), _part10(ds)) for ds in datasets])
    return dicom_send(datasets, ae_title=destination.ae_title, host=destination.host, port=destination.port,
                      tls=destination.tls)


def _part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _prepared(send: PacsSend) -> Dataset:
    instance = (Instance.objects.filter(sop_instance_uid=send.sop_instance_uid)
                .select_related("series__study__patient").first())
    if instance is None:
        raise LookupError("the object is no longer in the study")
    ds = pydicom.dcmread(io.BytesIO(storage.object_get(instance.object_id)))
    study = instance.series.study
    return reidentified(ds, study_uid=study.study_instance_uid, pseudonym=study.patient.pseudonym)


def _retry_later(send: PacsSend, why: str) -> None:
    attempts = send.attempts + 1
    delay = min(BACKOFF_FIRST_S * 2 ** (attempts - 1), BACKOFF_MAX_S)
    PacsSend.objects.filter(pk=send.pk).update(
        attempts=attempts, last_error=why[:2000], next_attempt_at=timezone.now() + timedelta(seconds=delay))


def _audit(destination: DicomDestination, sends: list[PacsSend], *, outcome: Outcome, why: str) -> None:
    studies: dict[str, list[PacsSend]] = {}
    for send in sends:
        studies.setdefault(send.study_instance_uid, []).append(send)
    pseudonyms = dict(Study.objects.filter(study_instance_uid__in=studies)
                      .values_list("study_instance_uid", "patient__pseudonym"))
    for study_uid, rows in studies.items():
        audit_record(actor=f"pacs:{destination.name}", actor_role="pacs", action=Action.PACS_SEND,
                     outcome=outcome, patient_pseudonym=pseudonyms.get(study_uid, ""), study=study_uid,
                     details={"pacs": destination.name, "objects": len(rows),
                              "modalities": sorted({r.modality for r in rows}),
                              **({"why": why} if why else {})})


def sends_retry_now(*, destination: DicomDestination) -> int:
    """Make every queued send to ``destination`` due now (IT: 'the PACS is back')."""
    with transaction.atomic():
        return PacsSend.objects.filter(destination=destination, state=JobState.QUEUED).update(
            next_attempt_at=timezone.now())
