"""Measurements computed from the voxels, on the server: sphere VOIs, ROIs and lines, per layer.

Every number a doctor reads comes from here, never from the client. A sphere
is given in patient millimetres (centre, radius) and measured on every layer
of a view state, in that layer's own units (HU, SUV, the header's unit).

Partial voxels: each voxel's share of the sphere is measured on a 4 x 4 x 4 grid
of points inside it. The volume, the mean, the SD and the total (TLG for SUV)
weigh every voxel by that share; the minimum, maximum, median and the SUVpeak
search use the voxels whose centre lies inside the sphere. SUVpeak is the
highest mean of a 1 cm³ sphere (radius 6.2 mm) centred on such a voxel
(PERCIST 1.0), the mean of the voxels whose centres lie within 6.2 mm.

ROIs (ellipse, rectangle, polygon) are drawn in viewport pixels on a view's
plane and measured on the plane's own grid, every layer sampled at the
nearest voxel: the area, mean and SD weigh each pixel by its share of the
shape (4 x 4 points); minimum, maximum and median use the pixels whose centre
lies inside. A line gives its length in mm and each layer's values along it.

Grown VOIs (``measure_grow``): a region grown with SimpleITK from the voxel
nearest the seed, on the view's SUV layer where it has one, inside a box of
voxel centres reaching ``box_mm`` (1-150) from the seed voxel's centre (a bound
on the work, as a threshold VOI's box). Two modes, one rule each:

* ``range`` (``ConnectedThreshold``, 26-connected): the voxels whose value lies
  within the seed's value ± ``value`` x |seed's value| (``value`` 0.01-0.99,
  0.5 when omitted: with the seed on the hottest voxel, the region above half
  of it, as a 50 % threshold VOI). The upper bound keeps a hotter neighbour
  out, so seed the lesion's hottest part.
* ``confidence`` (``ConfidenceConnected``, face-connected: the filter offers no
  other connectivity): the voxels within mean ± ``value`` x SD (0.5-5, 2.5 when
  omitted), the statistics taken first from the seed's 3 x 3 x 3 neighbourhood,
  then 5 times from the region grown so far, the interval always holding the
  seed's value. A uniform neighbourhood gives it nothing to go by: refused.

A region that reaches all six faces of its box has leaked into its
surroundings and is refused; one that reaches some of them is measured, and
``how`` says how many faces it reaches (the box may cut it). The statistics
are a threshold VOI's (:class:`ThresholdVolume`: ``threshold`` is the lowest
value the region admits), whole voxels each, and the region is written to a
DICOM SEG as a binary segmentation.
"""

from __future__ import annotations

import base64
import math
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from gateway.i18n import gettext_noop
from rendering.engine.core import RenderError, layer_values
from rendering.operations import WorkerContext, operation
from rendering.protocol import GROW_BOX_MM, GROW_MODES
from rendering.said import Said
from rendering.viewstate import ViewState
from rendering.volume import Volume

PEAK_RADIUS_MM = (3000 / (4 * math.pi)) ** (1 / 3)  # a 1 cm³ sphere
SUBDIVISIONS = 4
MAX_RADIUS_MM = 150.0
MAX_REGION_VOXELS = 4_000_000  # a bound on a worker's time and memory whatever a client asks


@dataclass(frozen=True)
class RegionStatistics:
    series_id: str
    unit: str
    voxels: int
    volume_ml: float
    mean: float
    sd: float
    minimum: float
    maximum: float
    median: float
    max_point_mm: tuple[float, float, float]
    peak: float | None
    """SUVpeak (PET with an SUV factor only)."""
    total: float | None
    """Mean x volume in ml: TLG for SUV (PET only)."""


def region_box(volume: Volume, center: np.ndarray, reach: float, *, centres_only: bool = False
         ) -> tuple[slice, slice, slice]:
    """Index ranges around a cube of half-side ``reach``: every voxel it touches, or (``centres_only``)
    the voxels whose centre lies in the cube's bounding box in index space."""
    corners = np.array([[center[0] + dx, center[1] + dy, center[2] + dz]
                        for dx in (-reach, reach) for dy in (-reach, reach) for dz in (-reach, reach)])
    index = volume.patient_to_index(corners)
    near = 1e-6
    first = np.ceil(index.min(axis=0) - near) if centres_only else np.floor(index.min(axis=0))
    last = np.floor(index.max(axis=0) + near) if centres_only else np.ceil(index.max(axis=0))
    low = np.maximum(first.astype(int), 0)
    high = np.minimum(last.astype(int) + 1, np.array(volume.shape))
    if np.any(high <= low):
        raise RenderError(gettext_noop("the region lies outside the series"))
    if int(np.prod(high - low)) > MAX_REGION_VOXELS:
        raise RenderError(gettext_noop("the region is too large for this series' resolution; make it "
                                       "smaller"))
    return slice(low[0], high[0]), slice(low[1], high[1]), slice(low[2], high[2])


def sphere_coverage(volume: Volume, box: tuple[slice, slice, slice], center: np.ndarray,
              radius: float) -> tuple[np.ndarray, np.ndarray]:
    """(each voxel's share of the sphere, voxels whose centre lies inside): whole inside or outside
    by the centre's distance, and from SUBDIVISIONS³ points for the voxels the surface crosses."""
    base = np.stack(np.meshgrid(*(np.arange(s.start, s.stop) for s in box), indexing="ij"), axis=-1)
    distance = np.linalg.norm(volume.index_to_patient(base.astype(np.float64)) - center, axis=-1)
    reach = 0.5 * float(np.linalg.norm(volume.spacing))
    share = (distance <= radius - reach).astype(np.float64)
    edge = np.abs(distance - radius) < reach
    steps = (np.arange(SUBDIVISIONS) + 0.5) / SUBDIVISIONS - 0.5
    offsets = np.stack(np.meshgrid(steps, steps, steps, indexing="ij"), axis=-1).reshape(-1, 3)
    crossed = base[edge].astype(np.float64)
    counts = np.zeros(len(crossed))
    for offset in offsets:
        counts += np.linalg.norm(volume.index_to_patient(crossed + offset) - center, axis=-1) <= radius
    share[edge] = counts / len(offsets)
    return share, distance <= radius


def _peak_kernel(volume: Volume) -> list[tuple[int, int, int]]:
    """Index offsets (k, j, i) whose voxel centres lie within PEAK_RADIUS_MM of a centre."""
    reach = [math.ceil(PEAK_RADIUS_MM / step) for step in volume.spacing]
    offsets = []
    for dk in range(-reach[0], reach[0] + 1):
        for dj in range(-reach[1], reach[1] + 1):
            for di in range(-reach[2], reach[2] + 1):
                mm = np.array([dk * volume.spacing[0], dj * volume.spacing[1], di * volume.spacing[2]])
                if np.linalg.norm(mm) <= PEAK_RADIUS_MM:
                    offsets.append((dk, dj, di))
    return offsets


def _peak(volume: Volume, factor: float, box: tuple[slice, slice, slice], inside: np.ndarray) -> float:
    """The highest mean of the voxels within PEAK_RADIUS_MM of a voxel centred inside the sphere."""
    kernel = np.array(_peak_kernel(volume))
    reach = np.abs(kernel).max(axis=0)
    start = np.array([s.start for s in box])
    size = np.array(inside.shape)
    low = np.maximum(start - reach, 0)
    high = np.minimum(start + size + reach, np.array(volume.shape))
    padded = np.full(tuple(size + 2 * reach), np.nan)
    at = low - (start - reach)
    known = volume.voxels[tuple(slice(lo, h) for lo, h in zip(low, high, strict=True))]
    padded[tuple(slice(a, a + h - lo) for a, lo, h in zip(at, low, high, strict=True))] = (
        known.astype(np.float64) * factor)
    sums = np.zeros(tuple(size))
    counts = np.zeros(tuple(size))
    for offset in kernel:
        window = padded[tuple(slice(r + d, r + d + n) for r, d, n in zip(reach, offset, size, strict=True))]
        known = ~np.isnan(window)
        sums += np.where(known, window, 0.0)
        counts += known
    return float((sums / np.maximum(counts, 1))[inside].max())


def _weighted(values: np.ndarray, shares: np.ndarray) -> tuple[float, float]:
    """Mean and SD of ``values`` weighed by each one's share of the region."""
    weights = shares[shares > 0]
    counted = values[shares > 0]
    mean = float(np.average(counted, weights=weights))
    return mean, float(math.sqrt(np.average((counted - mean) ** 2, weights=weights)))


def sphere_statistics(volume: Volume, factor: float, unit: str, center_mm: Any,
                      radius_mm: float) -> RegionStatistics:
    """Statistics of the sphere on one volume whose values times ``factor`` are in ``unit``."""
    if volume.colour:
        raise RenderError(gettext_noop("a colour picture has no values to measure"))
    center = np.asarray(center_mm, dtype=np.float64)
    box = region_box(volume, center, radius_mm)
    share, inside = sphere_coverage(volume, box, center, radius_mm)
    if not inside.any():
        raise RenderError(gettext_noop("the sphere holds no voxel centre of the series; make it larger"))
    values = volume.voxels[box].astype(np.float64) * factor
    mean, sd = _weighted(values, share)
    chosen = values[inside]
    top = np.unravel_index(np.argmax(np.where(inside, values, -np.inf)), values.shape)
    top_index = np.array([s.start for s in box]) + np.array(top)
    volume_ml = float(share.sum()) * float(np.prod(volume.spacing)) / 1000.0
    peak = total = None
    if unit == "SUV":
        peak = _peak(volume, factor, box, inside)
        total = mean * volume_ml
    return RegionStatistics(
        series_id=volume.series_id, unit=unit, voxels=int(inside.sum()), volume_ml=volume_ml,
        mean=mean, sd=sd, minimum=float(chosen.min()), maximum=float(chosen.max()),
        median=float(np.median(chosen)),
        max_point_mm=tuple(float(v) for v in volume.index_to_patient(top_index)),  # type: ignore[arg-type]
        peak=peak, total=total)


def _statistics_to_wire(result: list[RegionStatistics]) -> list[dict[str, Any]]:
    return [asdict(item) for item in result]


def _statistics_from_wire(wire: list[dict[str, Any]]) -> list[RegionStatistics]:
    return [RegionStatistics(**{**item, "max_point_mm": tuple(item["max_point_mm"])}) for item in wire]


@operation("measure_sphere", to_wire=_statistics_to_wire, from_wire=_statistics_from_wire)
def _measure_sphere(context: WorkerContext, state: ViewState, volumes: Mapping[str, Volume],
                    arguments: dict[str, Any]) -> list[RegionStatistics]:
    center = region_center(state, volumes, arguments, gettext_noop("the sphere's centre"))
    radius = float(arguments["radius_mm"])
    if not 0 < radius <= MAX_RADIUS_MM:
        raise RenderError(gettext_noop("the sphere's radius must be between 0 and %(most)g mm"),
                          most=MAX_RADIUS_MM)
    results = []
    for volume, factor, unit, transform in layer_values(state, volumes):
        here = center if transform is None else (np.linalg.inv(transform) @ [*center, 1.0])[:3]
        results.append(sphere_statistics(volume, factor, unit, here, radius))
    return results


# --- on a view's plane: ROIs and lines ------------------------------------------------------------

MAX_POINTS = 256
MAX_PROFILE_SAMPLES = 256  # a curve to read, not a copy of the voxels along the line
ROI_SHAPES = ("ellipse", "rectangle", "polygon")


@dataclass(frozen=True)
class AreaStatistics:
    series_id: str
    unit: str
    pixels: int
    area_mm2: float
    mean: float
    sd: float
    minimum: float
    maximum: float
    median: float
    max_point_mm: tuple[float, float, float]


@dataclass(frozen=True)
class LineMeasurement:
    length_mm: float
    start_mm: tuple[float, float, float]
    end_mm: tuple[float, float, float]
    profiles: tuple[tuple[str, str, tuple[float | None, ...]], ...]
    """Per layer: (series, unit, values at evenly spaced points from start to end; None outside)."""


def viewport_points(arguments: dict[str, Any], least: int) -> list[tuple[float, float]]:
    raw = arguments.get("points")
    if not isinstance(raw, list) or not least <= len(raw) <= MAX_POINTS:
        raise RenderError(gettext_noop("a measurement needs %(least)s to %(most)s points"), least=least,
                          most=MAX_POINTS)
    points = []
    for point in raw:
        if not (isinstance(point, list | tuple) and len(point) == 2
                and all(isinstance(v, int | float) and math.isfinite(v) for v in point)):
            raise RenderError(gettext_noop("each point is [x, y] in viewport pixels"))
        points.append((float(point[0]), float(point[1])))
    return points


def _shape_test(shape: str, points: list[tuple[float, float]], xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    if shape == "polygon":
        return inside_polygon(xs, ys, points)
    (x0, y0), (x1, y1) = points[0], points[1]
    if shape == "rectangle":
        return (xs >= min(x0, x1)) & (xs <= max(x0, x1)) & (ys >= min(y0, y1)) & (ys <= max(y0, y1))
    rx, ry = abs(x1 - x0) / 2, abs(y1 - y0) / 2
    if rx == 0 or ry == 0:
        return np.zeros(xs.shape, bool)
    return ((xs - (x0 + x1) / 2) / rx) ** 2 + ((ys - (y0 + y1) / 2) / ry) ** 2 <= 1


def shape_coverage(shape: str, points: list[tuple[float, float]], width: int,
                 height: int) -> tuple[np.ndarray, np.ndarray]:
    """(each viewport pixel's share of the shape from 4 x 4 points, pixels whose centre is inside)."""
    share = np.zeros((height, width))
    centre = np.zeros((height, width), bool)
    xs_all, ys_all = [p[0] for p in points], [p[1] for p in points]
    left, right = max(int(min(xs_all)) - 1, 0), min(int(max(xs_all)) + 2, width)
    top, bottom = max(int(min(ys_all)) - 1, 0), min(int(max(ys_all)) + 2, height)
    if right <= left or bottom <= top:
        return share, centre
    steps = (np.arange(SUBDIVISIONS) + 0.5) / SUBDIVISIONS
    ys, xs = np.mgrid[top:bottom, left:right].astype(np.float64)
    for dy in steps:
        for dx in steps:
            share[top:bottom, left:right] += _shape_test(shape, points, xs + dx, ys + dy)
    share /= SUBDIVISIONS ** 2
    centre[top:bottom, left:right] = _shape_test(shape, points, xs + 0.5, ys + 0.5)
    return share, centre


def inside_polygon(xs: np.ndarray, ys: np.ndarray, points: list[tuple[float, float]]) -> np.ndarray:
    """Even-odd rule: a ray to the right crosses the outline an odd number of times."""
    inside = np.zeros(xs.shape, bool)
    for (ax, ay), (bx, by) in zip(points, points[1:] + points[:1], strict=True):
        if ay == by:
            continue
        spans = (ys >= min(ay, by)) & (ys < max(ay, by))
        crossing = ax + (ys - ay) * (bx - ax) / (by - ay)
        inside ^= spans & (xs < crossing)
    return inside


def measuring_plane(state: ViewState, base: Volume) -> Any:
    from rendering.engine import planes

    if state.view.value == "3d":
        raise RenderError(gettext_noop("measure on a 2-D view: a 3-D view has no single plane"))
    return planes.view_plane(state, base)


def area_statistics(state: ViewState, volumes: Mapping[str, Volume], shape: str,
                    points: list[tuple[float, float]]) -> list[AreaStatistics]:
    """Statistics inside an ROI drawn on the view's plane, for every layer, in its own units."""
    from rendering.engine import planes
    from rendering.viewstate import SlabMode

    layers = layer_values(state, volumes)
    plane = measuring_plane(state, layers[0][0])
    share, inside = shape_coverage(shape, points, plane.width, plane.height)
    results = []
    for volume, factor, unit, transform in layers:
        if volume.colour:
            raise RenderError(gettext_noop("a colour picture has no values to measure"))
        sampled = planes.sample(plane, volume, mode=SlabMode.NONE, thickness_mm=0.0, linear=False,
                                transform=transform)
        shown = inside if sampled.valid is None else inside & sampled.valid
        covered = share if sampled.valid is None else share * sampled.valid
        if not shown.any():
            raise RenderError(gettext_noop("the region holds no pixel centre of the series; make it larger"))
        scaled = sampled.values.astype(np.float64) * factor
        mean, sd = _weighted(scaled, covered)
        values = scaled[shown]
        row, column = np.argwhere(shown)[int(np.argmax(values))]
        results.append(AreaStatistics(
            series_id=volume.series_id, unit=unit, pixels=int(shown.sum()),
            area_mm2=float(covered.sum()) * plane.mm_per_pixel ** 2, mean=mean, sd=sd,
            minimum=float(values.min()), maximum=float(values.max()), median=float(np.median(values)),
            max_point_mm=tuple(float(v) for v in plane.point(column + 0.5, row + 0.5))))  # type: ignore[arg-type]
    return results


def line_measurement(state: ViewState, volumes: Mapping[str, Volume],
                     points: list[tuple[float, float]]) -> LineMeasurement:
    """A line's length in mm on the view's plane and every layer's values along it (nearest voxel)."""
    from rendering.engine import planes

    layers = layer_values(state, volumes)
    plane = measuring_plane(state, layers[0][0])
    start, end = plane.point(*points[0]), plane.point(*points[1])
    length = float(np.linalg.norm(end - start))
    profiles = []
    for volume, factor, unit, transform in layers:
        step = min(volume.spacing) / 2
        count = min(MAX_PROFILE_SAMPLES, max(2, math.ceil(length / step) + 1))
        values = []
        for fraction in np.linspace(0.0, 1.0, count):
            raw = None if volume.colour else planes.probe_voxel(volume, start + (end - start) * fraction,
                                                                transform)
            values.append(None if raw is None else raw * factor)
        profiles.append((volume.series_id, unit, tuple(values)))
    return LineMeasurement(length, tuple(float(v) for v in start), tuple(float(v) for v in end),  # type: ignore[arg-type]
                           tuple(profiles))


@operation("measure_area", to_wire=lambda result: [asdict(item) for item in result],
           from_wire=lambda wire: [AreaStatistics(**{**item, "max_point_mm": tuple(item["max_point_mm"])})
                                   for item in wire])
def _measure_area(context: WorkerContext, state: ViewState, volumes: Mapping[str, Volume],
                  arguments: dict[str, Any]) -> list[AreaStatistics]:
    shape = arguments.get("shape")
    if shape not in ROI_SHAPES:
        raise RenderError(gettext_noop("an ROI is one of %(shapes)s"), shapes=", ".join(ROI_SHAPES))
    return area_statistics(state, volumes, shape, viewport_points(arguments, 3 if shape == "polygon" else 2))


def _line_from_wire(wire: dict[str, Any]) -> LineMeasurement:
    return LineMeasurement(wire["length_mm"], tuple(wire["start_mm"]), tuple(wire["end_mm"]),
                           tuple((series, unit, tuple(values)) for series, unit, values in wire["profiles"]))


@operation("measure_line", to_wire=asdict, from_wire=_line_from_wire)
def _measure_line(context: WorkerContext, state: ViewState, volumes: Mapping[str, Volume],
                  arguments: dict[str, Any]) -> LineMeasurement:
    points = viewport_points(arguments, 2)
    if len(points) != 2:
        raise RenderError(gettext_noop("a line has two points"))
    return line_measurement(state, volumes, points)


# --- threshold VOIs -----------------------------------------------------------------------------

THRESHOLD_MODES = ("fraction", "suv", "percist")
PERCIST_REFERENCE_RADIUS_MM = 15.0  # a 3 cm sphere in the right liver lobe
MAX_BOX_MM = 150.0


@dataclass(frozen=True)
class ThresholdVolume:
    series_id: str
    unit: str
    threshold: float
    how: str
    """How the threshold was set: 41 % of the local maximum, a fixed value, PERCIST's liver reference."""
    voxels: int
    volume_ml: float
    mean: float
    maximum: float
    peak: float | None
    total: float | None
    """Mean x volume: TLG for SUV."""
    max_point_mm: tuple[float, float, float]


def suv_layer(state: ViewState, volumes: Mapping[str, Volume]) -> tuple[Volume, float, str, Any]:
    layers = layer_values(state, volumes)
    return next((layer for layer in layers if layer[2] == "SUV"), layers[-1])


def _component(mask: np.ndarray, seed: tuple[int, ...]) -> np.ndarray:
    """The voxels of ``mask`` connected to ``seed`` (26-connectivity), with SimpleITK."""
    import SimpleITK as sitk

    labels = sitk.GetArrayFromImage(sitk.ConnectedComponent(sitk.GetImageFromArray(mask.astype(np.uint8)),
                                                            True))
    return labels == labels[seed]


def _threshold_of(mode: str, value: float, local_max: float, volume: Volume, factor: float,
                  reference_mm: Any) -> tuple[float, str]:
    if mode == "fraction":
        if not 0 < value < 1:
            raise RenderError(gettext_noop("the fraction of the maximum is between 0 and 1 (0.41, 0.5)"))
        return value * local_max, f"{value:.0%} of the local maximum"
    if mode == "suv":
        return value, f"fixed {value:g}"
    reference = sphere_statistics(volume, factor, "SUV", reference_mm, PERCIST_REFERENCE_RADIUS_MM)
    return 1.5 * reference.mean + 2 * reference.sd, (
        f"PERCIST: 1.5 x liver mean {reference.mean:.2f} + 2 x SD {reference.sd:.2f}")


def threshold_volume(state: ViewState, volumes: Mapping[str, Volume], center_mm: Any, box_mm: float,
                     mode: str, value: float, reference_mm: Any = None, *,
                     want_statistics: bool = True) -> Any:
    """The voxels above a threshold inside a box, connected to the box's maximum (MTV, TLG).

    A :class:`ThresholdVolume`, or with ``want_statistics=False`` the region itself as a
    :class:`RegionMask`.
    """
    volume, factor, unit, transform = suv_layer(state, volumes)
    center = np.asarray(center_mm, dtype=np.float64)
    if transform is not None:
        center = (np.linalg.inv(transform) @ [*center, 1.0])[:3]
    box = region_box(volume, center, box_mm, centres_only=True)
    values = volume.voxels[box].astype(np.float64) * factor
    seed = tuple(int(v) for v in np.unravel_index(int(np.argmax(values)), values.shape))
    threshold, how = _threshold_of(mode, value, float(values[seed]), volume, factor, reference_mm)
    if values[seed] < threshold:
        raise RenderError(gettext_noop("nothing in the box reaches the threshold (%(threshold).3g %(unit)s)"),
                          threshold=threshold, unit=unit)
    inside = _component(values >= threshold, seed)
    if not want_statistics:
        return RegionMask.of(volume.series_id, box, inside.astype(np.uint8) * np.uint8(255), fractional=False)
    return _voi_volume(volume, factor, unit, box, values, inside, threshold, how)


def _voi_volume(volume: Volume, factor: float, unit: str, box: tuple[slice, slice, slice], values: np.ndarray,
                inside: np.ndarray, threshold: float, how: str) -> ThresholdVolume:
    """A binary VOI's statistics (``inside`` of the box's ``values``): MTV, mean, max, SUVpeak, TLG."""
    chosen = values[inside]
    volume_ml = float(inside.sum()) * float(np.prod(volume.spacing)) / 1000.0
    top = np.unravel_index(int(np.argmax(np.where(inside, values, -np.inf))), values.shape)
    origin = np.array([s.start for s in box])
    peak = _peak(volume, factor, box, inside) if unit == "SUV" else None
    return ThresholdVolume(
        series_id=volume.series_id, unit=unit, threshold=threshold, how=how, voxels=int(inside.sum()),
        volume_ml=volume_ml, mean=float(chosen.mean()), maximum=float(chosen.max()), peak=peak,
        total=float(chosen.mean()) * volume_ml if unit == "SUV" else None,
        max_point_mm=tuple(float(v) for v in volume.index_to_patient(origin + np.array(top))))  # type: ignore[arg-type]


def _vector(raw: Any, what: str) -> list[float]:
    if not (isinstance(raw, list | tuple) and len(raw) == 3
            and all(isinstance(v, int | float) and math.isfinite(v) for v in raw)):
        raise RenderError(gettext_noop("%(what)s must be three millimetre values"), what=Said(what))
    return [float(v) for v in raw]


def region_center(state: ViewState, volumes: Mapping[str, Volume], arguments: dict[str, Any],
            what: str) -> list[float]:
    """A region's centre: a point on the view's plane (``center_px``) or in patient mm (``center_mm``)."""
    if "center_px" not in arguments:
        return _vector(arguments.get("center_mm"), what)
    point = viewport_points({"points": [arguments["center_px"]]}, 1)[0]
    return [float(v) for v in measuring_plane(state, layer_values(state, volumes)[0][0]).point(*point)]


@dataclass(frozen=True)
class RegionMask:
    """A VOI on its series' voxel grid: ``shape`` voxels from index ``offset`` (k, j, i), each 0-255.

    Binary regions are 0 or 255; a sphere's voxels carry their share of it (fractional occupancy).
    ``data`` is the zlib-compressed uint8 array, base64: a region stays small on the wire.
    """

    series_id: str
    offset: tuple[int, int, int]
    shape: tuple[int, int, int]
    fractional: bool
    data: str

    @classmethod
    def of(cls, series_id: str, box: tuple[slice, slice, slice], values: np.ndarray, *,
           fractional: bool) -> RegionMask:
        packed = base64.b64encode(zlib.compress(np.ascontiguousarray(values, np.uint8).tobytes())).decode()
        return cls(series_id, (box[0].start, box[1].start, box[2].start),
                   (int(values.shape[0]), int(values.shape[1]), int(values.shape[2])), fractional, packed)

    def array(self) -> np.ndarray:
        raw = zlib.decompress(base64.b64decode(self.data), bufsize=int(np.prod(self.shape)))
        return np.frombuffer(raw, np.uint8).reshape(self.shape)


def sphere_region(volume: Volume, center_mm: Any, radius_mm: float) -> RegionMask:
    """The sphere as each voxel's share of it (the same shares its statistics weigh)."""
    center = np.asarray(center_mm, dtype=np.float64)
    box = region_box(volume, center, radius_mm)
    share, _ = sphere_coverage(volume, box, center, radius_mm)
    return RegionMask.of(volume.series_id, box, np.rint(share * 255), fractional=True)


def _region_from_wire(wire: dict[str, Any]) -> RegionMask:
    return RegionMask(**{**wire, "offset": tuple(wire["offset"]), "shape": tuple(wire["shape"])})


@operation("region_mask", to_wire=asdict, from_wire=_region_from_wire)
def _region_mask(context: WorkerContext, state: ViewState, volumes: Mapping[str, Volume],
                 arguments: dict[str, Any]) -> RegionMask:
    """A kept VOI's voxels on layer 0's series (a sphere) or the SUV layer's (a threshold or grown region)."""
    center = _vector(arguments.get("center_mm"), gettext_noop("the region's centre"))
    if arguments.get("tool") == "sphere":
        radius = float(arguments.get("radius_mm", 0.0))
        if not 0 < radius <= MAX_RADIUS_MM:
            raise RenderError(gettext_noop("the sphere's radius must be between 0 and %(most)g mm"),
                              most=MAX_RADIUS_MM)
        return sphere_region(layer_values(state, volumes)[0][0], center, radius)
    if arguments.get("tool") == "threshold":
        return threshold_volume(state, volumes, center, *_threshold_settings(arguments),
                                want_statistics=False)
    if arguments.get("tool") == "grow":
        return grow_volume(state, volumes, center, *_grow_settings(arguments), want_statistics=False)
    raise RenderError(gettext_noop("a region is a sphere, a threshold VOI or a VOI grown from a seed"))


@operation("measure_threshold", to_wire=asdict,
           from_wire=lambda wire: ThresholdVolume(**{**wire, "max_point_mm": tuple(wire["max_point_mm"])}))
def _measure_threshold(context: WorkerContext, state: ViewState, volumes: Mapping[str, Volume],
                       arguments: dict[str, Any]) -> ThresholdVolume:
    center = region_center(state, volumes, arguments, gettext_noop("the box's centre"))
    return threshold_volume(state, volumes, center, *_threshold_settings(arguments))


def _threshold_settings(arguments: dict[str, Any]) -> tuple[float, str, float, list[float] | None]:
    """(box half-side mm, mode, value, liver reference mm or None), checked."""
    mode = arguments.get("mode", "fraction")
    if mode not in THRESHOLD_MODES:
        raise RenderError(gettext_noop("a threshold is one of %(modes)s"), modes=", ".join(THRESHOLD_MODES))
    box = float(arguments.get("box_mm", 30.0))
    if not 1 <= box <= MAX_BOX_MM:
        raise RenderError(gettext_noop("the box reaches 1 to %(most)g mm from its centre"), most=MAX_BOX_MM)
    reference = None
    if mode == "percist":
        reference = _vector(arguments.get("reference_mm"), gettext_noop("the liver reference"))
    return box, mode, float(arguments.get("value", 0.41)), reference


# --- VOIs grown from a seed -------------------------------------------------------------------------

GROW_ITERATIONS = 5
GROW_NEIGHBOURHOOD_VOXELS = 1
"""A confidence region starts from the statistics of the seed's 3 x 3 x 3 neighbourhood."""


def _faces_reached(inside: np.ndarray) -> int:
    """How many of the six faces of the box ``inside`` fills the region touches."""
    return sum(int(np.take(inside, end, axis=axis).any()) for axis in range(3) for end in (0, -1))


def _grow(values: np.ndarray, seed: tuple[int, ...], mode: str, value: float,
          unit: str) -> tuple[np.ndarray, float, str]:
    """(the region grown from ``seed`` in ``values``, the lowest value it admits, how), with SimpleITK."""
    import SimpleITK as sitk

    start = float(values[seed])
    grower: Any
    if mode == "range":
        reach = value * abs(start)
        grower = sitk.ConnectedThresholdImageFilter()
        grower.SetLower(start - reach)
        grower.SetUpper(start + reach)
        grower.SetConnectivity(sitk.ConnectedThresholdImageFilter.FullConnectivity)
    else:
        grower = sitk.ConfidenceConnectedImageFilter()  # face-connected: it has no other connectivity
        grower.SetMultiplier(value)
        grower.SetNumberOfIterations(GROW_ITERATIONS)
        grower.SetInitialNeighborhoodRadius(GROW_NEIGHBOURHOOD_VOXELS)
    grower.SetSeedList([[int(v) for v in reversed(seed)]])  # SimpleITK counts (x, y, z)
    grower.SetReplaceValue(1)
    inside = sitk.GetArrayFromImage(grower.Execute(sitk.GetImageFromArray(values))).astype(bool)
    if mode == "range":
        return inside, start - reach, (f"seed {start:.4g} {unit} ± {value * 100:g} %: "
                                       f"{start - reach:.4g} to {start + reach:.4g} {unit}")
    mean, variance = float(grower.GetMean()), float(grower.GetVariance())
    if not inside[seed] or not math.isfinite(mean) or not math.isfinite(variance):
        raise RenderError(gettext_noop("nothing grew from the seed: its neighbourhood is (nearly) uniform, "
                                       "which gives confidence growing no spread to go by; grow by range "
                                       "instead"))
    sd = math.sqrt(max(variance, 0.0))
    lower, upper = min(mean - value * sd, start), max(mean + value * sd, start)
    return inside, lower, (f"region mean {mean:.4g} ± {value:g} x SD {sd:.3g} {unit} after {GROW_ITERATIONS} "
                           f"rounds: {lower:.4g} to {upper:.4g} {unit}")


def grow_volume(state: ViewState, volumes: Mapping[str, Volume], seed_mm: Any, box_mm: float, mode: str,
                value: float, *, want_statistics: bool = True) -> Any:
    """The region grown from the voxel nearest ``seed_mm`` inside a box reaching ``box_mm`` from it.

    Grown on the view's SUV layer where it has one (as a threshold VOI). A
    :class:`ThresholdVolume` (``threshold``: the lowest value the region admits), or with
    ``want_statistics=False`` the region itself as a binary :class:`RegionMask`.
    """
    if mode not in GROW_MODES:
        raise RenderError(gettext_noop("a region grows by one of %(modes)s"), modes=", ".join(GROW_MODES))
    rule, _ = GROW_MODES[mode]
    if not rule.low <= value <= rule.high:
        raise RenderError(gettext_noop("growing by %(mode)s takes a value from %(low)g to %(high)g"),
                          mode=mode,
                          low=rule.low, high=rule.high)
    if not 1 <= box_mm <= MAX_BOX_MM:
        raise RenderError(gettext_noop("the box reaches 1 to %(most)g mm from the seed"), most=MAX_BOX_MM)
    volume, factor, unit, transform = suv_layer(state, volumes)
    if volume.colour:
        raise RenderError(gettext_noop("a colour picture has no values to measure"))
    point = np.asarray(seed_mm, dtype=np.float64)
    if transform is not None:
        point = (np.linalg.inv(transform) @ [*point, 1.0])[:3]
    at = np.rint(volume.patient_to_index(point)).astype(int)
    if np.any(at < 0) or np.any(at >= np.array(volume.shape)):
        raise RenderError(gettext_noop("the seed lies outside the series"))
    box = region_box(volume, volume.index_to_patient(at.astype(np.float64)), box_mm, centres_only=True)
    values = volume.voxels[box].astype(np.float64) * factor
    seed = tuple(int(v) for v in at - np.array([s.start for s in box]))
    inside, lowest, how = _grow(values, seed, mode, value, unit)
    faces = _faces_reached(inside)
    if faces == 6:
        raise RenderError(gettext_noop("the region grew to every face of the box: it leaks into its "
                                       "surroundings (or the box is smaller than the lesion); narrow the "
                                       "range or enlarge the box"))
    if faces:
        how += f"; it reaches {faces} of the box's 6 faces, which may cut it"
    if not want_statistics:
        return RegionMask.of(volume.series_id, box, inside.astype(np.uint8) * np.uint8(255), fractional=False)
    return _voi_volume(volume, factor, unit, box, values, inside, lowest, how)


def _grow_settings(arguments: dict[str, Any]) -> tuple[float, str, float]:
    """(box half-side mm, mode, value), defaults filled in as the protocol fills them."""
    mode = arguments.get("mode") or "range"
    if not isinstance(mode, str) or mode not in GROW_MODES:
        raise RenderError(gettext_noop("a region grows by one of %(modes)s"), modes=", ".join(GROW_MODES))
    box, value = arguments.get("box_mm", GROW_BOX_MM), arguments.get("value", GROW_MODES[mode][1])
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in (box, value)):
        raise RenderError(gettext_noop("a grown region's box and value are numbers"))
    return float(box), mode, float(value)


@operation("measure_grow", to_wire=asdict,
           from_wire=lambda wire: ThresholdVolume(**{**wire, "max_point_mm": tuple(wire["max_point_mm"])}))
def _measure_grow(context: WorkerContext, state: ViewState, volumes: Mapping[str, Volume],
                  arguments: dict[str, Any]) -> ThresholdVolume:
    seed = region_center(state, volumes, arguments, gettext_noop("the seed"))
    return grow_volume(state, volumes, seed, *_grow_settings(arguments))
