"""The report pages: a doctor's editor, a nurse's reading of signed reports, exports and sending.

The routes' permissions are in ``gateway.policy.ROUTES`` (``study.view`` to read, ``study.report``
to write, export and send); here each view also reaches the study through
:func:`imaging.access.study_for_viewer`, so a study the reader may not open is a 404. What a
browser gets is rendered pictures and text, never DICOM or voxels: key images as PNG frames, the
report as PDF or page images, downloads stamped with who exported them and audited with the
file's SHA-256. DICOM copies go only to destinations IT registered.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from asgiref.sync import sync_to_async
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseBase,
    HttpResponseRedirect,
    JsonResponse,
)
from django.shortcuts import render
from django.urls import reverse
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_GET, require_POST

from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from gateway.i18n import gettext_noop
from gateway.net import client_address
from gateway.policy import Permission, may
from imaging.access import StudyNotFound, ViewerStudy, study_for_viewer
from imaging.dicom_net import SendError
from imaging.identity.models import PatientIdentity
from imaging.models import DicomDestination, Report, ReportSigned, ReportStatus
from imaging.report_store import ReportStoreError
from imaging.reports import (
    GRIDS,
    SECTIONS,
    ReportError,
    key_image_adjust,
    report_addendum,
    report_draft,
    report_findings,
    report_get,
    report_update,
    reports_of,
    status_line,
)
from rendering.pool import render_pool_async
from rendering.reporting import key_picture, report_page_images, report_pdf_made, report_send, report_sign
from rendering.said import said
from rendering.workers import RenderError

BODY_LIMIT = 256 * 1024
PAGE_FORMATS = {"png": ("png", "image/png"), "jpg": ("jpeg", "image/jpeg")}


def _audit(request: HttpRequest, action: Action, outcome: Outcome, study: ViewerStudy | str,
           details: dict[str, Any] | None = None) -> None:
    found = study if isinstance(study, ViewerStudy) else None
    audit_record(actor=request.user, action=action, outcome=outcome,
                 patient_pseudonym=found.patient_pseudonym if found else "",
                 study=found.study_uid if found else str(study)[:64],
                 source_ip=client_address(request), details=details)


def _study(request: HttpRequest, study: str, action: Action) -> ViewerStudy:
    try:
        return study_for_viewer(principal=request.user, study_uid=study)
    except StudyNotFound:
        _audit(request, action, Outcome.DENIED, study, {"reason": "no such study for this reader"})
        raise Http404("No such study.") from None


def _readable(request: HttpRequest, report: Report) -> bool:
    """Doctors read every version; others with the study (nurses) only signed ones."""
    return report.status == ReportStatus.SIGNED or may(request.user, Permission.STUDY_REPORT)


def _version(request: HttpRequest, found: ViewerStudy, version: int, action: Action) -> Report:
    try:
        report = report_get(found.study_uid, version)
    except ReportError:
        raise Http404("No such report.") from None
    if not _readable(request, report):
        _audit(request, action, Outcome.DENIED, found, {"version": version, "reason": "not signed"})
        raise Http404("No such report.")
    return report


def patient_shown(principal: Any, pseudonym: str) -> str:
    """The patient as this reader may see them: the name for staff granted demographics."""
    if may(principal, Permission.PATIENT_DEMOGRAPHICS):
        identity = PatientIdentity.objects.filter(pseudonym=pseudonym).first()
        if identity is not None and identity.patient_name:
            return identity.patient_name.replace("^", " ").strip()
    return pseudonym[:16]


# --- the page -----------------------------------------------------------------------------------


@require_GET
def report_page(request: HttpRequest, study: str) -> HttpResponse:
    found = _study(request, study, Action.REPORT_READ)
    versions = [report for report in reports_of(found.study_uid) if _readable(request, report)]
    wanted = request.GET.get("v", "")
    shown = next((r for r in versions if str(r.version) == wanted), versions[-1] if versions else None)
    if shown is not None:
        _audit(request, Action.REPORT_READ, Outcome.SUCCESS, found,
               {"version": shown.version, "status": shown.status})
    writer = may(request.user, Permission.STUDY_REPORT)
    return render(request, "rendering/report.html", {
        "study": found, "versions": versions, "report": shown, "writer": writer,
        "editable": bool(shown and writer and shown.status == ReportStatus.DRAFT
                         and shown.author == request.user.get_username()),
        "sections": [(key, _(heading), shown.sections.get(key, "") if shown else "")
                     for key, heading in SECTIONS],
        "grids": [f"{c}x{r}" for c, r in GRIDS],
        "grid": "x".join(str(n) for n in shown.grid) if shown else "2x2",
        "findings": report_findings(shown) if shown else (),
        "status_line": status_line(shown) if shown else "",
        "patient": patient_shown(request.user, found.patient_pseudonym),
        "destinations": DicomDestination.objects.filter(active=True) if writer else [],
        "latest": versions[-1] if versions else None,
    })


@require_POST
def report_start(request: HttpRequest, study: str) -> HttpResponse:
    """Start the reader's draft, or an addendum after a signed report."""
    found = _study(request, study, Action.REPORT_CREATE)
    author = request.user.get_username()
    try:
        if request.POST.get("addendum"):
            report, created = report_addendum(study_uid=found.study_uid, author=author), True
        else:
            report, created = report_draft(study_uid=found.study_uid, author=author)
    except (ReportError, ReportSigned) as error:
        return render(request, "rendering/report_refused.html", {"study": found, "reason": said(error)},
                      status=409)
    if created:
        _audit(request, Action.REPORT_CREATE, Outcome.SUCCESS, found, {"version": report.version})
    return HttpResponseRedirect(reverse("rendering:report", kwargs={"study": found.study_uid})
                                + f"?v={report.version}")


def _json_body(request: HttpRequest) -> Any:
    declared = request.META.get("CONTENT_LENGTH") or "0"
    if not declared.isdigit() or int(declared) > BODY_LIMIT:
        raise ReportError(gettext_noop("the request body is limited to %(most)s bytes"), most=BODY_LIMIT)
    try:
        return json.loads(request.body or b"null")
    except (ValueError, UnicodeDecodeError):
        raise ReportError(gettext_noop("the request body is not JSON")) from None


def _refusal(error: Exception) -> JsonResponse:
    status = 409 if isinstance(error, ReportSigned) else 400
    return JsonResponse({"error": said(error)}, status=status)


@require_POST
def report_save(request: HttpRequest, study: str, version: int) -> HttpResponse:
    """The editor's autosave: title, sections, grid, findings on/off, key image order and captions."""
    found = _study(request, study, Action.REPORT_EDIT)
    report = _version(request, found, version, Action.REPORT_EDIT)
    try:
        report = report_update(report, author=request.user.get_username(), changes=_json_body(request))
    except (ReportError, ReportSigned) as error:
        _audit(request, Action.REPORT_EDIT, Outcome.FAILURE, found, {"version": version,
                                                                     "reason": str(error)[:200]})
        return _refusal(error)
    _audit(request, Action.REPORT_EDIT, Outcome.SUCCESS, found, {"version": version})
    return JsonResponse({"saved": report.updated_at.isoformat(timespec="seconds")})


@require_POST
def report_adjust(request: HttpRequest, study: str, version: int, image: str) -> HttpResponse:
    """Change a key image's window, slice, fusion opacity or zoom: it is rendered again from the state."""
    found = _study(request, study, Action.REPORT_EDIT)
    report = _version(request, found, version, Action.REPORT_EDIT)
    try:
        kept = key_image_adjust(report, author=request.user.get_username(), image_id=image,
                                adjust=_json_body(request))
    except (ReportError, ReportSigned) as error:
        return _refusal(error)
    _audit(request, Action.REPORT_EDIT, Outcome.SUCCESS, found, {"version": version, "key_image": image})
    layer = kept["state"]["layers"][0]
    return JsonResponse({"window_center": layer["window_center"], "window_width": layer["window_width"],
                         "focus_mm": kept["state"].get("focus_mm")})


# --- pictures and files (async: the render workers make them) ----------------------------------


async def report_image(request: HttpRequest, study: str, version: int, image: str) -> HttpResponseBase:
    """A key image rendered from its stored state: a frame, like the viewer's."""
    if request.method != "GET":
        return HttpResponse(status=405, headers={"Allow": "GET"})
    found = await sync_to_async(_study)(request, study, Action.REPORT_READ)
    report = await sync_to_async(_version)(request, found, version, Action.REPORT_READ)
    kept = next((item for item in report.key_images if item["id"] == image), None)
    if kept is None:
        raise Http404("No such key image.")
    try:
        png = await key_picture(await render_pool_async(), kept["state"])
    except RenderError as error:
        return HttpResponse(_("The key image cannot be rendered: %(error)s") % {"error": said(error)},
                            status=503, content_type="text/plain; charset=utf-8")
    return HttpResponse(png, content_type="image/png", headers={"Cache-Control": "no-store"})


def _download(body: bytes, content_type: str, filename: str) -> HttpResponse:
    response = HttpResponse(body, content_type=content_type)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response


async def report_export(request: HttpRequest, study: str, version: int, extension: str,
                        page: int | None = None) -> HttpResponseBase:
    """The report as PDF, or one page as PNG or JPG: stamped with the exporter and audited with
    the file's SHA-256 (doctors only: the route asks ``study.report``)."""
    if request.method != "GET":
        return HttpResponse(status=405, headers={"Allow": "GET"})
    found = await sync_to_async(_study)(request, study, Action.REPORT_EXPORT)
    report = await sync_to_async(_version)(request, found, version, Action.REPORT_EXPORT)
    patient = await sync_to_async(patient_shown)(request.user, found.patient_pseudonym)
    by, at = request.user.get_username(), timezone.now()
    pool = await render_pool_async()
    try:
        if extension == "pdf":
            body = await report_pdf_made(pool, report, patient=patient, exported_by=by, exported_at=at)
            content_type = "application/pdf"
        else:
            image_format, content_type = PAGE_FORMATS[extension]
            pages = await report_page_images(pool, report, patient=patient, image_format=image_format,
                                             exported_by=by, exported_at=at)
            if page is None or not 1 <= page <= len(pages):
                raise Http404("No such page.")
            body = pages[page - 1]
    except RenderError as error:
        return HttpResponse(_("The report cannot be rendered: %(error)s") % {"error": said(error)},
                            status=503, content_type="text/plain; charset=utf-8")
    digest = hashlib.sha256(body).hexdigest()
    await sync_to_async(_audit)(request, Action.REPORT_EXPORT, Outcome.SUCCESS, found, {
        "version": version, "format": extension, "page": page, "sha256": digest, "bytes": len(body)})
    suffix = "" if page is None else f"-page{page}"
    return _download(body, content_type, f"report-v{version}{suffix}.{extension}")


async def report_page_export(request: HttpRequest, study: str, version: str, page: str,
                             page_format: str) -> HttpResponseBase:
    return await report_export(request, study, int(version), page_format, int(page))


async def report_sign_view(request: HttpRequest, study: str, version: int) -> HttpResponseBase:
    """Sign the reader's draft: final from now on, added to the study as Encapsulated PDF + KOS."""
    if request.method != "POST":
        return HttpResponse(status=405, headers={"Allow": "POST"})
    found = await sync_to_async(_study)(request, study, Action.REPORT_SIGN)
    report = await sync_to_async(_version)(request, found, version, Action.REPORT_SIGN)
    patient = await sync_to_async(patient_shown)(request.user, found.patient_pseudonym)
    try:
        signed = await report_sign(await render_pool_async(), report, signer=request.user.get_username(),
                                   patient=patient)
    except (ReportError, ReportSigned, ReportStoreError, RenderError) as error:
        await sync_to_async(_audit)(request, Action.REPORT_SIGN, Outcome.FAILURE, found,
                                    {"version": version, "reason": str(error)[:200]})
        return await sync_to_async(render)(request, "rendering/report_refused.html",
                                           {"study": found, "reason": said(error)}, status=409)
    await sync_to_async(_audit)(request, Action.REPORT_SIGN, Outcome.SUCCESS, found, {
        "version": version, "content_sha256": signed.content_sha256,
        "series": signed.pdf_series_instance_uid})
    return HttpResponseRedirect(reverse("rendering:report", kwargs={"study": found.study_uid})
                                + f"?v={version}")


def _destination(request: HttpRequest) -> DicomDestination | None:
    raw = str(request.POST.get("destination", ""))
    if not raw.isdigit() or len(raw) > 9:
        return None
    return DicomDestination.objects.filter(pk=int(raw), active=True).first()


@require_POST
def report_send_view(request: HttpRequest, study: str, version: int) -> HttpResponse:
    """C-STORE the signed report to a destination IT registered; audited either way."""
    found = _study(request, study, Action.REPORT_SEND)
    report = _version(request, found, version, Action.REPORT_SEND)
    destination = _destination(request)
    if destination is None or report.status != ReportStatus.SIGNED:
        reason = _("no such destination") if destination is None else _("only a signed report is sent")
        return render(request, "rendering/report_refused.html", {"study": found, "reason": reason},
                      status=409)
    details: dict[str, Any] = {"version": version, "destination": destination.name,
                               "ae_title": destination.ae_title}
    try:
        result = report_send(report, destination)
    except (SendError, ReportStoreError) as error:
        _audit(request, Action.REPORT_SEND, Outcome.FAILURE, found, {**details, "reason": str(error)[:200]})
        return render(request, "rendering/report_refused.html", {"study": found, "reason": said(error)},
                      status=502)
    outcome = Outcome.SUCCESS if not result.failed else Outcome.FAILURE
    _audit(request, Action.REPORT_SEND, outcome, found,
           {**details, "sent": result.sent, "failed": [uid for uid, _ in result.failed]})
    return render(request, "rendering/report_sent.html", {"study": found, "report": report,
                                                          "destination": destination, "result": result})
