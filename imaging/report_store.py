"""A signed report added to its study: the PDF as an Encapsulated PDF instance and a Key Object
Selection document naming the key images' source instances (and the PDF), all or nothing.

A key image is a view through a volume, so the instance it names is, for each layer's series,
the stored image whose plane lies nearest the view's focus. The objects are derived from the
clinical zone and stored beside the study's images without passing the ingest door, like the
findings' SR (:func:`imaging.findings_dicom.derived_series_store`).
"""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any

import numpy as np
import pydicom
from django.db import transaction
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from gateway.i18n import gettext_noop
from imaging import storage
from imaging.findings_dicom import derived_series_store
from imaging.models import Instance, Report, Study
from imaging.report_dicom import encapsulated_pdf, key_object_selection
from imaging.reports import report_mark_signed
from rendering.said import SaidError

CLINICAL = "default"
PDF_SERIES_NUMBER = 9910
KOS_SERIES_NUMBER = 9911
DERIVED_LAYER_PREFIX = "seg:"


class ReportStoreError(SaidError, ValueError):
    """The report cannot be added to its study (no stored image to name, say)."""


def _headers(series_uid: str) -> list[Dataset]:
    return [pydicom.dcmread(io.BytesIO(storage.object_get(object_id)), stop_before_pixels=True)
            for object_id in Instance.objects.filter(series__series_instance_uid=series_uid)
            .order_by("id").values_list("object_id", flat=True)]


def _distance(ds: Dataset, focus: np.ndarray) -> float:
    """How far ``focus`` lies from the instance's (first) image plane, in mm."""
    position = ds.get("ImagePositionPatient")
    orientation = ds.get("ImageOrientationPatient")
    if position is None or orientation is None:
        return float("inf")
    cosines = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(cosines[:3], cosines[3:])
    return abs(float((focus - np.asarray(position, dtype=np.float64)) @ normal))


def nearest_instance(headers: list[Dataset], focus_mm: list[float] | None) -> Dataset:
    """The instance whose plane lies nearest the focus; the middle one without a focus or geometry."""
    if focus_mm is None:
        return headers[len(headers) // 2]
    focus = np.asarray(focus_mm, dtype=np.float64)
    distances = [_distance(ds, focus) for ds in headers]
    best = int(np.argmin(distances))
    return headers[best] if np.isfinite(distances[best]) else headers[len(headers) // 2]


def key_instances(key_images: list[dict[str, Any]]) -> list[Dataset]:
    """Each key image's source instance of every layer (acquired series only), without repeats."""
    cache: dict[str, list[Dataset]] = {}
    chosen: dict[str, Dataset] = {}
    for image in key_images:
        state = image["state"]
        for layer in state["layers"]:
            series = layer["series_id"]
            if series.startswith(DERIVED_LAYER_PREFIX):
                continue
            headers = cache.setdefault(series, _headers(series))
            if headers:
                found = nearest_instance(headers, state.get("focus_mm"))
                chosen.setdefault(str(found.SOPInstanceUID), found)
    return list(chosen.values())


def _study_source(study: Study, instances: list[Dataset]) -> Dataset:
    """A header that carries the study's (pseudonymised) patient and study modules."""
    if instances:
        return instances[0]
    object_id = Instance.objects.filter(series__study=study).order_by("id").values_list(
        "object_id", flat=True).first()
    if object_id is None:
        raise ReportStoreError(gettext_noop("the study holds no stored instance to take its patient from"))
    return pydicom.dcmread(io.BytesIO(storage.object_get(object_id)), stop_before_pixels=True)


def report_sign_store(report: Report, *, pdf: bytes, signer: str, signed_at: datetime) -> Report:
    """Add the signed report's PDF and key object selection to the study and mark it signed."""
    instances = key_instances(report.key_images)
    source = _study_source(report.study, instances)
    title = f"{report.title} (version {report.version})"
    author = f"{signer}^"  # a user name is one component: the caret says so (PS3.5 6.2)
    document = encapsulated_pdf(pdf, source=source, title=title, author=author,
                                series_instance_uid=generate_uid(), series_number=PDF_SERIES_NUMBER)
    selection = key_object_selection(referenced=[*instances, document], description=title, author=author,
                                     series_instance_uid=generate_uid(), series_number=KOS_SERIES_NUMBER)
    written: list[str] = []
    try:
        with transaction.atomic(using=CLINICAL):
            series = derived_series_store(report.study, [document], modality="DOC",
                                          description=f"Report v{report.version} (PDF)", written=written)
            derived_series_store(report.study, [selection], modality="KO",
                                 description=f"Report v{report.version} key images", written=written)
            return report_mark_signed(report, signer=signer, signed_at=signed_at, series_uid=series)
    except BaseException:
        for object_id in written:
            storage.object_delete(object_id)
        raise


def report_objects(report: Report) -> list[Dataset]:
    """The signed report's DICOM objects as stored: its Encapsulated PDF and its key object selection."""
    if not report.pdf_series_instance_uid:
        raise ReportStoreError(gettext_noop("only a signed report has DICOM objects"))
    pdf_series = Instance.objects.filter(series__series_instance_uid=report.pdf_series_instance_uid)
    pdf_uids = set(pdf_series.values_list("sop_instance_uid", flat=True))
    objects: list[Dataset] = [pydicom.dcmread(io.BytesIO(storage.object_get(object_id)))
               for object_id in pdf_series.values_list("object_id", flat=True)]
    for candidate in Instance.objects.filter(series__study=report.study, series__modality="KO"):
        selection = pydicom.dcmread(io.BytesIO(storage.object_get(candidate.object_id)))
        if _references(selection) & pdf_uids:
            objects.append(selection)
    return objects


def _references(selection: Dataset) -> set[str]:
    return {str(item.ReferencedSOPInstanceUID)
            for study in selection.get("CurrentRequestedProcedureEvidenceSequence", [])
            for series in study.get("ReferencedSeriesSequence", [])
            for item in series.get("ReferencedSOPSequence", [])}
