"""Image filters of issue #16 as data: name -> (pure function, parameter specs), see docs/filters.md.

Every filter maps a volume ``[z, y, x]`` (any real dtype, worked in float32) with its voxel
spacing ``(z, y, x)`` in mm to a float32 array of the same shape. Parameters are physical:
lengths in mm, frequencies in cycles/mm along each axis. ``dims=3`` filters the volume as a
whole; ``dims=2`` filters each slice in-plane (axes y, x) alone — a one-slice volume with
``dims=2`` is the interactive preview, which :func:`filter_preview` computes at reduced
in-plane resolution for the filters whose ``preview_reduction`` says so (their full-resolution
2-D cost on a 512 x 512 slice exceeds the 50 ms budget, docs/filters.md): the slice's f x f block
mean at f times the spacing, filtered, then bilinearly interpolated back onto the slice's grid.
``filter_apply`` (the derived series) always works at full resolution.

Spatial filters run in SimpleITK on an image carrying the spacing, so ITK converts mm itself
where its filter is defined physically; radii of neighbourhood filters become voxels per axis
here. Frequency filters multiply the real FFT of a reflect-padded slice or block by a radial
response (numpy >= 2 keeps float32 as complex64); a volume is cut into z blocks with overlapping
margins so that no block exceeds ``_BLOCK_VOXELS``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import SimpleITK as sitk
from django.utils.translation import gettext

from gateway.i18n import gettext_noop
from rendering.said import SaidError

Params = Mapping[str, float]
Spacing = tuple[float, float, float]

# A 3-D block's padded voxels: its complex64 spectrum (~4 bytes a voxel) and its response
# (~2 bytes) are the only block-sized arrays, ~200 MB together at 32 Mi voxels.
_BLOCK_VOXELS = 1 << 25
_Z_PASS_VOXELS = 1 << 20
# ITK's recursive Gaussians refuse fewer than four pixels along a filtered axis.
_MIN_AXIS_VOXELS = 4
# Padding margins are where a step's filtered tail falls under this fraction of the step.
_TAIL_TOLERANCE = 1e-3
_MIN_MARGIN_VOXELS = 4


def _shown(text: str) -> str:
    """A registry's words (marked ``gettext_noop`` where written) as the viewer's reader reads them."""
    return gettext(text) if text else ""


class FilterError(SaidError, ValueError):
    """A filter request that cannot run: unknown filter, bad parameter, volume, spacing or dims (said)."""


@dataclass(frozen=True)
class ParamSpec:
    """One parameter as the viewer shows it: ``minimum <= value <= maximum``, both inclusive."""

    name: str
    unit: str
    default: float
    minimum: float
    maximum: float
    description: str
    integer: bool = False

    def as_dict(self) -> dict[str, Any]:
        """For the viewer's menu: its words (description, unit) in the active language."""
        return {"name": self.name, "unit": _shown(self.unit), "default": self.default,
                "minimum": self.minimum, "maximum": self.maximum, "integer": self.integer,
                "description": _shown(self.description)}


class Domain(StrEnum):
    SPATIAL = "spatial"
    FREQUENCY = "frequency"


VolumeFilter = Callable[[np.ndarray, Spacing, Params, int], np.ndarray]


@dataclass(frozen=True)
class FilterSpec:
    """A registry entry; ``function(volume, spacing, params, dims)`` expects validated input."""

    name: str
    domain: Domain
    description: str
    params: tuple[ParamSpec, ...]
    function: VolumeFilter
    preview_reduction: int = 1
    """In-plane factor of the interactive preview (1: full resolution), set from measured cost."""

    def defaults(self) -> dict[str, float]:
        return {p.name: p.default for p in self.params}

    def as_dict(self) -> dict[str, Any]:
        """For the viewer's menu: its words in the active language."""
        return {"name": self.name, "domain": self.domain.value, "description": _shown(self.description),
                "dims": [2, 3], "params": [p.as_dict() for p in self.params]}


# --- spatial filters: SimpleITK on an image that carries the spacing -------------------------

SitkCall = Callable[[sitk.Image, Params], sitk.Image]


def _spatial(call: SitkCall) -> VolumeFilter:
    def apply(volume: np.ndarray, spacing: Spacing, params: Params, dims: int) -> np.ndarray:
        if dims == 3:
            return _through_sitk(volume, spacing, call, params)
        out = np.empty(volume.shape, np.float32)
        for k, plane in enumerate(volume):
            out[k] = _through_sitk(plane, spacing[1:], call, params)
        return out
    return apply


def _through_sitk(array: np.ndarray, spacing: tuple[float, ...], call: SitkCall,
                  params: Params) -> np.ndarray:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(spacing)))
    result = call(image, params)
    del image
    return np.asarray(sitk.GetArrayFromImage(result), dtype=np.float32)


def _voxel_radius(image: sitk.Image, radius_mm: float) -> list[int]:
    """Neighbourhood radius per axis (x, y[, z]): the neighbours whose centres lie within radius_mm."""
    return [math.floor(radius_mm / s + 1e-9) for s in image.GetSpacing()]


def _stable_time_step(image: sitk.Image, fraction: float) -> float:
    """ITK's explicit schemes are stable below min spacing / 2^(dims + 1) (it warns above)."""
    return fraction * min(image.GetSpacing()) / 2 ** (image.GetDimension() + 1)


def _gaussian(image: sitk.Image, p: Params) -> sitk.Image:
    return sitk.SmoothingRecursiveGaussian(image, p["sigma_mm"])


def _median(image: sitk.Image, p: Params) -> sitk.Image:
    return sitk.Median(image, _voxel_radius(image, p["radius_mm"]))


def _mean(image: sitk.Image, p: Params) -> sitk.Image:
    return sitk.Mean(image, _voxel_radius(image, p["radius_mm"]))


def _bilateral(image: sitk.Image, p: Params) -> sitk.Image:
    return sitk.Bilateral(image, domainSigma=p["domain_sigma_mm"], rangeSigma=p["range_sigma"])


def _curvature_flow(image: sitk.Image, p: Params) -> sitk.Image:
    return sitk.CurvatureFlow(image, timeStep=_stable_time_step(image, p["time_step"]),
                              numberOfIterations=int(p["iterations"]))


def _curvature_anisotropic(image: sitk.Image, p: Params) -> sitk.Image:
    return sitk.CurvatureAnisotropicDiffusion(
        image, timeStep=_stable_time_step(image, p["time_step"]), conductanceParameter=p["conductance"],
        conductanceScalingUpdateInterval=1, numberOfIterations=int(p["iterations"]))


def _gradient_anisotropic(image: sitk.Image, p: Params) -> sitk.Image:
    return sitk.GradientAnisotropicDiffusion(
        image, timeStep=_stable_time_step(image, p["time_step"]), conductanceParameter=p["conductance"],
        conductanceScalingUpdateInterval=1, numberOfIterations=int(p["iterations"]))


def _gradient_magnitude(image: sitk.Image, p: Params) -> sitk.Image:
    return sitk.GradientMagnitudeRecursiveGaussian(image, sigma=p["sigma_mm"])


def _laplacian(image: sitk.Image, p: Params) -> sitk.Image:
    return sitk.LaplacianRecursiveGaussian(image, sigma=p["sigma_mm"])


def _unsharp(image: sitk.Image, p: Params) -> sitk.Image:
    return sitk.UnsharpMask(image, sigmas=[p["sigma_mm"]] * image.GetDimension(), amount=p["amount"],
                            threshold=0.0, clamp=False)


def _opening(image: sitk.Image, p: Params) -> sitk.Image:
    return sitk.GrayscaleMorphologicalOpening(
        image, kernelRadius=_voxel_radius(image, p["radius_mm"]), kernelType=sitk.sitkBall)


def _closing(image: sitk.Image, p: Params) -> sitk.Image:
    return sitk.GrayscaleMorphologicalClosing(
        image, kernelRadius=_voxel_radius(image, p["radius_mm"]), kernelType=sitk.sitkBall)


def _otsu(image: sitk.Image, p: Params) -> sitk.Image:
    # ITK's "inside" is at or below the threshold; the bright class is the one marked 1.
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetInsideValue(0)
    otsu.SetOutsideValue(1)
    otsu.SetNumberOfHistogramBins(int(p["bins"]))
    return otsu.Execute(image)


def _threshold(image: sitk.Image, p: Params) -> sitk.Image:
    return sitk.BinaryThreshold(image, lowerThreshold=p["low"], upperThreshold=p["high"],
                                insideValue=1, outsideValue=0)


# --- frequency filters: radial response on the real FFT of a reflect-padded block -------------

Response = Callable[[np.ndarray, Params], np.ndarray]


def _frequency(response: Response) -> VolumeFilter:
    def apply(volume: np.ndarray, spacing: Spacing, params: Params, dims: int) -> np.ndarray:
        def gain_of(f: np.ndarray) -> np.ndarray:
            return response(f, params)
        margins = (0,) * (3 - dims) + tuple(
            _margin_voxels(gain_of, spacing[axis], volume.shape[axis]) for axis in range(3 - dims, 3))
        return _frequency_filtered(volume, spacing, gain_of, margins, dims)
    return apply


def _margin_voxels(gain_of: Callable[[np.ndarray], np.ndarray], step_mm: float, n: int) -> int:
    """Reflect margin along one axis: the wrap-around seam is a step, and a step's error at
    distance d is the 1-D kernel's tail beyond d, against the step's own filtered height
    (the kernel projected on the axis, whose transform is the response along that axis).
    Capped at the axis length."""
    probe = _fft_length(max(256, 8 * n))
    gain = gain_of(np.fft.rfftfreq(probe, step_mm)).astype(np.float64)
    kernel = np.fft.irfft(gain, probe)[: probe // 2]
    tail = np.abs(np.cumsum(kernel[::-1])[::-1])
    beyond = np.flatnonzero(tail >= _TAIL_TOLERANCE * abs(gain[0]))
    margin = int(beyond[-1]) + 1 if beyond.size else 0
    return min(max(_MIN_MARGIN_VOXELS, margin), n)


@dataclass(frozen=True)
class _PlanePadding:
    """Reflect padding of a (y, x) plane to an FFT-friendly shape, and the crop back."""

    shape: tuple[int, int]
    rows: np.ndarray
    cols: np.ndarray
    inside: tuple[slice, slice]

    @classmethod
    def of(cls, ny: int, nx: int, my: int, mx: int) -> _PlanePadding:
        shape = (_fft_length(ny + 2 * my), _fft_length(nx + 2 * mx))
        rows, cols = np.ix_(_reflected(-my, shape[0], ny), _reflected(-mx, shape[1], nx))
        return cls(shape, rows, cols, (slice(my, my + ny), slice(mx, mx + nx)))

    def spectrum(self, plane: np.ndarray) -> np.ndarray:
        return np.fft.rfft2(plane[self.rows, self.cols])

    def cropped(self, spectrum: np.ndarray) -> np.ndarray:
        return np.fft.irfft2(spectrum, s=self.shape)[self.inside]


def _frequency_filtered(volume: np.ndarray, spacing: Spacing, gain_of: Callable[[np.ndarray], np.ndarray],
                        margins: tuple[int, ...], dims: int) -> np.ndarray:
    padding = _PlanePadding.of(*volume.shape[1:], *margins[1:])
    if dims == 2:
        return _slices_filtered(volume, padding, _radial_gain(padding.shape, spacing[1:], gain_of))
    return _blocks_filtered(volume, spacing, gain_of, margins[0], padding)


def _slices_filtered(volume: np.ndarray, padding: _PlanePadding, gain: np.ndarray) -> np.ndarray:
    out = np.empty(volume.shape, np.float32)
    for k, plane in enumerate(volume):
        out[k] = padding.cropped(padding.spectrum(plane) * gain)
    return out


def _blocks_filtered(volume: np.ndarray, spacing: Spacing, gain_of: Callable[[np.ndarray], np.ndarray],
                     mz: int, padding: _PlanePadding) -> np.ndarray:
    """z blocks of ``core`` slices, each transformed with ``mz`` slices of context either side."""
    nz = volume.shape[0]
    core = _block_core(nz, padding.shape[0] * padding.shape[1], mz)
    depth = _fft_length(core + 2 * mz)
    gain = _radial_gain((depth, *padding.shape), spacing, gain_of)
    out = np.empty(volume.shape, np.float32)
    for z0 in range(0, nz, core):
        spectrum = _block_spectrum(volume, _reflected(z0 - mz, depth, nz), padding)
        spectrum *= gain
        _fft_along_z(spectrum, np.fft.ifft)
        for k in range(z0, min(z0 + core, nz)):
            out[k] = padding.cropped(spectrum[mz + k - z0])
    return out


def _block_spectrum(volume: np.ndarray, zs: np.ndarray, padding: _PlanePadding) -> np.ndarray:
    """rfftn of the padded block, built a plane at a time so that no padded copy of it exists."""
    first = padding.spectrum(volume[zs[0]])
    spectrum = np.empty((zs.size, *first.shape), first.dtype)
    spectrum[0] = first
    for k in range(1, zs.size):
        spectrum[k] = padding.spectrum(volume[zs[k]])
    _fft_along_z(spectrum, np.fft.fft)
    return spectrum


def _fft_along_z(spectrum: np.ndarray, transform: Callable[..., np.ndarray]) -> None:
    """Transform along axis 0 in place, a few rows at a time to keep the temporaries small."""
    rows = max(1, _Z_PASS_VOXELS // (spectrum.shape[0] * spectrum.shape[2]))
    for y0 in range(0, spectrum.shape[1], rows):
        spectrum[:, y0:y0 + rows] = transform(spectrum[:, y0:y0 + rows], axis=0)


def _block_core(nz: int, plane_voxels: int, mz: int) -> int:
    """Slices each block contributes, its margins included, within the voxel budget."""
    core = max(1, _BLOCK_VOXELS // plane_voxels - 2 * mz)
    blocks = math.ceil(nz / min(core, nz))
    return math.ceil(nz / blocks)


def _reflected(start: int, length: int, n: int) -> np.ndarray:
    """Indices start .. start+length-1 mirrored into [0, n) about the half-voxel edges."""
    i = np.mod(np.arange(start, start + length), 2 * n)
    return np.where(i < n, i, 2 * n - 1 - i)


def _fft_length(n: int) -> int:
    """The smallest 2^a 3^b 5^c >= n: pocketfft is several times slower on large prime factors."""
    length = n
    while True:
        rest = length
        for p in (2, 3, 5):
            while rest % p == 0:
                rest //= p
        if rest == 1:
            return length
        length += 1


def _radial_gain(shape: tuple[int, ...], spacing: tuple[float, ...],
                 gain_of: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The response on the rfftn grid of ``shape``: |f| in cycles/mm from each axis's spacing."""
    grids = [np.fft.fftfreq(n, step) for n, step in zip(shape[:-1], spacing[:-1], strict=True)]
    grids.append(np.fft.rfftfreq(shape[-1], spacing[-1]))
    radial = np.zeros([f.size for f in grids], np.float32)
    for axis, f in enumerate(grids):
        view = [1] * len(grids)
        view[axis] = f.size
        radial += np.square(f).astype(np.float32).reshape(view)
    np.sqrt(radial, out=radial)
    return np.asarray(gain_of(radial), dtype=np.float32)


def _gaussian_mtf(f: np.ndarray, fwhm_mm: float) -> np.ndarray:
    """MTF of a Gaussian PSF of this FWHM: exp(-(pi * FWHM * f)^2 / (4 ln 2))."""
    return np.exp(-np.square(np.pi * fwhm_mm * f) / np.float32(4.0 * math.log(2.0)))


def _butterworth(f: np.ndarray, p: Params) -> np.ndarray:
    with np.errstate(over="ignore"):
        return 1.0 / np.sqrt(1.0 + np.power(f / np.float32(p["cutoff"]), 2 * int(p["order"])))


def _raised_cosine(alpha: float) -> Response:
    def window(f: np.ndarray, p: Params) -> np.ndarray:
        ratio = f / np.float32(p["cutoff"])
        return np.where(ratio <= 1.0, alpha + (1.0 - alpha) * np.cos(np.pi * ratio), 0.0)
    return window


def _metz(f: np.ndarray, p: Params) -> np.ndarray:
    """[1 - (1 - MTF^2)^X] / MTF, as -expm1(X log1p(-MTF^2)) / MTF to keep precision where MTF -> 0."""
    mtf = _gaussian_mtf(f, p["fwhm_mm"])
    with np.errstate(divide="ignore"):
        numerator = -np.expm1(np.float32(p["power"]) * np.log1p(-np.square(mtf)))
    return np.divide(numerator, mtf, out=np.zeros_like(mtf), where=mtf > 0)


def _wiener(f: np.ndarray, p: Params) -> np.ndarray:
    mtf = _gaussian_mtf(f, p["fwhm_mm"])
    return mtf / (np.square(mtf) + np.float32(p["nsr"]))


# --- the registry -------------------------------------------------------------------------------
# Every description and worded unit is marked for translation: the viewer's filter menu shows them
# in its reader's language (``as_dict``).

_IMAGE_UNITS = gettext_noop("image units")
_SIGMA = ParamSpec("sigma_mm", "mm", 1.0, 0.05, 50.0, gettext_noop("Standard deviation of the Gaussian."))
_STEP = ParamSpec("time_step", gettext_noop("x stable step"), 0.5, 0.01, 1.0,
                  gettext_noop("Fraction of ITK's stable step, min spacing / 2^(dims+1) mm."))
_ITERATIONS = ParamSpec("iterations", "", 5, 1, 100, gettext_noop("Number of explicit update steps."),
                        integer=True)
_CONDUCTANCE = ParamSpec("conductance", gettext_noop("x mean gradient"), 3.0, 0.1, 50.0,
                         gettext_noop("Edges stronger than this multiple of the mean gradient magnitude "
                                      "are kept."))
_RADIUS = ParamSpec("radius_mm", "mm", 1.0, 0.0, 10.0,
                    gettext_noop("Half-width: the voxels whose centres lie within it, per axis."))
_BALL = ParamSpec("radius_mm", "mm", 2.0, 0.0, 20.0,
                  gettext_noop("Ball radius: the voxels whose centres lie within it, per axis."))
_CUTOFF = ParamSpec("cutoff", "cycles/mm", 0.1, 0.001, 10.0,
                    gettext_noop("Cut-off frequency (Nyquist is 1 / (2 x spacing) along each axis)."))
# Translators: FWHM (full width at half maximum) and PSF (point spread function) are usually kept.
_FWHM = ParamSpec("fwhm_mm", "mm", 8.0, 0.1, 100.0,
                  gettext_noop("FWHM of the system PSF, modelled as a Gaussian."))
_DIFFUSION_PARAMS = (_STEP, _CONDUCTANCE, _ITERATIONS)
# Preview factor of the filters whose 2-D filter of a 512 x 512 slice at 0.7 mm costs more than the
# 50 ms preview budget with their defaults (bilateral ~207 ms, the diffusions ~48-61 ms, every
# other filter <= 13 ms; docs/filters.md, Performance): a quarter of the pixels brings them to
# ~5-20 ms. A table, not a run-time timing, so that a preview is the same picture every time.
_SLOW_PREVIEW = 2

FILTERS: Mapping[str, FilterSpec] = {spec.name: spec for spec in (
    FilterSpec("gaussian", Domain.SPATIAL, gettext_noop("Gaussian smoothing (recursive, ITK)."),
               (_SIGMA,), _spatial(_gaussian)),
    FilterSpec("median", Domain.SPATIAL, gettext_noop("Median of a box neighbourhood."),
               (_RADIUS,), _spatial(_median)),
    FilterSpec("mean", Domain.SPATIAL, gettext_noop("Mean of a box neighbourhood."),
               (_RADIUS,), _spatial(_mean)),
    FilterSpec("bilateral", Domain.SPATIAL,
               gettext_noop("Edge-preserving smoothing: Gaussian in space and in value."), (
        ParamSpec("domain_sigma_mm", "mm", 2.0, 0.1, 20.0, gettext_noop("Spatial standard deviation.")),
        ParamSpec("range_sigma", _IMAGE_UNITS, 50.0, 0.001, 1.0e6,
                  gettext_noop("Standard deviation in value.")),
    ), _spatial(_bilateral), preview_reduction=_SLOW_PREVIEW),
    FilterSpec("curvature_flow", Domain.SPATIAL, gettext_noop("Level-set curvature flow smoothing."),
               (_STEP, _ITERATIONS), _spatial(_curvature_flow)),
    FilterSpec("curvature_anisotropic_diffusion", Domain.SPATIAL,
               gettext_noop("Modified curvature diffusion."),
               _DIFFUSION_PARAMS, _spatial(_curvature_anisotropic), preview_reduction=_SLOW_PREVIEW),
    FilterSpec("gradient_anisotropic_diffusion", Domain.SPATIAL, gettext_noop("Perona-Malik diffusion."),
               _DIFFUSION_PARAMS, _spatial(_gradient_anisotropic), preview_reduction=_SLOW_PREVIEW),
    FilterSpec("gradient_magnitude", Domain.SPATIAL,
               gettext_noop("|gradient| of the smoothed image, per mm."),
               (_SIGMA,), _spatial(_gradient_magnitude)),
    FilterSpec("laplacian", Domain.SPATIAL,
               gettext_noop("Laplacian of the Gaussian-smoothed image, per mm^2."),
               (_SIGMA,), _spatial(_laplacian)),
    FilterSpec("unsharp", Domain.SPATIAL,
               gettext_noop("Unsharp mask: image + amount x (image - Gaussian)."), (
        ParamSpec("sigma_mm", "mm", 2.0, 0.05, 50.0,
                  gettext_noop("Standard deviation of the blur subtracted.")),
        ParamSpec("amount", "", 0.5, 0.0, 10.0, gettext_noop("Weight of the detail added back.")),
    ), _spatial(_unsharp)),
    FilterSpec("morphological_open", Domain.SPATIAL, gettext_noop("Grey-scale opening (bright detail)."),
               (_BALL,), _spatial(_opening)),
    FilterSpec("morphological_close", Domain.SPATIAL, gettext_noop("Grey-scale closing (dark detail)."),
               (_BALL,), _spatial(_closing)),
    FilterSpec("otsu_threshold", Domain.SPATIAL, gettext_noop("1 above Otsu's threshold, 0 at or below."), (
        ParamSpec("bins", "", 128, 2, 4096, gettext_noop("Histogram bins."), integer=True),
    ), _spatial(_otsu)),
    FilterSpec("threshold", Domain.SPATIAL, gettext_noop("1 where low <= value <= high, else 0."), (
        ParamSpec("low", _IMAGE_UNITS, 0.0, -1.0e7, 1.0e7, gettext_noop("Lowest value kept.")),
        ParamSpec("high", _IMAGE_UNITS, 1000.0, -1.0e7, 1.0e7, gettext_noop("Highest value kept.")),
    ), _spatial(_threshold)),
    FilterSpec("butterworth_lowpass", Domain.FREQUENCY,
               gettext_noop("1 / sqrt(1 + (f / cutoff)^(2 order))."), (
        _CUTOFF, ParamSpec("order", "", 5, 1, 20, gettext_noop("Steepness of the roll-off."), integer=True),
    ), _frequency(_butterworth)),
    FilterSpec("hann", Domain.FREQUENCY,
               gettext_noop("0.5 (1 + cos(pi f / cutoff)) up to the cut-off, 0 beyond."),
               (_CUTOFF,), _frequency(_raised_cosine(0.5))),
    FilterSpec("hamming", Domain.FREQUENCY,
               gettext_noop("0.54 + 0.46 cos(pi f / cutoff) up to the cut-off, 0 beyond."),
               (_CUTOFF,), _frequency(_raised_cosine(0.54))),
    FilterSpec("metz", Domain.FREQUENCY,
               gettext_noop("Resolution recovery: [1 - (1 - MTF^2)^X] / MTF, Gaussian MTF."), (
        _FWHM, ParamSpec("power", "", 10.0, 1.0, 100.0,
                         gettext_noop("X: 1 is the MTF itself (a blur); larger restores toward the inverse "
                                      "filter.")),
    ), _frequency(_metz)),
    FilterSpec("wiener", Domain.FREQUENCY,
               gettext_noop("Resolution recovery: MTF / (MTF^2 + NSR), Gaussian MTF."), (
        _FWHM, ParamSpec("nsr", "", 0.01, 1.0e-6, 10.0,
                         gettext_noop("Noise-to-signal power ratio, flat in frequency.")),
    ), _frequency(_wiener)),
)}


# --- public entry points --------------------------------------------------------------------

def filters_vocabulary() -> list[dict[str, Any]]:
    """JSON-ready menu of every filter and its parameters, in registry order."""
    return [spec.as_dict() for spec in FILTERS.values()]


def filter_validate(*, name: str, params: Mapping[str, object]) -> dict[str, float]:
    """Every parameter of ``name``, checked against its spec; the viewer sends them all."""
    spec = FILTERS.get(name)
    if spec is None:
        raise FilterError(gettext_noop("unknown filter %(name)s; known: %(known)s"), name=repr(name),
                          known=", ".join(FILTERS))
    unknown = set(params) - {p.name for p in spec.params}
    if unknown:
        raise FilterError(gettext_noop("%(name)s: unknown parameter(s) %(parameters)s"), name=name,
                          parameters=", ".join(sorted(unknown)))
    values = {p.name: _param_value(name, p, params) for p in spec.params}
    if name == "threshold" and values["low"] > values["high"]:
        raise FilterError(gettext_noop("threshold: low must not exceed high"))
    return values


def _param_value(filter_name: str, spec: ParamSpec, params: Mapping[str, object]) -> float:
    where = f"{filter_name}: {spec.name}"
    if spec.name not in params:
        raise FilterError(gettext_noop("%(where)s is missing"), where=where)
    value = params[spec.name]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FilterError(gettext_noop("%(where)s must be a finite number, got %(value)s"), where=where,
                          value=repr(value))
    if spec.integer and value != int(value):
        raise FilterError(gettext_noop("%(where)s must be a whole number, got %(value)s"), where=where,
                          value=repr(value))
    if not spec.minimum <= value <= spec.maximum:
        bounds = f"[{spec.minimum}, {spec.maximum}] {spec.unit}".rstrip()
        raise FilterError(gettext_noop("%(where)s = %(value)s is outside %(bounds)s"),
                          where=where, value=str(value), bounds=bounds)
    return int(value) if spec.integer else float(value)


def filter_apply(*, volume: np.ndarray, spacing: tuple[float, float, float], name: str,
                 params: Mapping[str, object], dims: int = 3) -> np.ndarray:
    """The filtered volume, float32, same shape; ``dims=2`` filters each slice in-plane alone."""
    values = filter_validate(name=name, params=params)
    voxels = _checked_volume(volume, dims)
    return FILTERS[name].function(voxels, _checked_spacing(spacing), values, dims)


@dataclass(frozen=True)
class Preview:
    """A preview's values on the slice's own grid, and the in-plane factor they were made at."""

    values: np.ndarray
    reduced: int


def filter_preview(*, volume: np.ndarray, spacing: tuple[float, float, float], name: str,
                   params: Mapping[str, object]) -> Preview:
    """The interactive preview: the 2-D filter of each slice of ``volume`` (usually one), at the
    filter's ``preview_reduction``. Reduced, the slice's f x f block mean (edge-replicated to a
    multiple of f) is filtered at f times the in-plane spacing, so parameters in mm keep their
    meaning, and a ``time_step`` (a fraction of the stable step, which grows with the spacing) is
    divided by f so that each iteration diffuses as far as at full resolution; the result is
    interpolated bilinearly back onto the slice's pixels. A slice too small to reduce is filtered
    at full resolution (``reduced`` 1)."""
    values = filter_validate(name=name, params=params)
    voxels = _checked_volume(volume, 2)
    mm = _checked_spacing(spacing)
    spec = FILTERS[name]
    factor = spec.preview_reduction
    if factor == 1 or min(-(-n // factor) for n in voxels.shape[1:]) < _MIN_AXIS_VOXELS:
        return Preview(spec.function(voxels, mm, values, 2), 1)
    if "time_step" in values:
        values["time_step"] /= factor
    coarse = spec.function(block_mean(voxels, factor), (mm[0], mm[1] * factor, mm[2] * factor), values, 2)
    return Preview(bilinear_upsampled(coarse, factor, voxels.shape[1:]), factor)


def block_mean(volume: np.ndarray, factor: int) -> np.ndarray:
    """Each slice's ``factor`` x ``factor`` block means, float32; the last row and column are
    repeated to make each in-plane axis a multiple of ``factor``."""
    nz, ny, nx = volume.shape
    padded = np.pad(volume, ((0, 0), (0, -ny % factor), (0, -nx % factor)), mode="edge")
    blocks = padded.reshape(nz, padded.shape[1] // factor, factor, padded.shape[2] // factor, factor)
    return blocks.mean(axis=(2, 4), dtype=np.float32)


def bilinear_upsampled(coarse: np.ndarray, factor: int, shape: tuple[int, ...]) -> np.ndarray:
    """Bilinear interpolation of each slice of a block-mean grid at the centres of the ``shape``
    pixels it was made from: fine pixel j lies at coarse index (j + 0.5) / factor - 0.5, clamped
    to the outermost coarse centres (no shift, no extrapolation)."""
    out = coarse
    for axis, n in zip((1, 2), shape, strict=True):
        position = np.clip((np.arange(n) + 0.5) / factor - 0.5, 0.0, coarse.shape[axis] - 1)
        low = np.floor(position).astype(np.intp)
        high = np.minimum(low + 1, coarse.shape[axis] - 1)
        weight = (position - low).astype(np.float32)
        view = [1, 1, 1]
        view[axis] = n
        weight = weight.reshape(view)
        out = np.take(out, low, axis=axis) * (1 - weight) + np.take(out, high, axis=axis) * weight
    return np.asarray(out, dtype=np.float32)


def _checked_volume(volume: np.ndarray, dims: int) -> np.ndarray:
    if dims not in (2, 3):
        raise FilterError(f"dims must be 2 or 3, got {dims!r}")
    array = np.asarray(volume)
    if array.ndim != 3:
        raise FilterError(f"volume must be [z, y, x], got {array.ndim} axes")
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise FilterError(f"volume must hold real numbers, got {array.dtype}")
    filtered_axes = array.shape[3 - dims:]
    if min(filtered_axes) < _MIN_AXIS_VOXELS:
        raise FilterError(gettext_noop("each filtered axis needs >= %(least)s voxels, got shape %(shape)s "
                                       "with dims=%(dims)s (filter a single slice with dims=2)"),
                          least=_MIN_AXIS_VOXELS, shape=str(array.shape), dims=dims)
    return np.ascontiguousarray(array, dtype=np.float32)


def _checked_spacing(spacing: tuple[float, float, float]) -> Spacing:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise FilterError(f"spacing must be three positive mm values (z, y, x), got {spacing!r}")
    return values[0], values[1], values[2]

