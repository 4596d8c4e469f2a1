"""Image arithmetic on registered series: exact where it must be, hand-computed where it resamples.

The volumes are small and synthetic. Where an other volume is resampled, its voxels
hold a linear function of their patient position, which trilinear interpolation
reproduces exactly anywhere inside the volume; the expected value at a reference voxel
is that function at the voxel's position, written out here from origin, spacing and
matrix, not asked of the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest

from rendering.engine import arithmetic as arithmetic_module
from rendering.engine.arithmetic import ImageArithmeticError, arithmetic, derived_volume
from rendering.volume import Presentation, Volume, VolumeError

SHAPE = (4, 5, 6)
SLOPE = np.array([3.0, -2.0, 5.0])
"""Value change per mm of x, y, z in the linear test volumes."""
INTERCEPT = 100.0
TOLERANCE = 1e-3


def _volume(voxels: np.ndarray, *, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=None,
            modality: str = "CT", series_id: str = "ct", frame: str = "frame-a", units: str = "HU") -> Volume:
    return Volume(voxels=voxels, spacing=spacing, origin=origin,
                  direction=np.eye(3) if direction is None else direction, modality=modality,
                  series_id=series_id, frame_of_reference_uid=frame, presentation=Presentation(units=units))


def _hounsfield(seed: int, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 2000, size=shape).astype(np.int16)


def _linear(shape, *, spacing, origin) -> np.ndarray:
    """SLOPE . (x, y, z) + INTERCEPT at each voxel of an axis-aligned grid, as float32 [k, j, i]."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    x, y, z = origin[0] + i * spacing[2], origin[1] + j * spacing[1], origin[2] + k * spacing[0]
    return (SLOPE[0] * x + SLOPE[1] * y + SLOPE[2] * z + INTERCEPT).astype(np.float32)


def _value_at(x: float, y: float, z: float) -> float:
    return float(SLOPE[0] * x + SLOPE[1] * y + SLOPE[2] * z + INTERCEPT)


def test_ct_minus_itself_is_exactly_zero():
    ct = _volume(_hounsfield(1))
    assert np.array_equal(arithmetic("difference", ct, [(ct, None, 1.0)]), np.zeros(SHAPE, np.float32))
    again = arithmetic("difference", ct, [(ct, np.eye(4), 1.0)])
    assert again.dtype == np.float32 and np.array_equal(again, np.zeros(SHAPE, np.float32))


def test_a_difference_weights_both_sides():
    a, b = _volume(_hounsfield(2)), _volume(_hounsfield(3), series_id="prior")
    result = arithmetic("difference", a, [(b, None, 0.5)], reference_weight=2.0)
    for k, j, i in [(0, 0, 0), (1, 2, 3), (3, 4, 5)]:
        assert result[k, j, i] == 2.0 * float(a.voxels[k, j, i]) - 0.5 * float(b.voxels[k, j, i])


def test_a_weighted_sum_at_known_voxels():
    a, b, c = (_volume(_hounsfield(seed), series_id=f"s{seed}") for seed in (4, 5, 6))
    result = arithmetic("weighted_sum", a, [(b, None, 0.5), (c, None, -1.0)], reference_weight=2.0)
    for k, j, i in [(0, 0, 0), (2, 1, 4), (3, 4, 5)]:
        expected = 2.0 * float(a.voxels[k, j, i]) + 0.5 * float(b.voxels[k, j, i]) - float(c.voxels[k, j, i])
        assert result[k, j, i] == pytest.approx(expected, abs=TOLERANCE)


def test_a_grid_shifted_by_whole_voxels_resamples_to_the_voxel_it_lands_on():
    reference = _volume(np.zeros(SHAPE, np.float32), spacing=(2.0, 1.0, 1.0))
    shifted = _volume(_hounsfield(8), spacing=(2.0, 1.0, 1.0), origin=(2.0, -1.0, 2.0), series_id="shifted")
    result = arithmetic("weighted_sum", reference, [(shifted, None, 1.0)])
    # Reference voxel (k, j, i) sits at x = i, y = j, z = 2k: the shifted grid's (k - 1, j + 1, i - 2).
    for k, j, i in [(1, 0, 2), (2, 3, 5), (3, 3, 4)]:
        assert result[k, j, i] == pytest.approx(float(shifted.voxels[k - 1, j + 1, i - 2]), abs=TOLERANCE)
    assert np.isnan(result[0, 0, 0]) and np.isnan(result[1, 4, 3]) and np.isnan(result[2, 1, 1])


def test_a_half_spacing_grid_in_another_frame_resamples_through_its_translation():
    reference = _volume(np.zeros(SHAPE, np.float32), spacing=(2.0, 2.0, 2.0))
    grid = dict(spacing=(1.0, 1.0, 1.0), origin=(-1.0, 0.5, 0.0))  # voxel centres x -1..8, y 0.5..9.5, z 0..7
    fine = _volume(_linear((8, 10, 10), **grid), **grid, series_id="fine", frame="frame-b", modality="PT")
    moving_to_reference = np.eye(4)
    moving_to_reference[:3, 3] = (0.5, 0.0, -1.0)
    result = arithmetic("weighted_sum", reference, [(fine, moving_to_reference, 1.0)])
    # Reference voxel (k, j, i) is at (2i, 2j, 2k); the moving point there is (2i - 0.5, 2j, 2k + 1).
    for k, j, i in [(0, 1, 0), (1, 2, 3), (2, 3, 4), (3, 4, 2)]:
        x, y, z = 2 * i - 0.5, 2 * j, 2 * k + 1
        assert result[k, j, i] == pytest.approx(_value_at(x, y, z), abs=TOLERANCE)
    assert np.isnan(result[1, 2, 5])  # x = 9.5: a whole voxel past the last centre, 8


def test_a_rotation_matrix_samples_the_rotated_point_in_every_slab(monkeypatch):
    reference = _volume(np.zeros(SHAPE, np.float32), origin=(-2.0, -2.0, 0.0))
    grid = dict(spacing=(1.0, 1.0, 1.0), origin=(-6.0, -6.0, -1.0))
    moving = _volume(_linear((6, 13, 13), **grid), **grid, series_id="turned", frame="frame-b")
    quarter_turn = np.array([[0.0, -1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0],
                             [0.0, 0.0, 0.0, 1.0]])
    monkeypatch.setattr(arithmetic_module, "SLAB_VOXELS", SHAPE[1] * SHAPE[2])  # one slice per slab
    result = arithmetic("weighted_sum", reference, [(moving, quarter_turn, 1.0)])
    # reference = R @ moving, so the moving point under reference (x, y, z) is R^T (x, y, z) = (y, -x, z).
    for k, j, i in [(0, 0, 0), (1, 2, 3), (3, 4, 5), (2, 0, 5)]:
        x, y, z = -2.0 + i, -2.0 + j, float(k)
        assert result[k, j, i] == pytest.approx(_value_at(y, -x, z), abs=TOLERANCE)


def test_an_oblique_reference_grid_is_followed():
    turned = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # i runs along +y, j along -x
    reference = _volume(np.zeros(SHAPE, np.float32), origin=(4.0, 0.0, 0.0), direction=turned)
    grid = dict(spacing=(1.0, 1.0, 1.0), origin=(-2.0, -2.0, -1.0))
    moving = _volume(_linear((7, 12, 12), **grid), **grid, series_id="plain")
    result = arithmetic("weighted_sum", reference, [(moving, None, 1.0)])
    for k, j, i in [(0, 0, 0), (1, 2, 3), (3, 4, 5)]:
        x, y, z = 4.0 - j, float(i), float(k)
        assert result[k, j, i] == pytest.approx(_value_at(x, y, z), abs=TOLERANCE)


def test_outside_is_nan_beyond_half_a_voxel_and_the_edge_value_within_it():
    reference = _volume(np.zeros((1, 1, 10), np.float32))
    strip = np.array([[[10.0, 20.0, 30.0, 40.0]]], np.float32)
    moving = _volume(strip, origin=(2.25, 0.0, 0.0), series_id="strip")
    row = arithmetic("weighted_sum", reference, [(moving, None, 1.0)])[0, 0]
    # Reference x = i lies at moving index i - 2.25; the moving voxels span -0.5 .. 3.5.
    assert np.isnan(row[0]) and np.isnan(row[1])
    assert row[2] == pytest.approx(10.0)  # index -0.25: within half a voxel, the edge voxel's value
    assert row[3] == pytest.approx(0.25 * 10.0 + 0.75 * 20.0)
    assert row[5] == pytest.approx(0.25 * 30.0 + 0.75 * 40.0)
    assert np.isnan(row[6]) and np.isnan(row[9])  # index 3.75 and on: outside


def test_a_ratio_is_nan_where_the_denominator_is_below_epsilon():
    numerator = np.full(SHAPE, 6.0, np.float32)
    denominator = np.full(SHAPE, 3.0, np.float32)
    denominator[0, 0, 0], denominator[1, 1, 1], denominator[2, 2, 2] = 0.0, 1e-9, -0.5
    a, b = _volume(numerator), _volume(denominator, series_id="b")
    result = arithmetic("ratio", a, [(b, None, 2.0)], reference_weight=1.0)
    assert np.isnan(result[0, 0, 0]) and np.isnan(result[1, 1, 1])
    assert result[2, 2, 2] == pytest.approx(6.0 / (2.0 * -0.5))
    assert result[3, 4, 5] == pytest.approx(6.0 / 6.0)
    assert np.count_nonzero(np.isnan(result)) == 2
    strict = arithmetic("ratio", a, [(b, None, 2.0)], epsilon=1.5)
    assert np.isnan(strict[2, 2, 2]) and strict[3, 4, 5] == pytest.approx(1.0)


def test_a_derived_volume_lies_on_the_reference_grid_with_nan_shown_as_zero():
    reference = _volume(_hounsfield(9), spacing=(2.0, 1.5, 1.5), origin=(1.0, 2.0, 3.0), modality="PT",
                        series_id="pet", frame="frame-pet", units="BQML")
    prior = _volume(_hounsfield(10), spacing=(2.0, 1.5, 1.5), origin=(4.0, 2.0, 3.0), modality="PT",
                    series_id="pet-prior", frame="frame-pet")
    values = arithmetic("difference", reference, [(prior, None, 1.0)])
    undefined = int(np.isnan(values).sum())
    assert undefined == 2 * SHAPE[0] * SHAPE[1]  # the first two columns fall before the prior's grid
    derived = derived_volume(values, reference, series_id="derived-1", description="PET change",
                             operation="difference", inputs=[prior])
    assert derived.voxels.dtype == np.float32 and not np.isnan(derived.voxels).any()
    assert derived.voxels[0, 0, 0] == 0.0
    expected = float(reference.voxels[1, 2, 3]) - float(prior.voxels[1, 2, 1])  # prior's i is ours - 2
    assert derived.voxels[1, 2, 3] == pytest.approx(expected, abs=TOLERANCE)
    assert (derived.spacing, derived.origin) == (reference.spacing, reference.origin)
    assert derived.frame_of_reference_uid == "frame-pet" and derived.modality == "PT"
    assert derived.suv_factor is None and derived.presentation.units == "BQML"
    assert derived.display == {"derived": True, "operation": "difference", "description": "PET change",
                               "inputs": ["pet", "pet-prior"], "undefined_voxels": undefined}


def test_a_derived_volume_of_two_modalities_is_other_and_a_ratio_has_no_unit():
    ct = _volume(_hounsfield(11))
    pet = _volume(_hounsfield(12), modality="PT", series_id="pet")
    mixed = derived_volume(arithmetic("weighted_sum", ct, [(pet, None, 1.0)]), ct, series_id="mix",
                           description="sum", operation="weighted_sum", inputs=[pet])
    assert mixed.modality == "OT" and mixed.presentation.units == ""
    ratio = derived_volume(np.ones(SHAPE, np.float32), ct, series_id="r", description="ratio",
                           operation="ratio", inputs=[ct])
    assert ratio.modality == "CT" and ratio.presentation.units == ""
    with pytest.raises(VolumeError, match="reference's grid"):
        derived_volume(np.ones((2, 2, 2), np.float32), ct, series_id="x", description="wrong grid")


def test_inputs_that_cannot_be_combined_are_refused():
    ct = _volume(_hounsfield(13))
    elsewhere = _volume(_hounsfield(14), series_id="mr", frame="frame-b")
    labels = Volume(voxels=np.zeros(SHAPE, np.uint8), spacing=(1, 1, 1), origin=(0, 0, 0),
                    direction=np.eye(3), modality="SEG", series_id="seg", frame_of_reference_uid="frame-a",
                    presentation=Presentation(kind="label"))
    singular = np.diag([1.0, 1.0, 0.0, 1.0])
    cases = [
        (("difference", ct, [(elsewhere, None, 1.0)]), "needs a registration"),
        (("difference", ct, [(ct, None, 1.0), (ct, None, 1.0)]), "exactly one"),
        (("ratio", ct, []), "exactly one"),
        (("weighted_sum", ct, []), "one or more"),
        (("product", ct, [(ct, None, 1.0)]), "unknown operation"),
        (("difference", ct, [(labels, None, 1.0)]), "not one greyscale volume"),
        (("difference", ct, [(elsewhere, singular, 1.0)]), "invertible affine"),
        (("difference", ct, [(elsewhere, np.eye(3), 1.0)]), "4x4 matrix"),
        (("difference", ct, [(ct, None, float("nan"))]), "finite"),
    ]
    for arguments, message in cases:
        with pytest.raises(ImageArithmeticError, match=message):
            arithmetic(*arguments)
    with pytest.raises(ImageArithmeticError, match="epsilon"):
        arithmetic("ratio", ct, [(ct, None, 1.0)], epsilon=-1.0)
