"""Views of the gate itself: the health probe and the signed-in home page."""

from __future__ import annotations

from django.contrib.auth.decorators import login_not_required
from django.db import DatabaseError, connections
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy as _
from django.views.decorators.http import require_GET

from gateway.policy import Access, route_access, route_rule

ZONES = ("default", "identity", "audit")


def _database_reachable(alias: str) -> bool:
    try:
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
            return cursor.fetchone() == (1,)
    except DatabaseError:
        return False


@require_GET
@login_not_required
def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness and database reachability, for load balancers; never shows data."""
    databases = {alias: "ok" if _database_reachable(alias) else "unreachable" for alias in ZONES}
    healthy = all(state == "ok" for state in databases.values())
    return JsonResponse(
        {"status": "ok" if healthy else "degraded", "databases": databases},
        status=200 if healthy else 503,
    )


# Translators: PACS is the hospital's picture archiving and communication system (its image archive).
START_PAGES: tuple[tuple[str, Promise, Promise], ...] = (
    ("imaging:worklist", _("Worklist"), _("patients and studies, here and in the hospital's PACS")),
    ("imaging:pacs_queue", _("PACS"), _("retrievals, and results sent back to the PACS")),
    ("imaging:raw_import", _("Raw import"),
     _("NIfTI, NRRD and MetaImage volumes as DICOM, into a new or an existing study")),
    ("sharing:active", _("Active shares"),
     _("shares with external consultants, their last use, revocation")),
    ("rendering:layouts", _("Layouts and rules"),
     _("your hanging rules and grids as data; the hospital's, read-only")),
    ("rendering:layouts_hospital", _("Hospital layouts"),
     _("hanging rules and grids every reader gets (audited)")),
    ("audit:console", _("Audit console"), _("who did what: filter, export, verify the chain")),
    ("admin:index", _("Administration"), _("accounts, roles, second factors, devices")),
)


def start_pages(principal: object) -> list[tuple[str, Promise, Promise]]:
    """(URL, title, what it is for) of each start page the policy lets ``principal`` reach."""
    return [(reverse(name), title, purpose) for name, title, purpose in START_PAGES
            if route_access(principal, route_rule(name)) is Access.ALLOW]


@require_GET
def home(request: HttpRequest) -> HttpResponse:
    return render(request, "gateway/home.html", {"pages": start_pages(request.user)})
