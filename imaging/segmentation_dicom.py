"""A reader's segmentation added to its study as one DICOM Segmentation (highdicom).

Its label map is the reference series' voxel grid, so each slice is one source image: the
slices are matched to the stored images by position along their normal, and the segments
present are renumbered 1..n in order (PS3.3 C.8.20.2 requires them consecutive); highdicom
keeps only the frames a segment touches. BINARY writes the label map. FRACTIONAL (PROBABILITY,
MaximumFractionalValue 255) writes the segments a model found as the model's probability,
255 and 0 where the reader changed them since, and the others as 255 inside and 0 outside:
only what a model gave is ever written as a probability.
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
import numpy as np
from django.db import transaction
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from gateway.i18n import gettext_noop
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
MAX_FRACTIONAL_VALUE = 255
NOT_FROM_A_MODEL = gettext_noop("a fractional SEG holds a model's probabilities, and no segment of this "
                                 "segmentation came from a model: store it as binary")


def _slices_in_label_order(headers: list[Any], positions: np.ndarray) -> list[Any]:
    """The stored images in the label map's slice order (``positions``: each slice's first voxel, mm)."""
    if len(headers) != len(positions):
        raise FindingsExportError(gettext_noop("the series holds %(images)s images for %(slices)s slices"),
                                  images=len(headers), slices=len(positions))
    stored = np.asarray([[float(v) for v in ds.ImagePositionPatient] for ds in headers])
    order = [int(np.argmin(np.linalg.norm(stored - point, axis=1))) for point in positions]
    if len(set(order)) != len(order) or np.max(np.linalg.norm(stored[order] - positions, axis=1)) > 0.05:
        raise FindingsExportError(gettext_noop("the segmentation's slices do not match the series' images"))
    return [headers[n] for n in order]


def _descriptions(segmentation: Segmentation, present: list[int]) -> list[hd.seg.SegmentDescription]:
    names = {int(s["number"]): str(s["name"]) for s in segmentation.segments}
    return [hd.seg.SegmentDescription(
        segment_number=n, segment_label=(names.get(number) or f"Segment {number}")[:64],
        segmented_property_category=codes.SCT.Tissue, segmented_property_type=codes.SCT.Tissue,
        algorithm_type="SEMIAUTOMATIC", algorithm_identification=ALGORITHM)
        for n, number in enumerate(present, start=1)]


def _fractional_frames(labels: np.ndarray, present: list[int],
                       fractions: dict[int, np.ndarray]) -> tuple[slice, np.ndarray]:
    """(the slices any segment touches, their frames [slice, row, column, segment] in 0..1).

    float32, as highdicom takes fractions; it writes round(f * 255), which gives back each
    stored uint8 exactly. Only the slices touched are held, one float copy of them.
    """
    touched = np.zeros(labels.shape[0], dtype=bool)
    for number in present:
        fraction = fractions.get(number)
        touched |= np.any(labels == number if fraction is None else fraction, axis=(1, 2))
    where = np.flatnonzero(touched)
    kept = slice(int(where[0]), int(where[-1]) + 1)
    frames = np.zeros((kept.stop - kept.start, *labels.shape[1:], len(present)), dtype=np.float32)
    for n, number in enumerate(present):
        if number in fractions:
            np.divide(fractions[number][kept], np.float32(MAX_FRACTIONAL_VALUE), out=frames[..., n])
        else:
            frames[..., n] = labels[kept] == number
    return kept, frames


def segmentation_dicom_build(segmentation: Segmentation, labels: np.ndarray, slice_positions: np.ndarray,
                             fractions: dict[int, np.ndarray] | None = None) -> Any:
    """The SEG of ``labels``: BINARY, or FRACTIONAL where ``fractions`` (segment number: uint8
    0..255 on the label grid, :func:`rendering.segment_ops.segmentation_fractions`) is given."""
    present = [int(v) for v in np.unique(labels) if v]
    if not present:
        raise FindingsExportError(gettext_noop("the segmentation is empty"))
    if fractions is not None and not any(number in fractions for number in present):
        raise FindingsExportError(NOT_FROM_A_MODEL)
    sources = _slices_in_label_order(series_headers(segmentation.series_instance_uid), slice_positions)
    written: dict[str, Any] = {
        "segment_descriptions": _descriptions(segmentation, present),
        "series_instance_uid": generate_uid(), "series_number": 9902, "sop_instance_uid": generate_uid(),
        "instance_number": 1, "manufacturer": MANUFACTURER, "manufacturer_model_name": MANUFACTURER,
        "software_versions": "1", "device_serial_number": "0", "content_label": "SEGMENTATION",
        "content_description": segmentation.label[:64]}
    if fractions is None:
        renumbered = np.zeros(256, dtype=np.uint8)
        renumbered[present] = np.arange(1, len(present) + 1)
        return hd.seg.Segmentation(source_images=sources, pixel_array=renumbered[labels],
                                   segmentation_type=hd.seg.SegmentationTypeValues.BINARY, **written)
    kept, frames = _fractional_frames(labels, present, fractions)
    return hd.seg.Segmentation(
        source_images=sources[kept], pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=MAX_FRACTIONAL_VALUE, **written)


def segmentation_dicom_store(*, segmentation_id: int, labels: np.ndarray, slice_positions: np.ndarray,
                             fractions: dict[int, np.ndarray] | None = None) -> dict[str, Any]:
    """Write the SEG and add it to the study, all or nothing; what was written, for the reader."""
    segmentation = Segmentation.objects.select_related("study").get(pk=segmentation_id)
    seg = segmentation_dicom_build(segmentation, labels, slice_positions, fractions)
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
    return {"seg_series": series, "segments": len(seg.SegmentSequence), "frames": int(seg.NumberOfFrames),
            "fractional": fractions is not None}
