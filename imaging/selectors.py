"""Reads for the worklist. Callers are authorised by the policy before they get here."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from gateway import keys
from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from gateway.policy import Permission, may
from imaging.identity.models import PatientIdentity, StudyIdentity
from imaging.models import Study, VolumeState
from imaging.reports import report_summaries

SEARCH_LIMIT = 50


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


def patient_search(*, principal: Any, name: str = "", patient_id: str = "",
                   birth_date: date | None = None, source_ip: str = "") -> list[PatientRow]:
    """Patients matching every given criterion, audited with its parameters (keyed hashes).

    Roles with ``study.view`` also get each patient's studies (pseudonymised
    UIDs); others with ``patient.search`` (administrative staff) see
    demographics only.
    """
    if not may(principal, Permission.PATIENT_SEARCH):
        raise SearchRefused("patient search is not granted")
    criteria = {"name": name.strip(), "patient_id": patient_id.strip(),
                "birth_date": birth_date.isoformat() if birth_date else ""}
    audit_record(actor=principal, action=Action.PATIENT_SEARCH, outcome=Outcome.SUCCESS,
                 source_ip=source_ip,
                 details={"criteria": {k: search_value_digest(v) for k, v in criteria.items() if v}})
    if not any(criteria.values()):
        return []
    identities = PatientIdentity.objects.all()
    if criteria["name"]:
        for part in criteria["name"].replace(",", " ").split():
            identities = identities.filter(patient_name__icontains=part)
    if criteria["patient_id"]:
        identities = identities.filter(patient_id=criteria["patient_id"])
    if birth_date:
        identities = identities.filter(patient_birth_date=birth_date)
    rows = [PatientRow(i.pseudonym, i.patient_name, i.patient_id, i.issuer_of_patient_id,
                       i.patient_birth_date, i.patient_sex)
            for i in identities.order_by("patient_name", "patient_id")[:SEARCH_LIMIT]]
    if rows and may(principal, Permission.STUDY_VIEW):
        _attach_studies(rows)
    elif rows and may(principal, Permission.PATIENT_DEMOGRAPHICS):
        _attach_report_states(rows)
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
            f"{dates.get(uid) or 'undated'}: report {summary.label}")


def _attach_studies(rows: list[PatientRow]) -> None:
    by_pseudonym = {row.pseudonym: row for row in rows}
    for row in rows:
        row.studies = []
    studies = (Study.objects.filter(patient__pseudonym__in=by_pseudonym)
               .select_related("patient").prefetch_related("series").order_by("-study_date"))
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
