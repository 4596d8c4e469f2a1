"""Crop box: the part of a view's volume a reader keeps, in every 2-D view and in 3-D.

A box is six numbers ``(i_min, i_max, j_min, j_max, k_min, k_max)``: mm along the base series'
own axes ``i`` (along a row), ``j`` (down a column) and ``k`` (across slices) from its origin
(the centre of its first voxel) — the convention of image arithmetic's ``box``
(:mod:`rendering.engine.arithmetic`), so ``(0, (columns - 1) * dx, 0, (rows - 1) * dy, 0,
(slices - 1) * dz)`` is the whole series and a voxel is kept when its centre lies in the box.

* 2-D: a pixel whose point on the view's plane lies outside the box is not shown (drawn
  black, as outside the volume); a slab (MIP, average) is cropped by its plane's point, not
  along its thickness.
* 3-D: the box is the volume mapper's cropping region (``vtkVolumeMapper`` sub-volume), so
  the rendering shows only the voxels inside it; fused layers are not cropped.
* Crop to a new series (:func:`crop_volume`, a derived series of kind ``crop``): the series'
  voxels whose centres lie in the box, cut out exactly (no resampling, its own dtype), at their
  own patient positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from gateway.i18n import gettext_noop
from rendering.engine.arithmetic import ImageArithmeticError, arithmetic_grid
from rendering.engine.planes import Plane
from rendering.said import SaidError
from rendering.volume import Volume

Box = tuple[float, float, float, float, float, float]


class CropError(SaidError, ValueError):
    """A crop that cannot be made (a box that holds none of the series' voxels)."""


def box_axes_mm(volume: Volume, points: np.ndarray) -> np.ndarray:
    """Patient points ``(..., 3)`` as mm along ``volume``'s own i, j, k axes from its origin."""
    return (np.asarray(points, dtype=np.float64) - np.asarray(volume.origin)) @ np.asarray(volume.direction)


def crop_mask(plane: Plane, volume: Volume, box: Sequence[float]) -> np.ndarray:
    """(height, width) bool: the view's pixels whose centre on ``plane`` lies inside ``box``."""
    ys, xs = np.mgrid[0:plane.height, 0:plane.width]
    points = (plane.center + ((xs[..., None] + 0.5 - plane.width / 2) * plane.mm_per_pixel) * plane.right
              + ((ys[..., None] + 0.5 - plane.height / 2) * plane.mm_per_pixel) * plane.down)
    along = box_axes_mm(volume, points)
    low, high = np.asarray(box[0::2]), np.asarray(box[1::2])
    return np.all((along >= low - 1e-6) & (along <= high + 1e-6), axis=-1)


def crop_2d(image: np.ndarray, plane: Plane, volume: Volume, box: Sequence[float] | None) -> np.ndarray:
    """``image`` (grey or RGB) with every pixel outside ``box`` black; itself when no box."""
    if box is None:
        return image
    outside = ~crop_mask(plane, volume, box)
    if not outside.any():
        return image
    image = image.copy()
    image[outside] = 0
    return image


def box_onto(box: Sequence[float], source: Volume, target: Volume) -> Box:
    """``box`` (along ``source``'s axes) as the smallest box along ``target``'s axes holding it."""
    if source is target:
        return tuple(float(v) for v in box)  # type: ignore[return-value]
    corners = np.array([[box[0 + a], box[2 + b], box[4 + c]] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
    points = np.asarray(source.origin) + corners @ np.asarray(source.direction).T
    along = box_axes_mm(target, points)
    low, high = along.min(axis=0), along.max(axis=0)
    return (float(low[0]), float(high[0]), float(low[1]), float(high[1]), float(low[2]), float(high[2]))


def cropping_planes(box: Sequence[float], volume: Volume, level_spacing: Sequence[float]) -> list[float]:
    """The mapper's cropping region planes (its image data's x, y, z from its first point) for a box.

    A reduced level (``level_spacing``, z, y, x) starts half a block beyond the volume's origin
    (see ``VolumeRenderer._level``); its data coordinates are shifted by that much.
    """
    shift = [(level - own) / 2 for level, own in zip(level_spacing[::-1], volume.spacing[::-1], strict=True)]
    return [float(box[2 * axis + side]) - shift[axis] for axis in range(3) for side in (0, 1)]


def crop_volume(volume: Volume, *, box: Sequence[float], series_id: str, description: str = "") -> Volume:
    """The voxels of ``volume`` (one time point) whose centres lie in ``box``, at their own mm."""
    try:
        grid = arithmetic_grid(volume, [], space="box", box=box)
    except ImageArithmeticError as error:
        raise CropError.from_error(error) from error
    low = np.maximum(np.asarray(grid.offset), 0)
    high = np.minimum(np.asarray(grid.offset) + np.asarray(grid.shape), np.asarray(volume.shape))
    if np.any(high <= low):
        raise CropError(gettext_noop("the box holds none of the series' voxels: draw it over the series"))
    (k0, j0, i0), (k1, j1, i1) = (int(v) for v in low), (int(v) for v in high)
    x, y, z = (float(v) for v in volume.index_to_patient((k0, j0, i0)))
    return replace(volume, voxels=np.ascontiguousarray(volume.voxels[k0:k1, j0:j1, i0:i1]), origin=(x, y, z),
                   series_id=series_id, presentation=replace(volume.presentation, time_points=1),
                   display={"derived": True, "operation": "crop", "box": [float(v) for v in box],
                            "description": description, "inputs": [volume.series_id],
                            "suv_calculation": volume.display.get("suv_calculation")})
