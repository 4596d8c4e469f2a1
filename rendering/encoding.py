"""Frame encoders, chosen by an Enum: lossy JPEG while interacting, lossless for the still.

Pillow's wheels link libjpeg-turbo (``PIL.features.check_feature("libjpeg_turbo")``).
Interactive JPEG quality is tuned so a 512x512 CT frame stays under 60 KB; the still is
PNG at a low zlib level (fast, lossless) or WebP lossless (smaller, slower).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import numpy as np
from PIL import Image

from rendering.viewstate import Quality


class Encoding(Enum):
    JPEG = "jpeg"
    PNG = "png"
    WEBP_LOSSLESS = "webp"

    @property
    def lossless(self) -> bool:
        return self is not Encoding.JPEG

    @property
    def mime_type(self) -> str:
        return {"jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp"}[self.value]


class FrameEncoder(Protocol):
    """Turns an 8-bit image (H, W) grey or (H, W, 3) RGB into bytes of ``encoding``.

    Contract: the output decodes to an image of the same width and height; lossless
    encoders reproduce the pixels exactly.
    """

    @property
    def encoding(self) -> Encoding: ...

    def encode(self, pixels: np.ndarray) -> bytes: ...


def _image(pixels: np.ndarray) -> Image.Image:
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError("pixels must be uint8 (H, W) or (H, W, 3)")
    return Image.fromarray(np.ascontiguousarray(pixels), "L" if pixels.ndim == 2 else "RGB")


@dataclass(frozen=True)
class JpegEncoder:
    quality: int = 80
    encoding: Encoding = Encoding.JPEG

    def encode(self, pixels: np.ndarray) -> bytes:
        out = io.BytesIO()
        _image(pixels).save(out, "JPEG", quality=self.quality, subsampling="4:2:0", optimize=False)
        return out.getvalue()


@dataclass(frozen=True)
class PngEncoder:
    compress_level: int = 1
    encoding: Encoding = Encoding.PNG

    def encode(self, pixels: np.ndarray) -> bytes:
        out = io.BytesIO()
        _image(pixels).save(out, "PNG", compress_level=self.compress_level)
        return out.getvalue()


@dataclass(frozen=True)
class WebpLosslessEncoder:
    method: int = 0
    encoding: Encoding = Encoding.WEBP_LOSSLESS

    def encode(self, pixels: np.ndarray) -> bytes:
        out = io.BytesIO()
        _image(pixels).save(out, "WEBP", lossless=True, method=self.method, quality=0)
        return out.getvalue()


ENCODERS: dict[Encoding, FrameEncoder] = {
    Encoding.JPEG: JpegEncoder(),
    Encoding.PNG: PngEncoder(),
    Encoding.WEBP_LOSSLESS: WebpLosslessEncoder(),
}

DEFAULT_ENCODING: dict[Quality, Encoding] = {
    Quality.INTERACTIVE: Encoding.JPEG,
    Quality.STILL: Encoding.PNG,
}


def encoder_for(quality: Quality, encoding: Encoding | None = None) -> FrameEncoder:
    """The encoder for a quality (lossy while interacting), or an explicit ``encoding``."""
    chosen = encoding or DEFAULT_ENCODING[quality]
    if quality is Quality.STILL and not chosen.lossless:
        raise ValueError("a still frame must be lossless")
    return ENCODERS[chosen]
