"""The viewer page: the study opens here; frames then come over the websocket.

A consultant session reaches it too (the route rule admits a capability; the
access gate has already refused anyone else not signed in), but only for a
study its share grants: ``study_for_viewer`` asks the policy.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import login_not_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from gateway.net import client_address
from gateway.policy import Permission, may
from gateway.sharing.principal import audit_fields
from gateway.sharing.services import share_use_record
from imaging.access import StudyNotFound, study_for_viewer
from imaging.findings import findings_csv, findings_xlsx
from imaging.pacs_retrieve import retrieval_under_way


@login_not_required  # the access gate admits only a two-factor user or a consultant session
@require_GET
def viewer(request: HttpRequest, study: str) -> HttpResponse:
    principal: Any = request.user
    consultant = getattr(principal, "is_capability", False) is True
    try:
        found = study_for_viewer(principal=principal, study_uid=study)
    except StudyNotFound:
        audit_record(**audit_fields(principal), action=Action.STUDY_OPEN, outcome=Outcome.DENIED,
                     study=study[:64], source_ip=client_address(request))
        raise Http404("No such study.") from None
    audit_record(**audit_fields(principal), action=Action.STUDY_OPEN, outcome=Outcome.SUCCESS,
                 patient_pseudonym=found.patient_pseudonym, study=found.study_uid,
                 source_ip=client_address(request),
                 details={"series": [s.modality for s in found.series]})
    if consultant:
        share_use_record(principal=principal, source_ip=client_address(request), what="viewer page",
                         study=found.study_uid, pseudonym=found.patient_pseudonym)
    return render(request, "rendering/viewer.html", {
        "study_id": found.study_uid, "consultant": consultant,
        "can_share": not consultant and may(principal, Permission.STUDY_SHARE, found.study_uid),
        "retrieval": retrieval_under_way(study_uid=found.study_uid)
        if may(principal, Permission.STUDY_RETRIEVE) else None})


FINDING_FORMATS = {
    "xlsx": ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", findings_xlsx),
    "csv": ("text/csv; charset=utf-8", findings_csv),
}


@require_GET
def findings_export(request: HttpRequest, study: str, extension: str) -> HttpResponse:
    """The study's findings table as XLSX or CSV (audited as an export)."""
    principal: Any = request.user
    try:
        found = study_for_viewer(principal=principal, study_uid=study)
    except StudyNotFound:
        audit_record(**audit_fields(principal), action=Action.EXPORT, outcome=Outcome.DENIED,
                     study=study[:64], source_ip=client_address(request), details={"what": "findings"})
        raise Http404("No such study.") from None
    content_type, build = FINDING_FORMATS[extension]
    body = build(found.study_uid)
    audit_record(**audit_fields(principal), action=Action.EXPORT, outcome=Outcome.SUCCESS,
                 patient_pseudonym=found.patient_pseudonym, study=found.study_uid,
                 source_ip=client_address(request), details={"what": "findings", "format": extension})
    response = HttpResponse(body, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="findings-{found.study_uid}.{extension}"'
    return response
