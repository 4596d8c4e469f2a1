"""Segmentation edits against planted truth.

Region growing and thresholds run on enhancing spheres planted by the test in a CT-like
volume (the shared phantom's lesions sit in tissue of their own HU, or touch it); the brush,
the eraser and morphology run on the phantom CT, whose voxel centres are worked out here from
the DICOM headers with pydicom — not from the volume the code builds.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from rendering.segment_ops import (
    SegmentError,
    labels_encode,
    probabilities_encode,
    segment_statistics,
    segmentation_apply,
    segmentation_fractions,
    segmentation_replay,
)
from rendering.volume import Volume

LUNG_LESION = 1  # 14 mm, SUV 9.6 in lung


def _centres(folder) -> np.ndarray:
    """Patient mm of every CT voxel centre, [z, y, x, 3], from the headers alone."""
    headers = sorted(
        (pydicom.dcmread(p, stop_before_pixels=True) for p in folder.glob("*.dcm")),
        key=lambda ds: float(ds.ImagePositionPatient[2]),
    )
    rows, columns = int(headers[0].Rows), int(headers[0].Columns)
    row_step, column_step = (float(v) for v in headers[0].PixelSpacing)
    cosines = np.asarray(headers[0].ImageOrientationPatient, dtype=np.float64)
    j, i = np.mgrid[0:rows, 0:columns].astype(np.float64)
    plane = i[..., None] * column_step * cosines[:3] + j[..., None] * row_step * cosines[3:]
    return np.stack([np.asarray(ds.ImagePositionPatient, dtype=np.float64) + plane for ds in headers])


@pytest.fixture(scope="module")
def pet_truth(phantom, phantom_dir):
    _, pet, truth, _ = phantom
    centres = _centres(phantom_dir / truth["folder"] / "PT")
    assert centres.shape[:3] == pet.shape
    return pet, truth, centres


@pytest.fixture(scope="module")
def ct_truth(phantom, phantom_dir):
    ct, _, truth, _ = phantom
    centres = _centres(phantom_dir / truth["folder"] / "CT")
    assert centres.shape[:3] == ct.shape
    return ct, truth, centres


def _sphere(centres: np.ndarray, lesion: dict) -> np.ndarray:
    return np.linalg.norm(centres - np.asarray(lesion["center_mm"]), axis=-1) <= lesion["radius_mm"]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.count_nonzero(a & b)) / float(np.count_nonzero(a) + np.count_nonzero(b))


def _enhanced_lesions() -> tuple[Volume, list[tuple[np.ndarray, float]], np.ndarray]:
    """A CT-like volume (0.8 x 0.8 x 1.5 mm, 40 HU tissue with noise SD 8) with two enhancing
    spheres (200 HU) and a vessel of the same HU 4 mm from the first; (volume, spheres, centres)."""
    rng = np.random.default_rng(5)
    shape, spacing = (60, 96, 96), (1.5, 0.8, 0.8)
    k, j, i = np.mgrid[0 : shape[0], 0 : shape[1], 0 : shape[2]].astype(np.float64)
    centres = np.stack([i * spacing[2] - 30.0, j * spacing[1] - 40.0, k * spacing[0] + 10.0], axis=-1)
    values = 40.0 + rng.normal(0.0, 8.0, shape)
    spheres = [(np.array([0.0, 0.0, 55.0]), 12.0), (np.array([30.0, 20.0, 70.0]), 8.0)]
    for centre, radius in spheres:
        inside = np.linalg.norm(centres - centre, axis=-1) <= radius
        values[inside] = 200.0 + rng.normal(0.0, 8.0, int(np.count_nonzero(inside)))
    vessel = np.hypot(centres[..., 0] - 16.0, centres[..., 1] - 0.0) <= 3.0  # 4 mm from sphere 1's edge
    values[vessel] = 200.0
    volume = Volume(
        voxels=values.astype(np.float32),
        spacing=spacing,
        origin=(-30.0, -40.0, 10.0),
        direction=np.eye(3),
        modality="CT",
        series_id="lesions",
        frame_of_reference_uid="1.2",
    )
    return volume, spheres, centres


def _planted(centres: np.ndarray, sphere: tuple[np.ndarray, float]) -> np.ndarray:
    return np.linalg.norm(centres - sphere[0], axis=-1) <= sphere[1]


@pytest.mark.parametrize("number", [0, 1])
def test_growing_from_a_lesion_centre_reproduces_the_planted_sphere(number):
    volume, spheres, centres = _enhanced_lesions()
    seed = [float(v) for v in spheres[number][0]]
    labels = segmentation_replay(
        volume, [{"tool": "grow", "segment": 2, "seeds_mm": [seed], "low": 120.0, "high": 400.0}]
    )
    assert set(np.unique(labels)) == {0, 2}
    assert _dice(labels == 2, _planted(centres, spheres[number])) >= 0.9


def test_a_threshold_in_a_box_around_a_lesion_reproduces_it():
    volume, spheres, centres = _enhanced_lesions()
    centre, radius = spheres[1]
    labels = segmentation_replay(
        volume,
        [
            {
                "tool": "threshold",
                "segment": 1,
                "low": 120.0,
                "high": 400.0,
                "center_mm": [float(v) for v in centre],
                "box_mm": radius + 3,
            }
        ],
    )
    assert _dice(labels == 1, _planted(centres, spheres[1])) >= 0.9


def test_otsu_in_a_box_separates_the_lesion_from_tissue():
    volume, spheres, centres = _enhanced_lesions()
    centre, radius = spheres[1]
    labels = segmentation_replay(
        volume,
        [{"tool": "otsu", "segment": 1, "center_mm": [float(v) for v in centre], "box_mm": radius + 3}],
    )
    assert _dice(labels == 1, _planted(centres, spheres[1])) >= 0.9


def test_confidence_connected_grows_the_lesion_without_the_range():
    volume, spheres, centres = _enhanced_lesions()
    seed = [float(v) for v in spheres[0][0]]
    labels = segmentation_replay(
        volume, [{"tool": "confidence", "segment": 1, "seeds_mm": [seed], "multiplier": 3.0, "iterations": 2}]
    )
    assert _dice(labels == 1, _planted(centres, spheres[0])) >= 0.9


def test_the_hottest_voxels_connected_at_a_fraction_of_the_box_maximum(pet_truth):
    pet, truth, centres = pet_truth
    lesion = truth["lesions"][LUNG_LESION]
    labels = segmentation_replay(
        pet,
        [
            {
                "tool": "suv_fraction",
                "segment": 1,
                "fraction": 0.41,
                "center_mm": lesion["center_mm"],
                "box_mm": lesion["radius_mm"] + 6,
            }
        ],
    )
    values = pet.voxels
    box_max = float(values[labels == 1].max())
    hottest = np.unravel_index(int(np.argmax(np.where(labels == 1, values, -np.inf))), values.shape)
    assert np.all(values[labels == 1] >= 0.41 * box_max)
    assert labels[hottest] == 1 and _sphere(centres, lesion)[hottest]


def test_the_brush_adds_exactly_the_voxels_inside_its_sphere_and_the_eraser_takes_them_back(ct_truth):
    ct, _, centres = ct_truth
    point = [float(v) for v in centres[20, 100, 120]]
    brushed = segmentation_replay(
        ct, [{"tool": "brush", "segment": 3, "points_mm": [point], "radius_mm": 6.5}]
    )
    inside = np.linalg.norm(centres - np.asarray(point), axis=-1) <= 6.5
    assert np.array_equal(brushed == 3, inside)
    erased = segmentation_replay(
        ct, [{"tool": "erase", "segment": 3, "points_mm": [point], "radius_mm": 3.0}], start=brushed
    )
    assert np.array_equal(erased == 3, inside & (np.linalg.norm(centres - np.asarray(point), axis=-1) > 3.0))


def test_a_planar_brush_marks_one_layer_on_the_view_plane(ct_truth):
    ct, _, centres = ct_truth
    point = [float(v) for v in centres[20, 100, 120]]
    labels = segmentation_replay(
        ct,
        [{"tool": "brush", "segment": 1, "points_mm": [point], "radius_mm": 5.0, "normal": [0.0, 0.0, 1.0]}],
    )
    marked = np.nonzero(labels)
    assert set(marked[0].tolist()) == {20}
    assert np.array_equal(labels[20] == 1, np.linalg.norm(centres[20] - np.asarray(point), axis=-1) <= 5.0)


def test_painting_overwrites_other_segments_and_erasing_only_its_own(ct_truth):
    ct, _, centres = ct_truth
    point = [float(v) for v in centres[20, 100, 120]]
    labels = segmentation_replay(
        ct,
        [
            {"tool": "brush", "segment": 1, "points_mm": [point], "radius_mm": 6.0},
            {"tool": "brush", "segment": 2, "points_mm": [point], "radius_mm": 3.0},
            {"tool": "erase", "segment": 1, "points_mm": [point], "radius_mm": 9.0},
        ],
    )
    near = np.linalg.norm(centres - np.asarray(point), axis=-1)
    assert np.array_equal(labels == 2, near <= 3.0) and not np.any(labels == 1)


def test_fill_holes_islands_and_largest_component(ct_truth):
    ct, _, centres = ct_truth
    a = [float(v) for v in centres[20, 100, 120]]
    b = [float(v) for v in centres[20, 200, 300]]
    ring = segmentation_replay(
        ct,
        [
            {"tool": "brush", "segment": 1, "points_mm": [a], "radius_mm": 8.0, "normal": [0.0, 0.0, 1.0]},
            {"tool": "erase", "segment": 1, "points_mm": [a], "radius_mm": 4.0, "normal": [0.0, 0.0, 1.0]},
            {"tool": "brush", "segment": 1, "points_mm": [b], "radius_mm": 2.0},
        ],
    )
    disc = np.linalg.norm(centres[20] - np.asarray(a), axis=-1) <= 8.0
    filled = ring.copy()
    segmentation_apply(filled, ct, {"tool": "fill_holes", "segment": 1})
    assert np.array_equal(filled[20][disc], np.ones(np.count_nonzero(disc), dtype=np.uint8))
    largest = filled.copy()
    segmentation_apply(largest, ct, {"tool": "largest", "segment": 1})
    assert np.count_nonzero(largest) == np.count_nonzero(disc)
    voxel_ml = float(np.prod(ct.spacing)) / 1000.0
    small = np.count_nonzero(np.linalg.norm(centres - np.asarray(b), axis=-1) <= 2.0) * voxel_ml
    islands = filled.copy()
    segmentation_apply(islands, ct, {"tool": "islands", "segment": 1, "min_ml": small * 1.5})
    assert np.array_equal(islands, largest)


def test_statistics_count_voxels_and_read_the_reference_values(pet_truth):
    pet, truth, centres = pet_truth
    lesion = truth["lesions"][LUNG_LESION]
    labels = _sphere(centres, lesion).astype(np.uint8) * 4
    statistics = segment_statistics(labels, pet, pet.suv_factor)["4"]
    voxel_ml = float(np.prod(pet.spacing)) / 1000.0
    assert statistics["voxels"] == int(np.count_nonzero(labels))
    assert statistics["volume_ml"] == pytest.approx(statistics["voxels"] * voxel_ml)
    assert statistics["max"] == pytest.approx(lesion["suv_max"], rel=0.01)


def test_a_seed_outside_the_series_is_refused(ct_truth):
    ct, _, _ = ct_truth
    with pytest.raises(SegmentError, match="outside"):
        segmentation_replay(
            ct, [{"tool": "grow", "segment": 1, "seeds_mm": [[9999.0, 0.0, 0.0]], "low": 0.0, "high": 1.0}]
        )


def test_growing_from_a_seed_outside_the_range_is_refused_not_left_empty():
    volume, spheres, _ = _enhanced_lesions()
    seed = [float(v) for v in spheres[0][0]]
    with pytest.raises(SegmentError, match="no seed lies inside the range 500 to 900"):
        segmentation_replay(volume, [{"tool": "grow", "segment": 1, "seeds_mm": [seed], "low": 500.0,
                                      "high": 900.0}])


def _rendered(pet, labels, style) -> np.ndarray:
    import io
    from dataclasses import replace

    from PIL import Image

    from rendering.engine.core import RenderEngine
    from rendering.viewstate import viewstate_from_dict
    from rendering.volume import Presentation

    layers = [{"series_id": pet.series_id, "window_center": 2000, "window_width": 4000, "palette": "grey"}]
    volumes = {pet.series_id: pet}
    if labels is not None:
        seg = replace(
            pet,
            voxels=labels,
            modality="SEG",
            series_id="seg:1:1:000000000000",
            suv_factor=None,
            presentation=Presentation(kind="label", label_style=style),
        )
        layers.append({"series_id": seg.series_id, "window_center": 0.5, "window_width": 1.0})
        volumes[seg.series_id] = seg
    state = viewstate_from_dict(
        {
            "view": "axial",
            "focus_mm": [0.0, 0.0, float(pet.center()[2])],
            "width": 128,
            "height": 128,
            "quality": "still",
            "layers": layers,
        }
    )
    frame = RenderEngine().render(state, volumes)
    return np.asarray(Image.open(io.BytesIO(frame.data)).convert("RGB")).astype(int)


def test_each_segment_is_drawn_in_its_colour_at_its_opacity_and_a_hidden_one_not_at_all(phantom):
    _, pet, _, _ = phantom
    k = pet.shape[0] // 2
    labels = np.zeros(pet.shape, dtype=np.uint8)
    labels[k, :, : pet.shape[2] // 3] = 1
    labels[k, :, pet.shape[2] // 3 : 2 * pet.shape[2] // 3] = 2
    labels[k, :, 2 * pet.shape[2] // 3 :] = 3
    plain = _rendered(pet, None, ())
    shown = _rendered(pet, labels, ((1, "#0000ff", 1.0), (2, "#ff0000", 0.5), (3, "#00ff00", 0.0)))
    row = 64
    assert np.allclose(shown[row, 10], [0, 0, 255], atol=6)
    assert np.allclose(shown[row, 64], (plain[row, 64] + np.array([255, 0, 0])) / 2, atol=8)
    assert np.allclose(shown[row, 118], plain[row, 118], atol=6)


def test_interpolation_fills_the_slices_between_two_drawn_outlines_with_a_blend(ct_truth):
    ct, _, centres = ct_truth
    middle = [float(v) for v in centres[20, 256, 256]]
    drawn = [
        {
            "tool": "brush",
            "segment": 1,
            "points_mm": [[middle[0], middle[1], float(centres[k, 0, 0, 2])]],
            "radius_mm": radius,
            "normal": [0.0, 0.0, 1.0],
        }
        for k, radius in ((10, 8.0), (20, 16.0))
    ]
    labels = segmentation_replay(ct, [*drawn, {"tool": "interpolate", "segment": 1}])
    assert [k for k in range(ct.shape[0]) if np.any(labels[k])] == list(range(10, 21))
    pixel_mm2 = float(ct.spacing[1] * ct.spacing[2])
    for k in range(11, 20):
        radius = 8.0 + (16.0 - 8.0) * (k - 10) / 10  # the outlines' radii blended linearly
        area = np.count_nonzero(labels[k]) * pixel_mm2
        assert area == pytest.approx(np.pi * radius**2, rel=0.08), k
    untouched = segmentation_replay(ct, drawn)
    assert np.array_equal(labels[10], untouched[10]) and np.array_equal(labels[20], untouched[20])


def _rendered_3d(ct, labels, style) -> np.ndarray:
    from dataclasses import replace

    from rendering.engine.core import RenderEngine
    from rendering.viewstate import viewstate_from_dict
    from rendering.volume import Presentation

    seg = replace(
        ct,
        voxels=labels,
        modality="SEG",
        series_id="seg:2:1:000000000000",
        suv_factor=None,
        presentation=Presentation(kind="label", label_style=style),
    )
    state = viewstate_from_dict(
        {
            "view": "3d",
            "width": 128,
            "height": 128,
            "quality": "still",
            "preset3d": "ct_bone",
            "layers": [
                {"series_id": ct.series_id, "window_center": 40, "window_width": 400},
                {"series_id": seg.series_id, "window_center": 0.5, "window_width": 1.0},
            ],
        }
    )
    return RenderEngine().pixels(state, {ct.series_id: ct, seg.series_id: seg}).astype(int)


def test_a_3d_view_shows_each_shown_segment_as_a_surface_in_its_colour(ct_truth):
    ct, _, centres = ct_truth
    point = [float(v) for v in centres[20, 256, 256]]
    labels = segmentation_replay(
        ct, [{"tool": "brush", "segment": 1, "points_mm": [point], "radius_mm": 60.0}]
    )
    shown = _rendered_3d(ct, labels, ((1, "#00ff00", 1.0),))
    hidden = _rendered_3d(ct, labels, ((1, "#00ff00", 0.0),))
    green = (shown[..., 1] > 120) & (shown[..., 0] < 80) & (shown[..., 2] < 80)
    assert np.count_nonzero(green) > 200  # a 120 mm ball in a 500 mm field of 128 px, shaded
    assert np.count_nonzero((hidden[..., 1] > 120) & (hidden[..., 0] < 80) & (hidden[..., 2] < 80)) == 0


def test_fractions_are_a_model_s_probabilities_except_where_a_later_edit_changed_its_segment(ct_truth):
    ct, _, centres = ct_truth
    rng = np.random.default_rng(13)
    a, b, c = ([float(v) for v in centres[20, j, i]] for j, i in ((200, 200), (200, 214), (200, 186)))

    def ball(point, radius):
        return np.linalg.norm(centres - np.asarray(point), axis=-1) <= radius

    first, second = ball(a, 10.0), ball(c, 5.0)
    probabilities = [rng.integers(0, 256, ct.shape, dtype=np.uint8) for _ in range(2)]
    stored = {"labels-1": labels_encode(first.astype(np.uint8)),
              "probabilities-1": probabilities_encode({1: probabilities[0]}),
              "labels-2": labels_encode(second.astype(np.uint8) * 5),
              "probabilities-2": probabilities_encode({5: probabilities[1]})}
    edits = [
        {"tool": "labels", "segment": 1, "object": "labels-1", "probabilities": "probabilities-1",
         "segments": {"1": 1}},
        {"tool": "brush", "segment": 1, "points_mm": [b], "radius_mm": 6.0},
        {"tool": "brush", "segment": 2, "points_mm": [a], "radius_mm": 4.0},
        {"tool": "labels", "segment": 3, "object": "labels-2", "probabilities": "probabilities-2",
         "segments": {"5": 3}},
        {"tool": "erase", "segment": 3, "points_mm": [c], "radius_mm": 3.0},
    ]
    labels = segmentation_replay(ct, edits, load=stored.__getitem__)

    fractions = segmentation_fractions(ct, edits, labels, load=stored.__getitem__)

    final_one = (first | ball(b, 6.0)) & ~ball(a, 4.0) & ~second
    final_three = second & ~ball(c, 3.0)
    assert np.array_equal(labels == 1, final_one) and np.array_equal(labels == 3, final_three)
    assert set(fractions) == {1, 3} and np.any(final_one & ~first)
    for number, model, final, probability in ((1, first, final_one, probabilities[0]),
                                              (3, second, final_three, probabilities[1])):
        changed = model != final
        assert np.any(changed & ~final)
        np.testing.assert_array_equal(fractions[number], np.where(changed, final * 255, probability))


def test_a_segmentation_drawn_by_hand_has_no_fractions(ct_truth):
    ct, _, centres = ct_truth
    edits = [{"tool": "brush", "segment": 1, "points_mm": [[float(v) for v in centres[20, 200, 200]]],
              "radius_mm": 5.0}]
    labels = segmentation_replay(ct, edits)
    assert np.any(labels) and segmentation_fractions(ct, edits, labels, load=_no_objects) == {}


def _no_objects(object_id: str) -> bytes:
    raise AssertionError(f"{object_id} read for a segmentation without a model run")
