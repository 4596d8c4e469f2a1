"""The viewer page: the study opens here; frames then come over the websocket."""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from gateway.net import client_address
from imaging.access import StudyNotFound, study_for_viewer


@require_GET
def viewer(request: HttpRequest, study: str) -> HttpResponse:
    try:
        found = study_for_viewer(principal=request.user, study_uid=study)
    except StudyNotFound:
        audit_record(actor=request.user, action=Action.STUDY_OPEN, outcome=Outcome.DENIED,
                     study=study[:64], source_ip=client_address(request))
        raise Http404("No such study.") from None
    audit_record(actor=request.user, action=Action.STUDY_OPEN, outcome=Outcome.SUCCESS,
                 patient_pseudonym=found.patient_pseudonym, study=found.study_uid,
                 source_ip=client_address(request),
                 details={"series": [s.modality for s in found.series]})
    return render(request, "rendering/viewer.html", {"study_id": found.study_uid})
