"""Sampling spaces of image arithmetic: the reference's grid, the union, the intersection, a box.

Every expected grid is computed here from the inputs' geometry (corner voxel centres from
origin, direction and spacing, carried by the known matrix, read along the reference's axes),
and every expected value from the inputs' own voxels or, where an input is resampled, from a
linear field evaluated at the physical point (SimpleITK's point evaluation for the reference
check), never from the code under test.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk

from imaging import derived as derived_module
from rendering.derived_volumes import DerivedVolumes
from rendering.engine.arithmetic import (
    MAX_AXIS_VOXELS,
    ImageArithmeticError,
    arithmetic,
    arithmetic_grid,
    derived_volume,
)
from rendering.engine.core import RenderError
from rendering.protocol import Derive, ProtocolError, message_parse
from rendering.volume import Presentation, Volume
from tests.rendering.moved import rigid_matrix, rotation_matrix

SLOPE = np.array([3.0, -2.0, 5.0])
INTERCEPT = 100.0


def _volume(voxels: np.ndarray, *, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None,
            series_id: str = "ct", frame: str = "frame-a", modality: str = "CT") -> Volume:
    return Volume(voxels=voxels, spacing=spacing, origin=origin,
                  direction=np.eye(3) if direction is None else direction, modality=modality,
                  series_id=series_id, frame_of_reference_uid=frame, presentation=Presentation(units="HU"))


def _hounsfield(seed: int, shape) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 2000, size=shape).astype(np.int16)


def _corners_mm(shape, spacing, origin, direction) -> np.ndarray:
    """(8, 3) patient mm of the corner voxel centres: origin + D (i dx, j dy, k dz)."""
    nk, nj, ni = shape
    steps = np.array([[i * spacing[2], j * spacing[1], k * spacing[0]]
                      for i in (0, ni - 1) for j in (0, nj - 1) for k in (0, nk - 1)])
    return np.asarray(origin) + steps @ np.asarray(direction).T


def _along_reference(points: np.ndarray, reference: Volume) -> np.ndarray:
    """Continuous (i, j, k) of patient points on the reference's axes, in its voxels."""
    ijk_mm = (points - np.asarray(reference.origin)) @ np.asarray(reference.direction)
    return ijk_mm / np.array([reference.spacing[2], reference.spacing[1], reference.spacing[0]])


def _expected_grid(reference: Volume, inputs, union: bool) -> tuple[tuple[float, ...], tuple[int, ...]]:
    """(origin mm, shape (k, j, i)) of the union or intersection, from the corners alone."""
    lows, highs = [], []
    for volume, matrix in inputs:
        corners = _corners_mm(volume.shape, volume.spacing, volume.origin, volume.direction)
        carried = corners @ matrix[:3, :3].T + matrix[:3, 3]
        ijk = _along_reference(carried, reference)
        lows.append(ijk.min(axis=0))
        highs.append(ijk.max(axis=0))
    if union:
        low, high = np.floor(np.min(lows, axis=0)), np.ceil(np.max(highs, axis=0))
    else:
        low, high = np.ceil(np.max(lows, axis=0)), np.floor(np.min(highs, axis=0))
    step = np.array([reference.spacing[2], reference.spacing[1], reference.spacing[0]])
    origin = np.asarray(reference.origin) + np.asarray(reference.direction) @ (low * step)
    size = (high - low + 1).astype(int)
    return tuple(origin), (int(size[2]), int(size[1]), int(size[0]))


def _linear_volume(shape, *, spacing, origin, direction, series_id="pet", frame="frame-b") -> Volume:
    """SLOPE . (x, y, z) + INTERCEPT at each voxel centre (any direction)."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    steps = np.stack([i * spacing[2], j * spacing[1], k * spacing[0]], axis=-1)
    xyz = np.asarray(origin) + steps @ np.asarray(direction).T
    return _volume((xyz @ SLOPE + INTERCEPT).astype(np.float32), spacing=spacing, origin=origin,
                   direction=direction, series_id=series_id, frame=frame, modality="PT")


def _tilted_pet_and_matrix():
    direction = rotation_matrix((0.0, 0.0, 10.0))
    pet = _linear_volume((7, 9, 8), spacing=(3.0, 2.0, 2.5), origin=(-4.0, 3.0, -6.0), direction=direction)
    matrix = rigid_matrix(rotation_matrix((6.0, 0.0, 6.0)), (8.0, -4.0, 8.0), (5.0, 5.0, 5.0))
    return pet, matrix


def _ct() -> Volume:
    return _volume(_hounsfield(1, (8, 10, 12)), spacing=(2.0, 1.5, 1.25), origin=(1.0, -2.0, 3.0))


@pytest.mark.parametrize("space", ["union", "intersection"])
def test_union_and_intersection_grids_match_the_corners_computed_here(space):
    ct = _ct()
    pet, matrix = _tilted_pet_and_matrix()
    origin, shape = _expected_grid(ct, [(ct, np.eye(4)), (pet, matrix)], union=space == "union")
    values = arithmetic("weighted_sum", ct, [(pet, matrix, 1.0)], space=space)
    assert values.shape == shape
    made = derived_volume(values, ct, series_id="drv:1", description=space, operation="weighted_sum",
                          inputs=[pet], grid=arithmetic_grid(ct, [(pet, matrix)], space=space))
    assert np.allclose(made.origin, origin, atol=1e-9)
    assert made.spacing == ct.spacing and np.array_equal(made.direction, ct.direction)
    if space == "union":  # it contains both extents (tilted: larger than the CT's own 8 x 10 x 12)
        assert all(a >= b for a, b in zip(shape, ct.shape, strict=True))


def test_two_volumes_offset_by_a_known_shift():
    ct = _volume(_hounsfield(2, (10, 12, 14)))
    shift = np.eye(4)
    shift[:3, 3] = (3.0, -2.0, 4.0)  # moving mm -> reference mm: the other lies 3, -2, 4 mm along x, y, z
    other = _volume(_hounsfield(3, (10, 12, 14)), series_id="other", frame="frame-b")
    inter = arithmetic_grid(ct, [(other, shift)], space="intersection")
    assert inter.shape == (10 - 4, 12 - 2, 14 - 3) == (6, 10, 11)
    assert inter.offset == (4, 0, 3) and inter.origin == (3.0, 0.0, 4.0)
    union = arithmetic_grid(ct, [(other, shift)], space="union")
    assert union.shape == (14, 14, 17) and union.offset == (0, -2, 0) and union.origin == (0.0, -2.0, 0.0)
    low, high = np.array(union.offset), np.array(union.offset) + union.shape - 1
    for corners in (_corners_mm(ct.shape, ct.spacing, ct.origin, ct.direction),
                    _corners_mm(other.shape, other.spacing, other.origin, other.direction) + shift[:3, 3]):
        kji = _along_reference(corners, ct)[:, ::-1]
        assert np.all(kji >= low) and np.all(kji <= high)


def test_a_difference_in_the_union_takes_each_input_s_minimum_outside_it():
    ct = _volume(_hounsfield(4, (5, 6, 7)))
    assert np.array_equal(arithmetic("difference", ct, [(ct, None, 1.0)], space="union"),
                          np.zeros(ct.shape, np.float32))
    shift = np.eye(4)
    shift[:3, 3] = (2.0, 0.0, 1.0)  # the same CT, placed 2 voxels along i and 1 along k
    moved = _volume(ct.voxels, series_id="moved", frame="frame-b")
    result = arithmetic("difference", ct, [(moved, shift, 1.0)], space="union")
    assert result.shape == (6, 6, 9)
    background = float(ct.voxels.min())
    a = np.full((6, 6, 9), background)
    a[:5, :, :7] = ct.voxels
    b = np.full((6, 6, 9), background)
    b[1:, :, 2:] = ct.voxels
    assert np.allclose(result, a - b, atol=1e-3)
    assert result[5, 0, 0] == 0.0  # outside both: background minus background
    assert not np.isnan(result).any()


def test_ct_minus_itself_beside_a_wider_series_is_zero_everywhere_in_the_union():
    ct = _volume(_hounsfield(5, (4, 5, 6)))
    pet, matrix = _tilted_pet_and_matrix()
    result = arithmetic("weighted_sum", ct, [(ct, None, -1.0), (pet, matrix, 0.0)], space="union")
    assert result.size > ct.voxels.size and np.array_equal(result, np.zeros(result.shape, np.float32))
    # the reference space, as before: the CT's own grid
    assert arithmetic("weighted_sum", ct, [(ct, None, -1.0)]).shape == ct.shape


def test_a_ratio_outside_its_denominator_is_undefined_not_a_division_by_zero():
    numerator = _volume(np.full((3, 3, 3), 6.0, np.float32))
    below = np.full((3, 3, 3), 2.0, np.float32)
    below[0, 0, 0] = 0.0  # its minimum, so its background: 0
    denominator = _volume(below, series_id="b", frame="frame-b")
    shift = np.eye(4)
    shift[:3, 3] = (1.0, 0.0, 0.0)
    result = arithmetic("ratio", numerator, [(denominator, shift, 1.0)], space="union")
    assert result.shape == (3, 3, 4)
    assert np.isnan(result[:, :, 0]).all()  # before the denominator: 6 over its background 0
    assert np.isnan(result[0, 0, 1])  # the denominator's own zero
    assert result[1, 1, 1] == pytest.approx(3.0)
    assert result[1, 1, 3] == pytest.approx(6.0 / 2.0)  # beyond the numerator: its background 6
    assert np.count_nonzero(np.isnan(result)) == 9 + 1


def test_a_weighted_sum_in_the_intersection_is_the_inputs_at_those_points():
    ct = _ct()
    pet, matrix = _tilted_pet_and_matrix()
    grid = arithmetic_grid(ct, [(pet, matrix)], space="intersection")
    result = arithmetic("weighted_sum", ct, [(pet, matrix, 0.5)], reference_weight=2.0, space="intersection")
    image = sitk.GetImageFromArray(pet.voxels)
    image.SetSpacing((pet.spacing[2], pet.spacing[1], pet.spacing[0]))
    image.SetOrigin(pet.origin)
    image.SetDirection(tuple(float(v) for v in np.asarray(pet.direction).ravel()))
    inverse = np.linalg.inv(matrix)
    step = np.array([ct.spacing[2], ct.spacing[1], ct.spacing[0]])
    checked = 0
    for k, j, i in [(0, 0, 0), (1, 2, 3), (grid.shape[0] - 1, grid.shape[1] - 1, grid.shape[2] - 1),
                    (grid.shape[0] // 2, grid.shape[1] // 2, grid.shape[2] // 2)]:
        point = np.asarray(grid.origin) + np.asarray(ct.direction) @ (np.array([i, j, k]) * step)
        ct_index = np.rint(_along_reference(point[None], ct)[0]).astype(int)  # (i, j, k) on the CT
        ct_value = float(ct.voxels[ct_index[2], ct_index[1], ct_index[0]])
        moving = inverse[:3, :3] @ point + inverse[:3, 3]
        inside = image.TransformPhysicalPointToContinuousIndex(tuple(moving))
        if not all(-0.5 <= c <= n - 0.5 for c, n in zip(inside, image.GetSize(), strict=True)):
            continue  # an intersection box corner a tilted volume does not reach
        pet_value = image.EvaluateAtPhysicalPoint(tuple(float(v) for v in moving), sitk.sitkLinear)
        assert pet_value == pytest.approx(float(moving @ SLOPE + INTERCEPT), abs=1e-2)
        assert result[k, j, i] == pytest.approx(2.0 * ct_value + 0.5 * pet_value, abs=1e-2)
        checked += 1
    assert checked >= 2


def test_a_box_inside_the_reference_is_exactly_its_voxels_there():
    ct = _ct()
    prior = _volume(_hounsfield(6, ct.shape), spacing=ct.spacing, origin=ct.origin, series_id="prior")
    whole = arithmetic("difference", ct, [(prior, None, 1.0)])
    # i 2..5 (x 2.5..6.25 mm), j 1..4 (1.5..6 mm), k 3..6 (6..12 mm): faces between or on centres
    box = (2.4, 6.3, 1.5, 6.0, 5.1, 12.9)
    inside = arithmetic("difference", ct, [(prior, None, 1.0)], space="box", box=box)
    assert inside.shape == (4, 4, 4)
    assert np.array_equal(inside, whole[3:7, 1:5, 2:6])
    grid = arithmetic_grid(ct, [(prior, None)], space="box", box=box)
    assert grid.offset == (3, 1, 2) and np.allclose(grid.origin, (1.0 + 2.5, -2.0 + 1.5, 3.0 + 6.0))
    own = (0.0, 11 * 1.25, 0.0, 9 * 1.5, 0.0, 7 * 2.0)  # the reference's own extent: its grid
    assert np.array_equal(arithmetic("difference", ct, [(prior, None, 1.0)], space="box", box=own), whole)


def test_bad_spaces_and_boxes_are_refused_by_the_engine():
    ct = _volume(_hounsfield(7, (4, 4, 4)), spacing=(0.5, 0.5, 0.5))
    far = np.eye(4)
    far[:3, 3] = (100.0, 0.0, 0.0)
    other = _volume(_hounsfield(8, (4, 4, 4)), series_id="far", frame="frame-b")
    cases = [
        ({"space": "intersection"}, [(other, far, 1.0)], "intersection is empty"),
        ({"space": "cube"}, [(ct, None, 1.0)], "unknown space"),
        ({"space": "box"}, [(ct, None, 1.0)], "six finite numbers"),
        ({"space": "union", "box": (0, 1, 0, 1, 0, 1)}, [(ct, None, 1.0)], "only with the space box"),
        ({"space": "box", "box": (2, 1, 0, 1, 0, 1)}, [(ct, None, 1.0)], "i_min must be below i_max"),
        ({"space": "box", "box": (0, 1, 0, 2500, 0, 1)}, [(ct, None, 1.0)], "j side is at most 2000"),
        ({"space": "box", "box": (0, 1, 0, 1, 0.1, 0.2)}, [(ct, None, 1.0)], "no voxel centre"),
        ({"space": "box", "box": (0, 1500, 0, 1, 0, 1)}, [(ct, None, 1.0)], f"at most {MAX_AXIS_VOXELS}"),
    ]
    for keywords, others, message in cases:
        with pytest.raises(ImageArithmeticError, match=message):
            arithmetic("difference", ct, others, **keywords)


def _derive(**fields) -> Derive:
    message = {"type": "derive", "operation": "difference", "series": ["1.2.3", "1.2.4"], **fields}
    parsed = message_parse(json.dumps(message), views=1)
    assert isinstance(parsed, Derive)
    return parsed


def test_the_parser_takes_a_space_and_a_box_and_refuses_bad_ones():
    assert _derive().space == "reference" and _derive().box is None
    assert _derive(space="union").space == "union"
    boxed = _derive(space="box", box=[-10, 10, -5, 5, 0, 30.5])
    assert boxed.space == "box" and boxed.box == (-10.0, 10.0, -5.0, 5.0, 0.0, 30.5)
    refusals = [
        ({"space": "cube"}, "'space' must be one of"),
        ({"space": "box"}, "'box' is required"),
        ({"space": "union", "box": [0, 1, 0, 1, 0, 1]}, "'box' is given only with the space 'box'"),
        ({"space": "box", "box": [0, 1, 0, 1]}, "'box' is six numbers"),
        ({"space": "box", "box": [0, 1, 3, 3, 0, 1]}, "'box': j_min must be below j_max"),
        ({"space": "box", "box": [0, 1, 0, 1, 0, 2001]}, "'box': the k side is at most 2000 mm"),
        ({"space": "box", "box": [0, 1, 0, 1, 0, "x"]}, "'box' must be a number"),
        ({"space": "box", "box": [0, 1e9, 0, 1, 0, 1]}, "'box' must be between"),
    ]
    for fields, message in refusals:
        with pytest.raises(ProtocolError, match=message):
            _derive(**fields)


def test_a_recipe_s_space_makes_the_derived_volume_and_an_empty_intersection_fails(monkeypatch):
    ct = _volume(_hounsfield(9, (4, 5, 6)))
    other = _volume(_hounsfield(10, (4, 5, 6)), series_id="other", frame="frame-b")
    shift = [1.0, 0, 0, 2.0, 0, 1.0, 0, 0.0, 0, 0, 1.0, 1.0, 0, 0, 0, 1.0]  # x + 2 mm, z + 1 mm
    recipes = {
        1: {"space": "union"},
        2: {},  # a recipe made before spaces: the reference's grid
        3: {"space": "box", "box": [1.0, 3.0, 0.0, 4.0, 0.0, 3.0]},
    }

    def recipe(number):
        far = [1.0, 0, 0, 500.0, 0, 1.0, 0, 0, 0, 0, 1.0, 0, 0, 0, 0, 1.0]
        return SimpleNamespace(
            kind="arithmetic", operation="difference", description="d", parameters=recipes.get(number, {
                "space": "intersection"}),
            inputs=[{"series": "ct", "weight": 1.0, "matrix": None},
                    {"series": "other", "weight": 1.0, "matrix": far if number == 4 else shift}])

    monkeypatch.setattr(derived_module, "derived_get", recipe)
    builder = DerivedVolumes({"ct": ct, "other": other}.__getitem__)
    union = builder.build("drv:1")
    assert union.shape == (5, 5, 8) and union.origin == (0.0, 0.0, 0.0)
    assert builder.build("drv:2").shape == ct.shape
    boxed = builder.build("drv:3")
    assert boxed.shape == (4, 5, 3) and boxed.origin == (1.0, 0.0, 0.0)
    with pytest.raises(RenderError, match="intersection is empty"):
        builder.build("drv:4")
