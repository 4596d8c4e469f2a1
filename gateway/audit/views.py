"""The auditor console: filter, page, export and verify the audit log.

Every read, export, patient-ID resolution and verification run is itself an
audit event, recorded before the data is shown (fail closed).
"""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext
from django.views.decorators.http import require_GET, require_POST

from gateway.access import require
from gateway.audit import exports
from gateway.audit.catalogue import Action, Outcome
from gateway.audit.forms import AuditFilterForm
from gateway.audit.selectors import EventFilter, chain_status_latest, events_filter
from gateway.audit.services import audit_outbox_pending, audit_record
from gateway.audit.verification import chain_verify
from gateway.net import client_address
from gateway.policy import Permission, may
from imaging.identity.selectors import pseudonyms_for_patient

PAGE_SIZE = 50
# A pseudonym cell's link chooses that patient instead of whichever the filter named.
_PATIENT_FIELDS = ("patient", "patient_id", "issuer")


def _criteria(request: HttpRequest, form: AuditFilterForm) -> EventFilter:
    patient_id = form.cleaned_data.get("patient_id")
    if not patient_id:
        return form.criteria()
    pseudonyms = pseudonyms_for_patient(patient_id=patient_id,
                                        issuer=form.cleaned_data.get("issuer") or None)
    audit_record(actor=request.user, action=Action.AUDIT_RESOLVE, outcome=Outcome.SUCCESS,
                 source_ip=client_address(request),
                 details={"matched_pseudonyms": pseudonyms})
    return form.criteria(resolved_pseudonyms=pseudonyms)


def _filter_form(request: HttpRequest) -> AuditFilterForm:
    return AuditFilterForm(request.GET or None,
                           may_resolve=may(request.user, Permission.AUDIT_RESOLVE))


@require_GET
@require(Permission.AUDIT_READ, audit_as=Action.AUDIT_READ)
def console(request: HttpRequest) -> HttpResponse:
    form = _filter_form(request)
    criteria = _criteria(request, form) if form.is_valid() else None
    page = None
    if criteria is not None or not request.GET:
        criteria = criteria or EventFilter()
        page_number = request.GET.get("page", "1")
        audit_record(actor=request.user, action=Action.AUDIT_READ, outcome=Outcome.SUCCESS,
                     source_ip=client_address(request),
                     details={**criteria.described(), "page": page_number[:8]})
        page = Paginator(events_filter(criteria), PAGE_SIZE).get_page(page_number)
    query = request.GET.copy()
    query.pop("page", None)
    other_than_patient = query.copy()
    for name in _PATIENT_FIELDS:
        other_than_patient.pop(name, None)
    return TemplateResponse(request, "audit/console.html", {
        "form": form, "page": page, "chain": chain_status_latest(), "query": query.urlencode(),
        "query_other_than_patient": other_than_patient.urlencode(),
        "formats": exports.EXPORT_FORMATS, "outbox_pending": audit_outbox_pending(),
        "may_export": may(request.user, Permission.AUDIT_EXPORT),
        "may_verify": may(request.user, Permission.AUDIT_VERIFY),
    })


@require_GET
@require(Permission.AUDIT_EXPORT, audit_as=Action.AUDIT_EXPORT)
def export(request: HttpRequest) -> HttpResponseBase:
    form = _filter_form(request)
    chosen = request.GET.get("format", "")
    if chosen not in exports.EXPORT_FORMATS or not form.is_valid():
        return HttpResponse(_("Choose a valid export format and filter."), status=400,
                            content_type="text/plain")
    criteria = _criteria(request, form)
    events = events_filter(criteria)
    audit_record(actor=request.user, action=Action.AUDIT_EXPORT, outcome=Outcome.SUCCESS,
                 source_ip=client_address(request),
                 details={**criteria.described(), "format": chosen, "events": events.count()})
    content_type, extension, exporter = exports.EXPORT_FORMATS[chosen]
    response = StreamingHttpResponse(exporter(events.iterator(chunk_size=2000)),
                                     content_type=content_type)
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    response["Content-Disposition"] = f'attachment; filename="audit-{stamp}.{extension}"'
    return response


@require_POST
@require(Permission.AUDIT_VERIFY, audit_as=Action.AUDIT_VERIFY)
def verify(request: HttpRequest) -> HttpResponse:
    report = chain_verify()
    audit_record(actor=request.user, action=Action.AUDIT_VERIFY,
                 outcome=Outcome.SUCCESS if report.ok else Outcome.FAILURE,
                 source_ip=client_address(request),
                 details={**report.summary(), "outbox_pending": audit_outbox_pending()})
    if report.ok:
        messages.success(request, ngettext("Verified %(events)d event through sequence %(sequence)s.",
                                           "Verified %(events)d events through sequence %(sequence)s.",
                                           report.events)
                         % {"events": report.events, "sequence": report.head_sequence})
    else:
        # Translators: %(problem)s is the verifier's technical description, not translated.
        messages.error(request, _("Verification FAILED at sequence %(sequence)s: %(problem)s")
                       % {"sequence": report.first_bad_sequence, "problem": report.problem})
    return redirect("audit:console")
