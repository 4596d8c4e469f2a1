"""3-D volume rendering (VTK off-screen through EGL): every preset draws something sensible."""

from __future__ import annotations

import numpy as np
import pytest

from rendering.encoding import Encoding

from .conftest import decode, state


def pet_layer(pet):
    return [{"series_id": pet.series_id, "window_preset": "pet_suv_0_10", "palette": "inverted"}]


@pytest.mark.parametrize("preset", ["ct_bone", "ct_soft_tissue", "ct_lung", "pet_mip"])
@pytest.mark.parametrize("quality", ["interactive", "still"])
def test_each_preset_renders_a_non_empty_image(phantom, engine, preset, quality):
    ct, pet, _, volumes = phantom
    layers = pet_layer(pet) if preset == "pet_mip" else None
    s = state(ct, view="3d", preset3d=preset, quality=quality, camera3d={"azimuth": 30, "elevation": 10},
              **({"layers": layers} if layers else {}))
    frame = engine.render(s, volumes)
    image = decode(frame)
    assert frame.encoding is (Encoding.JPEG if quality == "interactive" else Encoding.PNG)
    assert frame.width == (256 if quality == "interactive" else 512)
    background = image[0, 0].astype(int)
    differs = np.abs(image.astype(int) - background).sum(axis=2) > 30
    assert 0.02 < differs.mean() < 0.95, preset
    assert frame.overlay.mm_per_pixel is None


def test_pet_mip_shows_the_hottest_lesion_darkest_on_inverted_grey(phantom, engine):
    ct, pet, _truth, volumes = phantom
    image = decode(engine.render(state(ct, view="3d", preset3d="pet_mip", layers=pet_layer(pet)), volumes))
    assert image[0, 0].min() > 240
    assert image.min() < 30


def test_camera_rotation_changes_the_image_and_the_letters(phantom, engine):
    ct, _, _, volumes = phantom
    front = engine.render(state(ct, view="3d", preset3d="ct_bone", quality="interactive"), volumes)
    side = engine.render(state(ct, view="3d", preset3d="ct_bone", quality="interactive",
                               camera3d={"azimuth": 90}), volumes)
    assert front.overlay.orientation == {"left": "R", "right": "L", "top": "H", "bottom": "F"}
    assert side.overlay.orientation["right"] == "P" and side.overlay.orientation["top"] == "H"
    assert not np.array_equal(decode(front), decode(side))
    top = engine.render(state(ct, view="3d", preset3d="ct_bone", quality="interactive",
                              camera3d={"elevation": 90}), volumes)
    assert top.overlay.orientation["top"] == "P"


def test_probe_is_refused_in_3d(phantom, engine):
    from rendering.engine import RenderError

    ct, _, _, volumes = phantom
    with pytest.raises(RenderError):
        engine.probe(state(ct, view="3d"), volumes, 10, 10)


# --- fused layers (#16) ------------------------------------------------------------------------

CAMERA = {"azimuth": 30.0, "elevation": 10.0}
SAME_PLACE_PX = 2.0


def _hottest(truth: dict) -> dict:
    return max(truth["lesions"], key=lambda lesion: lesion["suv_max"])


def _fused_state(ct, *over, quality="still"):
    return state(ct, view="3d", preset3d="ct_bone", quality=quality, camera3d=CAMERA,
                 layers=[{"series_id": ct.series_id, "window_preset": "abdomen"}, *over])


def _pet_over(pet, suv_max: float, *, registration=None, opacity=1.0, palette="hot_iron", top=1.5):
    """The PET from half the lesion's SUVmax (transparent below) to ``top`` times it: the lesion's
    core lands mid-palette (hot iron's orange-red) and colder tissue shows nothing."""
    layer = {"series_id": pet.series_id, "window_center": suv_max * (0.5 + top) / 2,
             "window_width": suv_max * (top - 0.5), "window_unit": "suv", "palette": palette,
             "opacity": opacity}
    if registration is not None:
        layer["registration"] = [float(v) for v in np.ravel(registration)]
    return layer


def _screen(engine, ct, quality: str) -> tuple[np.ndarray, np.ndarray]:
    """The screen's right and down vectors (LPS) as the renderer returns them for this camera."""
    from rendering.engine.volume3d import VolumeRenderer
    from rendering.viewstate import Camera3D, Preset3D, Quality

    renderer: VolumeRenderer = engine.volume_renderer
    _, right, down = renderer.render(volume=ct, preset=Preset3D.CT_BONE, camera=Camera3D(**CAMERA),
                                     width=512, height=512, quality=Quality(quality))
    return right, down


def _projected_px(ct, point_mm, right, down, size: int) -> np.ndarray:
    """(x, y) in frame pixels of a patient point: the base's voxel-centre box fitted (x 1.05) to the
    frame, as the 3-D view is framed; worked out here from the CT's geometry alone."""
    corners = ct.corners()
    centre = (corners.min(axis=0) + corners.max(axis=0)) / 2
    mm_per_px = float((corners.max(axis=0) - corners.min(axis=0)).max()) * 1.05 / size
    offset = np.asarray(point_mm, dtype=np.float64) - centre
    return np.array([size / 2 + offset @ right / mm_per_px, size / 2 + offset @ down / mm_per_px])


def _redness(pixel: np.ndarray) -> int:
    r, g, b = (int(v) for v in pixel)
    return r - max(g, b)


def _covered_centre(fused: np.ndarray, unfused: np.ndarray, near_px: np.ndarray, radius_px: float):
    """Centroid (x, y) of the pixels the fused layer changed within ``radius_px`` of ``near_px``."""
    changed = (fused != unfused).any(axis=2)
    rows, columns = np.mgrid[:changed.shape[0], :changed.shape[1]]
    centres = np.stack([columns + 0.5, rows + 0.5], axis=-1)
    near = changed & (np.linalg.norm(centres - near_px, axis=-1) <= radius_px)
    assert near.sum() > 20, "the lesion must show"
    return centres[near].mean(axis=0)


@pytest.mark.parametrize("quality", ["still", "interactive"])
def test_a_fused_pet_shows_the_hottest_lesion_in_its_palette_where_it_projects(phantom, engine, quality):
    ct, pet, truth, volumes = phantom
    lesion = _hottest(truth)
    size = 512 if quality == "still" else 256
    right, down = _screen(engine, ct, quality)
    x, y = np.floor(_projected_px(ct, lesion["center_mm"], right, down, size)).astype(int)
    unfused = engine.pixels(_fused_state(ct, quality=quality), volumes)
    fused = engine.pixels(_fused_state(ct, _pet_over(pet, lesion["suv_max"]), quality=quality), volumes)
    assert fused.shape == unfused.shape == (size, size, 3)
    # Hot iron's middle is (255, 64, 0); the bone preset's beige is at most a little red.
    assert _redness(fused[y, x]) >= 50, (fused[y, x], unfused[y, x])
    assert _redness(unfused[y, x]) < 30, unfused[y, x]
    # Below the window (most of the body) and outside the PET the base is left exactly as it was.
    changed = (fused != unfused).any(axis=2)
    assert 0 < changed.mean() < 0.05
    assert not changed[:8, :8].any()


def test_a_fused_layer_at_opacity_0_gives_exactly_the_unfused_frame(phantom, engine):
    ct, pet, truth, volumes = phantom
    lesion = _hottest(truth)
    unfused = engine.render(_fused_state(ct), volumes)
    hidden = engine.render(_fused_state(ct, _pet_over(pet, lesion["suv_max"], opacity=0.0)), volumes)
    assert hidden.data == unfused.data
    assert [layer.series_id for layer in hidden.overlay.layers] == [ct.series_id, pet.series_id]


def test_the_registration_puts_the_moved_pets_lesion_where_the_unmoved_pets_is(phantom, moved, engine):
    """T takes the moved PET's mm onto the CT's: applied, its lesion lands where the PET acquired
    with the CT puts it; the identity instead leaves it off by the move, projected (T^-1 c - c);
    T^-1 (the matrix read the wrong way round) would put it twice as far."""
    ct, pet, truth, volumes = phantom
    moved_pet, truth_move = moved
    volumes = {**volumes, moved_pet.series_id: moved_pet}
    lesion = _hottest(truth)
    right, down = _screen(engine, ct, "still")
    expected = _projected_px(ct, lesion["center_mm"], right, down, 512)
    unfused = engine.pixels(_fused_state(ct), volumes)

    def lesion_px(layer) -> np.ndarray:
        return _covered_centre(engine.pixels(_fused_state(ct, layer), volumes), unfused, expected, 40.0)

    suv = lesion["suv_max"]
    unmoved = lesion_px(_pet_over(pet, suv))
    registered = lesion_px(_pet_over(moved_pet, suv, registration=truth_move))
    assert np.linalg.norm(unmoved - expected) <= SAME_PLACE_PX, (unmoved, expected)
    assert np.linalg.norm(registered - unmoved) <= SAME_PLACE_PX, (registered, unmoved)

    seen_in_moved = (np.linalg.inv(truth_move) @ np.append(lesion["center_mm"], 1.0))[:3]
    shift = _projected_px(ct, seen_in_moved, right, down, 512) - expected
    assert np.linalg.norm(shift) > 4 * SAME_PLACE_PX, "the check must see the move"
    unregistered = lesion_px(_pet_over(moved_pet, suv, registration=np.eye(4)))
    assert np.linalg.norm(unregistered - unmoved - shift) <= SAME_PLACE_PX, (unregistered - unmoved, shift)


def test_fused_layers_are_drawn_in_their_order_the_last_on_top(phantom, moved, engine):
    """Two PETs (the same lesion, one through its registration), each opaque at the lesion: the
    later one's palette is what shows there (hot iron's top is white, rainbow's red)."""
    ct, pet, truth, volumes = phantom
    moved_pet, truth_move = moved
    volumes = {**volumes, moved_pet.series_id: moved_pet}
    lesion = _hottest(truth)
    right, down = _screen(engine, ct, "still")
    x, y = np.floor(_projected_px(ct, lesion["center_mm"], right, down, 512)).astype(int)
    iron = _pet_over(pet, lesion["suv_max"], top=0.6)
    rainbow = _pet_over(moved_pet, lesion["suv_max"], registration=truth_move, palette="rainbow", top=0.6)
    assert engine.pixels(_fused_state(ct, iron, rainbow), volumes)[y, x].tolist() == [255, 0, 0]
    assert engine.pixels(_fused_state(ct, rainbow, iron), volumes)[y, x].tolist() == [255, 255, 255]
