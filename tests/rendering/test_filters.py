"""The filters of issue #16 against references computed here: SimpleITK called directly with the mm
parameters converted to voxels independently, numpy convolutions and medians, and the frequency
responses' formulas evaluated at the frequency of a cosine. Spacing is anisotropic throughout so
that a filter working in voxels instead of mm fails."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
from numpy.lib.stride_tricks import sliding_window_view

from rendering.engine import filters
from rendering.engine.filters import (
    FILTERS,
    FilterError,
    filter_apply,
    filter_preview,
    filter_validate,
    filters_vocabulary,
)

SPACING = (2.0, 0.8, 0.8)
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))

# Parameters that make every filter do something visible on the test volume, and make dims matter.
CASES: dict[str, dict[str, float]] = {
    "gaussian": {"sigma_mm": 1.6},
    "median": {"radius_mm": 3.9},
    "mean": {"radius_mm": 3.9},
    "bilateral": {"domain_sigma_mm": 2.0, "range_sigma": 80.0},
    "curvature_flow": {"time_step": 0.8, "iterations": 4},
    "curvature_anisotropic_diffusion": {"time_step": 0.8, "conductance": 2.0, "iterations": 4},
    "gradient_anisotropic_diffusion": {"time_step": 0.8, "conductance": 2.0, "iterations": 4},
    "gradient_magnitude": {"sigma_mm": 1.6},
    "laplacian": {"sigma_mm": 1.6},
    "unsharp": {"sigma_mm": 2.0, "amount": 0.7},
    "morphological_open": {"radius_mm": 3.9},
    "morphological_close": {"radius_mm": 3.9},
    "otsu_threshold": {"bins": 128},
    "threshold": {"low": 150.0, "high": 400.0},
    "butterworth_lowpass": {"cutoff": 0.15, "order": 4},
    "hann": {"cutoff": 0.2},
    "hamming": {"cutoff": 0.2},
    "metz": {"fwhm_mm": 5.0, "power": 3.0},
    "wiener": {"fwhm_mm": 5.0, "nsr": 0.05},
}
POINTWISE = {"threshold"}


@pytest.fixture(scope="module")
def volume() -> np.ndarray:
    """24 x 64 x 64, CT-like values: blobs whose size and brightness change along z, plus noise."""
    rng = np.random.default_rng(16)
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in (24, 64, 64)), indexing="ij")
    values = 40.0 + 3.0 * x + 10.0 * z
    blobs = [((8, 20, 22), 18.0, 300.0), ((15, 42, 40), 12.0, 500.0), ((4, 50, 12), 8.0, -200.0)]
    for (cz, cy, cx), radius_mm, height in blobs:
        d2 = (SPACING[0] * (z - cz)) ** 2 + (SPACING[1] * (y - cy)) ** 2 + (SPACING[2] * (x - cx)) ** 2
        values += height * (d2 <= radius_mm ** 2)
    values += rng.normal(0.0, 15.0, values.shape)
    return values.astype(np.float32)


def _apply(name: str, volume: np.ndarray, dims: int = 3, spacing=SPACING, **overrides: float) -> np.ndarray:
    params = {**CASES[name], **overrides}
    return filter_apply(volume=volume, spacing=spacing, name=name, params=params, dims=dims)


def _unit_image(array: np.ndarray) -> sitk.Image:
    return sitk.GetImageFromArray(array)


def _mm_image(array: np.ndarray, spacing=SPACING) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(reversed(spacing[3 - array.ndim:])))
    return image


def _array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(image).astype(np.float32)


def _voxels_xyz(length_mm: float, spacing=SPACING) -> list[float]:
    return [length_mm / s for s in reversed(spacing)]


def _radius_xyz(radius_mm: float, spacing=SPACING) -> list[int]:
    """Neighbours whose centres lie within the radius: 3.9 mm is 1 voxel at 2 mm, 4 at 0.8 mm
    (rounding to the nearest would give 2 and 5)."""
    return [int(radius_mm // s) for s in reversed(spacing)]


def _scale(volume: np.ndarray) -> float:
    return float(np.ptp(volume))


# --- spatial filters ------------------------------------------------------------------------

def test_gaussian_equals_itk_given_sigma_in_voxels(volume):
    # Same ITK recursion fed sigma in voxels on a unit grid: equal to float32 rounding.
    reference = sitk.SmoothingRecursiveGaussian(_unit_image(volume), _voxels_xyz(1.6))
    np.testing.assert_allclose(_apply("gaussian", volume), _array(reference), atol=1e-5 * _scale(volume))


def test_gaussian_matches_exact_convolution_in_the_interior(volume):
    # The recursive filter approximates the Gaussian (Deriche); away from the faces it agrees with
    # a sampled-kernel convolution to ~0.2 % of the range here, where sigma is 0.8 voxel along z
    # (the IIR approximation's worst case; measured 0.17 %).
    sigma_voxels = [1.6 / s for s in SPACING]
    exact = _gaussian_numpy(volume, sigma_voxels)
    inner = (slice(4, -4), slice(8, -8), slice(8, -8))
    np.testing.assert_allclose(_apply("gaussian", volume)[inner], exact[inner], atol=3e-3 * _scale(volume))


def test_median_equals_numpy_median_of_the_edge_padded_box(volume):
    radius_zyx = _radius_xyz(3.9)[::-1]
    assert radius_zyx == [1, 4, 4]
    np.testing.assert_array_equal(_apply("median", volume), _box_numpy(volume, radius_zyx, np.median))


def test_mean_equals_numpy_mean_of_the_edge_padded_box(volume):
    # float32 sums in ITK against float64 here: ~1e-6 relative.
    reference = _box_numpy(volume, _radius_xyz(3.9)[::-1], np.mean)
    np.testing.assert_allclose(_apply("mean", volume), reference, atol=1e-5 * _scale(volume))


def test_bilateral_equals_itk_called_with_the_spacing(volume):
    # ITK's domain sigma is physical and one number, so the reference carries the spacing too
    # (and differs from one on a unit grid, so a filter losing the spacing fails here).
    reference = sitk.Bilateral(_mm_image(volume), domainSigma=2.0, rangeSigma=80.0)
    np.testing.assert_array_equal(_apply("bilateral", volume), _array(reference))


DIFFUSIONS = [
    ("curvature_flow", lambda image, step: sitk.CurvatureFlow(image, timeStep=step, numberOfIterations=4)),
    ("curvature_anisotropic_diffusion", lambda image, step: sitk.CurvatureAnisotropicDiffusion(
        image, timeStep=step, conductanceParameter=2.0, conductanceScalingUpdateInterval=1,
        numberOfIterations=4)),
    ("gradient_anisotropic_diffusion", lambda image, step: sitk.GradientAnisotropicDiffusion(
        image, timeStep=step, conductanceParameter=2.0, conductanceScalingUpdateInterval=1,
        numberOfIterations=4)),
]


@pytest.mark.parametrize("name, call", DIFFUSIONS)
def test_diffusion_equals_itk_at_the_fraction_of_its_stable_step(volume, name, call):
    stable_3d = min(SPACING) / 2 ** 4
    reference = call(_mm_image(volume), 0.8 * stable_3d)
    np.testing.assert_allclose(_apply(name, volume), _array(reference), atol=1e-5 * _scale(volume))


@pytest.mark.parametrize("name, call", DIFFUSIONS)
def test_diffusion_of_a_slice_takes_the_2d_stable_step(volume, name, call):
    stable_2d = min(SPACING[1:]) / 2 ** 3
    reference = call(_mm_image(volume[11]), 0.8 * stable_2d)
    np.testing.assert_allclose(_apply(name, volume[11:12], dims=2)[0], _array(reference),
                               atol=1e-5 * _scale(volume))


def test_gradient_magnitude_of_a_ramp_is_its_slope_per_mm():
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in (24, 48, 48)), indexing="ij")
    slope_per_mm = (3.0, -2.0, 5.0)
    ramp = sum(g * s * i for g, s, i in zip(slope_per_mm, SPACING, (z, y, x), strict=True))
    out = _apply("gradient_magnitude", ramp.astype(np.float32), sigma_mm=1.0)
    inner = (slice(6, -6), slice(10, -10), slice(10, -10))
    # ITK normalises its derivative kernels to be exact on polynomials: float32 rounding remains.
    np.testing.assert_allclose(out[inner], math.hypot(*slope_per_mm), rtol=1e-4)


def test_gradient_magnitude_equals_itk_called_with_the_spacing(volume):
    reference = sitk.GradientMagnitudeRecursiveGaussian(_mm_image(volume), sigma=1.6)
    np.testing.assert_array_equal(_apply("gradient_magnitude", volume), _array(reference))


def test_laplacian_of_a_quadratic_is_its_constant_per_mm2():
    z, y, x = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in (32, 48, 48)), indexing="ij")
    curvature = (1.0, 2.0, 3.0)
    mm = [i * s for i, s in zip((z, y, x), SPACING, strict=True)]
    bowl = sum(c * (m - m.mean()) ** 2 for c, m in zip(curvature, mm, strict=True))
    out = _apply("laplacian", bowl.astype(np.float32), sigma_mm=1.5)
    inner = (slice(10, -10), slice(16, -16), slice(16, -16))
    # Exact on a quadratic but for float32 rounding of values up to ~2e3 (measured 1e-5).
    np.testing.assert_allclose(out[inner], 2.0 * sum(curvature), rtol=1e-3)


def test_unsharp_is_the_image_plus_amount_times_its_detail(volume):
    blurred = _array(sitk.SmoothingRecursiveGaussian(_unit_image(volume), _voxels_xyz(2.0)))
    reference = volume + 0.7 * (volume - blurred)
    np.testing.assert_allclose(_apply("unsharp", volume), reference, atol=1e-4 * _scale(volume))


@pytest.mark.parametrize("name, call", [
    ("morphological_open", sitk.GrayscaleMorphologicalOpening),
    ("morphological_close", sitk.GrayscaleMorphologicalClosing),
])
def test_morphology_equals_itk_given_the_radius_in_voxels(volume, name, call):
    reference = call(_unit_image(volume), kernelRadius=_radius_xyz(3.9), kernelType=sitk.sitkBall)
    np.testing.assert_array_equal(_apply(name, volume), _array(reference))


def test_opening_removes_and_closing_adds(volume):
    opened, closed = _apply("morphological_open", volume), _apply("morphological_close", volume)
    assert (opened <= volume).all() and (closed >= volume).all()
    assert (opened < volume).mean() > 0.3 and (closed > volume).mean() > 0.3


def test_otsu_marks_values_above_itks_threshold(volume):
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetNumberOfHistogramBins(128)
    otsu.Execute(_mm_image(volume))
    out = _apply("otsu_threshold", volume)
    assert set(np.unique(out)) == {0.0, 1.0}
    np.testing.assert_array_equal(out, (volume > otsu.GetThreshold()).astype(np.float32))


def test_otsu_in_2d_thresholds_each_slice_on_its_own(volume):
    out = _apply("otsu_threshold", volume, dims=2)
    for k in (0, 12, 23):
        otsu = sitk.OtsuThresholdImageFilter()
        otsu.Execute(_mm_image(volume[k]))
        np.testing.assert_array_equal(out[k], (volume[k] > otsu.GetThreshold()).astype(np.float32))


def test_threshold_keeps_the_closed_interval(volume):
    out = _apply("threshold", volume)
    expected = ((volume >= 150.0) & (volume <= 400.0)).astype(np.float32)
    assert set(np.unique(out)) == {0.0, 1.0}
    np.testing.assert_array_equal(out, expected)


# --- frequency filters --------------------------------------------------------------------

def _mtf(f: float, fwhm_mm: float) -> float:
    sigma = fwhm_mm / FWHM_PER_SIGMA
    return math.exp(-2.0 * (math.pi * sigma * f) ** 2)


def _cosine(axis: int, target_cycles_per_mm: float, n: int = 128) -> tuple[np.ndarray, float]:
    """A unit cosine along ``axis`` (4 voxels across the others), sampled at voxel centres and
    even about both faces (a whole number of half periods), so reflection continues it exactly.
    Returns it with its frequency, the nearest such frequency to the target."""
    length_mm = n * SPACING[axis]
    f = round(target_cycles_per_mm * 2.0 * length_mm) / (2.0 * length_mm)
    line = np.cos(2.0 * math.pi * f * (np.arange(n) + 0.5) * SPACING[axis])
    shape = [4, 4, 4]
    shape[axis] = n
    view = [1, 1, 1]
    view[axis] = n
    return np.broadcast_to(line.reshape(view), shape).astype(np.float32), f


def _gain(name: str, axis: int, target: float, **params: float) -> tuple[float, float]:
    """(measured amplitude of the filtered unit cosine over its middle half, its frequency)."""
    wave, f = _cosine(axis, target)
    out = filter_apply(volume=wave, spacing=SPACING, name=name, params=params, dims=3)
    middle = [slice(None)] * 3
    middle[axis] = slice(wave.shape[axis] // 4, 3 * wave.shape[axis] // 4)
    basis = wave[tuple(middle)]
    return float((out[tuple(middle)] * basis).sum() / (basis * basis).sum()), f


AXES = pytest.mark.parametrize("axis", [0, 2], ids=["z_2mm", "x_0.8mm"])
# The padding margins are sized for a seam error <= 1e-3 of a step; float32 FFTs add ~1e-7.
GAIN_TOLERANCE = 1e-3


@AXES
def test_butterworth_passes_half_the_power_at_the_cutoff(axis):
    at_cutoff, _ = _gain("butterworth_lowpass", axis, 0.1, cutoff=_cosine(axis, 0.1)[1], order=5)
    assert at_cutoff == pytest.approx(1.0 / math.sqrt(2.0), abs=GAIN_TOLERANCE)
    above, f = _gain("butterworth_lowpass", axis, 0.15, cutoff=0.1, order=3)
    assert above == pytest.approx(1.0 / math.sqrt(1.0 + (f / 0.1) ** 6), abs=GAIN_TOLERANCE)
    below, f = _gain("butterworth_lowpass", axis, 0.07, cutoff=0.1, order=3)
    assert below == pytest.approx(1.0 / math.sqrt(1.0 + (f / 0.1) ** 6), abs=GAIN_TOLERANCE)


@AXES
@pytest.mark.parametrize("name, alpha", [("hann", 0.5), ("hamming", 0.54)])
def test_raised_cosine_windows_follow_their_formula_and_stop_at_the_cutoff(axis, name, alpha):
    half, _ = _gain(name, axis, 0.05, cutoff=2.0 * _cosine(axis, 0.05)[1])
    assert half == pytest.approx(alpha, abs=GAIN_TOLERANCE)
    inside, f = _gain(name, axis, 0.07, cutoff=0.2)
    assert inside == pytest.approx(alpha + (1.0 - alpha) * math.cos(math.pi * f / 0.2), abs=GAIN_TOLERANCE)
    beyond, _ = _gain(name, axis, 0.2, cutoff=0.15)
    assert beyond == pytest.approx(0.0, abs=GAIN_TOLERANCE)


@AXES
def test_metz_with_power_one_is_the_gaussian_mtf(axis):
    measured, f = _gain("metz", axis, 0.08, fwhm_mm=6.0, power=1.0)
    assert measured == pytest.approx(_mtf(f, 6.0), abs=GAIN_TOLERANCE)


@AXES
def test_metz_restores_by_its_formula(axis):
    measured, f = _gain("metz", axis, 0.08, fwhm_mm=6.0, power=4.0)
    m = _mtf(f, 6.0)
    assert m < 0.6
    assert measured == pytest.approx((1.0 - (1.0 - m * m) ** 4) / m, rel=GAIN_TOLERANCE)


@AXES
def test_wiener_follows_its_formula_and_tends_to_the_inverse_filter(axis):
    measured, f = _gain("wiener", axis, 0.08, fwhm_mm=6.0, nsr=0.05)
    m = _mtf(f, 6.0)
    assert measured == pytest.approx(m / (m * m + 0.05), rel=GAIN_TOLERANCE)
    nearly_inverse, _ = _gain("wiener", axis, 0.08, fwhm_mm=6.0, nsr=1e-6)
    assert 1.0 / m > 1.5
    assert nearly_inverse == pytest.approx(1.0 / m, rel=GAIN_TOLERANCE)


@pytest.mark.parametrize("block_voxels", [filters._BLOCK_VOXELS, 20_000], ids=["one_block", "z_blocks"])
def test_metz_blur_equals_gaussian_convolution_with_mirrored_faces(volume, monkeypatch, block_voxels):
    # X = 1 is the Gaussian MTF; reflect padding makes the faces mirror as np.pad("symmetric") does.
    # Remaining difference: the kernel tail cut at the seam (<= 1e-3 of a step by design).
    monkeypatch.setattr(filters, "_BLOCK_VOXELS", block_voxels)
    out = _apply("metz", volume, fwhm_mm=6.0, power=1.0)
    sigma_voxels = [6.0 / FWHM_PER_SIGMA / s for s in SPACING]
    np.testing.assert_allclose(out, _gaussian_numpy(volume, sigma_voxels), atol=1e-3 * _scale(volume))


def test_frequency_filter_does_not_wrap_around():
    block = np.zeros((8, 8, 128), np.float32)
    block[..., :16] = 1000.0
    out = filter_apply(volume=block, spacing=SPACING, name="hann", params={"cutoff": 0.1}, dims=2)
    assert np.abs(out[..., -16:]).max() < 1.0


# --- dims ---------------------------------------------------------------------------------

def test_cases_cover_the_registry():
    assert set(CASES) == set(FILTERS)


@pytest.mark.parametrize("name", list(CASES))
def test_2d_filters_each_slice_alone_in_plane(volume, name):
    flat = _apply(name, volume, dims=2)
    for k in (0, 11):
        alone = _apply(name, volume[k:k + 1], dims=2)[0]
        np.testing.assert_allclose(flat[k], alone, atol=1e-5 * _scale(volume))
    if name not in POINTWISE:
        assert np.abs(flat - _apply(name, volume)).max() > 1e-3 * max(1.0, float(np.ptp(flat)))


# --- interactive previews -------------------------------------------------------------------

# The filters whose full-resolution preview of a 512^2 slice exceeds 50 ms (docs/filters.md).
REDUCED = {"bilateral": lambda image, step: sitk.Bilateral(image, domainSigma=2.0, rangeSigma=80.0),
           **{name: call for name, call in DIFFUSIONS if name != "curvature_flow"}}


def test_the_slow_filters_and_only_they_preview_at_half_resolution():
    assert {name for name, spec in FILTERS.items() if spec.preview_reduction != 1} == set(REDUCED)
    assert all(FILTERS[name].preview_reduction == 2 for name in REDUCED)


def _half_resolution_reference(plane: np.ndarray, name: str) -> np.ndarray:
    """The filter run by SimpleITK on the slice's 2 x 2 block mean at twice the spacing (the
    diffusions at the full-resolution slice's stable step, i.e. half the coarse one), then
    linearly resampled by SimpleITK at the slice's pixel centres."""
    ny, nx = plane.shape
    padded = np.pad(plane.astype(np.float64), ((0, ny % 2), (0, nx % 2)), mode="edge")
    coarse = padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2).mean(axis=(1, 3))
    image = _mm_image(coarse.astype(np.float32), (SPACING[0], 2 * SPACING[1], 2 * SPACING[2]))
    filtered = REDUCED[name](image, 0.8 * min(SPACING[1:]) / 2 ** 3)
    filtered.SetOrigin((0.5 * SPACING[2], 0.5 * SPACING[1]))  # block centres on the slice's grid
    grid = sitk.Image(nx, ny, sitk.sitkFloat32)
    grid.SetSpacing((SPACING[2], SPACING[1]))
    return _array(sitk.Resample(filtered, grid, sitk.Transform(), sitk.sitkLinear, float("nan")))


@pytest.mark.parametrize("shape", [(64, 64), (63, 61)])
@pytest.mark.parametrize("name", list(REDUCED))
def test_slow_previews_are_the_filter_of_the_block_mean_at_twice_the_spacing(volume, name, shape):
    plane = volume[11, :shape[0], :shape[1]]
    preview = filter_preview(volume=plane[None], spacing=SPACING, name=name, params=CASES[name])
    assert preview.reduced == 2 and preview.values.shape == (1, *shape)
    assert preview.values.dtype == np.float32
    reference = _half_resolution_reference(plane, name)
    assert not np.isnan(reference).any()
    np.testing.assert_allclose(preview.values[0], reference, atol=1e-4 * _scale(volume))
    # a picture of the filter, not of the block mean alone or of the full-resolution filter
    full = _apply(name, plane[None], dims=2)[0]
    assert np.abs(preview.values[0] - full).max() > 1e-2 * _scale(volume)


@pytest.mark.parametrize("name", [name for name in CASES if name not in REDUCED])
def test_other_previews_are_the_full_resolution_2d_filter(volume, name):
    preview = filter_preview(volume=volume[11:12], spacing=SPACING, name=name, params=CASES[name])
    assert preview.reduced == 1
    np.testing.assert_array_equal(preview.values, _apply(name, volume[11:12], dims=2))


def test_a_slice_too_small_to_halve_previews_at_full_resolution(volume):
    plane = volume[11:12, :5, :40]  # 3 rows halved: fewer than ITK filters
    preview = filter_preview(volume=plane, spacing=SPACING, name="bilateral", params=CASES["bilateral"])
    assert preview.reduced == 1
    np.testing.assert_array_equal(preview.values, _apply("bilateral", plane, dims=2))


def test_block_mean_and_bilinear_return_keep_a_ramp_in_place():
    ramp = np.broadcast_to(3.0 * np.arange(40, dtype=np.float32), (1, 30, 40))
    coarse = filters.block_mean(ramp, 2)
    np.testing.assert_allclose(coarse[0, 0], 3.0 * (2 * np.arange(20) + 0.5))
    back = filters.bilinear_upsampled(coarse, 2, (30, 40))
    np.testing.assert_allclose(back[0, :, 1:-1], ramp[0, :, 1:-1], atol=1e-4)  # no shift
    np.testing.assert_allclose(back[0, :, 0], coarse[0, 0, 0])  # clamped, never extrapolated


def test_previews_refuse_what_the_filter_refuses(volume):
    with pytest.raises(FilterError, match="domain_sigma_mm"):
        filter_preview(volume=volume[11:12], spacing=SPACING, name="bilateral",
                       params={"domain_sigma_mm": 0.0, "range_sigma": 80.0})


def test_the_slow_filters_stay_full_resolution_outside_the_preview(volume):
    """The derived series (filter_apply, 2-D or 3-D) is the filter at the volume's own spacing."""
    reference = sitk.Bilateral(_mm_image(volume[11]), domainSigma=2.0, rangeSigma=80.0)
    np.testing.assert_array_equal(_apply("bilateral", volume[11:12], dims=2)[0], _array(reference))
    for name, call in REDUCED.items():
        reference = call(_mm_image(volume), 0.8 * min(SPACING) / 2 ** 4)
        np.testing.assert_allclose(_apply(name, volume), _array(reference), atol=1e-5 * _scale(volume))


def test_2d_gaussian_equals_itk_on_the_slice_in_voxels(volume):
    reference = sitk.SmoothingRecursiveGaussian(_unit_image(volume[11]), _voxels_xyz(1.6)[:2])
    np.testing.assert_allclose(_apply("gaussian", volume[11:12], dims=2)[0], _array(reference),
                               atol=1e-5 * _scale(volume))


def test_2d_metz_blur_is_in_plane_only(volume):
    sigma_voxels = [0.0] + [6.0 / FWHM_PER_SIGMA / s for s in SPACING[1:]]
    out = _apply("metz", volume, dims=2, fwhm_mm=6.0, power=1.0)
    np.testing.assert_allclose(out, _gaussian_numpy(volume, sigma_voxels), atol=1e-3 * _scale(volume))


# --- contract -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(FILTERS))
def test_every_filter_runs_with_its_defaults(volume, name):
    out = filter_apply(volume=volume, spacing=SPACING, name=name, params=FILTERS[name].defaults())
    assert out.dtype == np.float32 and out.shape == volume.shape and np.isfinite(out).all()


def test_int16_is_filtered_as_float32(volume):
    ct = np.rint(volume).astype(np.int16)
    np.testing.assert_array_equal(_apply("gaussian", ct), _apply("gaussian", ct.astype(np.float32)))


def test_vocabulary_is_json_with_defaults_inside_their_ranges():
    menu = json.loads(json.dumps(filters_vocabulary()))
    assert [entry["name"] for entry in menu] == list(FILTERS)
    for entry in menu:
        assert entry["domain"] in {"spatial", "frequency"} and entry["dims"] == [2, 3]
        for param in entry["params"]:
            assert param["minimum"] <= param["default"] <= param["maximum"], (entry["name"], param)
            assert {"name", "unit", "description", "integer"} <= set(param)
        filter_validate(name=entry["name"], params={p["name"]: p["default"] for p in entry["params"]})


@pytest.mark.parametrize("name, params, named", [
    ("sharpen", {}, "unknown filter 'sharpen'"),
    ("gaussian", {}, "sigma_mm is missing"),
    ("gaussian", {"sigma_mm": 1.0, "sigma": 2.0}, "unknown parameter.*sigma"),
    ("gaussian", {"sigma_mm": 0.0}, "sigma_mm = 0.0 is outside"),
    ("gaussian", {"sigma_mm": 51.0}, "sigma_mm = 51.0 is outside"),
    ("gaussian", {"sigma_mm": float("nan")}, "sigma_mm must be a finite number"),
    ("gaussian", {"sigma_mm": "1"}, "sigma_mm must be a finite number"),
    ("curvature_flow", {"time_step": 0.5, "iterations": True}, "iterations must be a finite number"),
    ("curvature_flow", {"time_step": 0.5, "iterations": 2.5}, "iterations must be a whole number"),
    ("curvature_flow", {"time_step": 1.5, "iterations": 2}, "time_step = 1.5 is outside"),
    ("butterworth_lowpass", {"cutoff": 0.1, "order": 0}, "order = 0 is outside"),
    ("metz", {"fwhm_mm": 8.0, "power": 0.5}, "power = 0.5 is outside"),
    ("wiener", {"fwhm_mm": 8.0}, "nsr is missing"),
    ("threshold", {"low": 10.0, "high": 5.0}, "low must not exceed high"),
])
def test_bad_parameters_are_refused_by_name(volume, name, params, named):
    with pytest.raises(FilterError, match=named):
        filter_apply(volume=volume, spacing=SPACING, name=name, params=params)


@pytest.mark.parametrize("volume_of, spacing, dims, named", [
    (lambda v: v, SPACING, 4, "dims must be 2 or 3"),
    (lambda v: v[0], SPACING, 2, r"volume must be \[z, y, x\]"),
    (lambda v: v.astype(np.complex64), SPACING, 3, "real numbers"),
    (lambda v: v[:1], SPACING, 3, "with dims=2"),
    (lambda v: v[:, :3], SPACING, 2, "filtered axis"),
    (lambda v: v, (2.0, 0.0, 0.8), 3, "spacing"),
    (lambda v: v, (2.0, 0.8), 3, "spacing"),
])
def test_bad_volumes_are_refused(volume, volume_of, spacing, dims, named):
    with pytest.raises(FilterError, match=named):
        filter_apply(volume=volume_of(volume), spacing=spacing, name="gaussian", params={"sigma_mm": 1.0},
                     dims=dims)


# --- references ---------------------------------------------------------------------------

def _gaussian_numpy(volume: np.ndarray, sigma_voxels: list[float]) -> np.ndarray:
    """Separable sampled-Gaussian convolution, faces mirrored half a voxel out (np.pad symmetric)."""
    out = volume.astype(np.float64)
    for axis, sigma in enumerate(sigma_voxels):
        if sigma == 0.0:
            continue
        reach = math.ceil(8.0 * sigma)
        taps = np.exp(-0.5 * (np.arange(-reach, reach + 1) / sigma) ** 2)
        taps /= taps.sum()
        pad = [(0, 0)] * 3
        pad[axis] = (reach, reach)
        padded = np.pad(out, pad, mode="symmetric")
        n = out.shape[axis]
        out = sum(w * np.take(padded, np.arange(k, k + n), axis=axis) for k, w in enumerate(taps))
    return out


def _box_numpy(volume: np.ndarray, radius_zyx: list[int], reduce) -> np.ndarray:
    """ITK's neighbourhood filters repeat the face voxels outward (zero-flux Neumann)."""
    padded = np.pad(volume.astype(np.float64), [(r, r) for r in radius_zyx], mode="edge")
    windows = sliding_window_view(padded, [2 * r + 1 for r in radius_zyx])
    return reduce(windows, axis=(-3, -2, -1)).astype(np.float32)
