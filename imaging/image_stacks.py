"""Series that are pictures, not one volume: radiographs, ultrasound, secondary captures, cine, planar NM.

Every frame of every instance, in InstanceNumber order (then arrival order),
becomes one plane of a stack shown in its own plane, one image at a time:
no reformat, no fusion by geometry. Images of different sizes are centred on
the largest, with the series' lowest value (black for colour) around them.
Geometry is the picture's own: column and row spacing from the header, one
step per image, identity direction; ``display["kind"]`` says ``cine`` (one
multi-frame object) or ``images``. A whole-body NM scan's anterior and
posterior views become one picture, side by side; ``display["panels"]`` names
them left to right.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from imaging import volumes
from imaging.presentation import decoded_frames, pixel_spacing

MAX_STACK_BYTES = 2 * 1024**3


def _instance_frames(ds: Dataset) -> list[np.ndarray]:
    pixels = decoded_frames(ds)
    if pixels.ndim == 4:
        return list(pixels)
    return [volumes.frame_values(ds, frame) for frame in pixels]


def _frame_views(ds: Dataset, count: int) -> list[str]:
    """The view each frame shows (``anterior``, ``posterior``…) from its detector's view code."""
    detectors = ds.get("DetectorInformationSequence") or []
    given = ds.get("DetectorVector")
    listed = given if isinstance(given, MultiValue | list) else [given] if given is not None else []
    vector = [int(v) if str(v).strip().isdigit() else 0 for v in listed]
    names = []
    for frame in range(count):
        detector = vector[frame] - 1 if frame < len(vector) else frame
        codes = detectors[detector].get("ViewCodeSequence") if 0 <= detector < len(detectors) else None
        names.append(str(codes[0].get("CodeMeaning", "")).strip().lower() if codes else "")
    return names


def _whole_body(ds: Dataset) -> bool:
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    return str(ds.get("Modality", "")) == "NM" and len(image_type) > 2 and image_type[2] == "WHOLE BODY"


def _side_by_side(views: list[tuple[str, np.ndarray]]) -> tuple[list[np.ndarray], tuple[str, ...]]:
    """An anterior/posterior whole-body pair as one picture, anterior on the left, as readers compare them."""
    ordered = sorted(views, key=lambda view: view[0].startswith("posterior"))
    (first_name, first), (second_name, second) = ordered
    fill = min(first.min(initial=0), second.min(initial=0))
    gap = np.full((first.shape[0], max(4, first.shape[1] // 32)), fill, dtype=first.dtype)
    return [np.concatenate([first, gap, second], axis=1)], (first_name or "detector 1",
                                                             second_name or "detector 2")


def _paired(first: Dataset, views: list[tuple[str, np.ndarray]]) -> tuple[list[np.ndarray], tuple[str, ...]]:
    """Frames as shown: a whole-body scan's two views side by side, anything else one by one."""
    frames = [frame for _, frame in views]
    if (_whole_body(first) and len(views) == 2 and frames[0].shape == frames[1].shape
            and frames[0].ndim == 2):
        return _side_by_side(views)
    return frames, ()


def _centred(frames: list[np.ndarray]) -> np.ndarray:
    rows = max(f.shape[0] for f in frames)
    columns = max(f.shape[1] for f in frames)
    dtype = np.result_type(*(f.dtype for f in frames))
    colour = frames[0].ndim == 3
    fill = 0 if colour else min(f.min(initial=0) for f in frames)
    nbytes = len(frames) * rows * columns * (3 if colour else 1) * dtype.itemsize
    if nbytes > MAX_STACK_BYTES:
        raise volumes.VolumeRefused(f"the series' images need {nbytes / 1024**3:.1f} GiB, more than "
                                    f"the {MAX_STACK_BYTES / 1024**3:.0f} GiB a series may use")
    stack = np.full((len(frames), rows, columns, *frames[0].shape[2:]), fill, dtype=dtype)
    for index, frame in enumerate(frames):
        top, left = (rows - frame.shape[0]) // 2, (columns - frame.shape[1]) // 2
        stack[index, top:top + frame.shape[0], left:left + frame.shape[1]] = frame
    return stack


def images_from_datasets(datasets: Iterable[Dataset]) -> tuple[volumes.Volume, str]:
    """Build the picture stack of a series; returns (stack as a Volume, note)."""
    ordered: list[tuple[tuple[int, int], list[tuple[str, np.ndarray]]]] = []
    first: Dataset | None = None
    objects = 0
    for order, ds in enumerate(datasets):
        first = ds if first is None else first
        objects += 1
        number = ds.get("InstanceNumber")
        pictures = _instance_frames(ds)
        ordered.append(((int(number) if str(number or "").lstrip("-").isdigit() else 0, order),
                        list(zip(_frame_views(ds, len(pictures)), pictures, strict=True))))
    if first is None:
        raise volumes.VolumeRefused("the series has no images")
    views = [view for _, group in sorted(ordered, key=lambda item: item[0]) for view in group]
    frames, panels = _paired(first, views)
    if len({frame.ndim for frame in frames}) != 1:
        raise volumes.VolumeRefused("the series mixes colour and greyscale images")
    stack = _centred(frames)
    kind = "cine" if objects == 1 and len(frames) > 1 else "images"
    row_spacing, column_spacing = pixel_spacing(first)
    display = {**volumes.series_display(first, kind=kind), "panels": list(panels)}
    volume = volumes.volume_assemble(voxels=np.ascontiguousarray(stack), origin=(0.0, 0.0, 0.0),
                                     spacing_ijk=(column_spacing, row_spacing, 1.0), direction=np.eye(3),
                                     display=display, series_id=str(first.get("SeriesInstanceUID", "")))
    return volume, ""

