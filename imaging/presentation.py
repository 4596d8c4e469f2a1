"""How a stored image is meant to look: decoded colour, pixel geometry, windows, frame timing.

Everything here reads the header the way PS3.3 C.7.6.3 (Image Pixel), C.11
(LUTs) and C.7.6.5 (Cine) describe it, so a series shows as its modality
meant: palette colour becomes RGB through its own LUTs, YCbCr becomes RGB
(pydicom's decoders convert it, ``as_rgb``), MONOCHROME1 is flagged to be
shown inverted, and the pixel size comes from the first attribute that
gives it (PixelSpacing, then ImagerPixelSpacing, then the ultrasound
region's physical deltas, then PixelAspectRatio).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut

from imaging.pixels import decoder_attempts_demoted
from rendering.volume import MAX_LUT_ENTRIES, VOI_FUNCTIONS

CENTIMETRES = 3  # PhysicalUnitsXDirection code for cm (PS3.3 C.8.5.5.1.15)
COLOUR_INTERPRETATIONS = frozenset({"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT",
                                    "YBR_PARTIAL_420", "PALETTE COLOR"})


def decoded_frames(ds: Dataset) -> np.ndarray:
    """Pixels as ``[frame, row, column]`` (grey) or ``[frame, row, column, 3]`` RGB uint8."""
    with decoder_attempts_demoted():
        pixels = ds.pixel_array
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    interpretation = str(ds.get("PhotometricInterpretation", "")).upper()
    if interpretation == "PALETTE COLOR" and samples == 1:
        pixels = apply_color_lut(pixels, ds)
        samples = 3
    elif supplemental_palette(ds):
        pixels = _supplemented(ds, pixels)
        samples = 3
    if frames == 1:
        pixels = pixels[None, ...]
    if samples == 1 and pixels.ndim == 4:
        pixels = pixels[..., 0]
    if samples == 3 and pixels.dtype != np.uint8:
        pixels = _eight_bit(pixels)
    return pixels


def supplemental_palette(ds: Dataset) -> bool:
    """A greyscale image whose highest values are shown in colour (PS3.3 C.7.6.19; perfusion maps)."""
    return (str(ds.get("PhotometricInterpretation", "")).upper() in {"MONOCHROME1", "MONOCHROME2"}
            and "RedPaletteColorLookupTableDescriptor" in ds
            and str(ds.get("PixelPresentation", "")).upper() in {"COLOR", "MIXED"})


def _supplemented(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """RGB: stored values inside the palette's range through it, the others grey in the file's window."""
    descriptor = header_numbers(ds.RedPaletteColorLookupTableDescriptor)
    entries, first = int(descriptor[0]) or 65536, int(descriptor[1])
    coloured = (stored >= first) & (stored < first + entries)
    palette = apply_color_lut(np.clip(stored, first, first + entries - 1), _palette_only(ds))[..., :3]
    if palette.dtype != np.uint8:
        palette = (palette >> 8).astype(np.uint8)
    out = np.repeat(_grey(ds, stored, ~coloured)[..., None], 3, axis=-1)
    out[coloured] = palette[coloured]
    return out


def _palette_only(ds: Dataset) -> Dataset:
    """The palette elements alone: pydicom applies the table itself but refuses the whole pipeline."""
    palette = Dataset()
    for element in ds:
        if "PaletteColorLookupTable" in element.keyword:
            palette.add(element)
    return palette


def _grey(ds: Dataset, stored: np.ndarray, shown: np.ndarray) -> np.ndarray:
    """8-bit grey of the values through the modality transform and the file's first window."""
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    windows = window_presets(ds)
    if windows:
        centre, width = windows[0]
        low, high = centre - width / 2, centre + width / 2
    else:
        seen = values[shown] if shown.any() else values
        low, high = float(seen.min()), float(seen.max())
    grey = np.clip((values - low) / max(high - low, 1e-6) * 255 + 0.5, 0, 255).astype(np.uint8)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        grey = 255 - grey
    return grey


def _eight_bit(rgb: np.ndarray) -> np.ndarray:
    """Colour with more than 8 bits per sample (16-bit palette LUTs) scaled to 0..255."""
    top = int(rgb.max(initial=0))
    shift = max(0, top.bit_length() - 8)
    return (rgb >> shift).astype(np.uint8) if shift else rgb.astype(np.uint8)


def modality_lut_values(ds: Dataset, pixels: np.ndarray) -> np.ndarray | None:
    """Values through a Modality LUT Sequence (float32), or None when the header has none."""
    if "ModalityLUTSequence" not in ds or pixels.ndim != 2:
        return None
    return np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32)


def _pair(values: Any) -> tuple[float, float] | None:
    try:
        first, second = (float(v) for v in values)
    except (TypeError, ValueError):
        return None
    return (first, second) if first > 0 and second > 0 else None


def pixel_spacing(ds: Dataset) -> tuple[float, float]:
    """(row spacing, column spacing) in mm; (1, 1) when nothing in the header gives it."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing", "NominalScannedPixelSpacing"):
        spacing = _pair(ds.get(keyword))
        if spacing is not None:
            return spacing
    for region in ds.get("SequenceOfUltrasoundRegions") or []:
        if region.get("PhysicalUnitsXDirection") == CENTIMETRES == region.get("PhysicalUnitsYDirection"):
            delta = _pair([abs(float(region.get("PhysicalDeltaY", 0) or 0)) * 10,
                           abs(float(region.get("PhysicalDeltaX", 0) or 0)) * 10])
            if delta is not None:
                return delta
    aspect = _pair(ds.get("PixelAspectRatio"))
    if aspect is not None:
        return aspect[0] / aspect[1], 1.0
    return 1.0, 1.0


def header_numbers(value: Any) -> list[float]:
    """The numbers of a header value (one or many), leaving out what is not a number."""
    if value is None or value == "":
        return []
    items = value if isinstance(value, list | tuple | MultiValue) else [value]
    out = []
    for item in items:
        try:
            out.append(float(item))
        except (TypeError, ValueError):
            continue
    return out


def window_presets(ds: Dataset) -> list[list[float]]:
    """Every (centre, width) the file suggests, in its order: its windows, then its VOI LUTs.

    A VOI LUT's entry is its input range (first mapped value, entry count) as a
    window: the table itself is kept by :func:`voi_presets`, whose list runs
    parallel to this one, and the render engine maps values through it entry by
    entry (PS3.3 C.11.2.1.1) when a layer names it. The window stands for it
    where only a window applies (3-D, a display dict built before VOI LUTs were
    kept, and the overlay's centre/width).
    """
    centres, widths = header_numbers(ds.get("WindowCenter")), header_numbers(ds.get("WindowWidth"))
    presets = [[c, w] for c, w in zip(centres, widths, strict=False) if w > 0]
    for item in _voi_lut_items(ds):
        descriptor = header_numbers(item.get("LUTDescriptor"))
        if len(descriptor) >= 2:
            count = descriptor[0] or 65536.0
            presets.append([descriptor[1] + count / 2, count])
    return presets


def _voi_lut_items(ds: Dataset) -> list[Dataset]:
    return list(ds.get("VOILUTSequence") or [])


def voi_function(ds: Dataset) -> str:
    """The file's VOILUTFunction (PS3.3 C.11.2.1.3): ``LINEAR`` where absent or not one the standard names."""
    function = str(ds.get("VOILUTFunction", "") or "").strip().upper()
    return function if function in VOI_FUNCTIONS else "LINEAR"


def voi_presets(ds: Dataset) -> list[dict[str, Any]]:
    """How each of :func:`window_presets` maps values to grey, in the same order (JSON-ready).

    A window gives its explanation; a VOI LUT its explanation and its table,
    ``{"descriptor": [count, first mapped, bits], "data": [...]}``, with at most
    :data:`MAX_LUT_ENTRIES` entries (a longer table is resampled evenly over its
    input range; the descriptor keeps the original count). A LUT whose
    descriptor or data cannot be read keeps only its window.
    """
    centres, widths = header_numbers(ds.get("WindowCenter")), header_numbers(ds.get("WindowWidth"))
    explanations = _texts(ds.get("WindowCenterWidthExplanation"))
    presets: list[dict[str, Any]] = [
        {"explanation": explanations[n] if n < len(explanations) else ""}
        for n, (_, width) in enumerate(zip(centres, widths, strict=False)) if width > 0]
    for item in _voi_lut_items(ds):
        if len(header_numbers(item.get("LUTDescriptor"))) < 2:
            continue
        preset: dict[str, Any] = {"explanation": str(item.get("LUTExplanation", "") or "").strip()[:64]}
        lut = _voi_lut_table(ds, item)
        if lut is not None:
            preset["lut"] = lut
        presets.append(preset)
    return presets


def _texts(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    items = value if isinstance(value, list | tuple | MultiValue) else [value]
    return [str(item).strip()[:64] for item in items]


def _voi_lut_table(ds: Dataset, item: Dataset) -> dict[str, Any] | None:
    """One VOI LUT's descriptor and entries (PS3.3 C.11.2.1.1), or None when unreadable."""
    descriptor = header_numbers(item.get("LUTDescriptor"))
    if len(descriptor) < 3 or "LUTData" not in item:
        return None
    count, first, bits = int(descriptor[0]) or 65536, int(descriptor[1]), int(descriptor[2])
    if int(ds.get("PixelRepresentation", 0) or 0) == 1 and first >= 32768:
        first -= 65536  # the first mapped value is SS for signed pixels (read as US)
    if not 1 <= bits <= 16:
        return None
    value = item.LUTData
    if isinstance(value, bytes):
        little = getattr(ds, "original_encoding", (None, True))[1] is not False
        data = np.frombuffer(value[:len(value) // 2 * 2], dtype="<u2" if little else ">u2")
    else:
        data = np.asarray(header_numbers(value), dtype=np.float64)
    data = data[:count]
    if data.size == 0:
        return None
    if data.size > MAX_LUT_ENTRIES:
        positions = np.linspace(0, data.size - 1, MAX_LUT_ENTRIES)
        data = np.interp(positions, np.arange(data.size), data)
    entries = [int(v) for v in np.rint(np.clip(data, 0, 2**bits - 1))]
    return {"descriptor": [count, first, bits], "data": entries}


def frame_time_ms(ds: Dataset) -> float | None:
    """Milliseconds between cine frames: FrameTime, FrameTimeVector, CineRate or the display rate."""
    frame_time = header_numbers(ds.get("FrameTime"))
    if frame_time and frame_time[0] > 0:
        return frame_time[0]
    vector = [v for v in header_numbers(ds.get("FrameTimeVector")) if v > 0]
    if vector:
        return float(np.median(vector))
    for keyword in ("CineRate", "RecommendedDisplayFrameRate"):
        rate = header_numbers(ds.get(keyword))
        if rate and rate[0] > 0:
            return 1000.0 / rate[0]
    return _nm_frame_duration(ds)


def _nm_frame_duration(ds: Dataset) -> float | None:
    """An NM dynamic or gated acquisition's frame length (ms): its phases' ActualFrameDuration."""
    for keyword in ("PhaseInformationSequence", "RotationInformationSequence"):
        for item in ds.get(keyword) or []:
            duration = header_numbers(item.get("ActualFrameDuration"))
            if duration and duration[0] > 0:
                return duration[0]
    duration = header_numbers(ds.get("ActualFrameDuration"))
    return duration[0] if duration and duration[0] > 0 else None


def display_facts(ds: Dataset) -> dict[str, Any]:
    """What the viewer needs to show the series as its modality meant (JSON-ready)."""
    interpretation = str(ds.get("PhotometricInterpretation", "")).upper()
    return {
        "invert": interpretation == "MONOCHROME1" and not supplemental_palette(ds),
        "colour": interpretation in COLOUR_INTERPRETATIONS or supplemental_palette(ds),
        "windows": window_presets(ds),
        "vois": voi_presets(ds),
        "voi_function": voi_function(ds),
        "frame_time_ms": frame_time_ms(ds),
    }
