"""Series → ready-to-render 3-D volumes, built once after ingest and stored encrypted.

A volume is the series' voxels in patient space: slices sorted by position
along the slice normal, uniform spacing (a slightly irregular stack is
resampled linearly onto its median spacing; duplicate positions or
inconsistent orientation are refused with a reason), rescale applied, the
direction cosines of the source kept. Single-frame stacks, enhanced
(multi-frame) CT/MR with per-frame functional groups, and NM multi-frame
(detector geometry) are supported.

Stored form (inside the encrypted object ``vol-<sha256(series UID)>``)::

    u32 big-endian length | JSON metadata | C-ordered voxel bytes [k, j, i(, sample)]

:func:`load_volume` decrypts one object and maps the voxels without copying,
so opening a 512x512x300 CT costs one read and one AES-GCM pass.

Who builds, and when (:func:`volume_claim`): ingest only marks a touched
series ``pending``; a builder (``manage.py build_volumes --watch``, which
``run_scp`` starts beside its listeners) claims pending series one at a time,
and :func:`load_volume` claims a stale one on demand. A claim lives in the
series row, in the only columns every role that builds may update
(``volume_state``, ``volume_reason``; see ``deploy/postgres/clinical-roles.sql``):
state ``building`` and a reason ``building: claim <token> until <epoch s>``.
Taking, renewing, finishing and releasing a claim are each one conditional
``UPDATE`` on the row's current state and reason, so of several builders on
SQLite or PostgreSQL exactly one wins a series, and a builder that died
leaves a claim that lapses after its lease. An instance stored while its
series is being built sets the state back to ``pending`` (the claim text
stays): the builder's finishing ``UPDATE`` then matches nothing, the build
is discarded and the series released, to be built again with every instance.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import math
import secrets
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from imaging import storage
from imaging.labels import SEGMENTATION, STRUCTURE_SET, LabelsRefused, label_volume, structure_volume
from imaging.models import Instance, Series, VolumeState
from imaging.objects import object_class_name, objects_series_reason
from imaging.presentation import decoded_frames, display_facts, modality_lut_values
from imaging.suv import dicom_datetime, suv_calculation, suvbw_factor
from rendering.volume import Volume, presentation_from_dict

log = logging.getLogger(__name__)

SPACING_TOLERANCE = 0.01  # relative
ORIENTATION_TOLERANCE = 1e-3
MAX_RESAMPLE_IRREGULARITY = 2.0  # largest gap / smallest gap that is still resampled
BUILDING = "building"  # volume_state while a builder holds the series' claim
CLAIM_PREFIX = "building: claim "
CLAIM_LEASE_S = 300.0  # renewed every third of it while the build runs
LOAD_WAIT_S = 120.0  # load_volume waits this long for another builder's claim


class VolumeRefused(ValueError):
    """The series cannot form one regular volume; the message says why."""


class NotAVolume(VolumeRefused):
    """The series is pictures by nature (no patient geometry, cine, planar NM): shown as 2-D images."""


def volume_assemble(*, voxels: np.ndarray, origin: tuple[float, float, float],
                    spacing_ijk: tuple[float, float, float], direction: Any, display: dict[str, Any],
                    series_id: str) -> Volume:
    """The one :class:`~rendering.volume.Volume` type from what a builder or the stored form holds.

    ``spacing_ijk`` is (column, row, slice) spacing as DICOM gives it; ``display`` the
    series' display metadata (modality, windows, units, frame of reference, SUV factor, kind).
    """
    if voxels.ndim == 3 and voxels.dtype not in (np.float32, np.int16):
        voxels = voxels.astype(np.float32)
    return Volume(
        voxels=voxels, spacing=(float(spacing_ijk[2]), float(spacing_ijk[1]), float(spacing_ijk[0])),
        origin=tuple(float(v) for v in origin),  # type: ignore[arg-type]
        direction=np.array(direction, dtype=np.float64), modality=str(display.get("modality", "")),
        series_id=series_id, frame_of_reference_uid=str(display.get("frame_of_reference_uid", "")),
        suv_factor=display.get("suvbw_factor"), presentation=presentation_from_dict(display),
        display=dict(display))


def volume_object_id(series_uid: str) -> str:
    return "vol-" + hashlib.sha256(series_uid.encode()).hexdigest()


# --- SUV -------------------------------------------------------------------------------


# --- building --------------------------------------------------------------------------


def _floats(values: Any) -> list[float]:
    return [float(v) for v in values]


@dataclass
class _Slice:
    position: np.ndarray
    pixels: np.ndarray
    slope: float
    intercept: float
    rescaled: bool = False  # pixels already hold rescaled values (slope and intercept applied)
    time: float = 0.0  # orders the time points of a dynamic series
    seconds: float | None = None  # when, in seconds on one clock within the series (None: unknown)


def _rescale(item: Dataset | None, ds: Dataset) -> tuple[float, float]:
    source = item if item is not None and "RescaleSlope" in item else ds
    slope = float(source.get("RescaleSlope", 1) or 1)
    intercept = float(source.get("RescaleIntercept", 0) or 0)
    return slope, intercept


def _functional(ds: Dataset, frame: int, sequence: str, attribute: str) -> Any:
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    candidates = (per_frame[frame] if per_frame and frame < len(per_frame) else None,
                  shared[0] if shared else None)
    for item in candidates:
        if item is not None and sequence in item and item[sequence].value:
            inner = item[sequence].value[0]
            if attribute in inner:
                return inner[attribute].value
    return None


def _enhanced_slices(ds: Dataset, pixels: np.ndarray) -> tuple[list[_Slice], list[float], list[float]]:
    slices = []
    orientation = _functional(ds, 0, "PlaneOrientationSequence", "ImageOrientationPatient")
    spacing = _functional(ds, 0, "PixelMeasuresSequence", "PixelSpacing")
    if orientation is None or spacing is None:
        raise VolumeRefused("multi-frame object without plane orientation or pixel spacing")
    for frame in range(pixels.shape[0]):
        position = _functional(ds, frame, "PlanePositionSequence", "ImagePositionPatient")
        if position is None:
            raise VolumeRefused(f"frame {frame + 1} has no ImagePositionPatient")
        slope = _functional(ds, frame, "PixelValueTransformationSequence", "RescaleSlope")
        intercept = _functional(ds, frame, "PixelValueTransformationSequence", "RescaleIntercept")
        base_slope, base_intercept = _rescale(None, ds)
        temporal = _functional(ds, frame, "FrameContentSequence", "TemporalPositionIndex")
        slices.append(_Slice(np.array(_floats(position)), pixels[frame],
                             float(slope) if slope is not None else base_slope,
                             float(intercept) if intercept is not None else base_intercept,
                             time=float(temporal) if temporal is not None else 0.0))
    return slices, _floats(orientation), _floats(spacing)


def _nm_slices(ds: Dataset, pixels: np.ndarray) -> tuple[list[_Slice], list[float], list[float]]:
    detector = (ds.get("DetectorInformationSequence") or [Dataset()])[0]
    orientation = _floats(detector.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0]))
    origin = np.array(_floats(detector.get("ImagePositionPatient", [0, 0, 0])))
    spacing = _floats(ds.get("PixelSpacing", [1, 1]))
    step = float(ds.get("SpacingBetweenSlices", 0) or ds.get("SliceThickness", 0) or spacing[0])
    normal = np.cross(orientation[:3], orientation[3:])
    slope, intercept = _rescale(None, ds)
    slices = [_Slice(origin + normal * step * k, pixels[k], slope, intercept)
              for k in range(pixels.shape[0])]
    return slices, orientation, spacing


def _grid_slices(ds: Dataset, pixels: np.ndarray) -> tuple[list[_Slice], list[float], list[float]]:
    """An RT Dose grid: frame k lies GridFrameOffsetVector[k] along the normal (PS3.3 C.8.8.3.2).

    Offsets starting at 0 are relative to ImagePositionPatient; otherwise they are
    the frames' patient z (axial grids). Values are scaled by DoseGridScaling.
    """
    orientation = _floats(ds.ImageOrientationPatient)
    origin = np.array(_floats(ds.ImagePositionPatient))
    offsets = _floats(ds.GridFrameOffsetVector)
    if len(offsets) != pixels.shape[0] or len(orientation) != 6 or len(origin) != 3:
        raise VolumeRefused("the dose grid's frame offsets do not match its frames")
    normal = np.cross(orientation[:3], orientation[3:])
    relative = offsets[0] == 0
    scaling = float(ds.get("DoseGridScaling", 1) or 1)
    slices = []
    for frame, offset in enumerate(offsets):
        position = origin + normal * offset if relative else np.array([origin[0], origin[1], offset])
        slices.append(_Slice(position, pixels[frame], scaling, 0.0))
    return slices, orientation, _floats(ds.get("PixelSpacing") or [1, 1])


def _nm_reconstruction(ds: Dataset) -> bool:
    """A reconstructed SPECT/PET-on-NM volume (ImageType RECON TOMO / RECON GATED TOMO), not planar frames."""
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if len(image_type) > 2:
        return image_type[2] in {"RECON TOMO", "RECON GATED TOMO"}
    detector = (ds.get("DetectorInformationSequence") or [Dataset()])[0]
    return "SpacingBetweenSlices" in ds and "ImagePositionPatient" in detector


def _single_frame_slices(datasets: Iterable[Dataset]) -> tuple[list[_Slice], list[float], list[float]]:
    """Slices of a single-frame stack, rescaled as they are read.

    The datasets are consumed one at a time and only their rescaled pixels are
    kept: a series read lazily from storage (:func:`_series_datasets`) holds
    one instance's dataset at a time beside the slices.
    """
    items = iter(datasets)
    first = next(items)
    second = next(items, None)
    if "ImageOrientationPatient" not in first or "ImagePositionPatient" not in first:
        raise NotAVolume("images without ImagePositionPatient/ImageOrientationPatient")
    orientation = _floats(first.ImageOrientationPatient)
    spacing = _floats(first.get("PixelSpacing") or first.get("ImagerPixelSpacing") or [1, 1])
    slices = []
    shape = None
    for ds in chain([first], [second] if second is not None else [], items):
        if "ImageOrientationPatient" in ds and not np.allclose(
                _floats(ds.ImageOrientationPatient), orientation, atol=ORIENTATION_TOLERANCE):
            raise VolumeRefused("images of the series have different orientations")
        pixels = decoded_frames(ds)
        if shape is None:
            shape = pixels.shape[1:]
        elif pixels.shape[1:] != shape:
            raise VolumeRefused("images of the series have different sizes")
        if pixels.shape[0] != 1:
            raise VolumeRefused("a series mixing multi-frame and single-frame images")
        if "ImagePositionPatient" not in ds:
            raise VolumeRefused("an image of the series has no ImagePositionPatient")
        where = np.array(_floats(ds.ImagePositionPatient))
        slices.append(_Slice(where, frame_values(ds, pixels[0]), 1.0, 0.0, rescaled=True,
                             time=_acquired(ds), seconds=_seconds(ds)))
    return slices, orientation, spacing


def _acquired(ds: Dataset) -> float:
    """When an image was taken, for ordering a dynamic series' time points (seconds, comparable within it)."""
    for keyword in ("TemporalPositionIdentifier", "FrameReferenceTime", "TriggerTime"):
        value = ds.get(keyword)
        with contextlib.suppress(TypeError, ValueError):
            if value is not None and value != "":
                return float(value)
    moment = dicom_datetime(str(ds.get("AcquisitionDate", "") or ds.get("SeriesDate", "") or "19700101"),
                             str(ds.get("AcquisitionTime", "") or ds.get("ContentTime", "") or ""))
    return moment.timestamp() if moment is not None else float(ds.get("InstanceNumber", 0) or 0)


def _seconds(ds: Dataset) -> float | None:
    """An image's time on a clock shared by its series: FrameReferenceTime (PET), TriggerTime
    (gated MR), else the acquisition date and time."""
    for keyword in ("FrameReferenceTime", "TriggerTime"):
        value = ds.get(keyword)
        with contextlib.suppress(TypeError, ValueError):
            if value is not None and value != "":
                return float(value) / 1000.0
    moment = dicom_datetime(str(ds.get("AcquisitionDate", "") or ds.get("SeriesDate", "") or ""),
                            str(ds.get("AcquisitionTime", "") or ""))
    return moment.timestamp() if moment is not None else None


def _time_points_s(groups: list[list[_Slice]]) -> list[float] | None:
    """Each time point's start, in seconds from the first (None where any image's time is unknown)."""
    starts = [min((s.seconds for s in group if s.seconds is not None), default=None) for group in groups]
    if any(start is None for start in starts):
        return None
    first = min(start for start in starts if start is not None)
    return [round(float(start) - first, 3) for start in starts if start is not None]


def _time_points(slices: list[_Slice], normal: np.ndarray) -> list[list[_Slice]]:
    """The slices as time points when every position recurs equally often (dynamic PET/NM/MR)."""
    positions: dict[float, list[_Slice]] = {}
    for item in slices:
        positions.setdefault(round(float(np.dot(item.position, normal)), 2), []).append(item)
    counts = {len(group) for group in positions.values()}
    if len(counts) != 1 or len(positions) < 2 or (count := counts.pop()) < 2:
        return [slices]
    for group in positions.values():
        group.sort(key=lambda item: item.time)
    return [[group[t] for group in positions.values()] for t in range(count)]


def _stacked(slices: list[_Slice], normal: np.ndarray,
             fallback: float) -> tuple[np.ndarray, float, str, int, list[float] | None]:
    """(voxels, slice spacing, note, time points, their starts in s): one volume, or a dynamic
    series' volumes end to end."""
    groups = _time_points(slices, normal)
    if len(groups) == 1:
        return (*_regular(slices, normal, fallback), 1, None)
    starts = _time_points_s(groups)
    built = [_regular(group, normal, fallback) for group in groups]
    stack = np.concatenate([voxels for voxels, _, _ in built])
    return stack, built[0][1], built[0][2], len(groups), starts


def _regular(slices: list[_Slice], normal: np.ndarray, fallback: float) -> tuple[np.ndarray, float, str]:
    """Stack sorted along the normal; resample an irregular stack. Returns (stack, spacing, note)."""
    slices.sort(key=lambda s: float(np.dot(s.position, normal)))
    dtype = np.result_type(*(_rescaled_dtype(s) for s in slices))
    stack = np.empty((len(slices), *slices[0].pixels.shape), dtype=dtype)
    for index, item in enumerate(slices):
        stack[index] = _rescaled(item)
        item.pixels = stack[index]  # the slice's own copy is freed as the stack fills
    if len(slices) == 1:
        return stack, fallback, ""
    along = np.array([float(np.dot(s.position, normal)) for s in slices])
    gaps = np.diff(along)
    if np.any(gaps < 1e-3):
        raise VolumeRefused("two images share one position along the slice normal "
                            "(several acquisitions or time points in one series)")
    median = float(np.median(gaps))
    if np.all(np.abs(gaps - median) <= SPACING_TOLERANCE * median):
        return stack, median, ""
    if gaps.max() / gaps.min() > MAX_RESAMPLE_IRREGULARITY:
        raise VolumeRefused(f"slice spacing varies from {gaps.min():.3g} to {gaps.max():.3g} mm")
    count = round((along[-1] - along[0]) / median) + 1
    targets = along[0] + median * np.arange(count)
    upper = np.clip(np.searchsorted(along, targets, side="right"), 1, len(along) - 1)
    lower = upper - 1
    weight = ((targets - along[lower]) / (along[upper] - along[lower])).clip(0, 1)
    shape = (-1,) + (1,) * (stack.ndim - 1)
    resampled = stack[lower] * (1 - weight.reshape(shape)) + stack[upper] * weight.reshape(shape)
    return resampled.astype(np.float32), median, f"resampled from irregular spacing onto {median:.4g} mm"


def frame_values(ds: Dataset, frame: np.ndarray) -> np.ndarray:
    """One greyscale frame in the modality's values: Modality LUT Sequence, else rescale slope/intercept."""
    lut = modality_lut_values(ds, frame)
    if lut is not None:
        return lut
    slope, intercept = _rescale(None, ds)
    return _rescaled(_Slice(np.zeros(3), frame, slope, intercept))


def _rescaled_dtype(s: _Slice) -> np.dtype:
    if s.rescaled or s.pixels.ndim == 3:
        return s.pixels.dtype
    return _rescaled(s).dtype if s.slope == 1.0 and float(s.intercept).is_integer() else np.dtype(np.float32)


def _rescaled(s: _Slice) -> np.ndarray:
    if s.rescaled or s.pixels.ndim == 3:  # colour: no rescale
        return s.pixels
    if s.slope == 1.0 and float(s.intercept).is_integer():
        value = s.pixels.astype(np.int32) + int(s.intercept)
        if value.min(initial=0) >= -32768 and value.max(initial=0) <= 32767:
            return value.astype(np.int16)
        return value.astype(np.float32)
    return (s.pixels.astype(np.float32) * np.float32(s.slope) + np.float32(s.intercept))


def _window(ds: Dataset) -> tuple[float | None, float | None]:
    def first(value: Any) -> float | None:
        if value is None or value == "":
            return None
        if isinstance(value, list | tuple | pydicom.multival.MultiValue):
            value = value[0]
        return float(value)

    center = ds.get("WindowCenter") or _functional(ds, 0, "FrameVOILUTSequence", "WindowCenter")
    width = ds.get("WindowWidth") or _functional(ds, 0, "FrameVOILUTSequence", "WindowWidth")
    return first(center), first(width)


def series_display(ds: Dataset, *, kind: str, note: str = "") -> dict[str, Any]:
    """The stored display metadata of a series, from its first instance (no identifying data)."""
    modality = str(ds.get("Modality", ""))
    geometric = kind in {"volume", "dynamic"}
    center, width = _window(ds)
    return {
        "modality": modality,
        "photometric_interpretation": str(ds.get("PhotometricInterpretation", "")),
        "window_center": center,
        "window_width": width,
        "units": str(ds.get("Units", "")) or str(ds.get("RescaleType", "")) or str(ds.get("DoseUnits", "")),
        "suvbw_factor": suvbw_factor(ds) if geometric and modality == "PT" else None,
        "suv_calculation": suv_calculation(ds).as_dict() if geometric and modality == "PT" else None,
        "frame_of_reference_uid": str(ds.get("FrameOfReferenceUID", "")) if geometric else "",
        "note": note,
        "kind": kind,
        **display_facts(ds),
    }


def volume_from_datasets(datasets: Iterable[Dataset]) -> tuple[Volume, str]:
    """Build a :class:`Volume` from a series' datasets; returns (volume, note).

    Parameters
    ----------
    datasets : iterable of Dataset
        The series' instances in any order; an iterator is consumed one
        dataset at a time (a single-frame stack keeps only rescaled slices).
    """
    items = iter(datasets)
    first = next(items, None)
    if first is None:
        raise VolumeRefused("the series has no images")
    second = next(items, None)
    datasets = chain([first], [second] if second is not None else [], items)
    if second is None and int(first.get("NumberOfFrames", 1) or 1) > 1:
        pixels = decoded_frames(first)
        if "PerFrameFunctionalGroupsSequence" in first or "SharedFunctionalGroupsSequence" in first:
            slices, orientation, spacing = _enhanced_slices(first, pixels)
        elif _nm_reconstruction(first):
            slices, orientation, spacing = _nm_slices(first, pixels)
        elif "GridFrameOffsetVector" in first and "ImagePositionPatient" in first:
            slices, orientation, spacing = _grid_slices(first, pixels)
        else:
            raise NotAVolume("a multi-frame object without per-frame positions (cine, planar or dynamic)")
    else:
        slices, orientation, spacing = _single_frame_slices(datasets)
    row_dir = np.array(orientation[:3])
    col_dir = np.array(orientation[3:])
    normal = np.cross(row_dir, col_dir)
    if not math.isclose(float(np.linalg.norm(normal)), 1.0, abs_tol=1e-2):
        raise VolumeRefused("ImageOrientationPatient is not two orthogonal unit vectors")
    fallback = float(first.get("SpacingBetweenSlices", 0) or first.get("SliceThickness", 0) or 1.0)
    stack, slice_spacing, note, times, starts = _stacked(slices, normal, fallback)
    origin = tuple(float(v) for v in min(slices, key=lambda s: float(np.dot(s.position, normal))).position)
    display = series_display(first, kind="dynamic" if times > 1 else "volume", note=note)
    display["time_points"] = times
    if starts is not None:
        display["time_points_s"] = starts
    matrix = np.stack([row_dir, col_dir, normal], 1)
    direction = tuple((float(r[0]), float(r[1]), float(r[2])) for r in matrix)
    volume = volume_assemble(
        voxels=np.ascontiguousarray(stack), origin=origin,  # type: ignore[arg-type]
        spacing_ijk=(float(spacing[1]), float(spacing[0]), float(slice_spacing)), direction=direction,
        display=display, series_id=str(first.get("SeriesInstanceUID", "")))
    return volume, note


def series_display_build(open_datasets: Callable[[], Iterable[Dataset]]) -> tuple[Volume, str]:
    """What the viewer shows of a series: one volume where its geometry allows, else its pictures.

    ``open_datasets`` is called once per attempt (the series is read again,
    one instance at a time, when a volume turns out impossible). A series
    that is pictures by nature (:class:`NotAVolume`) becomes a picture stack
    with no note; one whose geometry merely fails (several orientations,
    repeated positions, wildly varying gaps) becomes one with the reason.
    """
    from imaging.image_stacks import images_from_datasets  # it builds on this module's helpers

    try:
        return volume_from_datasets(open_datasets())
    except NotAVolume:
        return images_from_datasets(open_datasets())
    except VolumeRefused as refused:
        stack, _ = images_from_datasets(open_datasets())
        return stack, f"shown as 2-D images: {refused}"


def _encode(volume: Volume) -> bytearray:
    """The stored form, with one copy of the voxels (no ``tobytes()`` then concatenation)."""
    meta = {
        "dtype": volume.voxels.dtype.str, "shape": list(volume.voxels.shape),
        "origin": list(volume.origin), "spacing": list(volume.spacing[::-1]),
        "direction": [[float(v) for v in row] for row in volume.direction], "display": volume.display,
    }
    header = json.dumps(meta).encode()
    voxels = np.ascontiguousarray(volume.voxels)
    blob = bytearray(4 + len(header) + voxels.nbytes)
    blob[:4 + len(header)] = struct.pack(">I", len(header)) + header
    np.frombuffer(blob, dtype=np.uint8, offset=4 + len(header))[:] = voxels.reshape(-1).view(np.uint8)
    return blob


def _decode(blob: bytes, series_id: str) -> Volume:
    (length,) = struct.unpack(">I", blob[:4])
    meta = json.loads(blob[4:4 + length])
    voxels = np.frombuffer(blob, dtype=np.dtype(meta["dtype"]), offset=4 + length).reshape(meta["shape"])
    return volume_assemble(voxels=voxels, origin=tuple(meta["origin"]), spacing_ijk=tuple(meta["spacing"]),
                           direction=meta["direction"], display=meta["display"], series_id=series_id)


def _series_datasets(object_ids: list[str]) -> Iterator[Dataset]:
    """The instances, decrypted and parsed one at a time as the build consumes them."""
    for object_id in object_ids:
        yield pydicom.dcmread(io.BytesIO(storage.object_get(object_id)))


# --- claims: one builder per series at a time --------------------------------------------


def _claim_text(token: str, until: float) -> str:
    return f"{CLAIM_PREFIX}{token} until {int(until)}"


def claim_live(reason: str, *, now: float | None = None) -> bool:
    """Whether ``volume_reason`` holds a claim whose lease has not lapsed."""
    if not reason.startswith(CLAIM_PREFIX):
        return False
    _, _, until = reason.rpartition(" until ")
    try:
        return float(until) > (time.time() if now is None else now)
    except ValueError:
        return False


@dataclass
class VolumeClaim:
    """A builder's hold on one series: the claim text now in its ``volume_reason``."""

    series_id: int
    text: str
    _lock: threading.Lock

    def renew(self, *, lease_s: float) -> bool:
        """Extend the lease (one conditional UPDATE); False once the claim is lost."""
        with self._lock:
            token = self.text[len(CLAIM_PREFIX):].partition(" ")[0]
            fresh = _claim_text(token, time.time() + lease_s)
            won = Series.objects.filter(pk=self.series_id, volume_reason=self.text).update(
                volume_reason=fresh)
            if won:
                self.text = fresh
            return bool(won)

    def finish(self, **fields: Any) -> bool:
        """Record the build, only if the series is still ``building`` under this claim.

        An instance stored meanwhile set the state to ``pending``: nothing is
        recorded, the claim is released and the series waits for its next build.
        """
        with self._lock:
            won = Series.objects.filter(pk=self.series_id, volume_state=BUILDING,
                                        volume_reason=self.text).update(**fields)
            if not won:
                Series.objects.filter(pk=self.series_id, volume_reason=self.text).update(
                    volume_reason="")
            return bool(won)

    def release(self) -> None:
        """Give the series back as ``pending`` (the build failed or was interrupted)."""
        with self._lock:
            Series.objects.filter(pk=self.series_id, volume_reason=self.text).update(
                volume_state=VolumeState.PENDING, volume_reason="")


def volume_claim(*, series_id: int, lease_s: float = CLAIM_LEASE_S,
                 include_built: bool = False) -> VolumeClaim | None:
    """Claim a series for building, or None when there is nothing to build or another holds it.

    Claimable: ``pending`` without a live claim, or a lapsed claim (its builder
    died); with ``include_built`` also ``ready`` and ``refused`` (an explicit
    rebuild). The claim is a compare-and-set on the state and reason just read,
    so two builders racing for one series cannot both win it.
    """
    row = Series.objects.filter(pk=series_id).values_list("volume_state", "volume_reason").first()
    if row is None:
        return None
    state, reason = row
    if claim_live(reason):
        return None
    if state in (VolumeState.READY, VolumeState.REFUSED) and not include_built:
        return None
    text = _claim_text(secrets.token_hex(8), time.time() + lease_s)
    won = Series.objects.filter(pk=series_id, volume_state=state, volume_reason=reason).update(
        volume_state=BUILDING, volume_reason=text)
    return VolumeClaim(series_id, text, threading.Lock()) if won else None


def volumes_pending(*, limit: int = 100) -> list[int]:
    """Ids of series waiting for a build (pending, or a lapsed claim), oldest first."""
    rows = (Series.objects.filter(volume_state__in=(VolumeState.PENDING, BUILDING))
            .order_by("id").values_list("id", "volume_reason")[:limit * 4])
    return [pk for pk, reason in rows if not claim_live(reason)][:limit]


class _Heartbeat(threading.Thread):
    """Renews a claim every third of its lease while a long build runs."""

    def __init__(self, claim: VolumeClaim, lease_s: float) -> None:
        super().__init__(name=f"volume-claim-{claim.series_id}", daemon=True)
        self.claim, self.lease_s, self.stopped = claim, lease_s, threading.Event()

    def run(self) -> None:
        from django.db import connections

        try:
            while not self.stopped.wait(self.lease_s / 3) and self.claim.renew(lease_s=self.lease_s):
                pass
        finally:
            connections.close_all()


def _referenced_volume(series_uid: str) -> Volume:
    """The volume of the images a structure set was drawn on (the same study's, by UID)."""
    series = Series.objects.filter(series_instance_uid=series_uid).first()
    if series is None:
        raise LabelsRefused("the images the structure set was drawn on are not in the gateway")
    volume = load_volume(series)
    if not volume.reformattable:
        raise LabelsRefused("the structure set was drawn on images that are not one volume")
    return volume


def _series_build(series: Series) -> tuple[Volume, str]:
    """What the series shows: its images' volume or pictures, or its segmentation's labels.

    A series of other non-image objects is refused with what it holds.
    """
    rows = list(Instance.objects.filter(series_id=series.pk).order_by("id")
                .values_list("object_id", "sop_class_uid"))
    classes = [sop_class for _, sop_class in rows]
    if classes and all(sop_class == SEGMENTATION for sop_class in classes):
        try:
            return label_volume(lambda: _series_datasets([object_id for object_id, _ in rows]),
                                series.series_instance_uid, volume_assemble)
        except LabelsRefused as refused:
            raise VolumeRefused(str(refused)) from refused
    if classes and all(sop_class == STRUCTURE_SET for sop_class in classes):
        try:
            return structure_volume(lambda: _series_datasets([object_id for object_id, _ in rows]),
                                    series.series_instance_uid, _referenced_volume, volume_assemble)
        except LabelsRefused as refused:
            raise VolumeRefused(str(refused)) from refused
    not_images = objects_series_reason(classes)
    if not_images is not None:
        raise VolumeRefused(not_images)
    object_ids = [object_id for object_id, sop_class in rows if object_class_name(sop_class) is None]
    return series_display_build(lambda: _series_datasets(object_ids))


def _build_claimed(series: Series, claim: VolumeClaim, lease_s: float) -> None:
    """Build under ``claim`` and record the outcome through it."""
    heartbeat = _Heartbeat(claim, lease_s)
    heartbeat.start()
    try:
        try:
            volume, note = _series_build(series)
        except VolumeRefused as refused:
            claim.finish(volume_state=VolumeState.REFUSED, volume_reason=str(refused), volume_object="")
            return
        except Exception as exc:
            claim.finish(volume_state=VolumeState.REFUSED, volume_object="",
                         volume_reason=f"cannot decode the images ({type(exc).__name__}: {str(exc)[:200]})")
            return
        object_id = volume_object_id(series.series_instance_uid)
        blob = _encode(volume)
        del volume
        storage.object_put(object_id, blob)
        del blob
        claim.finish(volume_state=VolumeState.READY, volume_object=object_id, volume_reason=note)
    except BaseException:
        claim.release()
        raise
    finally:
        heartbeat.stopped.set()
        heartbeat.join()


def series_volume_build(*, series: Series, wait_s: float = LOAD_WAIT_S,
                        lease_s: float = CLAIM_LEASE_S) -> Series:
    """Build and store the series' volume now, or record why it cannot be one.

    Claims the series first (whatever its state); where another builder holds
    it, waits up to ``wait_s`` for that build instead of repeating it. Returns
    the series as it is afterwards (``ready``, ``refused``, or still not built
    when the wait ran out or instances kept arriving).
    """
    deadline = time.monotonic() + wait_s
    include_built = True
    while True:
        claim = volume_claim(series_id=series.pk, lease_s=lease_s, include_built=include_built)
        if claim is not None:
            _build_claimed(series, claim, lease_s)
            series.refresh_from_db()
            if series.volume_state != VolumeState.PENDING:
                return series
        else:
            series.refresh_from_db()
            if series.volume_state in (VolumeState.READY, VolumeState.REFUSED) and not include_built:
                return series
            include_built = False  # someone else builds it: their result will do
        if time.monotonic() >= deadline:
            return series
        time.sleep(0.2)


def volumes_build_pending(*, limit: int = 100, lease_s: float = CLAIM_LEASE_S) -> int:
    """Build pending series one at a time (each claimed first); returns how many were built."""
    built = 0
    for series_id in volumes_pending(limit=limit):
        claim = volume_claim(series_id=series_id, lease_s=lease_s)
        if claim is None:
            continue  # another builder was quicker
        series = Series.objects.filter(pk=series_id).first()
        if series is None:
            continue
        _build_claimed(series, claim, lease_s)
        built += 1
    return built


def load_volume(series: Series) -> Volume:
    """The series' voxels, geometry and display metadata; builds the volume if it is stale.

    A stale volume is built here on demand, under a claim like any builder's;
    where a builder already holds the series, this waits for its result (up
    to ``LOAD_WAIT_S``) rather than building it a second time.
    Raises :class:`VolumeRefused` (with the reason) for a series that is not one volume.
    """
    if series.volume_state != VolumeState.READY or not series.volume_object:
        series = _build_or_wait(series)
    if series.volume_state == VolumeState.REFUSED:
        raise VolumeRefused(series.volume_reason)
    if series.volume_state != VolumeState.READY or not series.volume_object:
        # Still not built: instances keep arriving, or another builder is slow. Build it
        # here, in memory only, without recording it.
        return _series_build(series)[0]
    return _decode(storage.object_get(series.volume_object), series.series_instance_uid)


def _build_or_wait(series: Series) -> Series:
    deadline = time.monotonic() + LOAD_WAIT_S
    while True:
        claim = volume_claim(series_id=series.pk)
        if claim is not None:
            _build_claimed(series, claim, CLAIM_LEASE_S)
        series.refresh_from_db()
        if series.volume_state in (VolumeState.READY, VolumeState.REFUSED) or time.monotonic() >= deadline:
            return series
        time.sleep(0.2)
