"""Registration: the 4x4 matrix that carries a moving series' patient mm into a fixed series' frame.

The matrix is what a fused layer's ``registration`` holds (:class:`rendering.viewstate.Layer`):
moving patient mm -> fixed patient mm, row-major. ITK's transforms point the other way
(fixed -> moving: where to sample the moving image for each fixed point), so the
conversion happens once, at the boundary with SimpleITK.

Automatic registration maximises Mattes mutual information, which needs no intensity
relation between the modalities (PET, SPECT, MR or CT onto CT), over a coarse-to-fine
pyramid of the series reduced to a ~4 mm grid: the fused display is read at PET's
resolution, and on the phantom a 2 mm grid took twice as long for the same error.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk

from gateway.i18n import gettext_noop
from rendering.said import SaidError
from rendering.volume import Volume

KINDS = ("rigid", "affine")
GRID_MM = 4.0
SHRINK_FACTORS = (4, 2, 1)
SMOOTHING_MM = (8.0, 4.0, 1.0)
ITERATIONS_PER_LEVEL = 100
SAMPLING_FRACTIONS = (0.5, 0.25, 0.1)
HISTOGRAM_BINS = 64
SAMPLING_SEED = 20240
"""Fixed, so that the same pair of series always gives the same matrix."""
MIN_STEP_MM = 0.01
CLIP_PERCENTILES = (0.5, 99.5)
"""Without clipping, a hot bladder squeezes the body's PET values into a few histogram bins
(the phantom's PET then registered 5 mm off)."""
CT_BODY_HU = -500.0
EMISSION_BODY_FRACTION = 0.1
BODY_MARGIN_MM = 16.0
MIN_LANDMARKS = 3
MIN_OFF_LINE_MM = 5.0
RIGID_TOLERANCE = 1e-4


_ItkLinear = sitk.Euler3DTransform | sitk.AffineTransform


class RegistrationError(SaidError, ValueError):
    """The series or points cannot be registered; the message is safe to show the user (said)."""


class RegistrationCancelled(RegistrationError):
    """The caller asked to stop (``cancelled()`` returned true)."""


@dataclass(frozen=True)
class RegistrationResult:
    """A registration: ``matrix`` maps moving patient mm to fixed patient mm.

    ``metric`` is the final mutual-information value (negative; lower is better) of an
    automatic registration, ``fre_mm`` the RMS distance between the fixed landmarks and
    the moved ones carried by ``matrix`` (None without landmarks).
    """

    matrix: np.ndarray
    kind: str
    metric: float | None = None
    iterations: int = 0
    seconds: float = 0.0
    levels: int = 0
    fre_mm: float | None = None

    def row_major(self) -> list[float]:
        """The 16 values a layer's ``registration`` takes."""
        return [float(v) for v in self.matrix.ravel()]


# --- matrices ---------------------------------------------------------------------------------


def compose(first: np.ndarray, then: np.ndarray) -> np.ndarray:
    """A -> C from ``first`` (A -> B) and ``then`` (B -> C): a chain of registrations."""
    return _square(then) @ _square(first)


def invert(matrix: np.ndarray) -> np.ndarray:
    """B -> A from A -> B."""
    square = _square(matrix)
    if abs(np.linalg.det(square[:3, :3])) < 1e-9:
        raise RegistrationError(gettext_noop("the matrix is singular and cannot be inverted"))
    return np.linalg.inv(square)


def is_rigid(matrix: np.ndarray, tolerance: float = RIGID_TOLERANCE) -> bool:
    """A rotation and a translation only (no scale, shear or mirror)."""
    square = _square(matrix)
    linear = square[:3, :3]
    return (np.allclose(square[3], (0, 0, 0, 1), atol=tolerance)
            and np.allclose(linear.T @ linear, np.eye(3), atol=tolerance)
            and np.linalg.det(linear) > 0)


def _square(matrix: np.ndarray | Sequence[float]) -> np.ndarray:
    square = np.asarray(matrix, dtype=np.float64)
    if square.size != 16 or not np.all(np.isfinite(square)):
        raise RegistrationError(gettext_noop("a registration is a 4x4 matrix of finite numbers"))
    square = square.reshape(4, 4)
    if not np.allclose(square[3], (0, 0, 0, 1)):
        raise RegistrationError(gettext_noop("a registration matrix's last row must be 0 0 0 1"))
    return square


# --- landmarks --------------------------------------------------------------------------------


def register_landmarks(fixed_points_mm: Sequence[Sequence[float]] | np.ndarray,
                       moving_points_mm: Sequence[Sequence[float]] | np.ndarray, *, kind: str = "rigid",
                       refine: bool = False, fixed: Volume | None = None, moving: Volume | None = None,
                       progress: Callable[[int, int], None] | None = None,
                       cancelled: Callable[[], bool] | None = None) -> RegistrationResult:
    """The rigid least-squares fit of paired points (``moving[n]`` is the same spot as ``fixed[n]``).

    Landmarks give a rotation and translation only: 3 points out of line fix one, and an
    affine from a handful of clicks would fit their errors. With ``refine``, the fit starts
    an automatic registration of ``kind`` between ``fixed`` and ``moving``; ``fre_mm`` then
    says how far the refined result strays from the clicked points.
    """
    started = time.perf_counter()
    fixed_points, moving_points = _landmark_pairs(fixed_points_mm, moving_points_mm)
    if kind != "rigid" and not refine:
        raise RegistrationError(gettext_noop("landmarks give a rigid registration; an affine one needs "
                                             "refine=True"))
    matrix = _kabsch(fixed_points, moving_points)
    result = RegistrationResult(matrix=matrix, kind="rigid", seconds=time.perf_counter() - started,
                                fre_mm=_fre(matrix, fixed_points, moving_points))
    if not refine:
        return result
    if fixed is None or moving is None:
        raise RegistrationError(gettext_noop("refining landmarks needs the fixed and moving volumes"))
    refined = register_automatic(fixed, moving, kind=kind, initial=matrix, progress=progress,
                                 cancelled=cancelled)
    return RegistrationResult(matrix=refined.matrix, kind=refined.kind, metric=refined.metric,
                              iterations=refined.iterations, seconds=time.perf_counter() - started,
                              levels=refined.levels, fre_mm=_fre(refined.matrix, fixed_points, moving_points))


def _landmark_pairs(fixed_points_mm, moving_points_mm) -> tuple[np.ndarray, np.ndarray]:
    fixed_points = np.asarray(fixed_points_mm, dtype=np.float64)
    moving_points = np.asarray(moving_points_mm, dtype=np.float64)
    for points in (fixed_points, moving_points):
        if points.ndim != 2 or points.shape[1] != 3 or not np.all(np.isfinite(points)):
            raise RegistrationError(gettext_noop("landmarks are lists of (x, y, z) patient mm"))
    if len(fixed_points) != len(moving_points):
        raise RegistrationError(gettext_noop("%(fixed)s fixed landmarks but %(moving)s moving ones; each "
                                             "point needs its partner"),
                                fixed=len(fixed_points), moving=len(moving_points))
    if len(fixed_points) < MIN_LANDMARKS:
        raise RegistrationError(gettext_noop("a rigid registration needs at least %(least)s landmark pairs, "
                                             "not %(given)s"), least=MIN_LANDMARKS, given=len(fixed_points))
    on_a_line = ((gettext_noop("the fixed landmarks lie on a line, so the rotation about it is unknown; "
                               "add a point at least %(least)g mm off that line"), fixed_points),
                 (gettext_noop("the moving landmarks lie on a line, so the rotation about it is unknown; "
                               "add a point at least %(least)g mm off that line"), moving_points))
    for which, points in on_a_line:
        if _off_line_mm(points) < MIN_OFF_LINE_MM:
            raise RegistrationError(which, least=MIN_OFF_LINE_MM)
    return fixed_points, moving_points


def _off_line_mm(points: np.ndarray) -> float:
    """RMS distance of the points from the straight line that best fits them."""
    spread = np.linalg.svd(points - points.mean(axis=0), compute_uv=False)
    return float(math.hypot(spread[1], spread[2]) / math.sqrt(len(points)))


def _kabsch(fixed_points: np.ndarray, moving_points: np.ndarray) -> np.ndarray:
    fixed_mean, moving_mean = fixed_points.mean(axis=0), moving_points.mean(axis=0)
    covariance = (moving_points - moving_mean).T @ (fixed_points - fixed_mean)
    u, _, vt = np.linalg.svd(covariance)
    mirror = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    rotation = vt.T @ np.diag([1.0, 1.0, mirror]) @ u.T
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = fixed_mean - rotation @ moving_mean
    return matrix


def _fre(matrix: np.ndarray, fixed_points: np.ndarray, moving_points: np.ndarray) -> float:
    carried = moving_points @ matrix[:3, :3].T + matrix[:3, 3]
    return float(np.sqrt(np.mean(np.sum((carried - fixed_points) ** 2, axis=1))))


# --- automatic --------------------------------------------------------------------------------


def register_automatic(fixed: Volume, moving: Volume, *, kind: str = "rigid",
                       initial: np.ndarray | None = None,
                       progress: Callable[[int, int], None] | None = None,
                       cancelled: Callable[[], bool] | None = None) -> RegistrationResult:
    """Align ``moving`` onto ``fixed`` by mutual information; the result maps moving mm to fixed mm.

    ``initial`` (moving -> fixed) is where the search starts, e.g. a landmark fit; without
    it the centres of mass of the two bodies are put on each other, since the scanners'
    fields of view say nothing about where a patient lay. ``progress(done, total)`` counts
    optimiser iterations over all levels and ends at ``total``; ``cancelled()`` is polled
    every iteration and stops the search with :class:`RegistrationCancelled`.

    An affine search with no ``initial`` starts from a rigid one: its twelve parameters,
    started from the bodies' centres alone, ended 3-5 mm off on the phantom.
    """
    if kind not in KINDS:
        raise RegistrationError(gettext_noop("kind must be one of %(kinds)s, not %(kind)s"),
                                kinds=", ".join(KINDS), kind=repr(kind))
    started = time.perf_counter()
    if kind == "affine" and initial is None:
        first, second = _halves(progress)
        rigid = register_automatic(fixed, moving, kind="rigid", progress=first, cancelled=cancelled)
        affine = register_automatic(fixed, moving, kind="affine", initial=rigid.matrix, progress=second,
                                    cancelled=cancelled)
        return replace(affine, iterations=rigid.iterations + affine.iterations,
                       seconds=time.perf_counter() - started)
    watch = _Watch(progress, cancelled, ITERATIONS_PER_LEVEL * len(SHRINK_FACTORS))
    watch.check()
    fixed_series, moving_series = _series(fixed), _series(moving)
    watch.check()
    transform = _initial_transform(kind, fixed_series, moving_series, initial)
    method = _method()
    method.SetInitialTransform(transform, inPlace=True)
    watch.attach(method)
    try:
        method.Execute(fixed_series.around_body(), moving_series.image)
    except RuntimeError as error:
        raise RegistrationError(gettext_noop("the series could not be registered (do they overlap?): "
                                             "%(reason)s"), reason=_itk_reason(error)) from error
    watch.finish()
    return RegistrationResult(matrix=invert(_from_itk(transform)), kind=kind,
                              metric=float(method.GetMetricValue()), iterations=watch.iterations,
                              seconds=time.perf_counter() - started, levels=len(SHRINK_FACTORS))


def _halves(progress: Callable[[int, int], None] | None
            ) -> tuple[Callable[[int, int], None] | None, Callable[[int, int], None] | None]:
    """Two stages' progress reported as one run's."""
    if progress is None:
        return None, None
    report = progress
    return ((lambda done, total: report(done, 2 * total)),
            (lambda done, total: report(total + done, 2 * total)))


class _Watch:
    """Counts iterations for ``progress`` and stops the optimiser when ``cancelled()`` says so."""

    def __init__(self, progress, cancelled, total: int) -> None:
        self.progress, self.cancelled, self.total = progress, cancelled, total
        self.iterations = 0
        self.done = 0
        self.stopped = False

    def check(self) -> None:
        if self.stopped or (self.cancelled is not None and self.cancelled()):
            self.stopped = True
            raise RegistrationCancelled(gettext_noop("the registration was cancelled"))

    def attach(self, method: sitk.ImageRegistrationMethod) -> None:
        method.AddCommand(sitk.sitkIterationEvent, lambda: self._iteration(method))
        method.AddCommand(sitk.sitkMultiResolutionIterationEvent, lambda: self._level(method))

    def _iteration(self, method: sitk.ImageRegistrationMethod) -> None:
        self.iterations += 1
        within = min(method.GetOptimizerIteration() + 1, ITERATIONS_PER_LEVEL)
        self._report(method.GetCurrentLevel() * ITERATIONS_PER_LEVEL + within)
        self._poll(method)

    def _level(self, method: sitk.ImageRegistrationMethod) -> None:
        self._report(method.GetCurrentLevel() * ITERATIONS_PER_LEVEL)
        self._poll(method)

    def _poll(self, method: sitk.ImageRegistrationMethod) -> None:
        # StopRegistration ends only the current level, so later levels are stopped at their first
        # iteration (an exception raised here would abort at once, but ITK prints its traceback).
        if self.stopped or (self.cancelled is not None and self.cancelled()):
            self.stopped = True
            method.StopRegistration()

    def _report(self, done: int) -> None:
        if done > self.done and not self.stopped:
            self.done = done
            if self.progress is not None:
                self.progress(done, self.total)

    def finish(self) -> None:
        self.check()
        self._report(self.total)


def _itk_reason(error: RuntimeError) -> str:
    text = str(error).strip().splitlines()
    return text[-1][:200] if text else "unknown error"


def _method() -> sitk.ImageRegistrationMethod:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=HISTOGRAM_BINS)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentagePerLevel(list(SAMPLING_FRACTIONS), SAMPLING_SEED)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=GRID_MM, minStep=MIN_STEP_MM, numberOfIterations=ITERATIONS_PER_LEVEL,
        relaxationFactor=0.5, gradientMagnitudeTolerance=1e-8)
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(list(SHRINK_FACTORS))
    method.SetSmoothingSigmasPerLevel(list(SMOOTHING_MM))
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    return method


# --- images -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Series:
    """A volume reduced for registration, and its body: the largest blob above a body threshold."""

    image: sitk.Image
    body: np.ndarray

    def centre_mm(self) -> np.ndarray:
        """The body's centre of mass (the grid's centre where no body was found)."""
        kji = np.argwhere(self.body).mean(axis=0) if self.body.any() else (np.array(self.body.shape) - 1) / 2
        return np.asarray(self.image.TransformContinuousIndexToPhysicalPoint([float(v) for v in kji[::-1]]))

    def around_body(self) -> sitk.Image:
        """The image cropped to the body and a margin: samples in the air around it say little."""
        if not self.body.any():
            return self.image
        margin = [math.ceil(BODY_MARGIN_MM / s) for s in reversed(self.image.GetSpacing())]
        found = np.argwhere(self.body)
        low = np.maximum(found.min(axis=0) - margin, 0)
        high = np.minimum(found.max(axis=0) + margin + 1, self.body.shape)
        return self.image[int(low[2]):int(high[2]), int(low[1]):int(high[1]), int(low[0]):int(high[0])]


def _series(volume: Volume) -> _Series:
    """The volume on a grid no finer than :data:`GRID_MM` (block means), clipped to its
    bulk of values so a few very hot or dense voxels do not squeeze the histogram."""
    if not volume.reformattable or volume.labels:
        raise RegistrationError(gettext_noop("a %(modality)s series that is not a 3-D volume cannot be "
                                             "registered"), modality=volume.modality)
    if volume.time_points > 1:
        raise RegistrationError(gettext_noop("register one time point of a dynamic series, not all of them"))
    image = sitk.GetImageFromArray(volume.voxels)
    image.SetSpacing(tuple(reversed(volume.spacing)))
    image.SetOrigin(volume.origin)
    image.SetDirection(tuple(float(v) for v in np.asarray(volume.direction).ravel()))
    factors = [max(1, int(GRID_MM // s)) for s in image.GetSpacing()]
    if max(factors) > 1:
        image = sitk.BinShrink(image, factors)
    image = sitk.Cast(image, sitk.sitkFloat32)
    low, high = np.percentile(sitk.GetArrayViewFromImage(image)[::2, ::2, ::2], CLIP_PERCENTILES)
    image = sitk.Clamp(image, sitk.sitkFloat32, float(low), float(high))
    blobs = sitk.ConnectedComponent(image > _body_threshold(volume.modality, image, float(high)))
    body = sitk.GetArrayFromImage(sitk.RelabelComponent(blobs, sortByObjectSize=True) == 1).astype(bool)
    return _Series(image, body)


def _body_threshold(modality: str, image: sitk.Image, high: float) -> float:
    if modality == "CT":
        return CT_BODY_HU
    if modality in ("PT", "NM"):
        return EMISSION_BODY_FRACTION * high
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.Execute(image)
    return float(otsu.GetThreshold())


def _initial_transform(kind: str, fixed: _Series, moving: _Series, initial: np.ndarray | None) -> _ItkLinear:
    """ITK's fixed -> moving transform to start from, centred on the fixed body."""
    centre = fixed.centre_mm()
    if initial is None:
        itk = np.eye(4)
        itk[:3, 3] = moving.centre_mm() - centre
    else:
        if kind == "rigid" and not is_rigid(initial, 1e-3):
            raise RegistrationError(gettext_noop("a rigid registration cannot start from a matrix that "
                                                 "scales or shears"))
        itk = invert(initial)
    transform: _ItkLinear = sitk.Euler3DTransform() if kind == "rigid" else sitk.AffineTransform(3)
    transform.SetCenter(tuple(float(v) for v in centre))
    linear = itk[:3, :3]
    if kind == "rigid":
        linear = _nearest_rotation(linear)
    transform.SetMatrix(tuple(float(v) for v in linear.ravel()))
    transform.SetTranslation(tuple(float(v) for v in linear @ centre + itk[:3, 3] - centre))
    return transform


def _nearest_rotation(linear: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(linear)
    return u @ np.diag([1.0, 1.0, np.sign(np.linalg.det(u @ vt))]) @ vt


def _from_itk(transform: _ItkLinear) -> np.ndarray:
    """4x4 of ITK's ``x -> A (x - c) + c + t`` (fixed -> moving)."""
    linear = np.array(transform.GetMatrix()).reshape(3, 3)
    centre = np.array(transform.GetCenter())
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = np.array(transform.GetTranslation()) + centre - linear @ centre
    return matrix
