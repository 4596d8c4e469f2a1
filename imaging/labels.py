"""A DICOM Segmentation as a label volume: one number per voxel, its segment's, on the SEG's own grid.

highdicom reads the SEG (binary or fractional, frames in any order, empty frames left
out) into a regular volume with its affine; this turns that into the gateway's one
Volume type (``kind`` ``label``), so a segmentation is shown as a coloured overlay on
the series it was drawn on (the same frame of reference: fusion by geometry) and
reformatted like any volume. Where segments overlap, the higher segment number wins; a
fractional segment counts where its value is at least one half.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian

from rendering.volume import Volume

SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
MAX_SEGMENTS = 255  # a label is one byte of the overlay's colour table
FRACTIONAL_INSIDE = 0.5


class LabelsRefused(ValueError):
    """The segmentation cannot be a label volume (said in the worklist and the viewer)."""


def _labels(seg: Any, numbers: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(label per voxel [slice, row, column], highdicom's affine of that grid)."""
    labels: np.ndarray | None = None
    affine = np.eye(4)
    for number in numbers:  # one segment's volume at a time: a SEG may hold many
        part = seg.get_volume(segment_numbers=[number], allow_missing_positions=True)
        if labels is None:
            labels, affine = np.zeros(part.spatial_shape, dtype=np.int16), np.asarray(part.affine, np.float64)
        elif part.spatial_shape != labels.shape or not np.allclose(part.affine, affine):
            raise LabelsRefused("the segments lie on different grids")
        inside = part.array[..., 0] >= (FRACTIONAL_INSIDE if part.array.dtype.kind == "f" else 1)
        labels[inside] = number
    if labels is None:
        raise LabelsRefused("the segmentation has no segment")
    return labels, affine


def _geometry(affine: np.ndarray, shape: tuple[int, int, int]) -> tuple[Any, ...]:
    """(origin, spacing (i, j, k), direction columns i, j, k, flip along k) from highdicom's affine.

    Its columns step (slice, row, column); the gateway's volumes run k along the normal of the
    rows and columns, so a stack ordered against it is flipped.
    """
    k_step, j_step, i_step = (np.asarray(affine[:3, n], dtype=np.float64) for n in range(3))
    origin = np.asarray(affine[:3, 3], dtype=np.float64)
    flip = float(np.dot(np.cross(i_step, j_step), k_step)) < 0
    if flip:
        origin = origin + k_step * (shape[0] - 1)
        k_step = -k_step
    spacing = tuple(float(np.linalg.norm(v)) or 1.0 for v in (i_step, j_step, k_step))
    direction = np.stack([i_step / spacing[0], j_step / spacing[1], k_step / spacing[2]], axis=1)
    return tuple(float(v) for v in origin), spacing, direction, flip


def _little_endian(ds: Dataset) -> Dataset:
    """highdicom parses little-endian segmentations only; a big-endian one is re-encoded (its
    frames are bytes, OB, so only the header's numbers change order)."""
    syntax = ds.file_meta.get("TransferSyntaxUID") if getattr(ds, "file_meta", None) else None
    if syntax != ExplicitVRBigEndian:
        return ds
    buffer = io.BytesIO()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    pydicom.dcmwrite(buffer, ds, implicit_vr=False, little_endian=True, force_encoding=True)
    converted = pydicom.dcmread(io.BytesIO(buffer.getvalue()), force=True)
    converted.file_meta = ds.file_meta
    return converted


def label_volume(open_datasets: Callable[[], Iterable[Dataset]], series_id: str,
                 assemble: Callable[..., Volume]) -> tuple[Volume, str]:
    """The series' segmentation (its first SEG instance) as a ``label`` volume, with a note.

    ``assemble`` is :func:`imaging.volumes.volume_assemble` (passed in: no import cycle).
    """
    datasets = list(open_datasets())
    note = f"{len(datasets) - 1} more segmentation(s) of the series not shown" if len(datasets) > 1 else ""
    import highdicom as hd  # here, not at import: every process that builds volumes imports this module

    ds = _little_endian(datasets[0])
    try:
        seg = hd.seg.Segmentation.from_dataset(ds)
        numbers = [int(item.SegmentNumber) for item in seg.SegmentSequence][:MAX_SEGMENTS]
        if not numbers:
            raise LabelsRefused("the segmentation has no segment")
        labels, affine = _labels(seg, numbers)
    except LabelsRefused:
        raise
    except Exception as exc:
        raise LabelsRefused(f"the segmentation cannot be read as a volume ({type(exc).__name__}: "
                            f"{str(exc)[:160]})") from exc
    origin, spacing, direction, flip = _geometry(affine, labels.shape)
    if flip:
        labels = labels[::-1]
    segments = [{"number": int(item.SegmentNumber), "label": str(item.get("SegmentLabel", ""))[:64]}
                for item in ds.SegmentSequence][:MAX_SEGMENTS]
    display = {"kind": "label", "modality": "SEG", "units": "",
               "frame_of_reference_uid": str(ds.get("FrameOfReferenceUID", "")), "segments": segments}
    return assemble(voxels=np.ascontiguousarray(labels.astype(np.int16)), origin=origin,
                    spacing_ijk=spacing, direction=direction, display=display, series_id=series_id), note


STRUCTURE_SET = "1.2.840.10008.5.1.4.1.1.481.3"


def _referenced_series(ds: Dataset) -> str:
    for frame in ds.get("ReferencedFrameOfReferenceSequence") or []:
        for study in frame.get("RTReferencedStudySequence") or []:
            for series in study.get("RTReferencedSeriesSequence") or []:
                if series.get("SeriesInstanceUID"):
                    return str(series.SeriesInstanceUID)
    raise LabelsRefused("the structure set names no image series")


def _contours(ds: Dataset, base: Volume) -> list[tuple[int, int, np.ndarray]]:
    """(ROI number, slice k, polygon in (i, j) index) of every closed planar contour on ``base``."""
    found = []
    for roi in (ds.get("ROIContourSequence") or [])[:MAX_SEGMENTS]:
        number = int(roi.get("ReferencedROINumber", 0) or 0)
        for contour in roi.get("ContourSequence") or []:
            closed = str(contour.get("ContourGeometricType", "")) == "CLOSED_PLANAR"
            if not closed or not 1 <= number <= MAX_SEGMENTS:
                continue
            points = np.asarray([float(v) for v in contour.get("ContourData") or []], dtype=np.float64)
            if points.size < 9 or points.size % 3:
                continue
            index = base.patient_to_index(points.reshape(-1, 3))
            k = int(np.rint(index[:, 0].mean()))
            if 0 <= k < base.shape[0] and np.ptp(index[:, 0]) < 0.5:
                found.append((number, k, index[:, :0:-1]))
    return found


def structure_volume(open_datasets: Callable[[], Iterable[Dataset]], series_id: str,
                     referenced_volume: Callable[[str], Volume],
                     assemble: Callable[..., Volume]) -> tuple[Volume, str]:
    """An RT structure set's closed contours filled on the grid of the images it was drawn on.

    A voxel belongs to a contour when its centre lies inside (even-odd rule: a contour inside
    another of the same ROI on a slice is a hole); the higher ROI number wins where they
    overlap. The volume covers the contours' bounding box only.
    """
    from rendering.measure import inside_polygon

    ds = next(iter(open_datasets()))
    base = referenced_volume(_referenced_series(ds))
    contours = _contours(ds, base)
    if not contours:
        raise LabelsRefused("no closed planar contour of the structure set lies on its images")
    corners = np.concatenate([polygon for _, _, polygon in contours])
    low_i, low_j = (max(int(np.floor(v)), 0) for v in corners.min(axis=0))
    high_i = min(int(np.ceil(corners[:, 0].max())) + 1, base.shape[2])
    high_j = min(int(np.ceil(corners[:, 1].max())) + 1, base.shape[1])
    ks = [k for _, k, _ in contours]
    low_k, high_k = min(ks), max(ks) + 1
    labels = np.zeros((high_k - low_k, high_j - low_j, high_i - low_i), dtype=np.int16)
    js, is_ = np.mgrid[low_j:high_j, low_i:high_i].astype(np.float64)
    filled: dict[tuple[int, int], np.ndarray] = {}
    for number, k, polygon in contours:
        inside = inside_polygon(is_, js, [(float(i), float(j)) for i, j in polygon])
        filled[(number, k)] = filled.get((number, k), np.zeros_like(inside)) ^ inside
    for (number, k), inside in sorted(filled.items()):
        labels[k - low_k][inside] = number
    names = {int(item.get("ROINumber", 0) or 0): str(item.get("ROIName", "") or "")[:64]
             for item in ds.get("StructureSetROISequence") or []}
    numbers = sorted({n for n, _, _ in contours})
    segments = [{"number": n, "label": names.get(n) or f"ROI {n}"} for n in numbers]
    display = {"kind": "label", "modality": "RTSTRUCT", "units": "",
               "frame_of_reference_uid": base.frame_of_reference_uid, "segments": segments}
    origin = base.index_to_patient(np.array([low_k, low_j, low_i], dtype=np.float64))
    return assemble(voxels=labels, origin=tuple(float(v) for v in origin),
                    spacing_ijk=(base.spacing[2], base.spacing[1], base.spacing[0]),
                    direction=np.asarray(base.direction), display=display, series_id=series_id), ""
