"""The voxel volume the render engine consumes, and the interface that supplies it.

Coordinate conventions (see ``docs/rendering.md``):

* ``voxels`` is indexed ``[k, j, i]`` = ``[slice, row, column]`` (z, y, x in index space).
* ``spacing`` is ``(k, j, i)`` in mm, the same order as the array axes.
* ``origin`` is the patient position (x, y, z in DICOM LPS mm) of the centre of voxel ``[0, 0, 0]``.
* ``direction`` is a 3x3 matrix whose *columns* are the LPS unit vectors of increasing
  column ``i``, row ``j`` and slice ``k`` (the ITK/SimpleITK convention). For a DICOM
  series, column 0 and column 1 are the two halves of ``ImageOrientationPatient``.

So ``patient = origin + direction @ (i * spacing_i, j * spacing_j, k * spacing_k)``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import Protocol, runtime_checkable

import numpy as np

from rendering.viewstate import MAX_FILE_WINDOWS

MODALITIES_SUV = frozenset({"PT", "NM"})


SERIES_KINDS = frozenset({"volume", "dynamic", "images", "cine", "label"})
MAX_TIME_POINTS = 4096
MAX_LUT_ENTRIES = 4096
VOI_FUNCTIONS = frozenset({"LINEAR", "LINEAR_EXACT", "SIGMOID"})


class VolumeError(ValueError):
    """A volume is malformed (shape, dtype, geometry)."""


@dataclass(frozen=True)
class Voi:
    """One of the file's VOI presets (PS3.3 C.11.2): a window and its VOILUTFunction, or a VOI LUT.

    ``function`` is ``LINEAR``, ``LINEAR_EXACT``, ``SIGMOID`` or ``LUT``. A LUT maps
    ``first`` .. ``first + count - 1`` through ``data`` (entries of ``bits`` bits); a
    table longer than :data:`MAX_LUT_ENTRIES` was resampled, so ``len(data) < count``.
    """

    name: str
    function: str = "LINEAR"
    first: int = 0
    count: int = 0
    bits: int = 16
    data: tuple[int, ...] = ()

    @functools.cached_property
    def grey(self) -> np.ndarray:
        """The LUT's entries scaled from its bit depth to 0..255 (uint8 indices)."""
        top = float(2 ** self.bits - 1)
        table = np.rint(np.asarray(self.data, dtype=np.float64) * (255.0 / top))
        grey = np.clip(table, 0, 255).astype(np.uint8)
        grey.setflags(write=False)
        return grey

    def as_dict(self) -> dict:
        if self.function != "LUT":
            return {"name": self.name, "function": self.function}
        return {"name": self.name, "function": "LUT",
                "lut": {"descriptor": [self.count, self.first, self.bits], "data": list(self.data)}}


def _voi_from_dict(facts: object, number: int, function: str) -> Voi:
    """A preset as imaging stored it; anything malformed is the linear window it replaces."""
    item = facts if isinstance(facts, dict) else {}
    lut = item.get("lut") if isinstance(item.get("lut"), dict) else None
    explanation = str(item.get("explanation") or item.get("name") or "")[:64]
    if lut is not None:
        try:
            count, first, bits = (int(v) for v in lut["descriptor"])
            data = tuple(int(v) for v in lut["data"][:MAX_LUT_ENTRIES])
        except (KeyError, TypeError, ValueError):
            data = ()
        if data and count > 0 and 1 <= bits <= 16:
            return Voi(explanation or f"LUT {number}", "LUT", first, count, bits, data)
    own = str(item.get("function") or function).upper()
    own = own if own in VOI_FUNCTIONS else "LINEAR"
    shown = "sigmoid" if own == "SIGMOID" else "window"
    return Voi(explanation or (shown if (own, number) == ("SIGMOID", 1) else f"{shown} {number}"), own)


def _vois(facts: dict, windows: int) -> tuple[Voi, ...]:
    """One :class:`Voi` per window preset; a display dict built before VOI LUTs gives linear ones."""
    function = str(facts.get("voi_function") or "LINEAR")
    stored = facts.get("vois")
    stored = stored if isinstance(stored, list) else []
    vois = []
    luts = 0
    for index in range(windows):
        item = stored[index] if index < len(stored) else None
        is_lut = isinstance(item, dict) and isinstance(item.get("lut"), dict)
        luts += is_lut
        vois.append(_voi_from_dict(item, luts if is_lut else index + 1, function))
    return tuple(vois)


@dataclass(frozen=True)
class Presentation:
    """How the series is meant to look, from its header (see ``imaging.presentation``).

    ``kind`` is ``volume`` (patient geometry: reformats and fusion), ``images``
    or ``cine`` (pictures shown one at a time in their own plane); ``windows``
    are the file's (centre, width) suggestions (a VOI LUT's is its input range);
    ``vois``, one per window, says how each maps values to grey (its
    VOILUTFunction, or the LUT itself); ``invert`` is MONOCHROME1.
    """

    kind: str = "volume"
    invert: bool = False
    windows: tuple[tuple[float, float], ...] = ()
    frame_time_ms: float | None = None
    units: str = ""
    """The header's Units or RescaleType (``BQML``, ``CNTS``, ``HU``…), empty when it names none."""
    panels: tuple[str, ...] = ()
    """Views shown side by side in one picture, left to right (a whole-body scan's anterior, posterior)."""
    time_points: int = 1
    """A ``dynamic`` series' volumes, stored end to end along the slice axis."""
    vois: tuple[Voi, ...] = ()
    time_points_s: tuple[float, ...] = ()
    """Each time point's start in seconds from the first, where the headers give it (else empty)."""
    label_style: tuple[tuple[int, str, float], ...] = ()
    """A reader's segmentation: (number, "#rrggbb", alpha) of each segment (empty: the label table)."""

    def as_dict(self) -> dict:
        return {"kind": self.kind, "invert": self.invert, "units": self.units, "panels": list(self.panels),
                "time_points": self.time_points,
                "windows": [list(pair) for pair in self.windows], "frame_time_ms": self.frame_time_ms,
                "vois": [voi.as_dict() for voi in self.vois], "time_points_s": list(self.time_points_s)}


def presentation_from_dict(facts: dict) -> Presentation:
    kind = str(facts.get("kind") or "volume")
    frame_time = facts.get("frame_time_ms")
    windows = tuple((float(c), float(w)) for c, w in (facts.get("windows") or [])[:MAX_FILE_WINDOWS])
    return Presentation(
        kind=kind if kind in SERIES_KINDS else "volume", invert=bool(facts.get("invert")),
        windows=windows, vois=_vois(facts, len(windows)),
        frame_time_ms=float(frame_time) if frame_time else None,
        units=str(facts.get("units") or "")[:16],
        panels=tuple(str(name)[:32] for name in (facts.get("panels") or [])[:4]),
        time_points=_time_points(facts) if kind == "dynamic" else 1,
        time_points_s=_time_starts(facts) if kind == "dynamic" else ())


def _time_starts(facts: dict) -> tuple[float, ...]:
    starts = facts.get("time_points_s") or []
    if len(starts) != _time_points(facts):
        return ()
    return tuple(float(v) for v in starts)


def _time_points(facts: dict) -> int:
    return min(max(int(facts.get("time_points") or 1), 1), MAX_TIME_POINTS)


@dataclass(frozen=True, eq=False)
class Volume:
    """One ready-to-render series, values already rescaled (HU for CT, Bq/ml for PET).

    ``suv_factor`` multiplies Bq/ml to give SUVbw (None when it cannot be computed);
    ``frame_of_reference_uid`` decides which volumes may be fused without a registration.
    """

    voxels: np.ndarray
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: np.ndarray
    modality: str
    series_id: str
    frame_of_reference_uid: str
    suv_factor: float | None = None
    presentation: Presentation = field(default_factory=Presentation)
    display: dict = field(default_factory=dict, repr=False)
    """The series' stored display metadata as imaging built it (what the stored form keeps)."""
    _inverse: np.ndarray = field(init=False, repr=False)
    _times: dict[int, Volume] = field(init=False, repr=False, default_factory=dict)

    def __post_init__(self) -> None:
        voxels = self.voxels
        colour = isinstance(voxels, np.ndarray) and voxels.ndim == 4 and voxels.shape[3] == 3
        if not isinstance(voxels, np.ndarray) or (voxels.ndim != 3 and not colour) or min(voxels.shape) < 1:
            raise VolumeError("voxels must be a numpy array [z, y, x] or RGB [z, y, x, 3]")
        if colour and voxels.dtype != np.uint8:
            raise VolumeError(f"colour voxels must be uint8, not {voxels.dtype}")
        labels_uint8 = self.presentation.kind == "label" and voxels.dtype == np.uint8
        if not colour and voxels.dtype not in (np.float32, np.int16) and not labels_uint8:
            raise VolumeError(f"voxels must be float32 or int16 (uint8 for labels), not {voxels.dtype}")
        spacing = tuple(float(s) for s in self.spacing)
        origin = tuple(float(o) for o in self.origin)
        if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
            raise VolumeError("spacing must be three positive mm values (z, y, x)")
        if len(origin) != 3 or not all(np.isfinite(origin)):
            raise VolumeError("origin must be three finite mm values (x, y, z)")
        direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
            raise VolumeError("direction must be orthonormal (columns: i, j, k axes in LPS)")
        if self.suv_factor is not None and not (np.isfinite(self.suv_factor) and self.suv_factor > 0):
            raise VolumeError("suv_factor must be positive or None")
        if voxels.shape[0] % self.presentation.time_points:
            raise VolumeError("a dynamic series' slices must divide evenly into its time points")
        voxels.setflags(write=False)
        direction.setflags(write=False)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "direction", direction)
        # index (k, j, i) -> patient: origin + direction @ diag(sx, sy, sz) @ (i, j, k)
        scaled = direction * np.array([spacing[2], spacing[1], spacing[0]])
        object.__setattr__(self, "_inverse", np.linalg.inv(scaled))

    # --- time -----------------------------------------------------------------------------

    @property
    def time_points(self) -> int:
        return self.presentation.time_points

    def at_time(self, index: int) -> Volume:
        """Time point ``index`` of a dynamic series as a volume of its own (itself when not dynamic).

        Made once per time point, so caches keyed by the volume (3-D mappers) stay valid.
        """
        if self.time_points == 1:
            return self
        if not 0 <= index < self.time_points:
            raise VolumeError(f"time point {index + 1} of {self.time_points} does not exist")
        found = self._times.get(index)
        if found is None:
            depth = self.voxels.shape[0] // self.time_points
            found = replace(self, voxels=self.voxels[index * depth:(index + 1) * depth],
                            presentation=replace(self.presentation, kind="volume", time_points=1))
            self._times[index] = found
        return found

    # --- geometry -------------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.voxels.shape[:3])  # type: ignore[return-value]

    @property
    def labels(self) -> bool:
        """A segmentation: each voxel holds its segment's number (0 outside), shown as a coloured overlay."""
        return self.presentation.kind == "label"

    @property
    def colour(self) -> bool:
        return self.voxels.ndim == 4

    @property
    def reformattable(self) -> bool:
        """Whether reformats (MPR, oblique, 3-D) and fusion by geometry make sense."""
        return self.presentation.kind in ("volume", "label") and not self.colour and min(self.shape) >= 3

    @property
    def nbytes(self) -> int:
        return int(self.voxels.nbytes)

    @property
    def index_to_patient_matrix(self) -> np.ndarray:
        """3x3 matrix M with ``patient = origin + M @ (i, j, k)`` (note: i, j, k order)."""
        return self.direction * np.array([self.spacing[2], self.spacing[1], self.spacing[0]])

    def index_to_patient(self, index: np.ndarray | tuple[float, float, float]) -> np.ndarray:
        """Patient LPS mm of continuous voxel indices ``(..., 3)`` given as (k, j, i)."""
        kji = np.asarray(index, dtype=np.float64)
        ijk = kji[..., ::-1]
        return np.asarray(self.origin) + ijk @ self.index_to_patient_matrix.T

    def patient_to_index(self, point: np.ndarray | tuple[float, float, float]) -> np.ndarray:
        """Continuous voxel indices (k, j, i) of patient LPS points ``(..., 3)``."""
        xyz = np.asarray(point, dtype=np.float64) - np.asarray(self.origin)
        ijk = xyz @ self._inverse.T
        return ijk[..., ::-1]

    def corners(self) -> np.ndarray:
        """Patient coordinates (8, 3) of the centres of the eight corner voxels."""
        nk, nj, ni = self.shape
        kji = np.array([[k, j, i] for k in (0, nk - 1) for j in (0, nj - 1) for i in (0, ni - 1)], float)
        return self.index_to_patient(kji)

    def center(self) -> np.ndarray:
        """Patient coordinates of the volume's centre."""
        return self.index_to_patient((np.array(self.shape, dtype=np.float64) - 1) / 2)

    @property
    def uses_suv(self) -> bool:
        return self.modality in MODALITIES_SUV and self.suv_factor is not None


@runtime_checkable
class VolumeSource(Protocol):
    """Supplies volumes by series id.

    Contract: ``load`` returns the whole volume for an opaque ``series_id`` or raises
    ``KeyError`` when it does not exist (or is not visible to this source). It may be
    slow (decryption, parsing); callers cache. Implementations must be constructible in
    a worker process from picklable arguments (see ``rendering.workers.SourceSpec``).
    """

    def load(self, series_id: str) -> Volume: ...


def volume_describe(container: Volume) -> dict:
    """Geometry and modality as plain JSON-ready numbers (never voxel values).

    A dynamic series is described by its first time point, plus ``time_points``.
    """
    volume = container.at_time(0)
    return {
        "shape": list(volume.shape),
        "spacing": [float(s) for s in volume.spacing],
        "origin": [float(o) for o in volume.origin],
        "direction": [[float(v) for v in row] for row in np.asarray(volume.direction)],
        "center": [float(c) for c in volume.center()],
        "opening": [float(c) for c in volume.index_to_patient(np.array(volume.shape, dtype=np.float64) // 2)],
        "modality": volume.modality,
        "frame_of_reference_uid": volume.frame_of_reference_uid,
        "suv": volume.suv_factor is not None,
        "range": _value_range(volume),
        "plane": acquisition_plane(volume),
        "mpr": volume.reformattable,
        "colour": volume.colour,
        "suv_calculation": container.display.get("suv_calculation"),
        "segments": container.display.get("segments"),
        **container.presentation.as_dict(),
        "vois": [{"name": voi.name, "function": voi.function} for voi in container.presentation.vois],
    }


def _value_range(volume: Volume) -> list[float]:
    step = max(1, round(volume.voxels[0].size ** 0.5 / 128))
    sample = volume.voxels[::max(1, volume.shape[0] // 32), ::step, ::step]
    return [float(v) for v in np.percentile(sample, [1, 99])]


def acquisition_plane(volume: Volume) -> str:
    """The plane the series was acquired in, named as a reader would (``image`` for pictures)."""
    if volume.presentation.kind not in {"volume", "dynamic", "label"}:
        return "image"
    normal = np.abs(np.asarray(volume.direction)[:, 2])
    axis = int(np.argmax(normal))
    if normal[axis] < 0.8:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]
