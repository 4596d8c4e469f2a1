"""The worklist page: patient search through the policy (thin: selectors do the work)."""

from __future__ import annotations

from datetime import date

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from gateway.access import require
from gateway.audit.catalogue import Action
from gateway.net import client_address
from gateway.policy import Permission, may
from imaging.selectors import patient_search


@require(Permission.PATIENT_SEARCH, audit_as=Action.PATIENT_SEARCH)
def worklist(request: HttpRequest) -> HttpResponse:
    name = request.GET.get("name", "")[:128]
    patient_id = request.GET.get("patient_id", "")[:64]
    raw_birth = request.GET.get("birth_date", "")[:10]
    error = ""
    birth = None
    if raw_birth:
        try:
            birth = date.fromisoformat(raw_birth)
        except ValueError:
            error = "Birth date must be YYYY-MM-DD."
    searched = bool(name.strip() or patient_id.strip() or birth)
    rows = []
    if searched and not error:
        rows = patient_search(principal=request.user, name=name, patient_id=patient_id,
                              birth_date=birth, source_ip=client_address(request))
    return render(request, "imaging/worklist.html", {
        "name": name, "patient_id": patient_id, "birth_date": raw_birth, "error": error,
        "searched": searched, "rows": rows,
        "shows_studies": may(request.user, Permission.STUDY_VIEW),
        "shows_reports": may(request.user, Permission.PATIENT_DEMOGRAPHICS),
    })
