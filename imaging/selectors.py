"""Reads for the worklist. Callers are authorised by the policy before they get here."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from django.utils.translation import gettext as _

from gateway import keys
from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from gateway.policy import Permission, may
from imaging.identity.models import PatientIdentity, RemoteStudy, StudyIdentity
from imaging.models import Study, VolumeState
from imaging.pacs_query import Criteria, local_study_of
from imaging.reports import report_summaries

SEARCH_LIMIT = 200
RECENT_STUDIES = 50


@dataclass
class StudyRow:
    study_instance_uid: str  # the replacement UID: what the viewer opens
    study_date: date | None  # the real date, from the identity zone
    description: str
    modalities: list[str]
    series_count: int
    unavailable: list[str] = field(default_factory=list)
    """One line per series that cannot be shown: modality, description, why."""
    report: str = "none"
    """The study's latest report: none, draft (vN) or signed (vN)."""
    remote_id: int | None = None
    """Set for a study that is only in the PACS: the answer a retrieval names."""
    in_pacs: bool = False
    instance_count: int | None = None

    @property
    def viewable(self) -> bool:
        return len(self.unavailable) < self.series_count


@dataclass
class PatientRow:
    pseudonym: str
    patient_name: str
    patient_id: str
    issuer: str
    birth_date: date | None
    sex: str
    studies: list[StudyRow] | None = field(default=None)  # None: not shown to this principal
    reports: list[str] | None = field(default=None)
    """For administrative staff, who see no studies: that a study has a report, and its status."""


class SearchRefused(PermissionError):
    pass


def search_value_digest(value: str) -> str:
    """Keyed hash of a search value for the audit log: names are PHI, the audit zone holds none."""
    key = keys.keyring(keys.KeyPurpose.PSEUDONYM).active.material
    message = b"audit-search\x1f" + value.strip().lower().encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def patient_search(*, principal: Any, criteria: Criteria, source_ip: str = "") -> list[PatientRow]:
    """Patients matching every given criterion, audited with its parameters (keyed hashes).

    Roles with ``study.view`` also get each patient's studies (pseudonymised
    UIDs); others with ``patient.search`` (administrative staff) see
    demographics only. Study criteria (date range, modality, accession, report
    status) keep the patients with a matching study, and only those studies. A
    name of ``*`` asks for every patient. With no criterion at all, the list is
    the patients of the most recently received studies (``RECENT_STUDIES``).
    """
    if not may(principal, Permission.PATIENT_SEARCH):
        raise SearchRefused("patient search is not granted")
    listing = "search" if criteria.any() else "recent"
    audit_record(actor=principal, action=Action.PATIENT_SEARCH, outcome=Outcome.SUCCESS,
                 source_ip=source_ip,
                 details={"criteria": {k: search_value_digest(v) for k, v in criteria.audited().items()},
                          **({"listing": listing} if listing == "recent" else {})})
    studies = _studies_matching(criteria) if listing == "search" else _studies_recent()
    identities = PatientIdentity.objects.all()
    for part in criteria.name_parts:
        identities = identities.filter(patient_name__icontains=part)
    if criteria.patient_id.strip():
        identities = identities.filter(patient_id=criteria.patient_id.strip())
    if criteria.birth_date:
        identities = identities.filter(patient_birth_date=criteria.birth_date)
    if studies is not None:
        identities = identities.filter(pseudonym__in={pseudonym for pseudonym in studies.values()})
    rows = [PatientRow(i.pseudonym, i.patient_name, i.patient_id, i.issuer_of_patient_id,
                       i.patient_birth_date, i.patient_sex)
            for i in identities.order_by("patient_name", "patient_id")[:SEARCH_LIMIT]]
    if rows and may(principal, Permission.STUDY_VIEW):
        _attach_studies(rows, only=set(studies) if studies is not None else None)
        if criteria.report:
            rows = _with_report(rows, criteria.report)
    elif rows and may(principal, Permission.PATIENT_DEMOGRAPHICS):
        _attach_report_states(rows)
    return rows


def _studies_recent() -> dict[str, str]:
    """Study UID -> pseudonym of the most recently received studies."""
    return dict(Study.objects.order_by("-created_at", "-id")
                .values_list("study_instance_uid", "patient__pseudonym")[:RECENT_STUDIES])


def _with_report(rows: list[PatientRow], status: str) -> list[PatientRow]:
    for row in rows:
        row.studies = [study for study in row.studies or [] if study.report.split(" ")[0] == status]
    return [row for row in rows if row.studies]


def _latest_first(row: PatientRow) -> tuple[int, int]:
    """Patients with the newest study first; those without a dated study last."""
    dates = [study.study_date for study in row.studies or [] if study.study_date]
    return (0, -max(dates).toordinal()) if dates else (1, 0)


WORKLIST_ORDER = {
    "name": lambda row: (row.patient_name.lower(), row.patient_id),
    "id": lambda row: (row.patient_id, row.patient_name.lower()),
    "-date": _latest_first,
}
"""How the worklist may be sorted: by name, by patient ID, latest study first."""


def worklist_sorted(rows: list[PatientRow], order: str) -> list[PatientRow]:
    return sorted(rows, key=WORKLIST_ORDER.get(order, WORKLIST_ORDER["name"]))


def _studies_matching(criteria: Criteria) -> dict[str, str] | None:
    """Study UID -> pseudonym of the studies meeting the study criteria; None when there are none."""
    if not any((criteria.date_from, criteria.date_to, criteria.modality.strip(), criteria.accession.strip())):
        return None  # the report status is checked on the rows (it lives with the reports)
    found = StudyIdentity.objects.all()
    if criteria.date_from:
        found = found.filter(study_date__gte=criteria.date_from)
    if criteria.date_to:
        found = found.filter(study_date__lte=criteria.date_to)
    if criteria.accession.strip():
        found = found.filter(accession_number=criteria.accession.strip())
    matching = dict(found.values_list("study_instance_uid", "pseudonym")[:SEARCH_LIMIT * 20])
    if criteria.modality.strip():
        with_modality = set(Study.objects.filter(
            study_instance_uid__in=matching, series__modality__iexact=criteria.modality.strip())
            .values_list("study_instance_uid", flat=True))
        matching = {uid: pseudonym for uid, pseudonym in matching.items() if uid in with_modality}
    return matching


def worklist_merge(rows: list[PatientRow], answers: list[RemoteStudy]) -> list[PatientRow]:
    """The local rows with the PACS's answers added: a study already here is marked, not repeated;
    a patient known only to the PACS gets a row of their own."""
    by_patient = {(row.issuer, row.patient_id): row for row in rows}
    here = {row_study.study_instance_uid: row_study for row in rows for row_study in (row.studies or [])}
    for answer in answers:
        local = local_study_of(answer)
        if local in here:
            here[local].in_pacs = True
            continue
        key = (answer.issuer_of_patient_id, answer.patient_id)
        row = by_patient.get(key)
        if row is None:
            row = PatientRow("", answer.patient_name, answer.patient_id, answer.issuer_of_patient_id,
                             answer.patient_birth_date, answer.patient_sex, studies=[])
            by_patient[key] = row
            rows.append(row)
        if row.studies is None:
            continue
        row.studies.append(StudyRow(
            study_instance_uid=local, study_date=answer.study_date, description=answer.study_description,
            modalities=[m for m in answer.modalities.split("\\") if m], series_count=answer.series_count or 0,
            report="none" if local else "", remote_id=answer.pk, in_pacs=True,
            instance_count=answer.instance_count))
    return rows


def _attach_report_states(rows: list[PatientRow]) -> None:
    """Each patient's studies' report status, and nothing else of the studies."""
    by_pseudonym = {row.pseudonym: row for row in rows}
    studies = dict(Study.objects.filter(patient__pseudonym__in=by_pseudonym)
                   .values_list("study_instance_uid", "patient__pseudonym"))
    dates = dict(StudyIdentity.objects.filter(study_instance_uid__in=studies)
                 .values_list("study_instance_uid", "study_date"))
    for row in rows:
        row.reports = []
    for uid, summary in sorted(report_summaries(studies).items(), key=lambda item: str(dates.get(item[0]))):
        by_pseudonym[studies[uid]].reports.append(  # type: ignore[union-attr]
            # Translators: a line of the worklist: a study's date, then its report's status.
            _("%(date)s: report %(state)s") % {"date": dates.get(uid) or _("undated"),
                                               "state": summary.label})


def _attach_studies(rows: list[PatientRow], *, only: set[str] | None = None) -> None:
    by_pseudonym = {row.pseudonym: row for row in rows}
    for row in rows:
        row.studies = []
    studies = (Study.objects.filter(patient__pseudonym__in=by_pseudonym)
               .select_related("patient").prefetch_related("series").order_by("-study_date"))
    if only is not None:
        studies = studies.filter(study_instance_uid__in=only)
    real = {s.study_instance_uid: s for s in StudyIdentity.objects.filter(
        pseudonym__in=by_pseudonym)}
    reports = report_summaries(study.study_instance_uid for study in studies)
    for study in studies:
        identity = real.get(study.study_instance_uid)
        series = list(study.series.all())
        by_pseudonym[study.patient.pseudonym].studies.append(StudyRow(  # type: ignore[union-attr]
            study_instance_uid=study.study_instance_uid,
            study_date=identity.study_date if identity else None,
            description=identity.study_description if identity else "",
            modalities=sorted({s.modality for s in series if s.modality}),
            series_count=len(series),
            unavailable=[f"{s.modality} {s.series_description}".strip() + f": {s.volume_reason}"
                         for s in series if s.volume_state == VolumeState.REFUSED],
            report=reports[study.study_instance_uid].label))
