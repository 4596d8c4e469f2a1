"""A reader's segmentation added to its study as one DICOM Segmentation (highdicom, BINARY).

Its label map is the reference series' voxel grid, so each slice is one source image: the
slices are matched to the stored images by position along their normal, and the map is
written as a label map (segments renumbered 1..n in order, PS3.3 C.8.20.2 requires them
consecutive) of which highdicom keeps only the frames a segment touches.
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
import numpy as np
from django.db import transaction
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from imaging import storage
from imaging.findings_dicom import (
    CLINICAL,
    MANUFACTURER,
    FindingsExportError,
    derived_series_store,
    series_headers,
)
from imaging.models import Segmentation

ALGORITHM = hd.AlgorithmIdentificationSequence(name="Fusion Gateway interactive segmentation", version="1",
                                               family=codes.cid7162.NeighborhoodAnalysis)


def _slices_in_label_order(headers: list[Any], positions: np.ndarray) -> list[Any]:
    """The stored images in the label map's slice order (``positions``: each slice's first voxel, mm)."""
    if len(headers) != len(positions):
        raise FindingsExportError(f"the series holds {len(headers)} images for {len(positions)} slices")
    stored = np.asarray([[float(v) for v in ds.ImagePositionPatient] for ds in headers])
    order = [int(np.argmin(np.linalg.norm(stored - point, axis=1))) for point in positions]
    if len(set(order)) != len(order) or np.max(np.linalg.norm(stored[order] - positions, axis=1)) > 0.05:
        raise FindingsExportError("the segmentation's slices do not match the series' images")
    return [headers[n] for n in order]


def segmentation_dicom_build(segmentation: Segmentation, labels: np.ndarray,
                             slice_positions: np.ndarray) -> Any:
    present = [int(v) for v in np.unique(labels) if v]
    if not present:
        raise FindingsExportError("the segmentation is empty")
    names = {int(s["number"]): str(s["name"]) for s in segmentation.segments}
    renumbered = np.zeros(256, dtype=np.uint8)
    renumbered[present] = np.arange(1, len(present) + 1)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=n, segment_label=(names.get(number) or f"Segment {number}")[:64],
        segmented_property_category=codes.SCT.Tissue, segmented_property_type=codes.SCT.Tissue,
        algorithm_type="SEMIAUTOMATIC", algorithm_identification=ALGORITHM)
        for n, number in enumerate(present, start=1)]
    sources = _slices_in_label_order(series_headers(segmentation.series_instance_uid), slice_positions)
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=renumbered[labels], segmentation_type="BINARY",
        segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=9902,
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name=MANUFACTURER, software_versions="1", device_serial_number="0",
        content_label="SEGMENTATION", content_description=segmentation.label[:64])


def segmentation_dicom_store(*, segmentation_id: int, labels: np.ndarray,
                             slice_positions: np.ndarray) -> dict[str, Any]:
    """Write the SEG and add it to the study, all or nothing; what was written, for the reader."""
    segmentation = Segmentation.objects.select_related("study").get(pk=segmentation_id)
    seg = segmentation_dicom_build(segmentation, labels, slice_positions)
    written: list[str] = []
    try:
        with transaction.atomic(using=CLINICAL):
            series = derived_series_store(segmentation.study, [seg], modality="SEG",
                                          description=f"Segmentation: {segmentation.label}"[:64],
                                          written=written)
    except BaseException:
        for object_id in written:
            storage.object_delete(object_id)
        raise
    return {"seg_series": series, "segments": len(seg.SegmentSequence), "frames": int(seg.NumberOfFrames)}
