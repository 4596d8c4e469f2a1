"""Structured reports stored in a study, read for the viewer: what each measured and where.

A document's measurement groups (TID 1500's "Measurement Group", and the NUM items of a
document without groups) become a label, the finding and site, the measurements — name,
value and unit as the document wrote them — and the region they refer to, in patient
millimetres so any view can draw it: SCOORD3D as given, SCOORD from the referenced image's
position, orientation and pixel spacing (PS3.3 C.18.6: (0,0) is the top-left corner of the
top-left pixel). The tree is walked with pydicom rather than highdicom's TID 1500 parser
because documents from other systems are often only loosely TID 1500, and one malformed
item must not hide the rest. Documents the gateway wrote itself are the reader's findings
already and are left out.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom
from django.utils.translation import gettext as _
from pydicom.dataset import Dataset

from imaging import storage
from imaging.deid import content_concept
from imaging.models import Instance, Series, Study
from imaging.objects import STRUCTURED_REPORTS

log = logging.getLogger(__name__)

MEASUREMENT_GROUP = ("DCM", "125007")
TRACKING_IDENTIFIER = ("DCM", "112039")
FINDING = ("DCM", "121071")
FINDING_SITES = frozenset({("SCT", "363698007"), ("SRT", "G-C0E3")})
DERIVATION = ("DCM", "121401")
DOCUMENTS_READ_LIMIT = 20
GROUPS_LIMIT = 100
MEASUREMENTS_LIMIT = 40
POINTS_LIMIT = 64  # an outline is thinned to this many points: the message stays small
DEPTH_LIMIT = 32
ELLIPSE_POINTS = 48
UNIT_NAMES = {"{SUVbw}g/ml": "SUVbw", "{SUVlbm}g/ml": "SUVlbm", "{SUVbsa}cm2/ml": "SUVbsa",
              "{SUVibw}g/ml": "SUVibw", "[hnsf'U]": "HU", "mm2": "mm²", "cm2": "cm²", "cm3": "cm³",
              "mm3": "mm³", "1": "", "{ratio}": ""}


def _text(value: Any, limit: int = 64) -> str:
    return str(value or "").strip()[:limit]


def _meaning(item: Dataset, keyword: str) -> str:
    codes = item.get(keyword) or []
    return _text(codes[0].get("CodeMeaning")) if codes else ""


def _children(item: Dataset) -> list[Dataset]:
    return list(item.get("ContentSequence") or [])


@dataclass
class Graphic:
    """Where a group points: patient mm, or image pixels of one referenced instance."""

    kind: str
    points: np.ndarray
    frame_of_reference: str = ""
    image: str = ""


@dataclass
class Group:
    label: str
    finding: str = ""
    site: str = ""
    measurements: list[dict[str, Any]] = field(default_factory=list)
    graphic: Graphic | None = None


def _measurement(item: Dataset) -> dict[str, Any]:
    name = _meaning(item, "ConceptNameCodeSequence") or _("value")
    modifiers = [_meaning(child, "ConceptCodeSequence") for child in _children(item)
                 if content_concept(child) == DERIVATION]
    if modifiers and modifiers[0]:
        name = f"{name} ({modifiers[0]})"
    measured = (item.get("MeasuredValueSequence") or [Dataset()])[0]
    try:
        value: float | None = float(measured.NumericValue)
    except (AttributeError, TypeError, ValueError):
        value = None
    if value is not None and not math.isfinite(value):
        value = None
    units = measured.get("MeasurementUnitsCodeSequence") or [Dataset()]
    code = _text(units[0].get("CodeValue"))
    out: dict[str, Any] = {"name": name, "value": value, "unit": UNIT_NAMES.get(code, code)}
    if value is None:
        out["qualifier"] = _meaning(item, "NumericValueQualifierCodeSequence") or _("no value")
    return out


def _thinned(points: np.ndarray) -> np.ndarray:
    if len(points) <= POINTS_LIMIT:
        return points
    return points[np.round(np.linspace(0, len(points) - 1, POINTS_LIMIT)).astype(int)]


def _graphic(item: Dataset) -> Graphic | None:
    kind = _text(item.get("GraphicType")).upper()
    data = np.asarray(item.get("GraphicData") or [], dtype=np.float64)
    if item.ValueType == "SCOORD3D":
        if data.size < 3 or data.size % 3:
            return None
        return Graphic(kind, _thinned(data.reshape(-1, 3)),
                       frame_of_reference=_text(item.get("ReferencedFrameOfReferenceUID")))
    if data.size < 2 or data.size % 2:
        return None
    images = [child for child in _children(item) if child.get("ValueType") == "IMAGE"]
    references = (images[0].get("ReferencedSOPSequence") or []) if images else []
    image = _text(references[0].get("ReferencedSOPInstanceUID")) if references else ""
    return Graphic(kind, _thinned(data.reshape(-1, 2)), image=image) if image else None


def _first_graphic(item: Dataset, depth: int = 0) -> Graphic | None:
    for child in _children(item):
        if child.get("ValueType") in ("SCOORD", "SCOORD3D"):
            found = _graphic(child)
            if found is not None:
                return found
        if depth < DEPTH_LIMIT:
            nested = _first_graphic(child, depth + 1)
            if nested is not None:
                return nested
    return None


def _group(item: Dataset, number: int) -> Group:
    group = Group(label=_("group %(number)s") % {"number": number})
    for child in _children(item):
        concept, kind = content_concept(child), child.get("ValueType")
        if concept == TRACKING_IDENTIFIER and kind == "TEXT":
            group.label = _text(child.get("TextValue")) or group.label
        elif concept == FINDING and kind == "CODE":
            group.finding = _meaning(child, "ConceptCodeSequence")
        elif concept in FINDING_SITES and kind == "CODE":
            group.site = _meaning(child, "ConceptCodeSequence")
        elif kind == "NUM" and len(group.measurements) < MEASUREMENTS_LIMIT:
            group.measurements.append(_measurement(child))
    group.graphic = _first_graphic(item)
    return group


def _walk(item: Dataset, groups: list[Group], loose: list[Dataset], depth: int = 0) -> None:
    for child in _children(item):
        if len(groups) >= GROUPS_LIMIT:
            return
        if child.get("ValueType") == "CONTAINER" and content_concept(child) == MEASUREMENT_GROUP:
            groups.append(_group(child, len(groups) + 1))
        elif child.get("ValueType") == "NUM":
            loose.append(child)
        elif depth < DEPTH_LIMIT:
            _walk(child, groups, loose, depth + 1)


def document_groups(ds: Dataset) -> list[Group]:
    """The measurement groups of an SR; a document without groups gives one NUM per group."""
    groups: list[Group] = []
    loose: list[Dataset] = []
    _walk(ds, groups, loose)
    if groups:
        return groups
    return [Group(label=(_meaning(item, "ConceptNameCodeSequence")
                         or _("value %(number)s") % {"number": number}),
                  measurements=[_measurement(item)], graphic=_first_graphic(item))
            for number, item in enumerate(loose[:GROUPS_LIMIT], start=1)]


def _ellipse(points: np.ndarray) -> np.ndarray:
    """PS3.3 ELLIPSE/ELLIPSOID: major-axis then minor-axis endpoints, traced as a closed outline."""
    centre = (points[0] + points[1]) / 2.0
    major, minor = (points[1] - points[0]) / 2.0, (points[3] - points[2]) / 2.0
    angles = np.linspace(0.0, 2.0 * np.pi, ELLIPSE_POINTS, endpoint=False)
    return centre + np.cos(angles)[:, None] * major + np.sin(angles)[:, None] * minor


def _circle(points: np.ndarray) -> np.ndarray:
    """PS3.3 CIRCLE: centre, then a point on the perimeter (image pixels)."""
    radius = float(np.hypot(*(points[1] - points[0])))
    angles = np.linspace(0.0, 2.0 * np.pi, ELLIPSE_POINTS, endpoint=False)
    return points[0] + radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def drawn_shape(kind: str, points: np.ndarray) -> tuple[str, np.ndarray] | None:
    """(the shape the viewer draws, its points) for a graphic type, or None when it cannot be drawn.

    A POLYLINE whose last point is its first is a closed outline (PS3.3 C.18.6.1.2).
    """
    if kind == "CIRCLE" and len(points) >= 2:
        return "polygon", _circle(points)
    if kind in ("ELLIPSE", "ELLIPSOID") and len(points) >= 4:
        return "polygon", _ellipse(points)
    closed = len(points) >= 4 and bool(np.allclose(points[0], points[-1]))
    if (kind == "POLYGON" and len(points) >= 3) or (kind == "POLYLINE" and closed):
        return "polygon", points[:-1] if closed else points
    if kind == "POLYLINE" and len(points) >= 2:
        return ("line" if len(points) == 2 else "polyline"), points
    if kind in ("POINT", "MULTIPOINT") and len(points) >= 1:
        return "point", points[:1]
    return None


def image_points_mm(header: Dataset, points: np.ndarray) -> np.ndarray | None:
    """SCOORD image coordinates (column, row; (0,0) the top-left pixel's corner) in patient mm."""
    try:
        origin = np.asarray(header.ImagePositionPatient, dtype=np.float64)
        cosines = np.asarray(header.ImageOrientationPatient, dtype=np.float64)
        row_spacing, column_spacing = (float(v) for v in header.PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        return None
    along_row, along_column = cosines[:3], cosines[3:]
    columns, rows = points[:, 0] - 0.5, points[:, 1] - 0.5
    return (origin + columns[:, None] * column_spacing * along_row
            + rows[:, None] * row_spacing * along_column)


@dataclass
class StudyCatalogue:
    """The study's image series by frame of reference, and headers read once per instance."""

    study: Study
    headers: dict[str, tuple[Dataset, str] | None] = field(default_factory=dict)

    def series_of_frame(self, frame_of_reference: str) -> list[str]:
        if not frame_of_reference:
            return []
        return list(Series.objects.filter(study=self.study, frame_of_reference_uid=frame_of_reference)
                    .exclude(modality__in=("SR", "KO", "SEG", "RTSTRUCT", "PR", "REG"))
                    .values_list("series_instance_uid", flat=True))

    def header(self, sop_instance_uid: str) -> tuple[Dataset, str] | None:
        """(the instance's header, its series UID), or None when the study does not hold it."""
        if sop_instance_uid not in self.headers:
            row = (Instance.objects.filter(sop_instance_uid=sop_instance_uid, series__study=self.study)
                   .values_list("object_id", "series__series_instance_uid").first())
            found = None
            if row is not None:
                header = pydicom.dcmread(io.BytesIO(storage.object_get(row[0])), stop_before_pixels=True)
                found = (header, row[1])
            self.headers[sop_instance_uid] = found
        return self.headers[sop_instance_uid]


def graphic_wire(graphic: Graphic | None, catalogue: StudyCatalogue) -> dict[str, Any] | None:
    """The graphic in patient mm with the series that show it, or None (the group is listed only)."""
    if graphic is None:
        return None
    points = graphic.points
    if graphic.image:
        found = catalogue.header(graphic.image)
        if found is None or int(found[0].get("NumberOfFrames", 1) or 1) > 1:
            return None
        shape = drawn_shape(graphic.kind, points)
        mm = image_points_mm(found[0], shape[1]) if shape else None
        series = [found[1]]
    else:
        shape = drawn_shape(graphic.kind, points)
        mm = shape[1] if shape else None
        series = catalogue.series_of_frame(graphic.frame_of_reference)
    if shape is None or mm is None or not series or not np.all(np.isfinite(mm)):
        return None
    return {"shape": shape[0], "points_mm": np.round(mm, 3).tolist(), "series": series}


def _date(ds: Dataset) -> str:
    value = _text(ds.get("ContentDate"), 8)
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if len(value) == 8 and value.isdigit() else ""


def document_wire(ds: Dataset, series_uid: str, catalogue: StudyCatalogue) -> dict[str, Any]:
    groups = [{"label": group.label, "finding": group.finding, "site": group.site,
               "measurements": group.measurements, "graphic": graphic_wire(group.graphic, catalogue)}
              for group in document_groups(ds)]
    return {"series": series_uid, "title": _meaning(ds, "ConceptNameCodeSequence") or _("Structured report"),
            "date": _date(ds), "class": STRUCTURED_REPORTS.get(str(ds.get("SOPClassUID", "")), "SR"),
            "groups": groups}


def study_documents(*, study: Study, exclude_manufacturer: str) -> list[dict[str, Any]]:
    """The study's structured reports with measurement groups, newest first.

    Reports by ``exclude_manufacturer`` (the gateway's own findings) are left out; a report
    that cannot be read is logged and left out.
    """
    rows = (Instance.objects.filter(series__study=study, sop_class_uid__in=list(STRUCTURED_REPORTS))
            .order_by("-id").values_list("object_id", "series__series_instance_uid")[:DOCUMENTS_READ_LIMIT])
    catalogue = StudyCatalogue(study)
    documents = []
    for object_id, series_uid in rows:
        try:
            ds = pydicom.dcmread(io.BytesIO(storage.object_get(object_id)))
            if _text(ds.get("Manufacturer")) == exclude_manufacturer:
                continue
            document = document_wire(ds, series_uid, catalogue)
        except Exception:
            log.warning("structured report %s cannot be read", object_id, exc_info=True)
            continue
        if document["groups"]:
            documents.append(document)
    return documents


def documents_of(*study_uids: str, exclude_manufacturer: str) -> list[dict[str, Any]]:
    """``study_documents`` of each of ``study_uids`` (a study and the priors beside it)."""
    return [document for study in Study.objects.filter(study_instance_uid__in=study_uids)
            for document in study_documents(study=study, exclude_manufacturer=exclude_manufacturer)]
