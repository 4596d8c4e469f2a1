"""The worklist (local store and the hospital's PACS) and PACS retrievals: thin, selectors do the work."""

from __future__ import annotations

from datetime import date
from typing import Any

from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_POST

from gateway.access import require
from gateway.audit.catalogue import Action
from gateway.net import client_address
from gateway.policy import Permission, may
from imaging.models import JobState, PacsSend, Retrieval
from imaging.pacs_query import Criteria, pacs_search, pacs_sources
from imaging.pacs_retrieve import RetrieveError, retrieval_cancel, retrieval_request
from imaging.selectors import patient_search, worklist_merge, worklist_sorted
from rendering.said import said

TEXT_FIELDS = {"name": 128, "patient_id": 64, "modality": 16, "accession": 64, "report": 8, "sort": 8}
REPORT_STATES = ("none", "draft", "signed")
PAGE_ROWS = 25
DATE_FIELDS = ("birth_date", "date_from", "date_to")
DATE_NAMES = {"birth_date": gettext_lazy("Birth date"), "date_from": gettext_lazy("Date from"),
              "date_to": gettext_lazy("Date to")}
"""Each date field as an error names it."""


def _criteria(request: HttpRequest) -> tuple[Criteria, dict[str, str], str]:
    raw = {key: request.GET.get(key, "")[:limit] for key, limit in TEXT_FIELDS.items()}
    raw.update({key: request.GET.get(key, "")[:10] for key in DATE_FIELDS})
    dates: dict[str, date | None] = {}
    error = ""
    for key in DATE_FIELDS:
        try:
            dates[key] = date.fromisoformat(raw[key]) if raw[key] else None
        except ValueError:
            dates[key] = None
            # Translators: YYYY-MM-DD is the date format the search form takes; keep it as it is.
            error = _("%(field)s must be YYYY-MM-DD.") % {"field": DATE_NAMES[key]}
    if raw["report"] not in ("", *REPORT_STATES):
        # Translators: none, draft and signed are the values the search takes (kept as they are).
        error = _("Report status must be none, draft or signed.")
    criteria = Criteria(name=raw["name"], patient_id=raw["patient_id"], birth_date=dates["birth_date"],
                        date_from=dates["date_from"], date_to=dates["date_to"], modality=raw["modality"],
                        accession=raw["accession"], report=raw["report"] if not error else "")
    return criteria, raw, error


@require(Permission.PATIENT_SEARCH, audit_as=Action.PATIENT_SEARCH)
def worklist(request: HttpRequest) -> HttpResponse:
    """Without criteria: the patients of the most recent studies; with them, the search, the PACS too."""
    criteria, raw, error = _criteria(request)
    rows: list[Any] = []
    pacs_problems: list[str] = []
    searches_pacs = may(request.user, Permission.STUDY_RETRIEVE) and bool(pacs_sources())
    if not error:
        rows = patient_search(principal=request.user, criteria=criteria, source_ip=client_address(request))
        if (searches_pacs and criteria.any() and criteria.report in ("", "none")
                and request.GET.get("pacs", "1") != "0"):
            answers, pacs_problems = pacs_search(principal=request.user, criteria=criteria,
                                                 source_ip=client_address(request))
            rows = worklist_merge(rows, answers)
    page = Paginator(worklist_sorted(rows, raw["sort"]), PAGE_ROWS).get_page(request.GET.get("page"))
    return render(request, "imaging/worklist.html", {
        **raw, "error": error, "searched": criteria.any(), "rows": page.object_list, "page": page,
        "total": len(rows), "pacs_problems": pacs_problems, "searches_pacs": searches_pacs,
        "report_states": REPORT_STATES, "query": _query_without(request, "page"),
        "sort_query": _query_without(request, "page", "sort"),
        "shows_studies": may(request.user, Permission.STUDY_VIEW),
        "shows_reports": may(request.user, Permission.PATIENT_DEMOGRAPHICS),
    })


def _query_without(request: HttpRequest, *keys: str) -> str:
    """The request's query string without ``keys``, to build page and sort links that keep the filters."""
    query = request.GET.copy()
    for key in keys:
        query.pop(key, None)
    return query.urlencode()


@require_POST
@require(Permission.STUDY_RETRIEVE, audit_as=Action.PACS_RETRIEVE)
def retrieve(request: HttpRequest) -> HttpResponse:
    remote = request.POST.get("remote", "")
    if not remote.isdigit():
        raise Http404("no such PACS answer")
    try:
        retrieval = retrieval_request(principal=request.user, remote_study_id=int(remote),
                                      source_ip=client_address(request))
    except RetrieveError as why:
        return render(request, "imaging/retrieval.html", {"retrieval": None, "error": said(why)}, status=409)
    return redirect("imaging:retrieval", retrieval=retrieval.pk)


def _retrieval(pk: int) -> Retrieval:
    found = Retrieval.objects.filter(pk=pk).select_related("source").first()
    if found is None:
        raise Http404("no such retrieval")
    return found


def retrieval_wire(retrieval: Retrieval) -> dict[str, Any]:
    keys = ("modality", "description", "expected", "received", "failed", "complete")
    series = [{key: entry.get(key) for key in keys} for entry in retrieval.series]
    return {"id": retrieval.pk, "state": retrieval.state, "pacs": retrieval.source.name,
            "method": retrieval.method, "expected": retrieval.expected, "received": retrieval.received,
            "failed": retrieval.failed,
            "series": series, "error": retrieval.error, "study": retrieval.study_instance_uid,
            "viewable": any(entry.get("complete") for entry in retrieval.series)}


@require(Permission.STUDY_RETRIEVE, audit_as=Action.PACS_RETRIEVE)
def retrieval(request: HttpRequest, retrieval: int) -> HttpResponse:
    found = _retrieval(retrieval)
    if request.GET.get("format") == "json":
        return JsonResponse(retrieval_wire(found))
    return render(request, "imaging/retrieval.html", {"retrieval": found, "wire": retrieval_wire(found)})


@require_POST
@require(Permission.STUDY_RETRIEVE, audit_as=Action.PACS_RETRIEVE)
def retrieval_stop(request: HttpRequest, retrieval: int) -> HttpResponse:
    retrieval_cancel(retrieval=_retrieval(retrieval))
    return redirect("imaging:retrieval", retrieval=retrieval)


@require(Permission.STUDY_RETRIEVE, audit_as=Action.PACS_SEND)
def send_queue(request: HttpRequest) -> HttpResponse:
    sends = (PacsSend.objects.select_related("destination").order_by("-queued_at")[:200])
    waiting = PacsSend.objects.filter(state=JobState.QUEUED).count()
    retrievals = Retrieval.objects.select_related("source").order_by("-requested_at")[:50]
    return render(request, "imaging/pacs_queue.html", {"sends": sends, "waiting": waiting,
                                                       "retrievals": retrievals})
