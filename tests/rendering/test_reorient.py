"""Reorientation: the phantom CT turned, swapped and flipped, checked against numpy on the same voxels.

Every expectation is computed here from the source volume (``np.rot90``, transposes, index
arithmetic in patient mm), never from the module's output: a turn of 90° about z shows each
native slice turned, and every voxel keeps its value at its patient position.
"""

from __future__ import annotations

import numpy as np
import pytest

from rendering.engine.reorient import (
    FLIPS,
    ROTATIONS,
    SWAPS,
    ReorientError,
    reorient_axes,
    reorient_volume,
)
from rendering.volume import Volume

from .conftest import decode, state


def _reoriented(volume: Volume, name: str, **params) -> Volume:
    return reorient_volume(volume, name=name, params=params, series_id="drv:1", description="test")


def test_a_quarter_turn_about_z_turns_every_native_slice(phantom):
    ct = phantom[0]
    assert np.allclose(np.asarray(ct.direction), np.eye(3)), "the phantom's CT is axial, unrotated"
    turned = _reoriented(ct, "rotate_z", turns=1)
    # +90° about +z takes the row axis (+x) to +y and the column axis (+y) to -x
    for k in (0, ct.shape[0] // 2, ct.shape[0] - 1):
        assert np.array_equal(turned.voxels[k], np.rot90(ct.voxels[k]))
    assert np.allclose(np.asarray(turned.direction)[:, 0], [0, 1, 0])
    assert np.allclose(np.asarray(turned.direction)[:, 1], [-1, 0, 0])
    assert turned.spacing == (ct.spacing[0], ct.spacing[2], ct.spacing[1])
    two = _reoriented(ct, "rotate_z", turns=2)
    assert np.array_equal(two.voxels, ct.voxels[:, ::-1, ::-1])


def test_the_native_view_of_the_turned_series_is_the_turned_frame(phantom, engine):
    ct = phantom[0]
    assert ct.shape[1] == ct.shape[2] and ct.spacing[1] == ct.spacing[2], "a square, isotropic slice"
    turned = _reoriented(ct, "rotate_z", turns=1)
    size = ct.shape[1]
    source = decode(engine.render(state(ct, view="native", width=size, height=size), {ct.series_id: ct}))
    shown = decode(engine.render(state(turned, view="native", width=size, height=size),
                                 {turned.series_id: turned}))
    assert np.abs(source.astype(int) - shown.astype(int)).max() > 0, "the slice is not symmetric"
    difference = np.abs(np.rot90(source).astype(int) - shown.astype(int))
    assert difference.mean() < 1.0 and np.percentile(difference, 99) <= 8, difference.mean()


def test_the_axial_view_of_the_turned_series_is_the_same_anatomy(phantom, engine):
    ct = phantom[0]
    turned = _reoriented(ct, "rotate_z", turns=1)
    source = decode(engine.render(state(ct), {ct.series_id: ct}))
    shown = decode(engine.render(state(turned), {turned.series_id: turned}))
    difference = np.abs(source.astype(int) - shown.astype(int))
    assert difference.mean() < 1.0, difference.mean()


@pytest.mark.parametrize("name, turns", [(name, None) for name in FLIPS + SWAPS]
                         + [(name, turns) for name in ROTATIONS for turns in (1, 2, 3)])
def test_every_voxel_keeps_its_value_at_its_patient_position(phantom, name, turns):
    ct = phantom[0]
    made = _reoriented(ct, name, **({} if turns is None else {"turns": turns}))
    assert made.frame_of_reference_uid == ct.frame_of_reference_uid and made.display["derived"] is True
    assert made.voxels.size == ct.voxels.size and made.voxels.dtype == ct.voxels.dtype
    rng = np.random.default_rng(3)
    new = np.stack([rng.integers(0, n, 200) for n in made.shape], axis=1)
    new = np.concatenate([new, [[0, 0, 0], [n - 1 for n in made.shape]]])
    landmarks = made.index_to_patient(new)
    old = ct.patient_to_index(landmarks)
    assert np.allclose(old, np.rint(old), atol=1e-6), "a voxel centre lands on a voxel centre"
    old = np.rint(old).astype(int)
    assert np.all((old >= 0) & (old < np.array(ct.shape)))
    assert np.array_equal(made.voxels[tuple(new.T)], ct.voxels[tuple(old.T)])
    assert np.allclose(np.sort(made.corners(), axis=0), np.sort(ct.corners(), axis=0))
    assert np.allclose(made.center(), ct.center())


def test_a_landmark_keeps_its_mm_position():
    voxels = np.zeros((5, 6, 7), np.int16)
    voxels[1, 2, 3] = 1000
    ct = Volume(voxels, (3.0, 2.0, 1.0), (-10.0, 20.0, 30.0), np.eye(3), "CT", "ct", "for")
    landmark = ct.index_to_patient((1, 2, 3))
    for name, params in (("swap_ik", {}), ("rotate_x", {"turns": 1}), ("flip_j", {})):
        made = _reoriented(ct, name, **params)
        k, j, i = (int(v) for v in np.argwhere(made.voxels == 1000)[0])
        assert np.allclose(made.index_to_patient((k, j, i)), landmark), name
    made = _reoriented(ct, "rotate_x", turns=1)
    # +90° about x: rows stay along +x, columns (+y) go to +z, slices (+z) go to -y
    assert made.shape == (6, 5, 7) and made.spacing == (2.0, 3.0, 1.0)
    assert np.array_equal(made.voxels, np.transpose(voxels, (1, 0, 2))[::-1])


def test_a_slightly_tilted_series_turns_about_its_nearest_axis_and_a_steep_one_is_refused():
    def tilted(degrees: float) -> np.ndarray:
        a = np.radians(degrees)
        return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])

    assert reorient_axes(tilted(10), "rotate_z", {"turns": 1}) == ((1, 0, 2), (1, -1, 1))
    with pytest.raises(ReorientError):
        reorient_axes(tilted(40), "rotate_z", {"turns": 1})


@pytest.mark.parametrize("name, params", [
    ("rotate_y", {"turns": 4}), ("rotate_y", {"turns": 1.5}), ("rotate_y", {"turns": 0}),
    ("rotate_y", {"angle": 90}), ("flip_i", {"turns": 1}), ("spin", {}), ("rotate_y", {"turns": True}),
])
def test_bad_reorientations_are_refused(name, params):
    with pytest.raises(ReorientError):
        reorient_axes(np.eye(3), name, params)


def _blob_volume(spacing: tuple[float, float, float] = (2.0, 1.5, 1.0)) -> Volume:
    """A 40 x 48 x 56 grid with a Gaussian blob off-centre: its centre is a landmark."""
    k, j, i = np.mgrid[0:40, 0:48, 0:56].astype(np.float64)
    centre = (14.0, 30.0, 20.0)
    voxels = 1000 * np.exp(-(((k - centre[0]) * spacing[0]) ** 2 + ((j - centre[1]) * spacing[1]) ** 2
                             + ((i - centre[2]) * spacing[2]) ** 2) / (2 * 4.0 ** 2))
    return Volume(voxels.astype(np.float32), spacing, (-20.0, 10.0, 5.0), np.eye(3), "CT", "ct", "for")


def _centroid_mm(volume: Volume) -> np.ndarray:
    weights = np.clip(volume.voxels.astype(np.float64) - 100, 0, None)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in volume.shape], indexing="ij"), axis=-1)
    kji = (index * weights[..., None]).sum(axis=(0, 1, 2)) / weights.sum()
    return volume.index_to_patient(kji)


@pytest.mark.parametrize("name, degrees", [("tilt_x", 17.0), ("tilt_z", -30.0), ("tilt_y", 45.0)])
def test_a_tilt_keeps_the_landmark_at_its_mm_and_turns_the_grid(name, degrees):
    source = _blob_volume()
    made = _reoriented(source, name, degrees=degrees)
    assert np.allclose(_centroid_mm(made), _centroid_mm(source), atol=0.3)
    axis = "xyz".index(name[-1])
    angle = np.radians(degrees)
    turned_i = np.asarray(made.direction)[:, 0]
    if axis == 2:
        assert np.allclose(turned_i, [np.cos(angle), np.sin(angle), 0])
    assert made.voxels.dtype == np.float32 and made.display["derived"] is True
    assert made.voxels.max() == pytest.approx(source.voxels.max(), rel=0.1)


def test_a_tilt_by_90_degrees_equals_the_exact_quarter_turn():
    source = _blob_volume((2.0, 1.0, 1.0))  # square pixels: the turned grid is the permuted one
    tilted = _reoriented(source, "tilt_z", degrees=90.0)
    exact = _reoriented(source, "rotate_z", turns=1)
    assert tilted.shape == exact.shape
    assert np.allclose(np.asarray(tilted.direction), np.asarray(exact.direction), atol=1e-9)
    assert np.allclose(tilted.origin, exact.origin, atol=1e-6)
    assert np.abs(tilted.voxels - exact.voxels).max() < 0.5


@pytest.mark.parametrize("params", [{}, {"degrees": 0}, {"degrees": 200}, {"degrees": 10, "turns": 1},
                                    {"degrees": float("nan")}])
def test_bad_tilts_are_refused(params):
    with pytest.raises(ReorientError):
        reorient_volume(_blob_volume(), name="tilt_x", params=params, series_id="drv:1")


@pytest.mark.parametrize("name, along, across, start, end", [
    ("tilt_x", 1, 2, (10.0, 30.0, 25.0), (10.0, -20.0, 5.0)),  # a line on a sagittal view (AC-PC)
    ("tilt_y", 0, 2, (-40.0, 5.0, 10.0), (35.0, 5.0, 22.0)),  # on a coronal view
    ("tilt_z", 0, 1, (-30.0, -10.0, 0.0), (20.0, 15.0, 0.0)),  # on an axial view
])
def test_a_tilt_by_a_drawn_lines_angle_lays_a_grid_axis_along_the_line(name, along, across, start, end):
    """The viewer's "align to the measured line": the turn about the view's normal by the angle of the
    line (its first in-plane component made positive) puts the line along grid axis ``along``, so
    each slice across the other in-plane axis contains the line's direction."""
    line = np.subtract(end, start)
    if line[along] < 0:
        line = -line
    degrees = float(np.degrees(np.arctan2(line[across], line[along])))
    made = _reoriented(_blob_volume(), name, degrees=degrees)
    axis = np.asarray(made.direction)[:, along]
    assert np.allclose(np.cross(axis, line / np.linalg.norm(line)), 0, atol=1e-9)
    normal = np.asarray(made.direction)[:, 3 - along - across]  # the view's normal stays a grid axis
    assert abs(float(np.dot(normal, line))) < 1e-9
