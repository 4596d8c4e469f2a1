"""Histograms and time-activity curves (rendering/measure_views.py) against truth worked out here.

The sphere's histogram is checked against numpy's histogram of the SUVs of
the voxels whose centres lie inside the sphere, computed in this file from
the phantom's PET files with pydicom (``pet_truth`` of test_measure.py, not
the gateway's SUV or geometry code). The curve is checked on a dynamic
series built here with known values at every time point. Pictures are
decoded and looked at: the announced size, and more than a background.
"""

from __future__ import annotations

import io

import msgpack
import numpy as np
import pytest
from PIL import Image

from rendering.engine import RenderError
from rendering.measure_views import CHART_HEIGHT, CHART_WIDTH, MAX_TAC_TIME_POINTS
from rendering.operations import OPERATIONS, operation_named
from rendering.viewstate import viewstate_from_dict
from rendering.volume import Presentation, Volume
from tests.rendering.test_measure import pet_truth  # noqa: F401

BARS = np.array([77, 163, 255])


def _view(*layers: dict, **overrides) -> object:
    return viewstate_from_dict({"view": "axial", "layers": list(layers), "quality": "still", "width": 512,
                                "height": 512, **overrides})


def _pet_view(phantom, **overrides):
    _, pet, _, _ = phantom
    return _view({"series_id": pet.series_id, "window_preset": "pet_suv_0_10"}, **overrides)


def _fused_view(phantom, **overrides):
    ct, pet, _, _ = phantom
    return _view({"series_id": ct.series_id, "window_preset": "abdomen"},
                 {"series_id": pet.series_id, "window_preset": "pet_suv_0_10", "opacity": 0.5}, **overrides)


def _run(name: str, view, volumes, **arguments):
    return operation_named(name).run(None, view, volumes, arguments)


def _picture(chart) -> np.ndarray:
    with Image.open(io.BytesIO(chart.image)) as image:
        assert image.format == "PNG"
        assert image.size == (chart.width, chart.height) == (CHART_WIDTH, CHART_HEIGHT)
        pixels = np.asarray(image.convert("RGB"), dtype=np.int32)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 3, "a blank picture"
    return pixels


def _drawn_in(pixels: np.ndarray, colour: np.ndarray) -> int:
    return int((np.abs(pixels - colour).sum(axis=-1) < 30).sum())


def test_a_sphere_histogram_counts_the_suvs_of_the_voxels_centred_inside(phantom, pet_truth):  # noqa: F811
    suv, centres, patient, _ = pet_truth
    _, _, _, volumes = phantom
    for lesion in patient["lesions"]:
        center, radius = np.array(lesion["center_mm"]), lesion["radius_mm"]
        (chart,) = _run("region_histogram", _pet_view(phantom), volumes, tool="sphere",
                        center_mm=list(center), radius_mm=radius)
        values = suv[np.linalg.norm(centres - center, axis=-1) <= radius]
        edges, counts = np.asarray(chart.table["edges"]), np.asarray(chart.table["counts"])
        assert chart.unit == "SUV" and len(edges) == 65 and len(counts) == 64
        # 64 equal bins from the region's minimum to its maximum...
        assert np.allclose(np.diff(edges), (values.max() - values.min()) / 64, rtol=1e-5)
        assert edges[0] == pytest.approx(values.min(), rel=1e-6)
        assert edges[-1] == pytest.approx(values.max(), rel=1e-6)
        # ... which are the truth's own least and greatest voxel: in double precision here
        # they may lie a rounding step outside the server's (single-precision) edges.
        closed = edges.copy()
        closed[0], closed[-1] = min(edges[0], values.min()), max(edges[-1], values.max())
        assert np.array_equal(counts, np.histogram(values, bins=closed)[0]), lesion
        assert counts.sum() == chart.voxels == values.size
        (statistics,) = _run("measure_sphere", _pet_view(phantom), volumes, center_mm=list(center),
                             radius_mm=radius)
        assert statistics.voxels == chart.voxels
        pixels = _picture(chart)
        assert _drawn_in(pixels, BARS) > 50, "no bars drawn"


def test_a_fused_sphere_has_a_histogram_per_layer_and_hu_in_whole_number_bins(phantom, pet_truth):  # noqa: F811
    liver = pet_truth[2]["organ_samples_mm"]["liver"]
    _, _, _, volumes = phantom
    hu, suv = _run("region_histogram", _fused_view(phantom), volumes, tool="sphere", center_mm=liver,
                   radius_mm=12.0)
    statistics = _run("measure_sphere", _fused_view(phantom), volumes, center_mm=liver, radius_mm=12.0)
    assert (hu.unit, suv.unit) == ("HU", "SUV")
    for chart, measured in zip((hu, suv), statistics, strict=True):
        assert sum(chart.table["counts"]) == chart.voxels == measured.voxels
        assert chart.table["edges"][0] <= measured.minimum and chart.table["edges"][-1] >= measured.maximum
    edges, counts = np.asarray(hu.table["edges"]), np.asarray(hu.table["counts"])
    widths = np.diff(edges)
    assert np.all(widths == widths[0]) and widths[0] == int(widths[0]) and len(counts) <= 64
    assert edges[0] == statistics[0].minimum - 0.5 and counts[0] > 0 and counts[-1] > 0
    _picture(hu)


def test_an_roi_and_a_threshold_voi_count_the_same_region_their_statistics_do(phantom, pet_truth):  # noqa: F811
    _, _, _, volumes = phantom
    lesion = max(pet_truth[2]["lesions"], key=lambda item: item["radius_mm"])
    view = _fused_view(phantom, focus_mm=lesion["center_mm"])
    points = [[236.0, 240.0], [276.0, 290.0]]
    charts = _run("region_histogram", view, volumes, tool="ellipse", shape="ellipse", points=points)
    areas = _run("measure_area", view, volumes, shape="ellipse", points=points)
    assert [chart.unit for chart in charts] == ["HU", "SUV"]
    for chart, area in zip(charts, areas, strict=True):
        assert sum(chart.table["counts"]) == chart.voxels == area.pixels
    settings = {"center_mm": lesion["center_mm"], "box_mm": lesion["radius_mm"] + 8, "mode": "fraction",
                "value": 0.41}
    (voi,) = _run("region_histogram", view, volumes, tool="threshold", **settings)
    contour = _run("measure_threshold", view, volumes, **settings)
    assert voi.unit == "SUV" and sum(voi.table["counts"]) == voi.voxels == contour.voxels
    assert voi.table["edges"][0] >= contour.threshold * (1 - 1e-6)
    assert voi.table["edges"][-1] == pytest.approx(contour.maximum, rel=1e-6)
    grown_settings = {"center_mm": lesion["center_mm"], "box_mm": lesion["radius_mm"] + 8}
    (grown,) = _run("region_histogram", view, volumes, tool="grow", **grown_settings)
    growth = _run("measure_grow", view, volumes, **grown_settings)
    assert grown.unit == "SUV" and sum(grown.table["counts"]) == grown.voxels == growth.voxels


def test_the_charts_cross_to_another_host_as_plain_data(phantom, pet_truth):  # noqa: F811
    _, _, _, volumes = phantom
    lesion = pet_truth[2]["lesions"][0]
    charts = _run("region_histogram", _fused_view(phantom), volumes, tool="sphere",
                  center_mm=lesion["center_mm"], radius_mm=lesion["radius_mm"])
    operation = OPERATIONS["region_histogram"]
    assert operation.from_wire(msgpack.unpackb(msgpack.packb(operation.to_wire(charts)))) == charts


def test_a_histogram_of_a_line_or_of_nothing_is_refused(phantom):
    _, _, _, volumes = phantom
    with pytest.raises(RenderError, match="histogram is of one of"):
        _run("region_histogram", _pet_view(phantom), volumes, tool="line", points=[[0, 0], [9, 9]])
    with pytest.raises(RenderError, match="outside"):
        _run("region_histogram", _pet_view(phantom), volumes, tool="sphere", center_mm=[5000.0] * 3,
             radius_mm=10.0)
    with pytest.raises(RenderError, match="radius"):
        _run("region_histogram", _pet_view(phantom), volumes, tool="sphere", center_mm=[0.0] * 3, radius_mm=0)


# --- time-activity curves -----------------------------------------------------------------------

TIMES = 7
DEPTH, ROWS, COLUMNS = 12, 16, 16
SPACING_MM = 2.0
HOT = (6, 8, 8)


def _uniform_bqml(t: int) -> float:
    return 1000.0 * (t + 1)


def _hot_bqml(t: int) -> float:
    return 20000.0 + 3000.0 * t


def _dynamic(modality: str = "PT", suv_factor: float | None = 1e-3, times: int = TIMES,
             units: str = "BQML", starts: tuple[float, ...] = ()) -> Volume:
    """``times`` volumes end to end: each uniform, with one hot voxel at HOT, values known per time point."""
    stack = np.empty((times * DEPTH, ROWS, COLUMNS), np.float32)
    for t in range(times):
        stack[t * DEPTH:(t + 1) * DEPTH] = _uniform_bqml(t)
        stack[t * DEPTH + HOT[0], HOT[1], HOT[2]] = _hot_bqml(t)
    return Volume(voxels=stack, spacing=(SPACING_MM,) * 3, origin=(0.0, 0.0, 0.0), direction=np.eye(3),
                  modality=modality, series_id="2.25.77", frame_of_reference_uid="2.25.78",
                  suv_factor=suv_factor,
                  presentation=Presentation(kind="dynamic", units=units, time_points=times,
                                            time_points_s=starts))


def _at(index: tuple[int, int, int]) -> list[float]:
    k, j, i = index
    return [i * SPACING_MM, j * SPACING_MM, k * SPACING_MM]


def _dynamic_view(volume: Volume, time_point: int = 0):
    return _view({"series_id": volume.series_id, "window_center": 5, "window_width": 10,
                  "time_point": time_point}, width=256, height=256)


def test_a_tac_gives_the_sphere_s_mean_and_max_in_suv_at_every_time_point():
    volume = _dynamic()
    volumes = {volume.series_id: volume}
    (away,) = _run("region_tac", _dynamic_view(volume), volumes, tool="sphere", center_mm=_at((3, 4, 4)),
                   radius_mm=3.0)
    assert away.unit == "SUV" and away.table["time"] == list(range(1, TIMES + 1))
    assert away.table["time_unit"] == "time point"
    assert away.table["mean"] == pytest.approx([_uniform_bqml(t) * 1e-3 for t in range(TIMES)], rel=1e-9)
    assert away.table["max"] == pytest.approx([_uniform_bqml(t) * 1e-3 for t in range(TIMES)], rel=1e-9)
    (hot,) = _run("region_tac", _dynamic_view(volume, time_point=3), volumes, tool="sphere",
                  center_mm=_at(HOT), radius_mm=5.0)
    assert hot.table["max"] == pytest.approx([_hot_bqml(t) * 1e-3 for t in range(TIMES)], rel=1e-9)
    for t in range(TIMES):
        (sphere,) = _run("measure_sphere", _dynamic_view(volume, time_point=t), volumes, center_mm=_at(HOT),
                         radius_mm=5.0)
        assert hot.table["mean"][t] == pytest.approx(sphere.mean, rel=1e-9)
        assert _uniform_bqml(t) * 1e-3 < hot.table["mean"][t] < _hot_bqml(t) * 1e-3
    assert hot.voxels == sphere.voxels
    pixels = _picture(hot)
    assert _drawn_in(pixels, BARS) > 30, "no curve drawn"


def test_a_tac_runs_on_the_headers_clock_where_they_give_one():
    starts = tuple(30.0 * t * t for t in range(TIMES))
    volume = _dynamic(starts=starts)
    (curve,) = _run("region_tac", _dynamic_view(volume), {volume.series_id: volume}, tool="sphere",
                    center_mm=_at((3, 4, 4)), radius_mm=3.0)
    assert curve.table["time"] == list(starts) and curve.table["time_unit"] == "s"


def test_a_tac_of_a_series_without_suv_is_in_its_own_unit():
    volume = _dynamic(modality="NM", suv_factor=None, units="CNTS")
    (curve,) = _run("region_tac", _dynamic_view(volume), {volume.series_id: volume}, tool="sphere",
                    center_mm=_at((3, 4, 4)), radius_mm=3.0)
    assert curve.unit == "CNTS"
    assert curve.table["mean"] == pytest.approx([_uniform_bqml(t) for t in range(TIMES)], rel=1e-9)


def test_a_tac_needs_a_dynamic_series_a_sphere_and_a_bounded_number_of_time_points(phantom):
    _, _, _, volumes = phantom
    with pytest.raises(RenderError, match="dynamic"):
        _run("region_tac", _pet_view(phantom), volumes, tool="sphere", center_mm=[0.0, 0.0, -40.0],
             radius_mm=10.0)
    volume = _dynamic()
    with pytest.raises(RenderError, match="sphere"):
        _run("region_tac", _dynamic_view(volume), {volume.series_id: volume}, tool="ellipse",
             points=[[0, 0], [9, 9]])
    many = _dynamic(times=MAX_TAC_TIME_POINTS + 1)
    with pytest.raises(RenderError, match="at most"):
        _run("region_tac", _dynamic_view(many), {many.series_id: many}, tool="sphere", center_mm=_at(HOT),
             radius_mm=3.0)
