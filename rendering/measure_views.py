"""Views that go with a measurement: a region's histogram and a dynamic series' time-activity curve.

Each is computed in a render worker from the voxels, like every measurement
(:mod:`rendering.measure`), and comes back per layer, in that layer's own
units (HU, SUV, the header's unit), as a table of numbers and a small picture
of them drawn here with Pillow. The picture is for looking; the numbers are
the table, never read off pixels. Neither holds a voxel value of its own: a
histogram is counts in bins, a curve one mean and one maximum per time point.

Regions are exactly those of :mod:`rendering.measure`, through its own
helpers, so a histogram counts the voxels whose statistics the reader sees:

* a sphere (``center_mm`` or ``center_px``, ``radius_mm``): the voxels whose
  centre lies inside, on every layer (as its minimum, maximum and median);
* an ROI (``shape`` ellipse / rectangle / polygon, ``points`` on the view's
  plane): the plane's pixels whose centre lies inside, every layer sampled at
  the nearest voxel;
* a threshold VOI (``center_mm`` or ``center_px``, ``box_mm``, ``mode``,
  ``value``): its voxels, on the layer it was contoured on (SUV where there is one).

Bins: 64 equal bins from the region's minimum to its maximum, the maximum
counted in the last bin (numpy's rule), where values are continuous (SUV,
Bq/ml); where every value is a whole number (HU, counts) whole-number-wide
bins centred on whole numbers, at most 64 of them, so no bin holds one more
integer than its neighbour. A fixed scale (e.g. -1000..3000 HU) would leave
a small ROI in one or two bins, and no fixed scale fits Bq/ml or counts.

The time-activity curve takes a sphere on every layer whose series is
dynamic (several time points): at each time point the mean weighed by each
voxel's share of the sphere (the sphere's mean, as ``measure_sphere`` gives
it) and the maximum of the voxels centred inside. Imaging keeps the number
of time points, not each one's acquisition time, so the curve's abscissa is
the time point's number (1, 2, …), which the table says.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gateway.i18n import gettext_noop
from rendering.engine.core import RenderError, layer_values
from rendering.measure import (
    MAX_RADIUS_MM,
    ROI_SHAPES,
    measuring_plane,
    region_box,
    region_center,
    shape_coverage,
    sphere_coverage,
    suv_layer,
    viewport_points,
)
from rendering.operations import WorkerContext, operation, operation_named
from rendering.protocol import CHART_KINDS
from rendering.viewstate import ViewState
from rendering.volume import Volume

HISTOGRAM_BINS = 64
MAX_TAC_TIME_POINTS = 200
MAX_TAC_SAMPLES = 40_000_000
"""Region voxels x time points read for one curve: a bound on a worker's time whatever is asked."""
CHART_WIDTH, CHART_HEIGHT = 320, 180
VOI_TOOLS = ("threshold", "grow")
"""VOIs whose voxels the ``region_mask`` operation gives (on the layer they were contoured on)."""


@dataclass(frozen=True)
class RegionChart:
    """One layer's chart: the numbers (``table``) and a PNG picture of them.

    ``table`` for a histogram: ``edges`` (bins + 1, in ``unit``) and ``counts``;
    for a time-activity curve: ``time`` (time point numbers), ``time_unit``,
    ``mean`` and ``max`` (in ``unit``). ``voxels``: how many voxels (an ROI:
    plane pixels) the region holds on this layer.
    """

    series_id: str
    unit: str
    kind: str
    voxels: int
    table: dict[str, Any]
    image: bytes
    encoding: str
    width: int
    height: int


# --- the regions' values --------------------------------------------------------------------


def _here(center: Sequence[float], transform: np.ndarray | None) -> np.ndarray:
    point = np.asarray(center, dtype=np.float64)
    return point if transform is None else (np.linalg.inv(transform) @ [*point, 1.0])[:3]


def _radius(arguments: dict[str, Any]) -> float:
    radius = arguments.get("radius_mm")
    if not isinstance(radius, int | float) or not 0 < radius <= MAX_RADIUS_MM:
        raise RenderError(gettext_noop("the sphere's radius must be between 0 and %(most)g mm"),
                          most=MAX_RADIUS_MM)
    return float(radius)


def _measurable(volume: Volume) -> None:
    if volume.colour:
        raise RenderError(gettext_noop("a colour picture has no values to measure"))


def _sphere_values(state: ViewState, volumes: Mapping[str, Volume],
                   arguments: dict[str, Any]) -> list[tuple[Volume, str, np.ndarray]]:
    center = region_center(state, volumes, arguments, gettext_noop("the sphere's centre"))
    radius = _radius(arguments)
    found = []
    for volume, factor, unit, transform in layer_values(state, volumes):
        _measurable(volume)
        here = _here(center, transform)
        box = region_box(volume, here, radius)
        _, inside = sphere_coverage(volume, box, here, radius)
        if not inside.any():
            raise RenderError(gettext_noop("the sphere holds no voxel centre of the series; make it larger"))
        found.append((volume, unit, volume.voxels[box][inside].astype(np.float64) * factor))
    return found


def _area_values(state: ViewState, volumes: Mapping[str, Volume],
                 arguments: dict[str, Any]) -> list[tuple[Volume, str, np.ndarray]]:
    from rendering.engine import planes
    from rendering.viewstate import SlabMode

    shape = arguments["tool"]
    points = viewport_points(arguments, 3 if shape == "polygon" else 2)
    layers = layer_values(state, volumes)
    plane = measuring_plane(state, layers[0][0])
    _, inside = shape_coverage(shape, points, plane.width, plane.height)
    found = []
    for volume, factor, unit, transform in layers:
        _measurable(volume)
        sampled = planes.sample(plane, volume, mode=SlabMode.NONE, thickness_mm=0.0, linear=False,
                                transform=transform)
        shown = inside if sampled.valid is None else inside & sampled.valid
        if not shown.any():
            raise RenderError(gettext_noop("the region holds no pixel centre of the series; make it larger"))
        found.append((volume, unit, sampled.values[shown].astype(np.float64) * factor))
    return found


def _voi_values(context: WorkerContext, state: ViewState, volumes: Mapping[str, Volume],
                arguments: dict[str, Any]) -> list[tuple[Volume, str, np.ndarray]]:
    """A VOI contoured on the view's SUV layer (as ``measure_threshold`` contours it)."""
    center = region_center(state, volumes, arguments, gettext_noop("the region's centre"))
    region = operation_named("region_mask").run(context, state, volumes, {**arguments, "center_mm": center})
    volume, factor, unit, _ = suv_layer(state, volumes)
    if region.series_id != volume.series_id:
        raise RenderError(gettext_noop("the region was contoured on another series than the view's SUV "
                                       "layer"))
    box = tuple(slice(start, start + size) for start, size in zip(region.offset, region.shape, strict=True))
    inside = region.array() > 0
    return [(volume, unit, volume.voxels[box][inside].astype(np.float64) * factor)]


def region_values(context: WorkerContext, state: ViewState, volumes: Mapping[str, Volume],
                  arguments: dict[str, Any]) -> list[tuple[Volume, str, np.ndarray]]:
    """Each layer's (volume, unit, values of the region's voxels in that unit): never leaves the worker."""
    tool = arguments.get("tool")
    if tool == "sphere":
        return _sphere_values(state, volumes, arguments)
    if tool in ROI_SHAPES:
        return _area_values(state, volumes, arguments)
    if tool in VOI_TOOLS:
        return _voi_values(context, state, volumes, arguments)
    raise RenderError(gettext_noop("a histogram is of one of %(tools)s"),
                      tools=", ".join(CHART_KINDS["histogram"]))


def histogram_bins(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(edges, counts): see the module's docstring for the choice of bins."""
    low, high = float(values.min()), float(values.max())
    if np.array_equal(values, np.rint(values)):
        width = max(1, math.ceil((high - low + 1) / HISTOGRAM_BINS))
        bins = math.ceil((high - low + 1) / width)
        edges = low - 0.5 + width * np.arange(bins + 1, dtype=np.float64)
        counts, _ = np.histogram(values, bins=edges)
        return edges, counts
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=(low, high))
    return edges, counts


# --- pictures -------------------------------------------------------------------------------

BACKGROUND = (12, 15, 18)
AXIS = (150, 160, 170)
TEXT = (232, 241, 247)
BARS = (77, 163, 255)
SECOND = (255, 150, 60)
PLOT = (44, 18, CHART_WIDTH - 10, CHART_HEIGHT - 30)  # left, top, right, bottom


def _font() -> Any:
    try:
        return ImageFont.load_default(size=11)
    except (TypeError, ValueError, OSError):  # a Pillow without FreeType: its bitmap font
        return ImageFont.load_default()


def _number(value: float) -> str:
    return f"{value:.4g}"


class _Figure:
    """A plot area with labelled axes: x from ``x_range``, y from ``y_range``."""

    def __init__(self, title: str, x_label: str, y_label: str, x_range: tuple[float, float],
                 y_range: tuple[float, float], x_ticks: Sequence[float], y_ticks: Sequence[float]) -> None:
        self.image = Image.new("RGB", (CHART_WIDTH, CHART_HEIGHT), BACKGROUND)
        self.draw = ImageDraw.Draw(self.image)
        self.font = _font()
        self.x_range = x_range if x_range[1] > x_range[0] else (x_range[0] - 0.5, x_range[0] + 0.5)
        self.y_range = y_range if y_range[1] > y_range[0] else (y_range[0] - 0.5, y_range[0] + 0.5)
        left, top, right, bottom = PLOT
        self.draw.text((2, 2), title, fill=TEXT, font=self.font)
        self.draw.text((left + 4, top - 1), y_label, fill=AXIS, font=self.font)
        self.draw.line([(left, top + 12), (left, bottom), (right, bottom)], fill=AXIS)
        for value in y_ticks:
            y = self.y(value)
            self.draw.line([(left - 3, y), (left, y)], fill=AXIS)
            self.draw.text((left - 5, y), _number(value), fill=AXIS, font=self.font, anchor="rm")
        for value in x_ticks:
            x = self.x(value)
            self.draw.line([(x, bottom), (x, bottom + 3)], fill=AXIS)
            self.draw.text((x, bottom + 4), _number(value), fill=AXIS, font=self.font, anchor="ma")
        self.draw.text(((left + right) / 2, CHART_HEIGHT - 2), x_label, fill=TEXT, font=self.font,
                       anchor="md")

    def x(self, value: float) -> float:
        low, high = self.x_range
        return PLOT[0] + (PLOT[2] - PLOT[0]) * (value - low) / (high - low)

    def y(self, value: float) -> float:
        low, high = self.y_range
        return PLOT[3] - (PLOT[3] - PLOT[1] - 12) * (value - low) / (high - low)

    def png(self) -> bytes:
        out = io.BytesIO()
        self.image.quantize(colors=32).save(out, "PNG", optimize=True)
        return out.getvalue()


def _layer_title(volume: Volume, unit: str, voxels: int, what: str) -> str:
    return f"{volume.modality} ({unit}) · {voxels} {what}"


def histogram_picture(volume: Volume, unit: str, edges: np.ndarray, counts: np.ndarray, what: str) -> bytes:
    """Bars of ``counts`` over ``edges``; the unit under the x axis, the count's range on the y axis."""
    top = int(counts.max())
    low, high = float(edges[0]), float(edges[-1])
    figure = _Figure(_layer_title(volume, unit, int(counts.sum()), what), unit, what, (low, high), (0, top),
                     x_ticks=(low, (low + high) / 2, high), y_ticks=(0, top))
    for count, start, end in zip(counts, edges[:-1], edges[1:], strict=True):
        if count:
            x0, x1 = figure.x(float(start)), figure.x(float(end))
            top_y = min(figure.y(float(count)), PLOT[3] - 2)  # a bin of one still shows
            figure.draw.rectangle([(x0, top_y), (max(x0, x1 - 1), PLOT[3] - 1)], fill=BARS)
    return figure.png()


def tac_picture(volume: Volume, unit: str, times: list[float], means: list[float], maxima: list[float],
                voxels: int, time_unit: str = "time point") -> bytes:
    """The mean and the maximum of the region against time, with a legend."""
    low = min(0.0, min(means))
    high = max(maxima)
    axis = "time (s)" if time_unit == "s" else time_unit
    figure = _Figure(_layer_title(volume, unit, voxels, "voxels"), axis, unit,
                     (times[0], times[-1]), (low, high), x_ticks=(times[0], times[-1]), y_ticks=(low, high))
    for values, colour in ((maxima, SECOND), (means, BARS)):
        line = [(figure.x(t), figure.y(v)) for t, v in zip(times, values, strict=True)]
        if len(line) > 1:
            figure.draw.line(line, fill=colour, width=2)
        if len(line) <= 40:
            for x, y in line:
                figure.draw.ellipse([(x - 2, y - 2), (x + 2, y + 2)], fill=colour)
    for at, (name, colour) in enumerate((("mean", BARS), ("max", SECOND))):  # beside the title
        x = PLOT[2] - 96 + 52 * at
        figure.draw.line([(x, 8), (x + 12, 8)], fill=colour, width=2)
        figure.draw.text((x + 16, 8), name, fill=TEXT, font=figure.font, anchor="lm")
    return figure.png()


# --- the operations -------------------------------------------------------------------------


def _chart(volume: Volume, unit: str, kind: str, voxels: int, table: dict[str, Any],
           image: bytes) -> RegionChart:
    return RegionChart(series_id=volume.series_id, unit=unit, kind=kind, voxels=voxels, table=table,
                       image=image, encoding="png", width=CHART_WIDTH, height=CHART_HEIGHT)


def region_histogram(context: WorkerContext, state: ViewState, volumes: Mapping[str, Volume],
                     arguments: dict[str, Any]) -> list[RegionChart]:
    """Each layer's histogram of the region (``arguments`` as for the measuring operations, with ``tool``)."""
    what = "pixels" if arguments.get("tool") in ROI_SHAPES else "voxels"
    charts = []
    for volume, unit, values in region_values(context, state, volumes, arguments):
        edges, counts = histogram_bins(values)
        charts.append(_chart(volume, unit, "histogram", int(values.size),
                             {"edges": [float(v) for v in edges], "counts": [int(v) for v in counts]},
                             histogram_picture(volume, unit, edges, counts, what)))
    return charts


def region_tac(state: ViewState, volumes: Mapping[str, Volume],
               arguments: dict[str, Any]) -> list[RegionChart]:
    """A sphere's mean and maximum at every time point of each dynamic layer."""
    if arguments.get("tool", "sphere") != "sphere":
        raise RenderError(gettext_noop("a time-activity curve is of a sphere"))
    center = region_center(state, volumes, arguments, gettext_noop("the sphere's centre"))
    radius = _radius(arguments)
    charts = []
    layers = layer_values(state, volumes)
    for layer, (volume, factor, unit, transform) in zip(state.layers, layers, strict=True):
        stored = volumes[layer.series_id]
        count = stored.time_points
        if count < 2:
            continue
        _measurable(volume)
        if count > MAX_TAC_TIME_POINTS:
            raise RenderError(gettext_noop("the series has %(count)s time points; a curve takes at most "
                                           "%(most)s"), count=count, most=MAX_TAC_TIME_POINTS)
        here = _here(center, transform)
        box = region_box(volume, here, radius)
        share, inside = sphere_coverage(volume, box, here, radius)
        if not inside.any():
            raise RenderError(gettext_noop("the sphere holds no voxel centre of the series; make it larger"))
        counted = share > 0
        if int(counted.sum()) * count > MAX_TAC_SAMPLES:
            raise RenderError(gettext_noop("the sphere is too large for a curve over this many time points; "
                                           "make it smaller"))
        weights = share[counted]
        means, maxima = [], []
        for index in range(count):
            values = stored.at_time(index).voxels[box].astype(np.float64) * factor
            means.append(float(np.average(values[counted], weights=weights)))
            maxima.append(float(values[inside].max()))
        starts = stored.presentation.time_points_s
        times: list[float] = list(starts) if len(starts) == count else list(range(1, count + 1))
        time_unit = "s" if len(starts) == count else "time point"
        voxels = int(inside.sum())
        charts.append(_chart(volume, unit, "tac", voxels,
                             {"time": times, "time_unit": time_unit, "mean": means, "max": maxima},
                             tac_picture(volume, unit, times, means, maxima, voxels, time_unit)))
    if not charts:
        raise RenderError(gettext_noop("no layer of this view is a dynamic series (one with several time "
                                       "points)"))
    return charts


def _charts_to_wire(charts: list[RegionChart]) -> list[dict[str, Any]]:
    return [asdict(chart) for chart in charts]


def _charts_from_wire(wire: list[dict[str, Any]]) -> list[RegionChart]:
    return [RegionChart(**item) for item in wire]


@operation("region_histogram", to_wire=_charts_to_wire, from_wire=_charts_from_wire)
def _region_histogram(context: WorkerContext, state: ViewState, volumes: Mapping[str, Volume],
                      arguments: dict[str, Any]) -> list[RegionChart]:
    return region_histogram(context, state, volumes, arguments)


@operation("region_tac", to_wire=_charts_to_wire, from_wire=_charts_from_wire)
def _region_tac(context: WorkerContext, state: ViewState, volumes: Mapping[str, Volume],
                arguments: dict[str, Any]) -> list[RegionChart]:
    return region_tac(state, volumes, arguments)
