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
