"""Reorientation: the same anatomy on a new grid orientation, made exactly by permuting voxels.

A reoriented series is its source's voxels re-indexed, never resampled: each operation is a
*signed axis permutation* of the grid, so every voxel keeps its value and its patient position
and only the order in which the grid walks through them changes. The grid's axes are named as
:class:`rendering.volume.Volume` names them: ``i`` along a row (the first direction cosine),
``j`` down a column (the second), ``k`` across slices (the third).

* ``flip_i``, ``flip_j``, ``flip_k``: walk one axis the other way;
* ``swap_ij``, ``swap_ik``, ``swap_jk``: exchange two axes (their spacings go with them);
* ``rotate_x``, ``rotate_y``, ``rotate_z``: turn the grid ``turns`` x 90° (right-handed) about
  the patient's x (right to left), y (anterior to posterior) or z (feet to head) axis. A turn
  is exact only when it takes grid axes onto grid axes: each rotated axis is matched with the
  grid axis nearest it, and a series tilted more than :data:`MAX_TILT_DEG` from that match is
  refused (swap and flip its axes instead).

Geometry follows the voxels: the new axis ``a`` is ``sign[a]`` times old axis ``perm[a]``, its
direction cosine and spacing those of the old axis, and the new origin is the patient position
of the old voxel that becomes the new first voxel. Values, units, modality, frame of reference
and SUV factor are unchanged (a reoriented PET keeps its SUV), so it fuses with its source's
frame without a registration and reformats like its source.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
from django.utils.translation import gettext

from gateway.i18n import gettext_noop
from rendering.said import SaidError
from rendering.volume import Volume

AXES = "ijk"
FLIPS = ("flip_i", "flip_j", "flip_k")
SWAPS = ("swap_ij", "swap_ik", "swap_jk")
ROTATIONS = ("rotate_x", "rotate_y", "rotate_z")
TILTS = ("tilt_x", "tilt_y", "tilt_z")
OPERATIONS = FLIPS + SWAPS + ROTATIONS + TILTS
MAX_TILT_DEG = 30.0
"""The most a grid axis may lie off the patient axis a 90° turn takes it to."""

DESCRIPTIONS = {
    "flip_i": gettext_noop("flip along the rows (i)"),
    "flip_j": gettext_noop("flip down the columns (j)"),
    "flip_k": gettext_noop("flip across the slices (k)"),
    "swap_ij": gettext_noop("swap the row and column axes (i, j)"),
    "swap_ik": gettext_noop("swap the row and slice axes (i, k)"),
    "swap_jk": gettext_noop("swap the column and slice axes (j, k)"),
    "rotate_x": gettext_noop("turn 90° steps about the patient's right-left axis (x)"),
    "rotate_y": gettext_noop("turn 90° steps about the patient's front-back axis (y)"),
    "rotate_z": gettext_noop("turn 90° steps about the patient's head-feet axis (z)"),
    "tilt_x": gettext_noop("turn by any angle about the patient's right-left axis (x), resampled"),
    "tilt_y": gettext_noop("turn by any angle about the patient's front-back axis (y), resampled"),
    "tilt_z": gettext_noop("turn by any angle about the patient's head-feet axis (z), resampled"),
}
TURNS = {"name": "turns", "unit": "", "default": 1, "minimum": 1, "maximum": 3, "integer": True,
         "description": gettext_noop("quarter turns (90° each, right-handed about the axis)")}


MAX_DEGREES = 179.0
DEGREES = {"name": "degrees", "unit": "°", "default": 10, "minimum": -MAX_DEGREES, "maximum": MAX_DEGREES,
           "integer": False,
           "description": gettext_noop("the angle (right-handed about the axis), e.g. that of a line drawn "
                                       "in a view")}


class ReorientError(SaidError, ValueError):
    """A reorientation that cannot be made (unknown operation, bad turns, an oblique series)."""


def reorient_vocabulary() -> list[dict[str, Any]]:
    """What ``ready.derive.reorient`` announces: each operation, its description, its parameters."""
    def params(name: str) -> list[dict[str, Any]]:
        rule = TURNS if name in ROTATIONS else DEGREES if name in TILTS else None
        return [] if rule is None else [{**rule, "description": gettext(str(rule["description"]))}]

    return [{"name": name, "description": gettext(DESCRIPTIONS[name]), "params": params(name)}
            for name in OPERATIONS]


def reorient_validate(*, name: str, params: Mapping[str, Any]) -> dict[str, float]:
    """The operation's checked parameters (``{"turns": n}`` for a rotation, ``{"degrees": a}`` for a
    tilt, ``{}`` otherwise)."""
    if name not in OPERATIONS:
        raise ReorientError(gettext_noop("unknown reorientation %(name)s"), name=repr(name))
    if name in TILTS:
        if set(params) != {"degrees"}:
            raise ReorientError(gettext_noop("%(name)s takes degrees"), name=name)
        degrees = params["degrees"]
        if (isinstance(degrees, bool) or not isinstance(degrees, int | float) or not math.isfinite(degrees)
                or not 0 < abs(degrees) <= MAX_DEGREES):
            raise ReorientError(gettext_noop("degrees is an angle from %(low)g to %(high)g, not 0"),
                                low=-MAX_DEGREES, high=MAX_DEGREES)
        return {"degrees": float(degrees)}
    if name not in ROTATIONS:
        if params:
            raise ReorientError(gettext_noop("%(name)s takes no parameters"), name=name)
        return {}
    unknown = set(params) - {"turns"}
    if unknown:
        raise ReorientError(gettext_noop("%(name)s takes only turns"), name=name)
    turns = params.get("turns", TURNS["default"])
    if (isinstance(turns, bool) or not isinstance(turns, int | float) or not math.isfinite(turns)
            or turns != int(turns) or not 1 <= turns <= 3):
        raise ReorientError(gettext_noop("turns is 1, 2 or 3 quarter turns"))
    return {"turns": float(int(turns))}


def _rotation(axis: int, turns: int) -> np.ndarray:
    """The exact integer matrix of ``turns`` x 90° right-handed about patient axis ``axis``."""
    quarter = np.zeros((3, 3))
    quarter[axis, axis] = 1.0
    a, b = [n for n in range(3) if n != axis]
    quarter[b, a], quarter[a, b] = 1.0, -1.0
    return np.linalg.matrix_power(quarter, turns)


def reorient_axes(direction: np.ndarray, name: str, params: Mapping[str, Any]) -> tuple[
        tuple[int, int, int], tuple[int, int, int]]:
    """``(perm, sign)``: new grid axis ``a`` (0 i, 1 j, 2 k) is ``sign[a]`` x old axis ``perm[a]``."""
    checked = reorient_validate(name=name, params=params)
    if name in TILTS:
        raise ReorientError(gettext_noop("%(name)s is resampled, not a permutation of axes"), name=name)
    perm, sign = [0, 1, 2], [1, 1, 1]
    if name in FLIPS:
        sign[AXES.index(name[-1])] = -1
    elif name in SWAPS:
        a, b = AXES.index(name[-2]), AXES.index(name[-1])
        perm[a], perm[b] = b, a
    else:
        cosines = np.asarray(direction, dtype=np.float64).reshape(3, 3)
        turned = cosines.T @ _rotation("xyz".index(name[-1]), int(checked["turns"])) @ cosines
        limit = math.cos(math.radians(MAX_TILT_DEG))
        for a in range(3):
            b = int(np.argmax(np.abs(turned[:, a])))
            if abs(turned[b, a]) < limit:
                raise ReorientError(gettext_noop("the series' axes lie more than %(most)g° off the patient's "
                                                 "axes: swap and flip them instead of turning"),
                                    most=MAX_TILT_DEG)
            perm[a], sign[a] = b, 1 if turned[b, a] > 0 else -1
        if sorted(perm) != [0, 1, 2]:
            raise ReorientError(gettext_noop("the series' axes lie more than %(most)g° off the patient's "
                                             "axes: swap and flip them instead of turning"),
                                most=MAX_TILT_DEG)
    return (perm[0], perm[1], perm[2]), (sign[0], sign[1], sign[2])


def reorient_volume(volume: Volume, *, name: str, params: Mapping[str, Any], series_id: str,
                    description: str = "") -> Volume:
    """``volume`` (one time point) on its reoriented grid: the same voxels at the same patient mm."""
    if name in TILTS:
        return tilt_volume(volume, axis="xyz".index(name[-1]),
                           degrees=reorient_validate(name=name, params=params)["degrees"],
                           series_id=series_id, description=description)
    perm, sign = reorient_axes(volume.direction, name, params)
    voxels = volume.voxels
    # array axes are (k, j, i): grid axis a is array axis 2 - a
    order = [2 - perm[2 - n] for n in range(3)] + list(range(3, voxels.ndim))
    moved = np.transpose(voxels, order)
    flipped = tuple(2 - a for a in range(3) if sign[a] < 0)
    if flipped:
        moved = np.flip(moved, axis=flipped)
    moved = np.ascontiguousarray(moved)
    spacing_ijk = (volume.spacing[2], volume.spacing[1], volume.spacing[0])
    spacing = (spacing_ijk[perm[2]], spacing_ijk[perm[1]], spacing_ijk[perm[0]])
    old = np.asarray(volume.direction)
    direction = np.stack([sign[a] * old[:, perm[a]] for a in range(3)], axis=1)
    shape_ijk = (volume.shape[2], volume.shape[1], volume.shape[0])
    first_ijk = [0, 0, 0]
    for a in range(3):
        first_ijk[perm[a]] = 0 if sign[a] > 0 else shape_ijk[perm[a]] - 1
    x, y, z = (float(v) for v in volume.index_to_patient((first_ijk[2], first_ijk[1], first_ijk[0])))
    return replace(volume, voxels=moved, spacing=spacing, origin=(x, y, z),
                   direction=direction, series_id=series_id,
                   presentation=replace(volume.presentation, time_points=1),
                   display={"derived": True, "operation": name, "parameters": dict(params),
                            "description": description, "inputs": [volume.series_id],
                            "suv_calculation": volume.display.get("suv_calculation")})


def tilt_volume(volume: Volume, *, axis: int, degrees: float, series_id: str,
                description: str = "") -> Volume:
    """``volume`` resampled (linear, SimpleITK) onto its grid turned ``degrees`` about patient ``axis``.

    The new grid keeps the spacing of each axis, its axes are the old ones turned, and it is the
    smallest such grid holding every old voxel centre; points outside the source take its minimum
    (air, no uptake). Anatomy keeps its patient position; values are float32.
    """
    import SimpleITK as sitk

    from rendering.engine.arithmetic import MAX_AXIS_VOXELS, MAX_VOXELS

    angle = math.radians(degrees)
    a, b = [n for n in range(3) if n != axis]
    turn = np.eye(3)
    turn[a, a] = turn[b, b] = math.cos(angle)
    turn[b, a], turn[a, b] = math.sin(angle), -math.sin(angle)
    old = np.asarray(volume.direction, dtype=np.float64)
    direction = turn @ old
    spacing_ijk = np.array([volume.spacing[2], volume.spacing[1], volume.spacing[0]])
    along = volume.corners() @ direction  # each corner's coordinate along the new axes
    low, high = along.min(axis=0), along.max(axis=0)
    size = np.floor((high - low) / spacing_ijk + 1e-6).astype(int) + 1
    if size.max() > MAX_AXIS_VOXELS or int(np.prod(size)) > MAX_VOXELS:
        raise ReorientError(gettext_noop("the turned series would be too large"))
    origin = direction @ low
    source = sitk.GetImageFromArray(np.asarray(volume.voxels, dtype=np.float32))
    source.SetSpacing([float(v) for v in spacing_ijk])
    source.SetOrigin([float(v) for v in volume.origin])
    source.SetDirection([float(v) for v in old.ravel()])
    resampled = sitk.Resample(source, [int(v) for v in size], sitk.Transform(), sitk.sitkLinear,
                              [float(v) for v in origin], [float(v) for v in spacing_ijk],
                              [float(v) for v in direction.ravel()], float(np.min(volume.voxels)),
                              sitk.sitkFloat32)
    voxels = np.ascontiguousarray(sitk.GetArrayFromImage(resampled), dtype=np.float32)
    x, y, z = (float(v) for v in origin)
    return replace(volume, voxels=voxels, origin=(x, y, z), direction=direction, series_id=series_id,
                   presentation=replace(volume.presentation, time_points=1),
                   display={"derived": True, "operation": f"tilt_{'xyz'[axis]}",
                            "parameters": {"degrees": degrees},
                            "description": description, "inputs": [volume.series_id],
                            "suv_calculation": volume.display.get("suv_calculation")})
