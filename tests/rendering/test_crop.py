"""Crop box: 2-D pixels outside it are black, the 3-D view shrinks to it, malformed boxes are refused.

Expectations come from the phantom's own geometry: the box's edges projected with the view's
plane (2-D) or with the 3-D camera's rule (parallel projection centred on the volume's voxel-centre
extent, its longest side filling 1/1.05 of the height), not from the crop module.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from rendering import protocol
from rendering.engine import planes
from rendering.viewstate import ViewStateError, viewstate_from_dict, viewstate_to_dict

from .conftest import state


def _extent(ct) -> np.ndarray:
    """mm along i, j, k from the first voxel centre to the last."""
    return (np.array(ct.shape[::-1]) - 1) * np.array(ct.spacing[::-1])


def _box(ct, fractions) -> list[float]:
    extent = _extent(ct)
    return [float(extent[axis // 2] * f) for axis, f in enumerate(fractions)]


def test_2d_pixels_outside_the_box_are_black_and_inside_unchanged(phantom, engine):
    ct, _, _, volumes = phantom
    assert np.allclose(np.asarray(ct.direction), np.eye(3))
    box = _box(ct, [0.3, 0.6, 0.2, 0.7, 0.0, 1.0])
    plain = engine.pixels(state(ct), volumes)
    cropped = engine.pixels(state(ct, crop_mm=box), volumes)
    plane = planes.view_plane(state(ct), ct)
    ys, xs = np.mgrid[0:plain.shape[0], 0:plain.shape[1]]
    x_mm = plane.center[0] + (xs + 0.5 - plane.width / 2) * plane.mm_per_pixel * plane.right[0]
    y_mm = plane.center[1] + (ys + 0.5 - plane.height / 2) * plane.mm_per_pixel * plane.down[1]
    i_mm, j_mm = x_mm - ct.origin[0], y_mm - ct.origin[1]
    inside = (i_mm >= box[0]) & (i_mm <= box[1]) & (j_mm >= box[2]) & (j_mm <= box[3])
    assert 0.05 < inside.mean() < 0.5
    assert np.all(cropped[~inside] == 0)
    assert np.array_equal(cropped[inside], plain[inside])
    assert plain[~inside].max() > 0, "the crop removed something"


def test_a_slice_outside_the_box_along_k_is_all_black(phantom, engine):
    ct, _, _, volumes = phantom
    box = _box(ct, [0.0, 1.0, 0.0, 1.0, 0.0, 0.3])  # the focus is the centre slice, outside
    assert not engine.pixels(state(ct, crop_mm=box), volumes).any()


def _drawn(image: np.ndarray) -> tuple[int, int, int, int]:
    background = image[0, 0].astype(int)
    rows, columns = np.nonzero(np.abs(image.astype(int) - background).sum(axis=2) > 30)
    return int(columns.min()), int(columns.max()), int(rows.min()), int(rows.max())


def test_the_3d_view_shrinks_to_the_box(phantom, engine):
    ct, _, _, volumes = phantom
    box = _box(ct, [0.35, 0.65, 0.0, 1.0, 0.3, 0.6])
    plain = engine.pixels(state(ct, view="3d", preset3d="ct_bone"), volumes)
    cropped = engine.pixels(state(ct, view="3d", preset3d="ct_bone", crop_mm=box), volumes)
    size = plain.shape[0]
    # front view: screen right is +x, screen down is -z (orientation letters R|L, H/F)
    extent = _extent(ct)
    centre = np.asarray(ct.origin) + extent / 2
    per_mm = size / (2 * extent.max() / 2 * 1.05)
    left, right = (size / 2 + (ct.origin[0] + np.array(box[0:2]) - centre[0]) * per_mm)
    top, bottom = (size / 2 - (ct.origin[2] + np.array(box[4:6])[::-1] - centre[2]) * per_mm)
    x0, x1, y0, y1 = _drawn(plain)
    c0, c1, r0, r1 = _drawn(cropped)
    assert left - 2 <= c0 and c1 <= right + 2 and top - 2 <= r0 and r1 <= bottom + 2, (
        (c0, c1, r0, r1), (left, right, top, bottom))
    assert (c1 - c0) < 0.8 * (x1 - x0) and (r1 - r0) < 0.8 * (y1 - y0)
    assert c1 - c0 > 0.8 * (right - left), "the box is filled across: bone spans it"
    again = engine.pixels(state(ct, view="3d", preset3d="ct_bone"), volumes)
    assert np.array_equal(again, plain), "a cached mapper forgets the box"


def test_the_box_round_trips_through_the_view_state(phantom):
    ct = phantom[0]
    s = state(ct, crop_mm=[0, 10, 0, 20, 0, 30])
    assert s.crop_mm == (0, 10, 0, 20, 0, 30)
    assert viewstate_from_dict(json.loads(json.dumps(viewstate_to_dict(s)))) == s
    for bad in ([0, 10, 0, 20, 0], [0, 10, 20, 20, 0, 30], [0, 10, 0, 20, 0, "30"], "box",
                [0, 10, 0, 20, 0, float("inf")]):
        with pytest.raises(ViewStateError):
            state(ct, crop_mm=bad)


def test_the_crop_message_is_parsed_and_malformed_boxes_refused():
    parsed = protocol.message_parse(json.dumps({"type": "crop", "view": 1, "box": [0, 10, -5, 5, 2, 3]}),
                                    views=2)
    assert parsed == protocol.Crop(1, (0.0, 10.0, -5.0, 5.0, 2.0, 3.0))
    assert protocol.message_parse(json.dumps({"type": "crop", "view": 0, "box": None}), views=1) == \
        protocol.Crop(0, None)
    for bad in ([0, 10, -5, 5, 2], [0, 10, -5, 5, 2, 3, 4], [10, 0, -5, 5, 2, 3], [0, 10, 5, 5, 2, 3],
                [0, 10, -5, 5, 2, "3"], [0, 10, -5, 5, 2, True], [0, 1e9, -5, 5, 2, 3], {"i": 1}, "all"):
        with pytest.raises(protocol.ProtocolError) as refused:
            protocol.message_parse(json.dumps({"type": "crop", "view": 0, "box": bad}), views=1)
        assert refused.value.code == "bad_value", bad
    for message in ({"type": "crop", "view": 0}, {"type": "crop", "view": 3, "box": None},
                    {"type": "crop", "view": 0, "box": None, "space": "mm"}):
        with pytest.raises(protocol.ProtocolError):
            protocol.message_parse(json.dumps(message), views=1)


def test_crop_to_a_new_series_keeps_the_voxels_in_the_box_at_their_mm(phantom):
    from rendering.engine.crop import CropError, crop_volume

    ct = phantom[0]
    dz, dy, dx = ct.spacing
    box = [10 * dx - 0.1, 20 * dx + 0.1, 5 * dy - 0.1, 30 * dy + 0.1, 2 * dz - 0.1, 4 * dz + 0.1]
    made = crop_volume(ct, box=box, series_id="drv:2", description="crop")
    assert np.array_equal(made.voxels, ct.voxels[2:5, 5:31, 10:21]) and made.voxels.dtype == ct.voxels.dtype
    assert np.allclose(made.index_to_patient((0, 0, 0)), ct.index_to_patient((2, 5, 10)))
    assert np.allclose(made.index_to_patient((2, 25, 10)), ct.index_to_patient((4, 30, 20)))
    assert made.display["derived"] is True and made.frame_of_reference_uid == ct.frame_of_reference_uid
    beyond = crop_volume(ct, box=[-50, 3 * dx + 0.1, -50, 1e-3, -50, 1e-3], series_id="drv:3")
    assert beyond.shape == (1, 1, 4), "clamped to the series"
    with pytest.raises(CropError):
        crop_volume(ct, box=[-50, -40, -50, -40, -50, -40], series_id="drv:4")
