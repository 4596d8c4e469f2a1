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

import highdicom as hd
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


def _labels(seg: hd.seg.Segmentation, numbers: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(label per voxel [slice, row, column], highdicom's affine of that grid)."""
    first = seg.get_volume(segment_numbers=[numbers[0]], allow_missing_positions=True)
    labels = np.zeros(first.spatial_shape, dtype=np.int16)
    for number in numbers:
        part = seg.get_volume(segment_numbers=[number], allow_missing_positions=True)
        if part.spatial_shape != first.spatial_shape or not np.allclose(part.affine, first.affine):
            raise LabelsRefused("the segments lie on different grids")
        inside = part.array[..., 0] >= (FRACTIONAL_INSIDE if part.array.dtype.kind == "f" else 1)
        labels[inside] = number
    return labels, np.asarray(first.affine, dtype=np.float64)


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
