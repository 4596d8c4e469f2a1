"""Segmentation model slots: a registered 3-D ONNX model run on a volume gives a label map.

A model comes with a manifest (``manifest_parse``) that says the grid it was trained on
(input tile size and voxel spacing), how its input is normalised and how its output becomes
labels. ``segment_volume`` resamples the volume to the model's spacing, runs the model tile
by tile (sliding window) and resamples the labels back onto the volume's own voxel grid;
``segment_volume_scored`` also keeps each label's probability there (a fractional DICOM SEG's).
Django-free: the registry, audit and viewer are built on top of it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import SimpleITK as sitk

MAX_MODEL_BYTES = 512 * 1024 * 1024
MAX_INPUT_SIDE = 256
MAX_NAME_CHARS = 64
MAX_PROVENANCE_BYTES = 4096
MAX_OVERLAP = 0.9
DEFAULT_OVERLAP = 0.25
FRACTION_SCALE = 255
# A mean of outputs in [0, 1] may stray this far past them in float32 arithmetic.
PROBABILITY_SLACK = 1e-4
LOCAL_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")

MANIFEST_KEYS = {"name", "version", "input_size", "input_spacing_mm", "normalisation", "output", "overlap",
                 "provenance"}
COLOUR = re.compile(r"#[0-9a-fA-F]{6}")
SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")

Progress = Callable[[int, int], None]
Triple = tuple[float, float, float]


class ModelError(ValueError):
    """A manifest, model file or model output that cannot be used."""


@dataclass(frozen=True)
class Label:
    value: int
    name: str
    colour: str


@dataclass(frozen=True)
class Normalisation:
    """``kind`` "none", "zscore" (over the whole resampled volume) or "window" (clip, scale to [0, 1])."""

    kind: str
    low: float = 0.0
    high: float = 1.0


@dataclass(frozen=True)
class ModelOutput:
    """``kind`` "argmax" (channel c is label value c, 0 background) or "threshold" (one channel)."""

    kind: str
    labels: tuple[Label, ...]
    threshold: float = 0.5


@dataclass(frozen=True)
class ModelManifest:
    name: str
    version: str
    input_size: tuple[int, int, int]
    input_spacing_mm: Triple
    normalisation: Normalisation
    output: ModelOutput
    overlap: float
    provenance: dict[str, str] = field(hash=False)


# --- manifest ---------------------------------------------------------------------------------------------


def manifest_parse(data: Any) -> ModelManifest:
    """The manifest in ``data`` (a JSON-like dict), validated; ``ModelError`` says what is wrong."""
    fields = _fields(data, "manifest", required=MANIFEST_KEYS - {"overlap"}, optional={"overlap"})
    return ModelManifest(
        name=_text(fields["name"], "name"),
        version=_text(fields["version"], "version"),
        input_size=_input_size(fields["input_size"]),
        input_spacing_mm=_spacing(fields["input_spacing_mm"], "input_spacing_mm"),
        normalisation=_normalisation(fields["normalisation"]),
        output=_output(fields["output"]),
        overlap=_overlap(fields.get("overlap", DEFAULT_OVERLAP)),
        provenance=_provenance(fields["provenance"]),
    )


def _fields(data: Any, where: str, *, required: set[str], optional: Iterable[str] = ()) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ModelError(f"{where} must be an object")
    unknown = set(data) - required - set(optional)
    if unknown:
        raise ModelError(f"{where} has unknown keys: {', '.join(sorted(map(str, unknown)))}")
    missing = required - set(data)
    if missing:
        raise ModelError(f"{where} is missing: {', '.join(sorted(missing))}")
    return data


def _text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_NAME_CHARS:
        raise ModelError(f"{where} must be a string of 1 to {MAX_NAME_CHARS} characters")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ModelError(f"{where} must be a finite number")
    return float(value)


def _three(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list | tuple) or len(value) != 3:
        raise ModelError(f"{where} must be three values (z, y, x)")
    return list(value)


def _input_size(value: Any) -> tuple[int, int, int]:
    sides = _three(value, "input_size")
    for side in sides:
        if isinstance(side, bool) or not isinstance(side, int) or not 1 <= side <= MAX_INPUT_SIDE:
            raise ModelError(f"input_size must be three integers from 1 to {MAX_INPUT_SIDE}")
    return sides[0], sides[1], sides[2]


def _spacing(value: Any, where: str) -> Triple:
    spacing = [_number(s, where) for s in _three(value, where)]
    if min(spacing) <= 0:
        raise ModelError(f"{where} must be three positive numbers (mm)")
    return spacing[0], spacing[1], spacing[2]


def _normalisation(value: Any) -> Normalisation:
    kind = _fields(value, "normalisation", required={"kind"}, optional={"low", "high"})["kind"]
    if kind in ("none", "zscore"):
        _fields(value, f"normalisation {kind}", required={"kind"})
        return Normalisation(kind)
    if kind != "window":
        raise ModelError('normalisation kind must be "none", "zscore" or "window"')
    fields = _fields(value, "normalisation window", required={"kind", "low", "high"})
    low, high = _number(fields["low"], "normalisation low"), _number(fields["high"], "normalisation high")
    if low >= high:
        raise ModelError("normalisation window needs low < high")
    return Normalisation("window", low, high)


def _output(value: Any) -> ModelOutput:
    kind = _fields(value, "output", required={"kind"}, optional={"labels", "threshold", "label"})["kind"]
    if kind == "argmax":
        raw = _fields(value, "output argmax", required={"kind", "labels"})["labels"]
        if not isinstance(raw, list | tuple) or not raw:
            raise ModelError("output labels must be a non-empty list")
        labels = tuple(_label(item) for item in raw)
        if len({label.value for label in labels}) != len(labels):
            raise ModelError("output label values must be distinct")
        return ModelOutput("argmax", labels)
    if kind == "threshold":
        fields = _fields(value, "output threshold", required={"kind", "threshold", "label"})
        return ModelOutput("threshold", (_label(fields["label"]),), _number(fields["threshold"], "threshold"))
    raise ModelError('output kind must be "argmax" or "threshold"')


def _label(value: Any) -> Label:
    fields = _fields(value, "label", required={"value", "name", "colour"})
    number = fields["value"]
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 255:
        raise ModelError("label value must be an integer from 1 to 255 (0 is the background)")
    colour = fields["colour"]
    if not isinstance(colour, str) or not COLOUR.fullmatch(colour):
        raise ModelError("label colour must be #rrggbb")
    return Label(number, _text(fields["name"], "label name"), colour)


def _overlap(value: Any) -> float:
    overlap = _number(value, "overlap")
    if not 0 <= overlap < MAX_OVERLAP:
        raise ModelError(f"overlap must be at least 0 and below {MAX_OVERLAP}")
    return overlap


def _provenance(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in value.items()):
        raise ModelError("provenance must be an object of strings")
    if len(json.dumps(dict(value), ensure_ascii=False).encode()) > MAX_PROVENANCE_BYTES:
        raise ModelError(f"provenance must be at most {MAX_PROVENANCE_BYTES} bytes of JSON")
    return dict(value)


# --- model file and session -------------------------------------------------------------------------------


def model_file_verify(path: str | Path, sha256_hex: str) -> bytes:
    """The bytes of the file at ``path`` once their SHA-256 is ``sha256_hex``: load these, not the file."""
    if not isinstance(sha256_hex, str) or not SHA256_HEX.fullmatch(sha256_hex):
        raise ModelError("the registered SHA-256 must be 64 hexadecimal digits")
    with open(path, "rb") as model_file:
        data = model_file.read(MAX_MODEL_BYTES + 1)
    if len(data) > MAX_MODEL_BYTES:
        raise ModelError(f"model file {path} is larger than {MAX_MODEL_BYTES // (1024 * 1024)} MiB")
    if not hmac.compare_digest(hashlib.sha256(data).hexdigest(), sha256_hex.lower()):
        raise ModelError(f"model file {path} does not match the registered SHA-256")
    return data


def _runtime() -> Any:
    """onnxruntime, imported on first use: the web processes list models but never run one."""
    import onnxruntime

    return onnxruntime


def default_providers() -> list[str]:
    """CUDA then CPU where onnxruntime has CUDA, else CPU."""
    if "CUDAExecutionProvider" in _runtime().get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def model_session(model_bytes: bytes, *, providers: Sequence[str] | None = None,
                  intra_op_num_threads: int = 0) -> Any:
    """An ``onnxruntime.InferenceSession`` for ``model_bytes`` (threads 0: onnxruntime's choice).

    Only local providers are admitted, so running a model never reaches the network.
    """
    chosen = list(providers) if providers is not None else default_providers()
    remote = [p for p in chosen if p not in LOCAL_PROVIDERS]
    if remote or not chosen:
        raise ModelError(f"execution providers must be among {', '.join(LOCAL_PROVIDERS)}; got {chosen}")
    runtime = _runtime()
    options = runtime.SessionOptions()
    options.intra_op_num_threads = intra_op_num_threads
    return runtime.InferenceSession(model_bytes, sess_options=options, providers=chosen)


# --- inference --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Grid:
    shape: tuple[int, int, int]
    spacing: Triple
    origin: Triple


@dataclass(frozen=True)
class ScoredLabels:
    """A model's label map and, per label value, its probability on the same grid.

    A probability is quantised to uint8, 0..255 for 0..1 (a FRACTIONAL DICOM SEG's values with
    MaximumFractionalValue 255). ``probabilities`` is empty where an output the labels come from
    leaves [0, 1]: such outputs (logits, intensities) are scores, not probabilities.
    """

    labels: npt.NDArray[np.uint8]
    probabilities: Mapping[int, npt.NDArray[np.uint8]]


def segment_volume(voxels: npt.ArrayLike, spacing_mm: Sequence[float], manifest: ModelManifest, session: Any,
                   *, progress: Progress | None = None) -> npt.NDArray[np.uint8]:
    """The uint8 label map of ``voxels`` [z, y, x] (spacing z, y, x in mm), on the same grid.

    Tiles overlap by at least the manifest's overlap and are weighted flat: each voxel gets the
    mean of the raw outputs of the tiles that cover it, then argmax or threshold. ``progress``
    is called with (tiles done, tiles total), first with 0 done.
    """
    return _segmented(voxels, spacing_mm, manifest, session, progress=progress, scored=False).labels


def segment_volume_scored(voxels: npt.ArrayLike, spacing_mm: Sequence[float], manifest: ModelManifest,
                          session: Any, *, progress: Progress | None = None) -> ScoredLabels:
    """:func:`segment_volume`'s labels with each label's mean output as its probability.

    On a resampled grid the probabilities come back linearly (the labels nearest-neighbour), so
    near an edge a voxel's label and its probability may disagree by a voxel.
    """
    return _segmented(voxels, spacing_mm, manifest, session, progress=progress, scored=True)


def _segmented(voxels: npt.ArrayLike, spacing_mm: Sequence[float], manifest: ModelManifest, session: Any,
               *, progress: Progress | None, scored: bool) -> ScoredLabels:
    volume = np.asarray(voxels)
    if volume.ndim != 3 or min(volume.shape) < 1:
        raise ModelError(f"voxels must be a non-empty [z, y, x] array, not shape {volume.shape}")
    spacing = _spacing([float(s) for s in spacing_mm], "spacing_mm")
    source = _Grid((volume.shape[0], volume.shape[1], volume.shape[2]), spacing, (0.0, 0.0, 0.0))
    target = _model_grid(source, manifest.input_spacing_mm)
    if target == source:
        model_input = volume.astype(np.float32)
    else:
        model_input = _resample(_sitk_compatible(volume), source, target, sitk.sitkLinear, sitk.sitkFloat32)
    del volume
    _normalise(model_input, manifest.normalisation)
    mean_output = _sliding_window(model_input, manifest, session, progress)
    del model_input
    labels = _labels(mean_output, manifest.output)
    channels = _probability_channels(mean_output, manifest.output) if scored else {}
    # From here on each channel is read once, and quantised in place.
    if target == source:
        return ScoredLabels(labels, {value: _quantised(mean_output[channel])
                                     for value, channel in channels.items()})
    return ScoredLabels(
        _resample(labels, target, source, sitk.sitkNearestNeighbor, sitk.sitkUInt8),
        {value: _quantised(_resample(mean_output[channel], target, source, sitk.sitkLinear, sitk.sitkFloat32))
         for value, channel in channels.items()})


def _model_grid(source: _Grid, spacing: Triple) -> _Grid:
    """The grid at ``spacing`` covering the source's extent, centred on it."""
    if np.allclose(source.spacing, spacing, rtol=1e-6, atol=0):
        return source
    sides = zip(source.shape, source.spacing, spacing, strict=True)
    shape = tuple(max(1, round(n * s / t)) for n, s, t in sides)
    origin = tuple(o + ((n - 1) * s - (m - 1) * t) / 2
                   for o, n, s, m, t in zip(source.origin, source.shape, source.spacing, shape, spacing,
                                            strict=True))
    return _Grid((shape[0], shape[1], shape[2]), spacing, (origin[0], origin[1], origin[2]))


def _sitk_compatible(volume: np.ndarray) -> np.ndarray:
    if volume.dtype.kind in "iuf" and volume.dtype.itemsize <= 8 and volume.dtype != np.float16:
        return volume
    return volume.astype(np.float32)


def _resample(array: np.ndarray, source: _Grid, target: _Grid, interpolator: int,
              pixel_type: int) -> np.ndarray:
    """``array`` on ``source`` resampled onto ``target``; numpy is z, y, x where SimpleITK is x, y, z."""
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(source.spacing[::-1])
    image.SetOrigin(source.origin[::-1])
    resampler = sitk.ResampleImageFilter()
    resampler.SetSize([int(n) for n in target.shape[::-1]])
    resampler.SetOutputSpacing(target.spacing[::-1])
    resampler.SetOutputOrigin(target.origin[::-1])
    resampler.SetInterpolator(interpolator)
    resampler.SetOutputPixelType(pixel_type)
    # Edge samples take the nearest voxel rather than a constant that would look like tissue.
    resampler.SetUseNearestNeighborExtrapolator(True)
    return sitk.GetArrayFromImage(resampler.Execute(image))


def _normalise(volume: np.ndarray, normalisation: Normalisation) -> None:
    """Normalise the float32 ``volume`` in place."""
    if normalisation.kind == "zscore":
        mean = float(volume.mean(dtype=np.float64))
        std = float(volume.std(dtype=np.float64))
        volume -= mean
        volume /= std if std > 0 else 1.0
    elif normalisation.kind == "window":
        np.clip(volume, normalisation.low, normalisation.high, out=volume)
        volume -= normalisation.low
        volume /= normalisation.high - normalisation.low


def _sliding_window(volume: np.ndarray, manifest: ModelManifest, session: Any,
                    progress: Progress | None) -> np.ndarray:
    """The flat-weighted mean model output [C, z, y, x] over ``volume``'s own shape."""
    input_name, output_name = _session_names(session, manifest)
    shape = volume.shape
    padded = _pad_to(volume, manifest.input_size)
    del volume
    tiles = list(_tiles(padded.shape, manifest.input_size, manifest.overlap))
    accumulated: np.ndarray | None = None
    weight = np.zeros(padded.shape, dtype=np.float32)
    if progress:
        progress(0, len(tiles))
    for done, tile in enumerate(tiles, start=1):
        model_input = np.ascontiguousarray(padded[tile], dtype=np.float32)[np.newaxis, np.newaxis]
        output = session.run([output_name], {input_name: model_input})[0]
        _check_output(output, manifest.output, model_input.shape[2:])
        if accumulated is None:
            accumulated = np.zeros((output.shape[1], *padded.shape), dtype=np.float32)
        accumulated[(slice(None), *tile)] += output[0]
        weight[tile] += 1.0
        if progress:
            progress(done, len(tiles))
    assert accumulated is not None  # noqa: S101  (there is always at least one tile)
    accumulated /= weight
    return accumulated[(slice(None), *(slice(0, side) for side in shape))]


def _pad_to(volume: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """``volume`` padded at its far ends to at least ``size``, with its minimum (background, e.g. air)."""
    padding = [(0, max(0, n - d)) for d, n in zip(volume.shape, size, strict=True)]
    if not any(after for _, after in padding):
        return volume
    return np.pad(volume, padding, mode="constant", constant_values=float(volume.min()))


def _session_names(session: Any, manifest: ModelManifest) -> tuple[str, str]:
    model_input, model_output = session.get_inputs()[0], session.get_outputs()[0]
    shape = list(model_input.shape)
    if len(shape) != 5:
        raise ModelError(f"model input must be [1, 1, z, y, x], not {shape}")
    sides = zip(shape[2:], manifest.input_size, strict=True)
    if any(isinstance(side, int) and side != want for side, want in sides):
        raise ModelError(f"model input {shape} does not take the manifest's input_size {manifest.input_size}")
    return model_input.name, model_output.name


def _check_output(output: Any, model_output: ModelOutput, tile_shape: tuple[int, ...]) -> None:
    shape = tuple(np.shape(output))
    if len(shape) != 5 or shape[0] != 1 or shape[2:] != tuple(tile_shape):
        raise ModelError(f"model output must be [1, C, z, y, x] for a tile of {tile_shape}, not {shape}")
    if model_output.kind == "threshold" and shape[1] != 1:
        raise ModelError(f"a threshold output needs one channel; the model gives {shape[1]}")
    highest = max(label.value for label in model_output.labels)
    if model_output.kind == "argmax" and shape[1] <= highest:
        raise ModelError(f"the model gives {shape[1]} channels; label value {highest} needs {highest + 1}")


def _tiles(shape: tuple[int, ...], size: tuple[int, int, int], overlap: float) -> Iterator[tuple[slice, ...]]:
    """Tile slices with starts spread evenly from 0 to the edge, stepping at most size * (1 - overlap)."""
    starts = [_starts(length, side, overlap) for length, side in zip(shape, size, strict=True)]
    for corner in product(*starts):
        yield tuple(slice(start, start + side) for start, side in zip(corner, size, strict=True))


def _starts(length: int, side: int, overlap: float) -> list[int]:
    step = max(1.0, side * (1 - overlap))
    count = math.ceil((length - side) / step) + 1
    return sorted({round(s) for s in np.linspace(0, length - side, count)})


def _probability_channels(mean_output: np.ndarray, output: ModelOutput) -> dict[int, int]:
    """The output channel of each label value, or none where any of them is not a probability."""
    channels = {output.labels[0].value: 0} if output.kind == "threshold" else {
        label.value: label.value for label in output.labels}
    for channel in channels.values():
        if (float(mean_output[channel].min()) < -PROBABILITY_SLACK
                or float(mean_output[channel].max()) > 1 + PROBABILITY_SLACK):
            return {}
    return channels


def _quantised(probability: np.ndarray) -> npt.NDArray[np.uint8]:
    """``probability`` (float32, 0..1) as uint8 0..255; it is scaled in place, so that no float
    copy of a whole channel is made: pass one whose float values are not needed any more."""
    probability *= np.float32(FRACTION_SCALE)
    np.clip(probability, 0, FRACTION_SCALE, out=probability)
    np.rint(probability, out=probability)
    return probability.astype(np.uint8)


def _labels(mean_output: np.ndarray, output: ModelOutput) -> npt.NDArray[np.uint8]:
    if output.kind == "threshold":
        return np.where(mean_output[0] > output.threshold, np.uint8(output.labels[0].value), np.uint8(0))
    # Channels the manifest names no label for are background.
    lookup = np.zeros(mean_output.shape[0], dtype=np.uint8)
    for label in output.labels:
        lookup[label.value] = label.value
    return lookup[np.argmax(mean_output, axis=0)]
