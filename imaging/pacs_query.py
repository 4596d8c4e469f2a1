"""Searching the hospital's PACS with C-FIND (Study Root), and answers kept in the identity zone only.

A search is audited like a local one: the criteria as keyed hashes, never as
text. Each answer is identifying (name, ID, birth date, original UIDs), so it is
written to :class:`~imaging.identity.models.RemoteStudy` in the identity zone and
nowhere else; the worklist shows it and a retrieval names it by its row id.
Answers older than a day that no unfinished retrieval names are deleted at each
search, so the identity zone does not keep a history of what was looked up.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from gateway.i18n import gettext_noop
from gateway.policy import Permission, may
from imaging.dicom_net import STUDY_ROOT_FIND, Peer, SendError, associated, entity
from imaging.dicomweb_client import DicomwebError, qido_series, qido_studies
from imaging.identity.models import RemoteStudy, StudyIdentity
from imaging.models import DicomDestination, JobState, Retrieval
from rendering.said import SaidError, said

ANSWER_LIMIT = 200
"""The most studies one search takes from one PACS; the rest are cancelled."""
ANSWERS_KEPT = dt.timedelta(days=1)
CONNECT_S = 5
IDENTITY = "identity"
PENDING = frozenset({0xFF00, 0xFF01})
STUDY_KEYS = ("StudyInstanceUID", "StudyDate", "StudyDescription", "AccessionNumber", "ModalitiesInStudy",
              "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances", "PatientName", "PatientID",
              "IssuerOfPatientID", "PatientBirthDate", "PatientSex")


class QueryError(SaidError, RuntimeError):
    """The PACS could not be searched; the message says why (for the page: said to the reader)."""


@dataclass(frozen=True)
class Criteria:
    name: str = ""
    patient_id: str = ""
    birth_date: dt.date | None = None
    date_from: dt.date | None = None
    date_to: dt.date | None = None
    modality: str = ""
    accession: str = ""
    report: str = ""
    """Local studies only: none, draft or signed (the latest version's status)."""

    @property
    def name_parts(self) -> list[str]:
        """The name's parts with wildcards dropped: ``*`` alone asks for every name."""
        cleaned = self.name.replace(",", " ").replace("^", " ").replace("*", " ").replace("?", " ")
        return cleaned.split()

    def audited(self) -> dict[str, str]:
        return {key: (value.isoformat() if isinstance(value, dt.date) else str(value).strip())
                for key, value in self.__dict__.items() if value}

    def any(self) -> bool:
        return bool(self.audited())


def pacs_sources() -> list[DicomDestination]:
    """The PACS IT registered for query/retrieve, active ones only."""
    return list(DicomDestination.objects.filter(active=True).exclude(retrieve=""))


def pacs_search(*, principal: Any, criteria: Criteria,
                source_ip: str = "") -> tuple[list[RemoteStudy], list[str]]:
    """Every active PACS searched; (answers, one line per PACS that could not be searched).

    Raises PermissionError when the principal may not retrieve from the PACS."""
    if not may(principal, Permission.STUDY_RETRIEVE):
        raise PermissionError("searching the PACS is not granted")
    from imaging.selectors import search_value_digest

    sources = pacs_sources()
    if not sources or not criteria.any():
        return [], []
    answers: list[RemoteStudy] = []
    problems: list[str] = []
    for source in sources:
        failed = False
        try:
            found = pacs_answers(source, criteria)
        except QueryError as error:
            problems.append(_("%(pacs)s: %(problem)s") % {"pacs": source.name, "problem": said(error)})
            found, failed = [], True
        answers.extend(found)
        audit_record(actor=principal, action=Action.PACS_QUERY,
                     outcome=Outcome.FAILURE if failed else Outcome.SUCCESS,
                     source_ip=source_ip, details={
                         "pacs": source.name, "answers": len(found),
                         "criteria": {k: search_value_digest(v) for k, v in criteria.audited().items()}})
    _answers_forget()
    return [a for a in answers if _matches_every_name_part(a, criteria)], problems


def pacs_answers(source: DicomDestination, criteria: Criteria) -> list[RemoteStudy]:
    """``source``'s answers to ``criteria``, kept in the identity zone (QueryError when it fails)."""
    return _answers_keep(source, list(_find_studies(source, criteria)))


def _query_datasets(criteria: Criteria) -> list[Dataset]:
    """The C-FIND identifiers for ``criteria``: one per spelling of the name term.

    PS3.4 leaves PN matching case-sensitive unless the PACS says otherwise (Orthanc, for one,
    matches the case given), so a name typed in lower case is also asked for as written
    in upper case and capitalised, the two ways archives hold names."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for keyword in STUDY_KEYS:
        setattr(ds, keyword, "")
    ds.PatientID = criteria.patient_id.strip()
    if criteria.birth_date:
        ds.PatientBirthDate = criteria.birth_date.strftime("%Y%m%d")
    if criteria.date_from or criteria.date_to:
        ds.StudyDate = "-".join(day.strftime("%Y%m%d") if day else ""
                                for day in (criteria.date_from, criteria.date_to))
    ds.ModalitiesInStudy = criteria.modality.strip().upper()
    ds.AccessionNumber = criteria.accession.strip()
    parts = criteria.name_parts
    if not parts:
        return [ds]
    term = max(parts, key=len)  # one wildcard term: every part is checked on the answers after
    queries = []
    for spelling in dict.fromkeys((term, term.upper(), term.capitalize())):
        query = copy.deepcopy(ds)  # a shallow copy would share the PatientName element
        query.PatientName = f"*{spelling}*"
        queries.append(query)
    return queries


def _find_studies(source: DicomDestination, criteria: Criteria) -> Iterator[Dataset]:
    seen: set[str] = set()
    for query in _query_datasets(criteria):
        for answer in find(source, query, limit=ANSWER_LIMIT, level="studies"):
            uid = str(answer.get("StudyInstanceUID", ""))
            if uid not in seen and len(seen) < ANSWER_LIMIT:
                seen.add(uid)
                yield answer


def find(source: DicomDestination, query: Dataset, *, limit: int, level: str) -> Iterator[Dataset]:
    """Answers (identifiers) from ``source`` at ``level`` (studies, or series of the query's study),
    at most ``limit``: C-FIND, or QIDO-RS for a DICOMweb peer; QueryError when it fails."""
    if source.dicomweb_url:
        yield from _qido(source.dicomweb_url, query, limit=limit, level=level)
        return
    ae = entity(timeout_s=30)
    ae.connection_timeout = CONNECT_S  # a PACS that is down must not hold the worklist page for long
    ae.add_requested_context(STUDY_ROOT_FIND)
    count = 0
    try:
        with associated(ae, Peer.of(source)) as association:
            answers = association.send_c_find(query, STUDY_ROOT_FIND)
            for status, identifier in answers:
                code = getattr(status, "Status", None)
                if code is None:
                    raise QueryError(gettext_noop("no answer: association aborted or timed out"))
                if code in PENDING and identifier is not None:
                    count += 1
                    yield identifier
                    if count >= limit:
                        association.abort()  # C-CANCEL is optional for a PACS; an abort always ends it
                        return
                elif code not in PENDING and code != 0x0000:
                    raise QueryError(gettext_noop("the PACS answered C-FIND with 0x%(code)04X"), code=code)
    except SendError as error:
        raise QueryError.from_error(error) from error


def _qido(base: str, query: Dataset, *, limit: int, level: str) -> Iterator[Dataset]:
    try:
        answers = (qido_studies(base, query, limit=limit) if level == "studies"
                   else qido_series(base, str(query.StudyInstanceUID)))
    except DicomwebError as error:
        raise QueryError.from_error(error) from error
    yield from answers[:limit]


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if value is None:
        return ""
    if isinstance(value, MultiValue):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _date(value: str) -> dt.date | None:
    try:
        return dt.datetime.strptime(value[:8], "%Y%m%d").date()  # noqa: DTZ007  (a calendar date)
    except ValueError:
        return None


def _int(value: str) -> int | None:
    return int(value) if value.isdigit() else None


def _answers_keep(source: DicomDestination, found: list[Dataset]) -> list[RemoteStudy]:
    kept = []
    with transaction.atomic(using=IDENTITY):
        for ds in found:
            uid = _text(ds, "StudyInstanceUID")[:64]
            if not uid:
                continue
            row, _ = RemoteStudy.objects.update_or_create(
                source=source.pk, original_study_instance_uid=uid, defaults={
                "patient_id": _text(ds, "PatientID")[:64],
                "issuer_of_patient_id": _text(ds, "IssuerOfPatientID")[:64],
                "patient_name": _text(ds, "PatientName")[:324],
                "patient_birth_date": _date(_text(ds, "PatientBirthDate")),
                "patient_sex": _text(ds, "PatientSex")[:16],
                "study_date": _date(_text(ds, "StudyDate")),
                "study_description": _text(ds, "StudyDescription")[:128],
                "accession_number": _text(ds, "AccessionNumber")[:64],
                "modalities": _text(ds, "ModalitiesInStudy")[:128],
                "series_count": _int(_text(ds, "NumberOfStudyRelatedSeries")),
                "instance_count": _int(_text(ds, "NumberOfStudyRelatedInstances")),
            })
            kept.append(row)
    return kept


def _answers_forget() -> None:
    named = set(Retrieval.objects.filter(state__in=(JobState.QUEUED, JobState.RUNNING))
                .values_list("remote_study", flat=True))
    (RemoteStudy.objects.filter(answered_at__lt=timezone.now() - ANSWERS_KEPT)
     .exclude(pk__in=named).delete())


def _matches_every_name_part(answer: RemoteStudy, criteria: Criteria) -> bool:
    written = answer.patient_name.replace("^", " ").lower()
    return all(part.lower() in written for part in criteria.name_parts)


def local_study_of(answer: RemoteStudy) -> str:
    """The replacement UID of the study when it is here already, else ''."""
    found = (StudyIdentity.objects.filter(original_study_instance_uid=answer.original_study_instance_uid)
             .values_list("study_instance_uid", flat=True).first())
    return found or ""
