"""Stored objects that are not images: what is accepted, what each is called, and what a
presentation state asks of the images it references.

Presentation states, spatial registrations, RT structure sets and segmentations are
accepted and kept (de-identified and encrypted like images) because readers and the
tools built on them need them; each makes a series of its own that the viewer lists as
"not an image" with what the object is — a segmentation excepted: it opens as a label
volume (:mod:`imaging.labels`). Structured reports and key object selections are
accepted too: de-identification keeps their content tree under the Clean Structured
Content option (:mod:`imaging.deid`), and the viewer lists the measurements they
hold beside the reader's findings (:mod:`imaging.documents`).
"""

from __future__ import annotations

from typing import Any

from pydicom.dataset import Dataset

from imaging.presentation import header_numbers

GRAYSCALE_PRESENTATION = "1.2.840.10008.5.1.4.1.1.11.1"

STRUCTURED_REPORTS: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR",
    "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR",
    "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR",
    "1.2.840.10008.5.1.4.1.1.88.34": "Comprehensive 3D SR",
    "1.2.840.10008.5.1.4.1.1.88.35": "Extensible SR",
    "1.2.840.10008.5.1.4.1.1.88.59": "Key Object Selection Document",
    "1.2.840.10008.5.1.4.1.1.88.67": "X-Ray Radiation Dose SR",
    "1.2.840.10008.5.1.4.1.1.88.68": "Radiopharmaceutical Radiation Dose SR",
    "1.2.840.10008.5.1.4.1.1.88.76": "Enhanced X-Ray Radiation Dose SR",
}
"""Structured report classes: kept with their content tree, their measurements read for the viewer."""

OBJECT_CLASSES: dict[str, str] = {
    GRAYSCALE_PRESENTATION: "Grayscale Softcopy Presentation State",
    "1.2.840.10008.5.1.4.1.1.11.2": "Color Softcopy Presentation State",
    "1.2.840.10008.5.1.4.1.1.11.3": "Pseudo-Color Softcopy Presentation State",
    "1.2.840.10008.5.1.4.1.1.11.4": "Blending Softcopy Presentation State",
    "1.2.840.10008.5.1.4.1.1.66.1": "Spatial Registration",
    "1.2.840.10008.5.1.4.1.1.66.3": "Deformable Spatial Registration",
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set",
    **STRUCTURED_REPORTS,
}
"""Non-image SOP classes the ingest doors accept, by SOP Class UID."""

APPLIED_CLASSES = frozenset({GRAYSCALE_PRESENTATION})
"""Object classes the viewer applies today (the others are stored for the tools that will)."""

PRESENTATION_SIZE_MODES = ("SCALE TO FIT", "TRUE SIZE", "MAGNIFY")


def object_class_name(sop_class_uid: str) -> str | None:
    """The accepted non-image class's name, or None for an image or a refused class."""
    return OBJECT_CLASSES.get(str(sop_class_uid))


def objects_series_reason(sop_class_uids: list[str]) -> str | None:
    """Why a series of only non-image objects is not opened as images (None: it has images)."""
    names = [OBJECT_CLASSES.get(uid) for uid in sop_class_uids]
    if not names or any(name is None for name in names):
        return None
    kinds = sorted({str(name) for name in names})
    if all(uid in APPLIED_CLASSES for uid in sop_class_uids):
        what = "applied to the images it references"
    elif all(uid in STRUCTURED_REPORTS for uid in sop_class_uids):
        what = "its measurements are listed with the findings"
    else:
        what = "stored; not shown as images"
    return f"not an image: {', '.join(kinds)} ({len(names)} object{'s' * (len(names) > 1)}), {what}"


def _referenced_series(ds: Dataset) -> list[str]:
    return [str(item.SeriesInstanceUID) for item in ds.get("ReferencedSeriesSequence") or []
            if item.get("SeriesInstanceUID")]


def _displayed_area(ds: Dataset) -> dict[str, Any] | None:
    """The first Displayed Area Selection (PS3.3 C.10.4), as the viewer applies it."""
    for item in ds.get("DisplayedAreaSelectionSequence") or []:
        top_left = header_numbers(item.get("DisplayedAreaTopLeftHandCorner"))
        bottom_right = header_numbers(item.get("DisplayedAreaBottomRightHandCorner"))
        mode = str(item.get("PresentationSizeMode", "") or "").upper()
        if len(top_left) != 2 or len(bottom_right) != 2 or mode not in PRESENTATION_SIZE_MODES:
            continue
        if bottom_right[0] < top_left[0] or bottom_right[1] < top_left[1]:
            continue
        magnification = header_numbers(item.get("PresentationPixelMagnificationRatio"))
        if mode == "MAGNIFY" and not (magnification and magnification[0] > 0):
            continue
        return {"top_left": top_left, "bottom_right": bottom_right, "mode": mode,
                "magnification": magnification[0] if magnification else None}
    return None


def _window(ds: Dataset) -> list[float] | None:
    """The first Softcopy VOI LUT window (centre, width), if the state sets one."""
    for item in ds.get("SoftcopyVOILUTSequence") or []:
        centre, width = header_numbers(item.get("WindowCenter")), header_numbers(item.get("WindowWidth"))
        if centre and width and width[0] > 0:
            return [centre[0], width[0]]
    return None


def presentation_facts(ds: Dataset) -> dict[str, dict[str, Any]]:
    """What a Grayscale Softcopy Presentation State asks of each series it references.

    Parameters
    ----------
    ds : Dataset
        A GSPS instance (already de-identified: its UIDs are the stored ones).

    Returns
    -------
    dict
        Series Instance UID -> ``{label, description, created, area, window}``, JSON-ready:
        ``area`` is the displayed area (image pixel corners, 1-based, and the presentation
        size mode), ``window`` the VOI window; either may be None.
    """
    if str(ds.get("SOPClassUID", "")) != GRAYSCALE_PRESENTATION:
        return {}
    facts = {
        "label": str(ds.get("ContentLabel", "") or ""),
        "description": str(ds.get("ContentDescription", "") or "")[:64],
        "created": f"{ds.get('PresentationCreationDate', '')}{ds.get('PresentationCreationTime', '')}",
        "area": _displayed_area(ds),
        "window": _window(ds),
    }
    return {uid: facts for uid in _referenced_series(ds)}
