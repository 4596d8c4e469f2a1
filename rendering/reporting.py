"""A report's pictures and files, made with the render workers: key images rendered from their
stored states, the PDF and its pages, signing (the PDF and key images added to the study) and
sending a signed report to a DICOM destination.

Key images are rendered lossless (PNG) at still quality, exactly as a still frame of the same
state, so the picture in the PDF is the frame a reader would see with that state.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from asgiref.sync import sync_to_async
from django.utils import timezone, translation

from gateway.i18n import gettext_noop
from imaging.dicom_net import SendResult, dicom_send
from imaging.findings import findings_of
from imaging.findings_dicom import FindingsExportError, findings_dicom_store, region_request, region_series
from imaging.models import DicomDestination, Report, ReportStatus
from imaging.report_pdf import report_pages, report_pdf
from imaging.report_store import report_objects, report_sign_store
from imaging.reports import ReportError, report_document, report_signable
from rendering.encoding import Encoding
from rendering.engine.core import MissingVolumeError
from rendering.operations import OperationClient
from rendering.pool import CLINICAL
from rendering.viewstate import Quality, viewstate_from_dict

RECORD_LANGUAGE = "en"
"""The copy of record (the PDF added to the study at signing) is laid out in English, like everything
the gateway writes into DICOM; an export is laid out in its reader's language."""


async def finding_regions(pool: OperationClient, study: str) -> dict[int, Any]:
    """Each kept VOI's region, asked of the workers on the series it was measured on."""
    regions = {}
    for finding in await sync_to_async(findings_of)(study):
        request = region_request(finding)
        if request is None:
            continue
        series = region_series(finding)
        factor = (finding.arguments.get("suv_factors") or {}).get(series)
        state = viewstate_from_dict({"view": "axial", "layers": [
            {"series_id": series, "window_center": 0, "window_width": 1,
             **({"suv_factor": factor} if factor else {})}]})
        regions[finding.id] = await pool.request("region_mask", state, source=CLINICAL, **request)
    return regions


async def key_picture(pool: OperationClient, state: dict[str, Any], *,
                      encoding: Encoding = Encoding.PNG) -> bytes:
    """One key image rendered from its stored state (still quality)."""
    view = replace(viewstate_from_dict(state), quality=Quality.STILL)
    return (await pool.render(view, source=CLINICAL, encoding=encoding)).data


async def report_pdf_made(pool: OperationClient, report: Report, *, patient: str,
                          exported_by: str = "", exported_at: datetime | None = None) -> bytes:
    pictures = [await key_picture(pool, image["state"]) for image in report.key_images]
    document = await sync_to_async(report_document)(report, patient=patient, pictures=pictures,
                                                    exported_by=exported_by, exported_at=exported_at)
    return await sync_to_async(report_pdf, thread_sensitive=False)(document)


async def report_page_images(pool: OperationClient, report: Report, *, patient: str, image_format: str,
                             exported_by: str, exported_at: datetime) -> list[bytes]:
    pdf = await report_pdf_made(pool, report, patient=patient, exported_by=exported_by,
                                exported_at=exported_at)
    return await sync_to_async(report_pages, thread_sensitive=False)(pdf, image_format=image_format)


async def _findings_stored(pool: OperationClient, report: Report, *, signer: str) -> None:
    """The findings the report includes, into the study as SR (TID 1500) and SEG, as the viewer
    stores them; a finding that cannot be written stops the signing and says which."""
    study = await sync_to_async(lambda: report.study.study_instance_uid)()
    if not report.include_findings or not await sync_to_async(findings_of)(study):
        return
    try:
        regions = await finding_regions(pool, study)
        await sync_to_async(findings_dicom_store)(study_uid=study, regions=regions, author=signer)
    except (FindingsExportError, MissingVolumeError) as error:
        raise ReportError(gettext_noop("the findings cannot be added to the study as DICOM SR (%(error)s); "
                                       "leave them out of the report to sign it"), error=error) from error


async def report_sign(pool: OperationClient, report: Report, *, signer: str, patient: str) -> Report:
    """Sign: the findings stored as SR, the copy of record (no exporter's stamp) laid out as
    signed, then added to the study with its key object selection."""
    await sync_to_async(report_signable)(report, signer=signer)
    await _findings_stored(pool, report, signer=signer)
    signed_at = timezone.now()
    provisional = Report(**{field.attname: getattr(report, field.attname)
                            for field in Report._meta.concrete_fields})
    provisional.status, provisional.signed_by, provisional.signed_at = ReportStatus.SIGNED, signer, signed_at
    with translation.override(RECORD_LANGUAGE):
        pdf = await report_pdf_made(pool, provisional, patient=patient)
    return await sync_to_async(report_sign_store)(report, pdf=pdf, signer=signer, signed_at=signed_at)


def report_send(report: Report, destination: DicomDestination) -> SendResult:
    """C-STORE the signed report's PDF and key object selection to ``destination``."""
    return dicom_send(report_objects(report), ae_title=destination.ae_title, host=destination.host,
                      port=destination.port, tls=destination.tls)
