"""Benchmark the filters of issue #16 (``rendering.engine.filters``) in process.

On a CT-like float32 volume, 512 x 512 x N at 1.5 x 0.7 x 0.7 mm (air, a body of soft tissue
with noise, a bone ring, contrast-filled spheres):

* the interactive preview of every filter with its default parameters as the viewer gets it
  (``filter_preview`` on one 512 x 512 slice: half resolution for the filters whose table says
  so), and for comparison the full-resolution 2-D filter of the same slice (``dims=2`` on a
  one-slice volume), median and p95 over the rounds;
* a 3-D Gaussian (sigma 2 mm) of the whole volume — peers in the same run: SimpleITK's recursive
  Gaussian called directly on an image built beforehand (the filter without the array copies),
  SimpleITK's DiscreteGaussian (a sampled kernel, as scipy's), and
  ``scipy.ndimage.gaussian_filter`` where scipy is installed;
* a 3-D frequency filter (Metz, defaults) of the whole volume, once;
* the peak resident memory each 3-D call adds, in volumes (Linux: VmHWM reset through
  /proc/self/clear_refs).

Prints one JSON document:

    python bench/filters.py [--slices 300] [--rounds 20]

Issue #16's targets: each preview <= 50 ms; the 3-D Gaussian of 512^2 x 300 <= 5 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rendering.engine.filters import FILTERS, filter_apply, filter_preview  # noqa: E402

TARGETS_MS = {"preview": 50.0, "gaussian_3d": 5000.0}
SPACING = (1.5, 0.7, 0.7)
GAUSSIAN = {"sigma_mm": 2.0}


def _summary(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(seconds)
    return {"p50_ms": round(statistics.median(ordered) * 1000, 1),
            "p95_ms": round(ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] * 1000, 1),
            "samples": len(ordered)}


def _timed(call: Callable[[], Any], rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        out.append(time.perf_counter() - start)
    return out


def _peak_rss_added(call: Callable[[], Any]) -> tuple[float, int]:
    """(seconds, bytes by which the call raised the resident high-water mark)."""
    clear_refs = Path("/proc/self/clear_refs")
    if clear_refs.exists():
        clear_refs.write_text("5")
    before = _status_bytes("VmRSS")
    start = time.perf_counter()
    result = call()
    seconds = time.perf_counter() - start
    added = _status_bytes("VmHWM") - before
    del result
    return seconds, added


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _ct_volume(slices: int) -> np.ndarray:
    rng = np.random.default_rng(16)
    y, x = np.ogrid[0:512, 0:512]
    ry, rx = (y - 256) * SPACING[1], (x - 256) * SPACING[2]
    body = (ry / 150.0) ** 2 + (rx / 170.0) ** 2 <= 1.0
    ring = body & ((ry / 135.0) ** 2 + (rx / 155.0) ** 2 > 1.0)
    volume = np.empty((slices, 512, 512), np.float32)
    for k in range(slices):
        plane = np.full((512, 512), -1000.0, np.float32)
        plane[body] = 40.0
        plane[ring] = 700.0
        rz = (k - slices / 2) * SPACING[0]
        for cy, cx, radius in ((-40.0, 30.0, 25.0), (50.0, -60.0, 15.0)):
            plane[(ry - cy) ** 2 + (rx - cx) ** 2 + rz ** 2 <= radius ** 2] = 250.0
        plane += rng.normal(0.0, 20.0, plane.shape).astype(np.float32)
        volume[k] = plane
    return volume


def _previews(volume: np.ndarray, rounds: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the previews served, each with its ``reduced`` factor; the full-resolution 2-D filters)."""
    plane = volume[volume.shape[0] // 2: volume.shape[0] // 2 + 1]
    served: dict[str, Any] = {}
    full: dict[str, Any] = {}
    for name, spec in FILTERS.items():
        params = spec.defaults()
        reduced = filter_preview(volume=plane, spacing=SPACING, name=name, params=params).reduced
        served[name] = {**_summary(_timed(
            lambda name=name, params=params: filter_preview(
                volume=plane, spacing=SPACING, name=name, params=params), rounds)), "reduced": reduced}
        filter_apply(volume=plane, spacing=SPACING, name=name, params=params, dims=2)
        full[name] = _summary(_timed(
            lambda name=name, params=params: filter_apply(
                volume=plane, spacing=SPACING, name=name, params=params, dims=2), rounds))
    return served, full


def _gaussian_3d(volume: np.ndarray, rounds: int) -> dict[str, Any]:
    ours, ours_added = _peak_rss_added(
        lambda: filter_apply(volume=volume, spacing=SPACING, name="gaussian", params=GAUSSIAN))
    ours_rounds = [ours, *_timed(
        lambda: filter_apply(volume=volume, spacing=SPACING, name="gaussian", params=GAUSSIAN), rounds - 1)]
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing(tuple(reversed(SPACING)))
    sigma = GAUSSIAN["sigma_mm"]
    recursive = _timed(lambda: sitk.SmoothingRecursiveGaussian(image, sigma), rounds)
    discrete = _timed(lambda: sitk.DiscreteGaussian(image, variance=sigma ** 2, maximumKernelWidth=64,
                                                    useImageSpacing=True), rounds)
    p50 = statistics.median(ours_rounds)
    figures: dict[str, Any] = {
        "ours": _summary(ours_rounds),
        "peak_rss_added_volumes": round(ours_added / volume.nbytes, 2),
        "peer_sitk_recursive_direct": _summary(recursive),
        "peer_sitk_discrete_gaussian": _summary(discrete),
        "ratio_p50_vs_sitk_recursive": round(p50 / statistics.median(recursive), 2),
        "ratio_p50_vs_sitk_discrete": round(p50 / statistics.median(discrete), 2)}
    figures.update(_scipy_peer(volume, sigma, rounds, p50))
    return figures


def _scipy_peer(volume: np.ndarray, sigma_mm: float, rounds: int, ours_p50: float) -> dict[str, Any]:
    try:
        from scipy import ndimage
    except ImportError:
        return {"peer_scipy_gaussian_filter": "scipy not installed"}
    sigma_voxels = [sigma_mm / s for s in SPACING]
    peer = _timed(lambda: ndimage.gaussian_filter(volume, sigma_voxels, mode="mirror"), rounds)
    return {"peer_scipy_gaussian_filter": _summary(peer),
            "ratio_p50_vs_scipy": round(ours_p50 / statistics.median(peer), 2)}


def _frequency_3d(volume: np.ndarray) -> dict[str, Any]:
    params = FILTERS["metz"].defaults()
    seconds, added = _peak_rss_added(
        lambda: filter_apply(volume=volume, spacing=SPACING, name="metz", params=params))
    return {"filter": "metz", "params": params, "seconds": round(seconds, 2),
            "peak_rss_added_volumes": round(added / volume.nbytes, 2)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    load_at_start = os.getloadavg()[0]
    volume = _ct_volume(args.slices)
    previews, full_resolution = _previews(volume, args.rounds)
    gaussian = _gaussian_3d(volume, max(3, args.rounds // 5))
    frequency = _frequency_3d(volume)
    slow = sorted(name for name, f in previews.items() if f["p50_ms"] > TARGETS_MS["preview"])
    gaussian_met = gaussian["ours"]["p50_ms"] <= TARGETS_MS["gaussian_3d"]
    print(json.dumps({"machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                                  "load_at_start": load_at_start, "load_at_end": os.getloadavg()[0]},
                      "volume": {"shape": list(volume.shape), "spacing_mm": list(SPACING),
                                 "megabytes": round(volume.nbytes / 1e6)},
                      "preview_2d_512": previews, "full_resolution_2d_512": full_resolution,
                      "gaussian_3d": gaussian, "frequency_3d": frequency,
                      "targets_ms": TARGETS_MS,
                      "targets_met_p50": {"previews_over_target": slow, "gaussian_3d": gaussian_met}},
                     indent=2))


if __name__ == "__main__":
    main()
