"""Truth read from DICOM headers with pydicom alone, for tests that check the gateway against it."""

from __future__ import annotations

import pydicom


def header_spacing(ds: pydicom.Dataset) -> tuple[float, float]:
    """(row, column) mm per pixel as PS3.3 gives them, read here without the gateway's code."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        values = [float(v) for v in ds.get(keyword) or []]
        if len(values) == 2 and min(values) > 0:
            return values[0], values[1]
    for region in ds.get("SequenceOfUltrasoundRegions") or []:
        if region.get("PhysicalUnitsXDirection") == 3 == region.get("PhysicalUnitsYDirection"):
            return abs(float(region.PhysicalDeltaY)) * 10, abs(float(region.PhysicalDeltaX)) * 10
    ratio = [float(v) for v in ds.get("PixelAspectRatio") or []]
    return (ratio[0] / ratio[1], 1.0) if len(ratio) == 2 else (1.0, 1.0)
