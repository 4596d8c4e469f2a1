"""The findings table of a study: measurements kept by readers, and their exports (XLSX, CSV).

A finding holds the numbers the render workers computed for it, never numbers a
client sent. One row per finding and layer: a fused measurement is two rows,
the CT's in HU and the PET's in SUV. Dates are the study's shifted dates; no
row names a patient.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from django.utils import timezone
from django.utils.translation import gettext

from gateway.i18n import gettext_noop
from imaging.models import Finding, Study
from imaging.suv import SUV_METHODS

# Translators: the findings export's column titles; SD is the standard deviation, SUVpeak and TLG
# (total lesion glycolysis) are PET measures usually kept as they are.
COLUMNS = (
    ("finding", gettext_noop("finding")), ("label", gettext_noop("label")), ("tool", gettext_noop("tool")),
    ("series", gettext_noop("series")), ("unit", gettext_noop("unit")), ("size", gettext_noop("size")),
    ("size_unit", gettext_noop("size unit")), ("mean", gettext_noop("mean")), ("sd", gettext_noop("SD")),
    ("minimum", gettext_noop("min")), ("maximum", gettext_noop("max")), ("median", gettext_noop("median")),
    ("peak", gettext_noop("SUVpeak")), ("total", gettext_noop("TLG (SUV x ml)")),
    ("max_point_mm", gettext_noop("max at (x, y, z mm)")), ("author", gettext_noop("by")),
    ("created_at", gettext_noop("kept at (UTC)")),
)
"""Each row key and its column title (English; the export titles it in its reader's language)."""


class FindingNotFound(LookupError):
    """No such finding in this study (or it is deleted)."""


@dataclass(frozen=True)
class Kept:
    """What a reader keeps: the measurement as the server answered it, and where it was drawn."""

    series_instance_uid: str
    tool: str
    points: list[list[float]]
    plane: dict[str, Any] | None
    result: Any
    arguments: dict[str, Any] = field(default_factory=dict)
    """The tool's settings besides its points (a sphere's radius, a threshold's box and rule)."""


def _safe_label(label: str) -> str:
    """No spreadsheet formula: a label that starts like one is kept as text."""
    label = label.strip()[:64]
    return "'" + label[:63] if label.startswith(("=", "+", "-", "@", "\t", "\r")) else label


def finding_keep(*, study_uid: str, kept: Kept, label: str, author: str,
                 by_consultant: bool) -> Finding:
    study = Study.objects.get(study_instance_uid=study_uid)
    return Finding.objects.create(
        study=study, series_instance_uid=kept.series_instance_uid, label=_safe_label(label) or kept.tool,
        tool=kept.tool, points=kept.points, plane=kept.plane, result=kept.result,
        arguments=kept.arguments, author=author[:150],
        by_consultant=by_consultant)


def finding_study(*, finding_id: int, study_uids: list[str]) -> str | None:
    """The study (of ``study_uids``) a live finding belongs to, or None."""
    return (Finding.objects.filter(id=finding_id, study__study_instance_uid__in=study_uids,
                                   deleted_at__isnull=True)
            .values_list("study__study_instance_uid", flat=True).first())


def finding_delete(*, study_uid: str, finding_id: int, by: str, only_author: str | None = None) -> Finding:
    """Mark a finding deleted (the row stays for the audit trail); ``only_author``: a consultant's own."""
    chosen = Finding.objects.filter(id=finding_id, study__study_instance_uid=study_uid,
                                    deleted_at__isnull=True)
    if only_author is not None:
        chosen = chosen.filter(author=only_author)
    updated = chosen.update(deleted_at=timezone.now(), deleted_by=by[:150])
    if not updated:
        raise FindingNotFound(finding_id)
    return Finding.objects.get(id=finding_id)


def finding_relabel(*, study_uid: str, finding_id: int, label: str,
                    only_author: str | None = None) -> Finding:
    """A live finding's new label (stored as text, like a kept one); ``only_author``: a consultant's own."""
    chosen = Finding.objects.filter(id=finding_id, study__study_instance_uid=study_uid,
                                    deleted_at__isnull=True)
    if only_author is not None:
        chosen = chosen.filter(author=only_author)
    text = _safe_label(label)
    if not text or not chosen.update(label=text):
        raise FindingNotFound(finding_id)
    return Finding.objects.get(id=finding_id)


def findings_of(*study_uids: str) -> list[Finding]:
    return list(Finding.objects.filter(study__study_instance_uid__in=study_uids, deleted_at__isnull=True)
                .select_related("study"))


def finding_wire(finding: Finding) -> dict[str, Any]:
    return {"id": finding.id, "label": finding.label, "tool": finding.tool,
            "study": finding.study.study_instance_uid, "series": finding.series_instance_uid,
            "points": finding.points, "plane": finding.plane, "result": finding.result,
            "by": finding.author, "consultant": finding.by_consultant,
            "at": finding.created_at.isoformat(timespec="seconds"),
            "arguments": {key: value for key, value in (finding.arguments or {}).items()
                          if key in DRAWN_ARGUMENTS}}


DRAWN_ARGUMENTS = frozenset({"radius_mm", "box_mm", "mode", "value"})
"""A VOI's settings a view needs to draw it again: a sphere's radius, a grown region's box and rule."""


def result_layers(result: Any) -> list[dict[str, Any]]:
    """A kept result as one dict per layer: a region's per-layer list, a VOI's one, a line's profiles."""
    if isinstance(result, list):
        return result
    if "threshold" in result:
        return [result]
    return [{"series_id": series, "unit": unit, "length_mm": result["length_mm"]}
            for series, unit, _ in result.get("profiles", [])]


def _size(layer: dict[str, Any]) -> tuple[Any, str]:
    for key, unit in (("volume_ml", "ml"), ("area_mm2", "mm2"), ("length_mm", "mm")):
        if key in layer:
            return layer[key], unit
    return None, ""


def _unit(finding: Finding, layer: dict[str, Any]) -> str:
    """The layer's unit; an SUV names its method where it is not the header's SUVbw."""
    unit = str(layer.get("unit", ""))
    method = (finding.arguments or {}).get("suv_method")
    if unit == "SUV" and method in SUV_METHODS and method != "bw":
        return f"{unit} ({SUV_METHODS[method]})"
    return unit


def finding_rows(study_uid: str) -> Iterator[dict[str, Any]]:
    """One row per kept finding and layer, in the order of :data:`COLUMNS`."""
    for finding in findings_of(study_uid):
        for layer in result_layers(finding.result):
            size, size_unit = _size(layer)
            point = layer.get("max_point_mm")
            yield {"finding": finding.id, "label": finding.label, "tool": finding.tool,
                   "series": layer.get("series_id", ""), "unit": _unit(finding, layer),
                   "size": size, "size_unit": size_unit, "mean": layer.get("mean"), "sd": layer.get("sd"),
                   "minimum": layer.get("minimum"), "maximum": layer.get("maximum"),
                   "median": layer.get("median"), "peak": layer.get("peak"), "total": layer.get("total"),
                   "max_point_mm": ", ".join(f"{v:.1f}" for v in point) if point else "",
                   "author": finding.author,
                   "created_at": finding.created_at.astimezone(UTC).replace(tzinfo=None)}


def findings_csv(study_uid: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([gettext(title) for _, title in COLUMNS])
    for row in finding_rows(study_uid):
        writer.writerow(["" if row[key] is None else row[key] for key, _ in COLUMNS])
    return out.getvalue()


def findings_xlsx(study_uid: str) -> bytes:
    """The findings as an Excel workbook (openpyxl: the maintained writer of the format)."""
    from openpyxl import Workbook
    from openpyxl.styles import Font

    book = Workbook()
    sheet = book.active
    sheet.title = gettext("Findings")
    sheet.append([gettext(title) for _, title in COLUMNS])
    for cell in sheet[1]:
        cell.font = Font(bold=True)
    for row in finding_rows(study_uid):
        sheet.append([row[key] for key, _ in COLUMNS])
    sheet.freeze_panes = "A2"
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
