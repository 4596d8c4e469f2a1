"""Sphere VOI statistics against truth computed here from the phantom's DICOM files with pydicom.

The SUV factor, the voxel positions and every reference statistic are worked
out in this file from the headers (PS3.3 attributes), not with the gateway's
SUV or geometry code.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pydicom
import pytest

from rendering.engine import RenderError
from rendering.measure import PEAK_RADIUS_MM
from rendering.operations import OPERATIONS
from rendering.workers import RenderPool, SourceSpec

from .conftest import state

ONE_CC_RADIUS_MM = (3 * 1000 / (4 * math.pi)) ** (1 / 3)


def _seconds(tm: str) -> float:
    moment = dt.datetime.strptime(tm.split(".")[0].ljust(6, "0"), "%H%M%S")  # noqa: DTZ007
    return moment.hour * 3600 + moment.minute * 60 + moment.second


@pytest.fixture(scope="module")
def pet_truth(phantom_dir):
    """(SUV array [z, y, x], voxel centres [z, y, x, 3] in patient mm) from the PET files alone."""
    import json

    truth = json.loads((phantom_dir / "truth.json").read_text())
    files = sorted((phantom_dir / truth["patients"][0]["folder"] / "PT").glob("*.dcm"))
    slices = sorted((pydicom.dcmread(path) for path in files),
                    key=lambda ds: float(ds.ImagePositionPatient[2]))
    first = slices[0]
    drug = first.RadiopharmaceuticalInformationSequence[0]
    assert first.Units == "BQML" and first.DecayCorrection == "START"
    elapsed = _seconds(first.SeriesTime) - _seconds(drug.RadiopharmaceuticalStartTime)
    dose = float(drug.RadionuclideTotalDose) * 2 ** (-elapsed / float(drug.RadionuclideHalfLife))
    factor = float(first.PatientWeight) * 1000 / dose
    stored = [ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in slices]
    suv = np.stack(stored) * factor
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    row_mm, column_mm = (float(v) for v in first.PixelSpacing)
    xs = float(first.ImagePositionPatient[0]) + column_mm * np.arange(int(first.Columns))
    ys = float(first.ImagePositionPatient[1]) + row_mm * np.arange(int(first.Rows))
    zs = np.array([float(ds.ImagePositionPatient[2]) for ds in slices])
    z, y, x = np.meshgrid(zs, ys, xs, indexing="ij")
    return suv, np.stack([x, y, z], axis=-1), truth["patients"][0], truth["tissues"]


def _measured(phantom, center, radius, layers=None):
    ct, pet, _, volumes = phantom
    view = state(ct, layers=layers or [{"series_id": pet.series_id, "window_preset": "pet_suv_0_10"}])
    return OPERATIONS["measure_sphere"].run(None, view, volumes, {"center_mm": center, "radius_mm": radius})


def test_suvmax_and_suvpeak_of_every_planted_lesion(phantom, pet_truth):
    suv, centres, patient, _ = pet_truth
    for lesion in patient["lesions"]:
        center, radius = np.array(lesion["center_mm"]), lesion["radius_mm"]
        (measured,) = _measured(phantom, list(center), radius)
        inside = np.linalg.norm(centres - center, axis=-1) <= radius
        assert measured.unit == "SUV"
        assert measured.maximum == pytest.approx(lesion["suv_max"], rel=0.01), lesion
        assert measured.maximum == pytest.approx(suv[inside].max(), rel=1e-4)
        peak = max(suv[np.linalg.norm(centres - centres[tuple(at)], axis=-1) <= ONE_CC_RADIUS_MM].mean()
                   for at in np.argwhere(inside))
        assert measured.peak == pytest.approx(peak, rel=0.02), lesion
        assert measured.peak <= measured.maximum * (1 + 1e-9)
        assert measured.total == pytest.approx(measured.mean * measured.volume_ml)


@pytest.mark.parametrize("radius", [8.0, 9.5, 15.0, 25.0])
def test_a_sphere_s_volume_is_its_geometric_volume(phantom, pet_truth, radius):
    patient = pet_truth[2]
    (measured,) = _measured(phantom, patient["organ_samples_mm"]["liver"], radius)
    assert measured.volume_ml == pytest.approx(4 / 3 * math.pi * radius**3 / 1000, rel=0.05)


def test_a_fused_view_measures_hu_and_suv_together(phantom, pet_truth):
    ct, pet, _, _ = phantom
    liver, tissues = pet_truth[2]["organ_samples_mm"]["liver"], pet_truth[3]
    layers = [{"series_id": ct.series_id, "window_preset": "abdomen"},
              {"series_id": pet.series_id, "window_preset": "pet_suv_0_10", "opacity": 0.5}]
    hu, suv = _measured(phantom, liver, 5.0, layers)  # 8 mm reaches the lung above
    assert (hu.unit, suv.unit) == ("HU", "SUV") and hu.peak is None
    assert hu.mean == pytest.approx(tissues["liver"]["hu"], abs=5)
    assert suv.mean == pytest.approx(tissues["liver"]["suv"], rel=0.1)


def test_a_sphere_outside_the_series_and_a_bad_radius_are_refused(phantom):
    with pytest.raises(RenderError, match="outside"):
        _measured(phantom, [5000.0, 5000.0, 5000.0], 10.0)
    with pytest.raises(RenderError, match="radius"):
        _measured(phantom, [0.0, 0.0, -40.0], 0.0)


def test_the_measurement_runs_in_a_worker_as_a_registered_operation(phantom_dir, phantom, pet_truth):
    ct, pet, _, _ = phantom
    lesion = pet_truth[2]["lesions"][0]
    view = state(ct, layers=[{"series_id": pet.series_id, "window_preset": "pet_suv_0_10"}])
    spec = SourceSpec("rendering.testing:PhantomSource", {"root": str(phantom_dir)})
    with RenderPool(sources={"phantom": spec}, size=1) as pool:
        (measured,) = pool.request_sync("measure_sphere", view, source="phantom",
                                        center_mm=lesion["center_mm"], radius_mm=lesion["radius_mm"])
    assert measured.maximum == pytest.approx(lesion["suv_max"], rel=0.01)
    assert abs(PEAK_RADIUS_MM - ONE_CC_RADIUS_MM) < 1e-9


def _screen(plane: dict, point) -> tuple[float, float]:
    offset = np.asarray(point, dtype=np.float64) - np.asarray(plane["center_mm"])
    return (float(offset @ np.asarray(plane["right"])) / plane["mm_per_pixel"] + 256,
            float(offset @ np.asarray(plane["down"])) / plane["mm_per_pixel"] + 256)


def _axial(phantom, focus, layers=None):
    ct, _, _, volumes = phantom
    view = state(ct, focus_mm=list(focus), layers=layers or [{"series_id": ct.series_id,
                                                               "window_preset": "abdomen"}])
    from rendering.engine import RenderEngine

    return view, RenderEngine().render(view, volumes).overlay.plane


def test_an_ellipse_roi_gives_the_organ_s_hu_and_its_area(phantom, pet_truth):
    _, _, _, volumes = phantom
    liver, tissues = pet_truth[2]["organ_samples_mm"]["liver"], pet_truth[3]
    view, plane = _axial(phantom, liver)
    x, y = _screen(plane, liver)
    radius = 5.0 / plane["mm_per_pixel"]
    (measured,) = OPERATIONS["measure_area"].run(None, view, volumes, {
        "shape": "ellipse", "points": [[x - radius, y - radius], [x + radius, y + radius]]})
    assert measured.unit == "HU" and measured.mean == pytest.approx(tissues["liver"]["hu"], abs=5)
    assert measured.area_mm2 == pytest.approx(math.pi * 25, rel=0.05)


def test_an_roi_on_the_fused_view_gives_hu_and_suv(phantom, pet_truth):
    ct, pet, _, volumes = phantom
    liver, tissues = pet_truth[2]["organ_samples_mm"]["liver"], pet_truth[3]
    view, plane = _axial(phantom, liver, [{"series_id": ct.series_id, "window_preset": "abdomen"},
                                          {"series_id": pet.series_id, "window_preset": "pet_suv_0_10",
                                           "palette": "hot_iron", "opacity": 0.5}])
    x, y = _screen(plane, liver)
    r = 5.0 / plane["mm_per_pixel"]
    hu, suv = OPERATIONS["measure_area"].run(None, view, volumes, {
        "shape": "polygon", "points": [[x - r, y - r], [x + r, y - r], [x + r, y + r], [x - r, y + r]]})
    assert (hu.unit, suv.unit) == ("HU", "SUV")
    assert hu.mean == pytest.approx(tissues["liver"]["hu"], abs=5)
    assert suv.mean == pytest.approx(tissues["liver"]["suv"], rel=0.1)
    assert hu.area_mm2 == pytest.approx(100, rel=0.05)


def test_a_line_across_a_lesion_measures_its_diameter_within_a_voxel(phantom, pet_truth):
    ct, _, _, volumes = phantom
    lesion = next(item for item in pet_truth[2]["lesions"] if item["organ"] == "lung")
    center, radius = np.array(lesion["center_mm"]), lesion["radius_mm"]
    slice_z = ct.index_to_patient((round(float(ct.patient_to_index(center)[0])), 0, 0))[2]
    center[2] = slice_z
    view, plane = _axial(phantom, center)
    across = np.asarray(plane["right"]) * (radius + 6)
    measured = OPERATIONS["measure_line"].run(None, view, volumes, {
        "points": [list(_screen(plane, center - across)), list(_screen(plane, center + across))]})
    assert measured.length_mm == pytest.approx(2 * (radius + 6), abs=plane["mm_per_pixel"])
    (_, unit, values), = measured.profiles
    inside = [n for n, value in enumerate(values) if value is not None and value > -400]
    step = measured.length_mm / (len(values) - 1)
    expected = 2 * math.sqrt(radius**2 - (slice_z - lesion["center_mm"][2]) ** 2)
    assert unit == "HU"
    assert (inside[-1] - inside[0]) * step == pytest.approx(expected, abs=ct.spacing[2] + step)


def test_roi_and_line_arguments_are_checked(phantom):
    ct, _, _, volumes = phantom
    view = state(ct)
    for arguments, words in (({"shape": "star", "points": [[0, 0], [9, 9]]}, "ROI is one of"),
                             ({"shape": "polygon", "points": [[0, 0], [9, 9]]}, "3 to"),
                             ({"shape": "ellipse", "points": [[0, "x"], [9, 9]]}, r"\[x, y\]")):
        with pytest.raises(RenderError, match=words):
            OPERATIONS["measure_area"].run(None, view, volumes, arguments)
    with pytest.raises(RenderError, match="two points"):
        OPERATIONS["measure_line"].run(None, view, volumes, {"points": [[0, 0], [1, 1], [2, 2]]})


def _flood(mask: np.ndarray, seed: tuple[int, int, int]) -> np.ndarray:
    """26-connected region of ``mask`` around ``seed``, by breadth-first search (written here)."""
    region = np.zeros_like(mask)
    region[seed] = True
    frontier = [seed]
    steps = [(a, b, c) for a in (-1, 0, 1) for b in (-1, 0, 1) for c in (-1, 0, 1) if (a, b, c) != (0, 0, 0)]
    while frontier:
        k, j, i = frontier.pop()
        for a, b, c in steps:
            at = (k + a, j + b, i + c)
            if all(0 <= v < n for v, n in zip(at, mask.shape, strict=True)) and mask[at] and not region[at]:
                region[at] = True
                frontier.append(at)
    return region


def _box_truth(suv, centres, center, reach):
    inside = np.all(np.abs(centres - center) <= reach + 1e-6, axis=-1)
    ks, js, is_ = (np.unique(axis) for axis in np.nonzero(inside))
    return suv[np.ix_(ks, js, is_)]


@pytest.mark.parametrize("fraction", [0.41, 0.5])
def test_a_threshold_voi_is_the_region_above_a_fraction_of_the_lesion_maximum(phantom, pet_truth, fraction):
    suv, centres, patient, tissues = pet_truth
    ct, pet, _, volumes = phantom
    view = state(ct, layers=[{"series_id": pet.series_id, "window_preset": "pet_suv_0_10"}])
    for lesion in patient["lesions"]:
        background = tissues.get(lesion["organ"], tissues["soft_tissue"])["suv"]
        center = np.array(lesion["center_mm"])
        measured = OPERATIONS["measure_threshold"].run(None, view, volumes, {
            "center_mm": list(center), "box_mm": lesion["radius_mm"] + 8, "value": fraction})
        values = _box_truth(suv, centres, center, lesion["radius_mm"] + 8)
        seed = np.unravel_index(int(np.argmax(values)), values.shape)
        region = _flood(values >= fraction * values[seed], seed)
        voxel_ml = float(np.prod(pet.spacing)) / 1000
        assert measured.voxels == int(region.sum()), lesion
        assert measured.volume_ml == pytest.approx(region.sum() * voxel_ml)
        assert measured.maximum == pytest.approx(lesion["suv_max"], rel=0.01)
        assert measured.mean == pytest.approx(values[region].mean(), rel=1e-6)
        assert measured.total == pytest.approx(values[region].mean() * region.sum() * voxel_ml, rel=1e-6)
        if fraction * lesion["suv_max"] > 1.5 * background:  # else the contour spills into the organ
            assert 0 < measured.volume_ml < 4 / 3 * math.pi * lesion["radius_mm"] ** 3 / 1000


def test_percist_sets_the_threshold_from_a_liver_reference(phantom, pet_truth):
    suv, centres, patient, _ = pet_truth
    ct, pet, _, volumes = phantom
    liver = np.array(patient["organ_samples_mm"]["liver"])
    near = np.linalg.norm(centres - liver, axis=-1) <= 15.0
    expected = 1.5 * suv[near].mean() + 2 * suv[near].std()
    lesion = max(patient["lesions"], key=lambda item: item["suv_max"])
    view = state(ct, layers=[{"series_id": pet.series_id, "window_preset": "pet_suv_0_10"}])
    measured = OPERATIONS["measure_threshold"].run(None, view, volumes, {
        "center_mm": lesion["center_mm"], "box_mm": 25, "mode": "percist", "reference_mm": list(liver)})
    assert measured.threshold == pytest.approx(expected, rel=0.03)
    assert "PERCIST" in measured.how and measured.maximum == pytest.approx(lesion["suv_max"], rel=0.01)


def test_a_region_too_large_for_the_series_resolution_is_refused_not_computed():
    from rendering.measure import sphere_statistics
    from rendering.volume import Volume

    fine = Volume(voxels=np.zeros((200, 200, 200), np.int16), spacing=(0.1, 0.1, 0.1), origin=(0, 0, 0),
                  direction=np.eye(3), modality="CT", series_id="1.2.3", frame_of_reference_uid="1.2")
    with pytest.raises(RenderError, match="too large"):
        sphere_statistics(fine, 1.0, "HU", [10.0, 10.0, 10.0], 50.0)
    assert sphere_statistics(fine, 1.0, "HU", [10.0, 10.0, 10.0], 2.0).volume_ml == pytest.approx(
        4 / 3 * math.pi * 8 / 1000, rel=0.02)


def _grow_truth(suv, centres, point, box_mm, value):
    """(the region grown by range over the whole series, the box's voxels, how many box faces it reaches).

    Written here: the voxel nearest ``point`` is the seed; the box holds the voxel centres within
    ``box_mm`` of the seed's on every axis; a voxel joins when its SUV lies within the seed's SUV
    ± ``value`` x the seed's SUV and it touches the region (26-connectivity, ``_flood``)."""
    seed = np.unravel_index(int(np.argmin(np.linalg.norm(centres - np.asarray(point), axis=-1))), suv.shape)
    in_box = np.all(np.abs(centres - centres[seed]) <= box_mm + 1e-6, axis=-1)
    ks, js, is_ = (np.unique(axis) for axis in np.nonzero(in_box))
    values = suv[np.ix_(ks, js, is_)]
    local = tuple(int(np.searchsorted(axis, at)) for axis, at in zip((ks, js, is_), seed, strict=True))
    start = values[local]
    region = _flood(np.abs(values - start) <= value * abs(start), local)
    faces = sum(int(region.take(end, axis=axis).any()) for axis in range(3) for end in (0, -1))
    whole = np.zeros(suv.shape, bool)
    whole[np.ix_(ks, js, is_)] = region
    return whole, in_box, faces


def _positions(points) -> set[tuple[float, float, float]]:
    return {tuple(round(float(v), 2) for v in point) for point in points}


def _grown_positions(pet, mask) -> set[tuple[float, float, float]]:
    """Patient mm of the voxels of a ``region_mask`` answer."""
    return _positions(pet.index_to_patient(np.argwhere(mask.array() > 0) + np.asarray(mask.offset)))


def _fused(phantom):
    ct, pet, _, _ = phantom
    return state(ct, layers=[{"series_id": ct.series_id, "window_preset": "abdomen"},
                             {"series_id": pet.series_id, "window_preset": "pet_suv_0_10", "opacity": 0.5}])


def test_a_region_grown_by_range_is_the_flood_fill_of_its_seed_s_band(phantom, pet_truth):
    suv, centres, patient, _ = pet_truth
    _, pet, _, volumes = phantom
    view = _fused(phantom)
    voxel_ml = float(np.prod(pet.spacing)) / 1000
    grown = 0
    for lesion in patient["lesions"]:
        box = lesion["radius_mm"] + 8
        arguments = {"center_mm": lesion["center_mm"], "box_mm": box, "mode": "range", "value": 0.5}
        region, _, faces = _grow_truth(suv, centres, lesion["center_mm"], box, 0.5)
        if faces == 6:
            with pytest.raises(RenderError, match="every face of the box"):
                OPERATIONS["measure_grow"].run(None, view, volumes, arguments)
            continue
        measured = OPERATIONS["measure_grow"].run(None, view, volumes, arguments)
        mask = OPERATIONS["region_mask"].run(None, view, volumes, {"tool": "grow", **arguments})
        assert _grown_positions(pet, mask) == _positions(centres[region]), lesion
        assert measured.unit == "SUV" and measured.voxels == int(region.sum())
        assert measured.volume_ml == pytest.approx(region.sum() * voxel_ml)
        assert measured.maximum == pytest.approx(lesion["suv_max"], rel=0.01), lesion
        assert measured.mean == pytest.approx(suv[region].mean(), rel=1e-6)
        assert measured.total == pytest.approx(suv[region].mean() * region.sum() * voxel_ml, rel=1e-6)
        assert measured.peak <= measured.maximum * (1 + 1e-9)
        assert measured.threshold == pytest.approx(0.5 * lesion["suv_max"], rel=0.01)
        assert ("faces" in measured.how) == (faces > 0)
        grown += 1
    assert grown >= 3


def test_a_region_grown_by_confidence_stays_in_its_box_and_holds_the_seed_s_hot_core(phantom, pet_truth):
    suv, centres, patient, _ = pet_truth
    _, pet, _, volumes = phantom
    view = _fused(phantom)
    grown = 0
    for lesion in patient["lesions"]:
        box = lesion["radius_mm"] + 8
        arguments = {"center_mm": lesion["center_mm"], "box_mm": box, "mode": "confidence"}
        try:
            measured = OPERATIONS["measure_grow"].run(None, view, volumes, arguments)
        except RenderError as refused:  # a neighbourhood without spread, or a leak
            assert "uniform" in str(refused) or "every face of the box" in str(refused)
            continue
        _, in_box, _ = _grow_truth(suv, centres, lesion["center_mm"], box, 0.5)
        mask = OPERATIONS["region_mask"].run(None, view, volumes, {"tool": "grow", **arguments})
        positions = _grown_positions(pet, mask)
        assert positions <= _positions(centres[in_box]), lesion
        seed = np.unravel_index(int(np.argmin(np.linalg.norm(centres - np.asarray(lesion["center_mm"]),
                                                             axis=-1))), suv.shape)
        near = tuple(slice(max(v - 1, 0), v + 2) for v in seed)
        core = centres[near][suv[near] >= 0.99 * suv[seed]]
        assert _positions(core) <= positions, lesion
        assert measured.voxels == len(positions) and "mean" in measured.how
        assert measured.maximum == pytest.approx(lesion["suv_max"], rel=0.01), lesion
        grown += 1
    assert grown >= 2


def test_a_grown_region_is_refused_outside_the_series_in_a_box_too_large_or_when_it_leaks(phantom,
                                                                                         pet_truth):
    volumes = phantom[3]
    view = _fused(phantom)
    liver = pet_truth[2]["organ_samples_mm"]["liver"]
    lesion = pet_truth[2]["lesions"][0]
    for arguments, words in (
            ({"center_mm": [5000.0, 5000.0, 5000.0]}, "outside the series"),
            ({"center_mm": lesion["center_mm"], "box_mm": 151}, "1 to 150 mm"),
            ({"center_mm": lesion["center_mm"], "box_mm": 0.5}, "1 to 150 mm"),
            ({"center_mm": lesion["center_mm"], "mode": "watershed"}, "grows by one of"),
            ({"center_mm": lesion["center_mm"], "mode": ["range"]}, "grows by one of"),
            ({"center_mm": lesion["center_mm"], "value": "0.3"}, "are numbers"),
            ({"center_mm": lesion["center_mm"], "mode": "range", "value": 1.5}, "0.01 to 0.99"),
            ({"center_mm": lesion["center_mm"], "mode": "confidence", "value": 9}, "0.5 to 5"),
            ({"center_mm": liver, "box_mm": 30, "mode": "range", "value": 0.5}, "every face of the box")):
        with pytest.raises(RenderError, match=words):
            OPERATIONS["measure_grow"].run(None, view, volumes, arguments)
    with pytest.raises(RenderError, match="every face of the box"):
        OPERATIONS["region_mask"].run(None, view, volumes, {"tool": "grow", "center_mm": liver, "box_mm": 30})
