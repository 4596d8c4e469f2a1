"""Image arithmetic on registered series: a difference, a weighted sum or a ratio on one grid.

Every other volume is resampled onto the reference's grid through its matrix (moving
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

Resampling is SimpleITK's ``ResampleImageFilter``: already this project's resampler
(registration, ONNX models), maintained, multi-threaded C++; scipy is not a dependency
and its ``map_coordinates`` runs on one core. The reference grid is resampled in slabs
of slices, so a 512x512x300 reference costs the float32 result, SimpleITK's copy of
the other volume (in its own dtype) and a slab or two: about 2.3 float32 copies at
peak for a float32 other volume of the same size.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Literal

import numpy as np
import SimpleITK as sitk

from rendering.volume import Presentation, Volume, VolumeError

Operation = Literal["difference", "weighted_sum", "ratio"]
Other = tuple[Volume, np.ndarray | None, float]

OPERATIONS = ("difference", "weighted_sum", "ratio")
SLAB_VOXELS = 1 << 23
"""Reference voxels resampled at once (32 MiB of float32)."""
GRID_TOLERANCE_MM = 1e-6
DEFAULT_EPSILON = 1e-6
"""A ratio's smallest usable denominator, in the denominator's units: only (near) zero is refused."""
OTHER_MODALITY = "OT"


class ImageArithmeticError(ValueError):
    """The inputs cannot be combined; the message is safe to show the user."""


def arithmetic(operation: Operation, reference: Volume, others: Sequence[Other], *,
               reference_weight: float = 1.0, epsilon: float = DEFAULT_EPSILON) -> np.ndarray:
    """``operation`` of ``reference`` and ``others``: float32 on the reference's grid, NaN where undefined.

    ``others`` holds (volume, 4x4 moving -> reference matrix or None, weight); a
    difference and a ratio take exactly one, a weighted sum one or more.
    """
    _check(operation, reference, others, reference_weight, epsilon)
    result = np.multiply(reference.voxels, np.float32(reference_weight), dtype=np.float32)
    for volume, matrix, weight in others:
        for slices, values in _resampled(volume, _to_reference(volume, matrix, reference), reference):
            _combine(operation, result[slices], values * np.float32(weight), epsilon)
    return result


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
        raise ImageArithmeticError(f"unknown operation {operation!r}: one of {', '.join(OPERATIONS)}")
    wanted = "one or more" if operation == "weighted_sum" else "exactly one"
    if not others or (operation != "weighted_sum" and len(others) != 1):
        raise ImageArithmeticError(f"a {operation.replace('_', ' ')} takes {wanted} other series, "
                               f"not {len(others)}")
    weights = [reference_weight, *(weight for _, _, weight in others)]
    if not all(np.isfinite(weights)):
        raise ImageArithmeticError("weights must be finite numbers")
    if not (np.isfinite(epsilon) and epsilon >= 0):
        raise ImageArithmeticError("epsilon must be a finite number, zero or more")
    for volume in (reference, *(volume for volume, _, _ in others)):
        _check_volume(volume)


def _check_volume(volume: Volume) -> None:
    if volume.colour or volume.labels or volume.time_points > 1 or volume.presentation.kind != "volume":
        raise ImageArithmeticError(f"series {volume.series_id} is not one greyscale volume (colour, labels, "
                                   "pictures or dynamic: pick one time point of a dynamic series)")


def _to_reference(volume: Volume, matrix: np.ndarray | None, reference: Volume) -> np.ndarray:
    """The checked 4x4 moving -> reference matrix; the identity for the same frame."""
    if matrix is None:
        if volume.frame_of_reference_uid != reference.frame_of_reference_uid:
            raise ImageArithmeticError(f"series {volume.series_id} is in another frame of reference: "
                                   "combining it needs a registration")
        return np.eye(4)
    square = np.asarray(matrix, dtype=np.float64)
    if square.size != 16 or not np.all(np.isfinite(square)):
        raise ImageArithmeticError("a registration is a 4x4 matrix of finite numbers")
    square = square.reshape(4, 4)
    if not np.allclose(square[3], (0, 0, 0, 1)) or abs(np.linalg.det(square[:3, :3])) < 1e-9:
        raise ImageArithmeticError("a registration must be an invertible affine matrix (last row 0 0 0 1)")
    return square


def _resampled(volume: Volume, to_reference: np.ndarray, reference: Volume
               ) -> Iterator[tuple[slice, np.ndarray]]:
    """(reference slices, values there) slab by slab; NaN outside ``volume``."""
    depth, rows, columns = reference.shape
    step = max(1, SLAB_VOXELS // (rows * columns))
    slabs = [slice(first, min(first + step, depth)) for first in range(0, depth, step)]
    if _same_grid(volume, reference) and np.allclose(to_reference, np.eye(4), atol=GRID_TOLERANCE_MM):
        for slab in slabs:
            yield slab, volume.voxels[slab]
        return
    image = _itk_image(volume)
    resampler = _resampler(np.linalg.inv(to_reference), reference)
    for slab in slabs:
        resampler.SetOutputOrigin(tuple(float(v) for v in reference.index_to_patient((slab.start, 0, 0))))
        resampler.SetSize((columns, rows, slab.stop - slab.start))
        yield slab, sitk.GetArrayFromImage(resampler.Execute(image))


def _same_grid(volume: Volume, reference: Volume) -> bool:
    return (volume.shape == reference.shape
            and np.allclose(volume.spacing, reference.spacing, atol=GRID_TOLERANCE_MM)
            and np.allclose(volume.origin, reference.origin, atol=GRID_TOLERANCE_MM)
            and np.allclose(volume.direction, reference.direction, atol=GRID_TOLERANCE_MM))


def _itk_image(volume: Volume) -> sitk.Image:
    image = sitk.GetImageFromArray(volume.voxels)
    image.SetSpacing(_itk_spacing(volume))
    image.SetOrigin(volume.origin)
    image.SetDirection(tuple(float(v) for v in volume.direction.ravel()))
    return image


def _itk_spacing(volume: Volume) -> tuple[float, float, float]:
    return volume.spacing[2], volume.spacing[1], volume.spacing[0]


def _resampler(reference_to_moving: np.ndarray, reference: Volume) -> sitk.ResampleImageFilter:
    """ITK asks, for each output (reference) point, where to sample the input: reference -> moving."""
    transform = sitk.AffineTransform(3)
    transform.SetMatrix(tuple(float(v) for v in reference_to_moving[:3, :3].ravel()))
    transform.SetTranslation(tuple(float(v) for v in reference_to_moving[:3, 3]))
    resampler = sitk.ResampleImageFilter()
    resampler.SetTransform(transform)
    resampler.SetInterpolator(sitk.sitkLinear)
    resampler.SetOutputPixelType(sitk.sitkFloat32)
    resampler.SetDefaultPixelValue(float("nan"))
    resampler.SetOutputSpacing(_itk_spacing(reference))
    resampler.SetOutputDirection(tuple(float(v) for v in reference.direction.ravel()))
    return resampler


def derived_volume(values: np.ndarray, reference: Volume, *, series_id: str, description: str,
                   operation: str = "", inputs: Sequence[Volume] = ()) -> Volume:
    """A float32 volume of ``values`` on the reference's grid and in its frame of reference.

    ``values`` becomes the voxels (no copy when already float32): NaN is replaced by 0 in
    place, so windows, histograms and statistics see numbers, and the count is kept in
    ``display["undefined_voxels"]``. The modality is the reference's when every input
    shares it, else ``OT``; the units are kept unless the operation is a ratio. A derived
    volume has no SUV factor: to combine SUVs, weight each input by its own factor.
    """
    voxels = np.asarray(values, dtype=np.float32)
    if voxels.shape != reference.shape or reference.voxels.ndim != 3:
        raise VolumeError(f"derived values of shape {voxels.shape} do not lie on the reference's grid "
                          f"{reference.shape}")
    undefined = np.isnan(voxels)
    voxels[undefined] = 0.0
    same_modality = all(volume.modality == reference.modality for volume in inputs)
    units = reference.presentation.units if same_modality and operation != "ratio" else ""
    return Volume(
        voxels=voxels, spacing=reference.spacing, origin=reference.origin, direction=reference.direction,
        modality=reference.modality if same_modality else OTHER_MODALITY, series_id=series_id,
        frame_of_reference_uid=reference.frame_of_reference_uid,
        presentation=Presentation(units=units),
        display={"derived": True, "operation": operation, "description": description,
                 "inputs": [reference.series_id, *(volume.series_id for volume in inputs)],
                 "undefined_voxels": int(undefined.sum())})
