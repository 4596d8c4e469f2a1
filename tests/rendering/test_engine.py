"""The render engine against the phantom's ground truth: decoded pixels, overlays, probe, refusals."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from rendering.encoding import Encoding
from rendering.engine import FrameOfReferenceError, MissingVolumeError, RenderError, planes
from rendering.viewstate import SlabMode
from rendering.volume import Volume, VolumeError

from .conftest import decode, state


def grey_at(image: np.ndarray, xy) -> float:
    x, y = (round(v - 0.5) for v in xy)
    patch = image[y - 1: y + 2, x - 1: x + 2]
    return float(np.median(patch))


def expected_grey(hu: float, center: float, width: float) -> float:
    return float(np.clip((hu - (center - width / 2)) / width * 255, 0, 255))


# --- volume -----------------------------------------------------------------------------------


def test_volume_index_patient_round_trip_with_tilted_direction():
    angle = np.radians(30)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    volume = Volume(np.zeros((4, 5, 6), np.int16), (2.0, 1.0, 0.5), (10.0, 20.0, 30.0), direction,
                    "CT", "s", "for")
    kji = np.array([[1.0, 2.0, 3.0], [0, 0, 0], [3.5, 4.0, 5.0]])
    assert np.allclose(volume.patient_to_index(volume.index_to_patient(kji)), kji)
    assert np.allclose(volume.index_to_patient([0, 0, 1]),
                       [10 + 0.5 * np.cos(angle), 20 + 0.5 * np.sin(angle), 30])
    assert np.allclose(volume.index_to_patient([1, 0, 0]), [10, 20, 32])


@pytest.mark.parametrize("change", [
    {"voxels": np.zeros((4, 4), np.int16)},
    {"voxels": np.zeros((2, 2, 2), np.float64)},
    {"spacing": (1.0, 0.0, 1.0)},
    {"direction": np.ones((3, 3))},
    {"suv_factor": -1.0},
])
def test_volume_rejects_malformed_geometry(change):
    arguments = {"voxels": np.zeros((2, 2, 2), np.int16), "spacing": (1, 1, 1), "origin": (0, 0, 0),
                 "direction": np.eye(3), "modality": "CT", "series_id": "s", "frame_of_reference_uid": "f"}
    arguments.update(change)
    with pytest.raises(VolumeError):
        Volume(**arguments)


# --- grey levels ------------------------------------------------------------------------------


@pytest.mark.parametrize("view", ["axial", "coronal", "sagittal"])
@pytest.mark.parametrize("organ", ["liver", "lung", "muscle", "fat"])
def test_known_structure_has_expected_grey_level(phantom, engine, view, organ):
    ct, _, truth, volumes = phantom
    hu = {"liver": 60, "lung": -850, "muscle": 50, "fat": -100}[organ]
    point = truth["organ_samples_mm"][organ]
    center, width = (-600, 1500) if organ == "lung" else (40, 400)
    s = state(ct, view=view, focus_mm=point,
              layers=[{"series_id": ct.series_id, "window_center": center, "window_width": width}])
    frame = engine.render(s, volumes)
    assert frame.encoding is Encoding.PNG
    image = decode(frame)
    assert image.ndim == 2
    tolerance = 15 / width * 255 + 1
    assert grey_at(image, frame.overlay.crosshair_px) == pytest.approx(expected_grey(hu, center, width),
                                                                        abs=tolerance)


def test_window_level_changes_pixel_values_as_expected(phantom, engine):
    ct, _, truth, volumes = phantom
    point = truth["organ_samples_mm"]["liver"]
    greys = []
    for center, width in ((60, 100), (40, 400), (-600, 1500), (400, 1800)):
        s = state(ct, focus_mm=point,
                  layers=[{"series_id": ct.series_id, "window_center": center, "window_width": width}])
        frame = engine.render(s, volumes)
        greys.append(grey_at(decode(frame), frame.overlay.crosshair_px))
        assert greys[-1] == pytest.approx(expected_grey(60, center, width), abs=15 / width * 255 + 1)
        assert frame.overlay.layers[0].window_center == center
        assert frame.overlay.layers[0].unit == "HU"
    assert greys[0] == pytest.approx(127.5, abs=16)


def test_interactive_frames_are_jpeg_under_60_kb(phantom, engine):
    ct, _, _truth, volumes = phantom
    for view in ("axial", "coronal", "sagittal", "oblique"):
        frame = engine.render(state(ct, view=view, quality="interactive", oblique_deg=[20, 10]), volumes)
        assert frame.encoding is Encoding.JPEG
        assert frame.data[:3] == b"\xff\xd8\xff"
        assert len(frame.data) <= 60_000
        assert decode(frame).shape == (512, 512)


def test_still_png_is_exactly_the_rendered_pixels(phantom, engine):
    ct, _, _, volumes = phantom
    s = state(ct, view="coronal")
    assert np.array_equal(decode(engine.render(s, volumes)), engine.pixels(s, volumes))
    webp = engine.render(s, volumes, encoding=Encoding.WEBP_LOSSLESS)
    decoded = decode(webp)  # WebP has no greyscale mode: three equal channels
    assert all(np.array_equal(decoded[..., c], engine.pixels(s, volumes)) for c in range(3))
    with pytest.raises(ValueError, match="lossless"):
        engine.render(s, volumes, encoding=Encoding.JPEG)


# --- geometry and overlays ----------------------------------------------------------------------


@pytest.mark.parametrize(("view", "letters"), [
    ("axial", {"left": "R", "right": "L", "top": "A", "bottom": "P"}),
    ("coronal", {"left": "R", "right": "L", "top": "H", "bottom": "F"}),
    ("sagittal", {"left": "A", "right": "P", "top": "H", "bottom": "F"}),
])
def test_orientation_letters(phantom, engine, view, letters):
    ct, _, _, volumes = phantom
    assert engine.render(state(ct, view=view), volumes).overlay.orientation == letters


def test_oblique_orientation_letters_follow_the_rotation(phantom, engine):
    ct, _, _, volumes = phantom
    tilted = engine.render(state(ct, view="oblique", oblique_deg=[0, 90]), volumes).overlay
    assert tilted.orientation["right"] == "F" and tilted.orientation["top"] == "A"
    mixed = engine.render(state(ct, view="oblique", oblique_deg=[30, 0]), volumes).overlay
    assert mixed.orientation["bottom"] == "PH" and mixed.orientation["top"] == "AF"


def test_oblique_at_zero_equals_axial(phantom, engine):
    ct, _, truth, volumes = phantom
    focus = truth["organ_samples_mm"]["liver"]
    axial = engine.pixels(state(ct, focus_mm=focus), volumes)
    oblique = engine.pixels(state(ct, view="oblique", oblique_deg=[0, 0], focus_mm=focus), volumes)
    assert np.array_equal(axial, oblique)


@pytest.mark.parametrize("linear", [False, True])
def test_general_sampler_matches_fast_path(phantom, linear):
    ct, _, truth, _ = phantom
    s = state(ct, view="coronal", focus_mm=truth["organ_samples_mm"]["liver"])
    plane = planes.view_plane(s, ct)
    fast = planes.sample(plane, ct, mode=SlabMode.NONE, thickness_mm=0, linear=linear)
    a, b, c, n = planes._affine(plane, ct, None)
    general = planes._sample_general(plane, ct, a, b, c, n, SlabMode.NONE, 0.0, linear)
    inside = general.valid if general.valid is not None else np.ones(fast.values.shape, bool)
    assert np.array_equal(fast.valid if fast.valid is not None else inside, inside)
    differ = np.abs(fast.values.astype(float) - general.values.astype(float))[inside] > 1
    assert differ.mean() < 0.001


def test_aspect_ratio_follows_spacing(phantom, engine):
    ct, _, _, volumes = phantom
    frame = engine.render(state(ct, view="coronal", layers=[
        {"series_id": ct.series_id, "window_center": -500, "window_width": 20}]), volumes)
    image = decode(frame)
    body_rows = np.flatnonzero((image > 0).any(axis=1))
    height_mm = (body_rows[-1] - body_rows[0] + 1) * frame.overlay.mm_per_pixel
    assert height_mm == pytest.approx(ct.shape[0] * ct.spacing[0], abs=2 * frame.overlay.mm_per_pixel)
    assert frame.overlay.mm_per_pixel == pytest.approx(500 / 512)


def test_direction_cosines_are_respected(phantom, engine):
    ct, _, truth, volumes = phantom
    flipped = Volume(
        voxels=np.ascontiguousarray(ct.voxels[:, :, ::-1]), spacing=ct.spacing,
        origin=tuple(ct.index_to_patient([0, 0, ct.shape[2] - 1])),
        direction=ct.direction @ np.diag([-1.0, 1.0, 1.0]), modality="CT", series_id="flipped",
        frame_of_reference_uid=ct.frame_of_reference_uid,
    )
    focus = truth["organ_samples_mm"]["liver"]
    original = engine.pixels(state(ct, focus_mm=focus, quality="interactive"), volumes)
    mirrored = engine.pixels(state(flipped, focus_mm=focus, quality="interactive"), {"flipped": flipped})
    assert np.array_equal(original, mirrored)


def test_slice_position_index_and_crosshair(phantom, engine):
    ct, _, truth, volumes = phantom
    focus = truth["organ_samples_mm"]["liver"]
    overlay = engine.render(state(ct, focus_mm=focus), volumes).overlay
    assert overlay.slice_position_mm == pytest.approx(focus[2])
    assert overlay.slice_count == ct.shape[0]
    z = ct.index_to_patient([overlay.slice_index, 0, 0])[2]
    assert z == pytest.approx(focus[2], abs=ct.spacing[0] / 2)
    assert overlay.plane["normal"] == [0.0, 0.0, 1.0]
    zoomed = engine.render(state(ct, focus_mm=focus, camera2d={"zoom": 2, "pan_mm": [10, 0]}),
                           volumes).overlay
    assert zoomed.mm_per_pixel == pytest.approx(overlay.mm_per_pixel / 2)
    assert zoomed.crosshair_px[0] == pytest.approx(
        256 + (overlay.crosshair_px[0] - 256) * 2 - 10 / zoomed.mm_per_pixel)


@pytest.mark.parametrize("view", ["axial", "coronal", "oblique"])
def test_slab_mip_is_at_least_the_single_slice_and_minip_at_most(phantom, engine, view):
    ct, _, truth, volumes = phantom
    focus = truth["organ_samples_mm"]["liver"]
    single = engine.pixels(state(ct, view=view, focus_mm=focus, oblique_deg=[15, 0]), volumes).astype(int)
    mip = engine.pixels(state(ct, view=view, focus_mm=focus, oblique_deg=[15, 0],
                              slab={"mode": "mip", "thickness_mm": 20}), volumes).astype(int)
    minip = engine.pixels(state(ct, view=view, focus_mm=focus, oblique_deg=[15, 0],
                                slab={"mode": "minip", "thickness_mm": 20}), volumes).astype(int)
    average = engine.pixels(state(ct, view=view, focus_mm=focus, oblique_deg=[15, 0],
                                  slab={"mode": "average", "thickness_mm": 20}), volumes).astype(int)
    if view == "oblique":
        assert (mip >= single - 1).mean() > 0.995 and (minip <= single + 1).mean() > 0.995
    else:
        assert (mip >= single).all() and (minip <= single).all()
    assert (mip > single).mean() > 0.05
    assert ((average >= minip - 1) & (average <= mip + 1)).all()


# --- fusion, SUV, probe ------------------------------------------------------------------------------


def fusion_layers(ct, pet, center, width, palette="hot_iron", opacity=0.5):
    return [{"series_id": ct.series_id, "window_preset": "abdomen"},
            {"series_id": pet.series_id, "window_center": center, "window_width": width, "window_unit": "suv",
             "palette": palette, "opacity": opacity}]


def test_fusion_colour_appears_at_the_lesion(phantom, engine):
    ct, pet, truth, volumes = phantom
    for lesion in truth["lesions"]:
        suv = lesion["suv_max"]
        fused = engine.render(state(ct, focus_mm=lesion["center_mm"],
                                    layers=fusion_layers(ct, pet, suv, 2 * suv)), volumes)
        image = decode(fused)
        assert image.ndim == 3
        x, y = (int(v) for v in fused.overlay.crosshair_px)
        r, g, b = image[y, x].astype(int)
        assert r - b > 80 and r > g, (lesion, (r, g, b))
        ct_only = decode(engine.render(state(ct, focus_mm=lesion["center_mm"]), volumes))
        assert ct_only.ndim == 2
        assert fused.overlay.layers[1].unit == "SUV"
        corner = image[5, 5].astype(int)
        assert corner[0] - corner[2] < r - b


def test_fusion_palettes_differ_and_opacity_zero_shows_ct(phantom, engine):
    ct, pet, truth, volumes = phantom
    focus = truth["lesions"][0]["center_mm"]
    images = {palette: engine.pixels(state(ct, focus_mm=focus, layers=fusion_layers(ct, pet, 5, 10, palette)),
                                     volumes) for palette in ("grey", "hot_iron", "rainbow", "inverted")}
    assert len({image.tobytes() for image in images.values()}) == 4
    hidden = engine.pixels(state(ct, focus_mm=focus, layers=fusion_layers(ct, pet, 5, 10, opacity=0.0)),
                           volumes)
    ct_only = engine.pixels(state(ct, focus_mm=focus), volumes)
    assert np.array_equal(hidden[..., 0], ct_only) and np.array_equal(hidden[..., 2], ct_only)


def _screen(overlay, point) -> tuple[int, int]:
    plane = overlay.plane
    offset = np.asarray(point) - np.asarray(plane["center_mm"])
    return (round(offset @ np.asarray(plane["right"]) / plane["mm_per_pixel"] + 256),
            round(offset @ np.asarray(plane["down"]) / plane["mm_per_pixel"] + 256))


def _air_inside_pet(pet) -> np.ndarray:
    """A point 3 voxels in from the PET volume's corner, on its middle slice: air, inside the field."""
    return np.asarray(pet.index_to_patient((pet.shape[0] // 2, 3, 3)))


@pytest.mark.parametrize("palette", ["grey", "inverted", "hot_iron", "rainbow"])
def test_a_pet_alone_shows_no_square_where_its_field_of_view_ends(phantom, engine, palette):
    _, pet, _, volumes = phantom
    air = _air_inside_pet(pet)
    layers = [{"series_id": pet.series_id, "window_center": 3, "window_width": 4, "window_unit": "suv",
               "palette": palette}]
    frame = engine.render(state(pet, focus_mm=list(air), layers=layers, camera2d={"zoom": 0.5}), volumes)
    image = decode(frame)
    x, y = _screen(frame.overlay, air)
    assert 5 < x < 250 and 5 < y < 250, "the corner of the field of view is on screen"
    assert np.array_equal(image[2, 2], image[y, x]), "outside and inside the field look alike"


def test_pet_below_its_window_floor_leaves_the_ct_showing_through(phantom, engine):
    ct, pet, _, volumes = phantom
    air = _air_inside_pet(pet)
    ct_only = engine.pixels(state(ct, focus_mm=list(air)), volumes)
    for palette in ("rainbow", "inverted", "hot_iron"):
        fused = state(ct, focus_mm=list(air), layers=fusion_layers(ct, pet, 3, 4, palette))
        x, y = _screen(engine.render(fused, volumes).overlay, air)
        assert engine.pixels(fused, volumes)[y, x].tolist() == [ct_only[y, x]] * 3


def test_probe_returns_planted_suvmax_at_lesion_centre(phantom, engine):
    ct, pet, truth, volumes = phantom
    for lesion in truth["lesions"]:
        for view in ("axial", "coronal", "sagittal"):
            s = state(ct, view=view, focus_mm=lesion["center_mm"], layers=fusion_layers(ct, pet, 5, 10))
            x, y = engine.render(s, volumes).overlay.crosshair_px
            result = engine.probe(s, volumes, x, y)
            assert result.point_mm == pytest.approx(lesion["center_mm"], abs=1e-6)
            assert result.values[1].unit == "SUV"
            assert result.value == pytest.approx(lesion["suv_max"], rel=0.02)
            assert result.values[0].unit == "HU"
            assert result.values[0].value == pytest.approx(lesion["hu"], abs=40)


def test_probe_hu_at_organ_and_none_outside(phantom, engine):
    ct, _, truth, volumes = phantom
    s = state(ct, focus_mm=truth["organ_samples_mm"]["liver"], camera2d={"zoom": 0.5})
    x, y = engine.render(s, volumes).overlay.crosshair_px
    assert engine.probe(s, volumes, x, y).value == pytest.approx(60, abs=40)
    assert engine.probe(s, volumes, 1, 1).value is None
    with pytest.raises(RenderError):
        engine.probe(s, volumes, -1, 10)


def test_different_frame_of_reference_is_refused_unless_registered(phantom, engine):
    ct, pet, truth, volumes = phantom
    foreign = dataclasses.replace(pet, frame_of_reference_uid="1.2.3.999", series_id="foreign")
    mixed = {**volumes, "foreign": foreign}
    layers = fusion_layers(ct, pet, 5, 10)
    layers[1]["series_id"] = "foreign"
    focus = truth["lesions"][0]["center_mm"]
    with pytest.raises(FrameOfReferenceError, match="registration"):
        engine.render(state(ct, focus_mm=focus, layers=layers), mixed)
    layers[1]["registration"] = [1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    registered = engine.pixels(state(ct, focus_mm=focus, layers=layers), mixed)
    same = engine.pixels(state(ct, focus_mm=focus, layers=fusion_layers(ct, pet, 5, 10)), volumes)
    assert np.abs(registered.astype(int) - same.astype(int)).max() <= 1


def test_registration_moves_the_layer(phantom, engine):
    ct, pet, truth, volumes = phantom
    lesion = truth["lesions"][0]
    layers = fusion_layers(ct, pet, 5, 10)
    layers[1]["registration"] = [1, 0, 0, 30, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1]
    s = state(ct, focus_mm=lesion["center_mm"], layers=layers)
    x, y = engine.render(s, volumes).overlay.crosshair_px
    moved = engine.probe(s, volumes, x + 30 / engine.render(s, volumes).overlay.mm_per_pixel, y)
    assert moved.value == pytest.approx(lesion["suv_max"], rel=0.05)


def test_suv_window_needs_an_suv_volume_and_missing_series_is_named(phantom, engine):
    ct, _, _, volumes = phantom
    with pytest.raises(RenderError, match="SUV"):
        engine.render(state(ct, layers=[{"series_id": ct.series_id, "window_preset": "pet_suv_0_5"}]),
                      volumes)
    with pytest.raises(MissingVolumeError):
        engine.render(state(ct, layers=[{"series_id": "nope", "window_preset": "lung"}]), volumes)


@pytest.mark.parametrize("view", ["axial", "coronal", "sagittal"])
@pytest.mark.parametrize("camera", [{"zoom": 1.0, "pan_mm": [0, 0]}, {"zoom": 2.3, "pan_mm": [17, -9]},
                                    {"zoom": 0.6, "pan_mm": [-40, 25]}])
@pytest.mark.parametrize("flip", [False, True])
def test_fast_sampler_equals_per_pixel_nearest_voxel(phantom, view, camera, flip):
    ct, _, truth, _ = phantom
    volume = ct
    if flip:
        volume = Volume(np.ascontiguousarray(ct.voxels[::-1, ::-1, :]), ct.spacing,
                        tuple(ct.index_to_patient([ct.shape[0] - 1, ct.shape[1] - 1, 0])),
                        ct.direction @ np.diag([1.0, -1.0, -1.0]), "CT", "flipped", ct.frame_of_reference_uid)
    s = state(volume, view=view, camera2d=camera, focus_mm=truth["organ_samples_mm"]["liver"],
              width=480, height=352)
    plane = planes.view_plane(s, volume)
    fast = planes.sample(plane, volume, mode=SlabMode.NONE, thickness_mm=0, linear=False)
    ys, xs = np.mgrid[0:352, 0:480]
    centres = (plane.center + ((xs[..., None] + 0.5 - 240) * plane.right
                               + (ys[..., None] + 0.5 - 176) * plane.down) * plane.mm_per_pixel)
    continuous = volume.patient_to_index(centres)
    index = np.floor(continuous + 0.5).astype(int)
    inside = np.all((index >= 0) & (index < np.array(volume.shape)), axis=-1)
    # A centre within rounding noise of a half-voxel may round either way.
    tie = np.any(np.abs(continuous - np.floor(continuous) - 0.5) < 1e-6, axis=-1)[inside]
    assert fast.values.shape == (352, 480)
    assert np.array_equal(fast.valid if fast.valid is not None else np.ones_like(inside), inside)
    k, j, i = (index[..., axis][inside] for axis in range(3))
    match = fast.values[inside] == volume.voxels[k, j, i]
    assert np.all(match | tie)
    assert tie.mean() < 0.2


def test_axial_slice_at_native_resolution_is_a_view_of_the_volume(phantom):
    ct, _, _, _ = phantom
    s = state(ct, view="axial", width=ct.shape[2], height=ct.shape[1], quality="interactive")
    sampled = planes.sample(planes.view_plane(s, ct), ct, mode=SlabMode.NONE, thickness_mm=0, linear=False)
    assert np.shares_memory(sampled.values, ct.voxels)
    k = int(np.floor(ct.patient_to_index(ct.center())[0] + 0.5))
    assert np.array_equal(sampled.values, ct.voxels[k])


@pytest.mark.parametrize("palette", ["grey", "inverted"])
@pytest.mark.parametrize("low, high", [(-160.0, 240.0), (-1350.0, 150.0), (0.5, 0.75), (-32768.0, 32767.0)])
def test_grey_window_equals_the_formula_for_every_int16_value(low, high, palette):
    from rendering.engine.palettes import LUTS, window_grey
    from rendering.viewstate import Palette

    values = np.arange(-32768, 32768, dtype=np.int64)
    index = np.clip(np.floor((values - low) * (255.0 / (high - low)) + 0.5), 0, 255).astype(np.int64)
    expected = index if palette == "grey" else 255 - index
    got = window_grey(values.astype(np.int16), low, high, Palette(palette)).astype(np.int64)
    assert np.abs(got - expected).max() <= 1  # float32 arithmetic may round a tie the other way
    assert (got != expected).mean() < 1e-3
    assert np.array_equal(LUTS[Palette(palette)][:, 0][index], expected)
