"""Image arithmetic on registered series: a difference, a weighted sum or a ratio on one grid.

Every other volume is resampled onto the reference's grid (or, see below, onto a grid on the
reference's lattice: its sampling space) through its matrix (moving
patient mm -> reference patient mm, as a fused layer's ``registration`` holds it;
None: the same frame of reference) by trilinear interpolation, then the inputs, each
scaled by its weight, are combined voxel by voxel:

* ``difference``: ``w0 * A - w1 * B``;
* ``weighted_sum``: ``w0 * A + w1 * B + ...``;
* ``ratio``: ``(w0 * A) / (w1 * B)``.

A voxel with no value is NaN: where the reference point falls outside an other
volume (further than half a voxel beyond its outermost voxel centres: the extent the
render engine shows; within that half voxel the edge voxel's value is taken), and,
for a ratio, where ``|w1 * B| < epsilon``. NaN rather than
0, because 0 is a value a difference or ratio can truly take; :func:`derived_volume`
replaces NaN by 0 only for display and records how many voxels it did so for.

The output grid is a *sampling space* (``space``); in every one it keeps the reference's
direction cosines and voxel spacing and lies on the reference's lattice (its voxel centres
are reference voxel centres, extended beyond the reference where needed), so only its
origin and size change:

* ``reference`` (the default): the reference's own grid;
* ``union``: the smallest lattice box holding every input's extent;
* ``intersection``: the largest lattice box inside every input's extent (refused when empty);
* ``box``: the lattice voxels whose centres lie in a box the reader gives, six numbers
  ``(i_min, i_max, j_min, j_max, k_min, k_max)`` in mm along the reference's own axes ``i``
  (along a row: its first direction cosine), ``j`` (down a column: the second) and ``k``
  (across slices: the third), measured from the reference's origin (the centre of its
  first voxel); ``(0, (columns - 1) * dx, 0, (rows - 1) * dy, 0, (slices - 1) * dz)`` is
  the reference's own grid.

An input's extent is the box, along the reference's axes, of its eight corner voxel centres
mapped into the reference frame through its matrix. No output axis may exceed
:data:`MAX_AXIS_VOXELS` voxels, nor the output :data:`MAX_VOXELS`.

Background: in the ``reference`` space an undefined voxel is NaN, as above (recipes made
before sampling spaces give the same voxels). In the other spaces the output reaches, by
design, beyond some inputs, and an input there takes its *background*, its own minimum
value (air or the padding value of a CT, no uptake in a PET) before it is weighted: so a
union is not an intersection padded with zeros, a difference outside one input is the other
against that input's background, a weighted sum of two fields of view joins them, and a
ratio outside its denominator's extent is NaN when that minimum (weighted) is below
``epsilon`` (the usual rule: never a division by zero). The same half voxel beyond the
outermost centres takes the edge voxel's value.

Resampling is SimpleITK's ``ResampleImageFilter``: already this project's resampler
(registration, ONNX models), maintained, multi-threaded C++; scipy is not a dependency
and its ``map_coordinates`` runs on one core. The reference grid is resampled in slabs
of slices, so a 512x512x300 reference costs the float32 result, SimpleITK's copy of
the other volume (in its own dtype) and a slab or two: about 2.3 float32 copies at
peak for a float32 other volume of the same size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import SimpleITK as sitk

from gateway.i18n import gettext_noop
from rendering.said import SaidError
from rendering.volume import Presentation, Volume, VolumeError

Operation = Literal["difference", "weighted_sum", "ratio"]
Space = Literal["reference", "union", "intersection", "box"]
Other = tuple[Volume, np.ndarray | None, float]

OPERATIONS = ("difference", "weighted_sum", "ratio")
SPACES = ("reference", "union", "intersection", "box")
MAX_AXIS_VOXELS = 2048
"""The most voxels along any axis of an output grid."""
MAX_VOXELS = 1 << 28
"""The most voxels of an output grid (1 GiB of float32)."""
MAX_BOX_MM = 2000.0
"""The longest side of a reader's box."""
LATTICE_TOLERANCE = 1e-6
"""Voxels: an extent or box face this close to a lattice point counts as on it."""
SLAB_VOXELS = 1 << 23
"""Reference voxels resampled at once (32 MiB of float32)."""
GRID_TOLERANCE_MM = 1e-6
DEFAULT_EPSILON = 1e-6
"""A ratio's smallest usable denominator, in the denominator's units: only (near) zero is refused."""
OTHER_MODALITY = "OT"


class ImageArithmeticError(SaidError, ValueError):
    """The inputs cannot be combined; the message is safe to show the user (said)."""


@dataclass(frozen=True)
class Grid:
    """An output grid on the reference's lattice: ``offset`` (k, j, i) is its first voxel's index
    in the reference's grid (negative before it), ``origin`` that voxel's patient mm."""

    offset: tuple[int, int, int]
    shape: tuple[int, int, int]
    origin: tuple[float, float, float]


def arithmetic(operation: Operation, reference: Volume, others: Sequence[Other], *,
               reference_weight: float = 1.0, epsilon: float = DEFAULT_EPSILON,
               space: Space = "reference", box: Sequence[float] | None = None) -> np.ndarray:
    """``operation`` of ``reference`` and ``others``: float32 on the ``space``'s grid
    (:func:`arithmetic_grid`), NaN where undefined.

    ``others`` holds (volume, 4x4 moving -> reference matrix or None, weight); a
    difference and a ratio take exactly one, a weighted sum one or more.
    """
    _check(operation, reference, others, reference_weight, epsilon)
    placed = [(volume, matrix) for volume, matrix, _ in others]
    grid = arithmetic_grid(reference, placed, space=space, box=box)
    weighted = np.float32(reference_weight)
    if space == "reference":
        result = np.multiply(reference.voxels, weighted, dtype=np.float32)
    else:
        result = np.empty(grid.shape, np.float32)
        for slices, values in _on_grid(reference, np.eye(4), reference, grid, _background(reference)):
            np.multiply(values, weighted, out=result[slices], dtype=np.float32)
    for volume, matrix, weight in others:
        fill = float("nan") if space == "reference" else _background(volume)
        to_reference = _to_reference(volume, matrix, reference)
        for slices, values in _on_grid(volume, to_reference, reference, grid, fill):
            _combine(operation, result[slices], values * np.float32(weight), epsilon)
    return result


def arithmetic_grid(reference: Volume, others: Sequence[tuple[Volume, np.ndarray | None]], *,
                    space: Space = "reference", box: Sequence[float] | None = None) -> Grid:
    """The output grid of ``space`` for ``reference`` and ``others`` (volume, moving -> reference
    matrix or None); refused when empty or too large."""
    space_check(space, box)
    if space == "reference":
        return Grid((0, 0, 0), reference.shape, reference.origin)
    if space == "box" and box is not None:
        step = np.array([reference.spacing[2], reference.spacing[1], reference.spacing[0]])
        edges = np.asarray(box, dtype=np.float64).reshape(3, 2) / step[:, None]  # i, j, k rows
        low = np.ceil(edges[::-1, 0] - LATTICE_TOLERANCE)
        high = np.floor(edges[::-1, 1] + LATTICE_TOLERANCE)
        if np.any(high < low):
            raise ImageArithmeticError(gettext_noop("the box holds no voxel centre of the reference: make it "
                                                    "larger"))
    else:
        extents = [input_extent(volume, _to_reference(volume, matrix, reference), reference)
                   for volume, matrix in [(reference, None), *others]]
        lows, highs = np.array([e[0] for e in extents]), np.array([e[1] for e in extents])
        if space == "union":
            low = np.floor(lows.min(axis=0) + LATTICE_TOLERANCE)
            high = np.ceil(highs.max(axis=0) - LATTICE_TOLERANCE)
        else:
            low = np.ceil(lows.max(axis=0) - LATTICE_TOLERANCE)
            high = np.floor(highs.min(axis=0) + LATTICE_TOLERANCE)
            if np.any(high < low):
                raise ImageArithmeticError(gettext_noop("the series have no extent in common: their "
                                                        "intersection is empty (check the registration, or "
                                                        "use the union)"))
    size = high - low + 1
    if np.any(size > MAX_AXIS_VOXELS) or float(np.prod(size)) > MAX_VOXELS:
        voxels = " x ".join(str(int(n)) for n in size)
        raise ImageArithmeticError(gettext_noop("the %(space)s space would be %(voxels)s voxels: at most "
                                                "%(axis_most)s along an axis and %(most)s in all"),
                                   space=space, voxels=voxels, axis_most=MAX_AXIS_VOXELS, most=MAX_VOXELS)
    offset = (int(low[0]), int(low[1]), int(low[2]))
    origin = reference.index_to_patient(np.asarray(offset, dtype=np.float64))
    return Grid(offset, (int(size[0]), int(size[1]), int(size[2])),
                (float(origin[0]), float(origin[1]), float(origin[2])))


def input_extent(volume: Volume, to_reference: np.ndarray, reference: Volume
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(lowest, highest) continuous reference index (k, j, i) of ``volume``'s eight corner voxel
    centres mapped into the reference frame by ``to_reference`` (moving -> reference mm)."""
    corners = volume.corners() @ to_reference[:3, :3].T + to_reference[:3, 3]
    index = reference.patient_to_index(corners)
    return index.min(axis=0), index.max(axis=0)


def space_check(space: str, box: Sequence[float] | None) -> None:
    """Refuse an unknown space, a box without ``box`` space (or the reverse), or a bad box."""
    if space not in SPACES:
        raise ImageArithmeticError(gettext_noop("unknown space %(space)s: one of %(spaces)s"),
                                   space=repr(space), spaces=", ".join(SPACES))
    if space != "box":
        if box is not None:
            raise ImageArithmeticError(gettext_noop("box is given only with the space box"))
        return
    if box is None or len(box) != 6 or not all(isinstance(v, int | float) and np.isfinite(v) for v in box):
        raise ImageArithmeticError(gettext_noop("box is six finite numbers: i_min, i_max, j_min, j_max, "
                                                "k_min, k_max (mm)"))
    for axis, (low, high) in zip("ijk", (box[0:2], box[2:4], box[4:6]), strict=True):
        if not low < high:
            raise ImageArithmeticError(gettext_noop("box: %(axis)s_min must be below %(axis)s_max"),
                                       axis=axis)
        if high - low > MAX_BOX_MM or max(abs(low), abs(high)) > 2 * MAX_BOX_MM:
            raise ImageArithmeticError(gettext_noop("box: the %(axis)s side is at most %(most)g mm, within "
                                                    "±%(reach)g mm of the reference's origin"),
                                       axis=axis, most=MAX_BOX_MM, reach=2 * MAX_BOX_MM)


def _background(volume: Volume) -> float:
    """The value an input takes outside its extent (in spaces other than ``reference``): its minimum."""
    return float(np.min(volume.voxels)) if volume.voxels.size else 0.0


def _combine(operation: str, into: np.ndarray, values: np.ndarray, epsilon: float) -> None:
    if operation == "difference":
        into -= values
    elif operation == "weighted_sum":
        into += values
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            into /= values
        into[np.abs(values) < epsilon] = np.nan


def _check(operation: str, reference: Volume, others: Sequence[Other], reference_weight: float,
           epsilon: float) -> None:
    if operation not in OPERATIONS:
        raise ImageArithmeticError(gettext_noop("unknown operation %(operation)s: one of %(operations)s"),
                                   operation=repr(operation), operations=", ".join(OPERATIONS))
    if not others or (operation != "weighted_sum" and len(others) != 1):
        wanted = (gettext_noop("a %(operation)s takes one or more other series, not %(given)s")
                  if operation == "weighted_sum" else
                  gettext_noop("a %(operation)s takes exactly one other series, not %(given)s"))
        raise ImageArithmeticError(wanted, operation=operation.replace("_", " "), given=len(others))
    weights = [reference_weight, *(weight for _, _, weight in others)]
    if not all(np.isfinite(weights)):
        raise ImageArithmeticError(gettext_noop("weights must be finite numbers"))
    if not (np.isfinite(epsilon) and epsilon >= 0):
        raise ImageArithmeticError(gettext_noop("epsilon must be a finite number, zero or more"))
    for volume in (reference, *(volume for volume, _, _ in others)):
        _check_volume(volume)


def _check_volume(volume: Volume) -> None:
    if volume.colour or volume.labels or volume.time_points > 1 or volume.presentation.kind != "volume":
        raise ImageArithmeticError(gettext_noop("series %(series)s is not one greyscale volume (colour, "
                                                "labels, pictures or dynamic: pick one time point of a "
                                                "dynamic series)"),
                                   series=volume.series_id)


def _to_reference(volume: Volume, matrix: np.ndarray | None, reference: Volume) -> np.ndarray:
    """The checked 4x4 moving -> reference matrix; the identity for the same frame."""
    if matrix is None:
        if volume.frame_of_reference_uid != reference.frame_of_reference_uid:
            raise ImageArithmeticError(gettext_noop("series %(series)s is in another frame of reference: "
                                                    "combining it needs a registration"),
                                       series=volume.series_id)
        return np.eye(4)
    square = np.asarray(matrix, dtype=np.float64)
    if square.size != 16 or not np.all(np.isfinite(square)):
        raise ImageArithmeticError(gettext_noop("a registration is a 4x4 matrix of finite numbers"))
    square = square.reshape(4, 4)
    if not np.allclose(square[3], (0, 0, 0, 1)) or abs(np.linalg.det(square[:3, :3])) < 1e-9:
        raise ImageArithmeticError(gettext_noop("a registration must be an invertible affine matrix (last "
                                                "row 0 0 0 1)"))
    return square


def _on_grid(volume: Volume, to_reference: np.ndarray, reference: Volume, grid: Grid, fill: float
             ) -> Iterator[tuple[tuple[slice, slice, slice], np.ndarray]]:
    """(grid slices, values there) slab by slab; ``fill`` outside ``volume``.

    A volume on the reference's lattice (same spacing and direction, an origin a whole number of
    voxels away, the identity matrix) is copied, not interpolated: exact values.
    """
    depth, rows, columns = grid.shape
    step = max(1, SLAB_VOXELS // (rows * columns))
    slabs = [slice(first, min(first + step, depth)) for first in range(0, depth, step)]
    whole = (slice(None), slice(None))
    shift = _lattice_shift(volume, to_reference, reference)
    if shift is not None:
        start = np.asarray(grid.offset) - shift  # the grid's first voxel, in the volume's index
        for slab in slabs:
            values = np.full((slab.stop - slab.start, rows, columns), fill, np.float32)
            first = start + np.array((slab.start, 0, 0))
            low = np.maximum(first, 0)
            high = np.minimum(first + values.shape, volume.shape)
            if np.all(high > low):
                into = tuple(slice(int(a - f), int(b - f)) for a, b, f in zip(low, high, first, strict=True))
                taken = tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))
                values[into] = volume.voxels[taken]
            yield (slab, *whole), values
        return
    image = _itk_image(volume)
    resampler = _resampler(np.linalg.inv(to_reference), reference, fill)
    for slab in slabs:
        first = np.asarray(grid.offset, dtype=np.float64) + np.array((slab.start, 0, 0))
        resampler.SetOutputOrigin(tuple(float(v) for v in reference.index_to_patient(first)))
        resampler.SetSize((columns, rows, slab.stop - slab.start))
        yield (slab, *whole), sitk.GetArrayFromImage(resampler.Execute(image))


def _lattice_shift(volume: Volume, to_reference: np.ndarray, reference: Volume) -> np.ndarray | None:
    """The volume's first voxel's whole-voxel index (k, j, i) in the reference's lattice, or None."""
    if not (np.allclose(to_reference, np.eye(4), atol=GRID_TOLERANCE_MM)
            and np.allclose(volume.spacing, reference.spacing, atol=GRID_TOLERANCE_MM)
            and np.allclose(volume.direction, reference.direction, atol=GRID_TOLERANCE_MM)):
        return None
    index = reference.patient_to_index(np.asarray(volume.origin, dtype=np.float64))
    whole = np.rint(index)
    step = np.asarray(reference.spacing)
    if np.any(np.abs(index - whole) * step > GRID_TOLERANCE_MM):
        return None
    return whole.astype(np.int64)


def _itk_image(volume: Volume) -> sitk.Image:
    image = sitk.GetImageFromArray(volume.voxels)
    image.SetSpacing(_itk_spacing(volume))
    image.SetOrigin(volume.origin)
    image.SetDirection(tuple(float(v) for v in volume.direction.ravel()))
    return image


def _itk_spacing(volume: Volume) -> tuple[float, float, float]:
    return volume.spacing[2], volume.spacing[1], volume.spacing[0]


def _resampler(reference_to_moving: np.ndarray, reference: Volume, fill: float) -> sitk.ResampleImageFilter:
    """ITK asks, for each output (reference) point, where to sample the input: reference -> moving."""
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(tuple(float(v) for v in reference_to_moving[:3, :3].ravel()))
    transform.SetTranslation(tuple(float(v) for v in reference_to_moving[:3, 3]))
    resampler = sitk.ResampleImageFilter()
    resampler.SetTransform(transform)
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    resampler.SetDefaultPixelValue(fill)
    resampler.SetOutputSpacing(_itk_spacing(reference))
    resampler.SetOutputDirection(tuple(float(v) for v in reference.direction.ravel()))
    return resampler


def derived_volume(values: np.ndarray, reference: Volume, *, series_id: str, description: str,
                   operation: str = "", inputs: Sequence[Volume] = (), grid: Grid | None = None) -> Volume:
    """A float32 volume of ``values`` on the reference's grid (or ``grid``, a sampling space's) and
    in its frame of reference, with its direction and spacing.

    ``values`` becomes the voxels (no copy when already float32): NaN is replaced by 0 in
    place, so windows, histograms and statistics see numbers, and the count is kept in
    ``display["undefined_voxels"]``. The modality is the reference's when every input
    shares it, else ``OT``; the units are kept unless the operation is a ratio. A derived
    volume has no SUV factor: to combine SUVs, weight each input by its own factor.
    """
    voxels = np.asarray(values, dtype=np.float32)
    shape = reference.shape if grid is None else grid.shape
    if voxels.shape != shape or reference.voxels.ndim != 3:
        raise VolumeError(f"derived values of shape {voxels.shape} do not lie on the reference's grid "
                          f"{shape}")
    undefined = np.isnan(voxels)
    voxels[undefined] = 0.0
    same_modality = all(volume.modality == reference.modality for volume in inputs)
    units = reference.presentation.units if same_modality and operation != "ratio" else ""
    return Volume(
        voxels=voxels, spacing=reference.spacing, origin=reference.origin if grid is None else grid.origin,
        direction=reference.direction,
        modality=reference.modality if same_modality else OTHER_MODALITY, series_id=series_id,
        frame_of_reference_uid=reference.frame_of_reference_uid,
        presentation=Presentation(units=units),
        display={"derived": True, "operation": operation, "description": description,
                 "inputs": [reference.series_id, *(volume.series_id for volume in inputs)],
                 "undefined_voxels": int(undefined.sum())})
