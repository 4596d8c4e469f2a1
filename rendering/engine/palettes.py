"""Colour look-up tables (256 x RGB, uint8) for the layer palettes, and windowing into them."""

from __future__ import annotations

import numpy as np

from rendering.viewstate import Palette


def _ramp(points: list[tuple[float, tuple[int, int, int]]]) -> np.ndarray:
    xs = np.array([p for p, _ in points]) * 255.0
    colours = np.array([c for _, c in points], dtype=np.float64)
    grid = np.arange(256, dtype=np.float64)
    lut = np.stack([np.interp(grid, xs, colours[:, channel]) for channel in range(3)], axis=1)
    return np.ascontiguousarray(np.rint(lut).astype(np.uint8))


LUTS: dict[Palette, np.ndarray] = {
    Palette.GREY: _ramp([(0.0, (0, 0, 0)), (1.0, (255, 255, 255))]),
    Palette.INVERTED: _ramp([(0.0, (255, 255, 255)), (1.0, (0, 0, 0))]),
    Palette.HOT_IRON: _ramp([
        (0.0, (0, 0, 0)), (0.25, (128, 0, 0)), (0.5, (255, 64, 0)),
        (0.75, (255, 192, 0)), (1.0, (255, 255, 255)),
    ]),
    Palette.RAINBOW: _ramp([
        (0.0, (0, 0, 128)), (0.2, (0, 0, 255)), (0.4, (0, 255, 255)), (0.6, (0, 255, 0)),
        (0.8, (255, 255, 0)), (1.0, (255, 0, 0)),
    ]),
}

GREYSCALE = frozenset({Palette.GREY, Palette.INVERTED})


def window_indices(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map values linearly so ``low`` -> 0 and ``high`` -> 255 (clamped), as uint8 LUT indices."""
    scale = np.float32(255.0 / max(high - low, 1e-12))
    out = (values.astype(np.float32, copy=False) - np.float32(low)) * scale
    np.clip(out, 0.0, 255.0, out=out)
    out += np.float32(0.5)
    return out.astype(np.uint8)
