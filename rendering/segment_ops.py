"""Segmentation edits: each one changes a label map on its reference series' voxel grid.

A segmentation is its reference series and an ordered list of edits (:mod:`imaging.segmentations`);
its label map at a revision is the edits replayed on an empty map, so any render worker can build
it from the database alone and no worker holds state a session depends on. Every position is in
patient millimetres (the consumer places a click with the view's plane). Painting overwrites
other segments; erasing clears only the edit's own segment. Region growing and morphology are
SimpleITK's filters, run on the smallest box that holds what they may touch.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import SimpleITK as sitk

from gateway.i18n import gettext_noop
from rendering.engine.core import RenderError
from rendering.measure import region_box
from rendering.operations import WorkerContext, operation
from rendering.viewstate import ViewState
from rendering.volume import MODALITIES_SUV, Volume

MAX_SEGMENTS = 32
SEGMENT_TOOLS = ("threshold", "otsu", "grow", "confidence", "suv_fraction", "brush", "erase",
                 "fill_holes", "islands", "largest", "clear", "interpolate", "labels")
ObjectLoader = Callable[[str], bytes]
PAINTING_TOOLS = frozenset({"threshold", "otsu", "grow", "confidence", "suv_fraction", "brush"})


class SegmentError(RenderError):
    """An edit that cannot be made on this series (said to the reader; nothing is recorded)."""


def _values(volume: Volume, op: dict[str, Any], name: str) -> float:
    """A threshold in the series' stored units, from SUV where the edit gives SUV."""
    value = float(op[name])
    if op.get("unit") == "suv":
        if not volume.suv_factor:
            raise SegmentError(gettext_noop("this series has no SUV calibration: give the threshold in its "
                                            "own units"))
        return value / volume.suv_factor
    return value


def _box(volume: Volume, op: dict[str, Any]) -> tuple[slice, slice, slice]:
    if "center_mm" not in op:
        return _whole(volume)
    return region_box(volume, np.asarray(op["center_mm"], dtype=np.float64), float(op["box_mm"]))


def _seeds(volume: Volume, op: dict[str, Any]) -> list[tuple[int, int, int]]:
    """Seed voxels as (i, j, k) for SimpleITK; a seed outside the series is refused."""
    seeds = []
    for point in op["seeds_mm"]:
        k, j, i = (int(v) for v in np.rint(volume.patient_to_index(np.asarray(point, dtype=np.float64))))
        if not (0 <= k < volume.shape[0] and 0 <= j < volume.shape[1] and 0 <= i < volume.shape[2]):
            raise SegmentError(gettext_noop("a seed lies outside the series"))
        seeds.append((i, j, k))
    return seeds


def _image(volume: Volume) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.voxels, dtype=np.float32))
    image.SetSpacing(tuple(float(s) for s in reversed(volume.spacing)))
    return image


def _mask_array(image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayViewFromImage(image).astype(bool)


def _threshold(volume: Volume, op: dict[str, Any]) -> tuple[tuple[slice, ...], np.ndarray]:
    box = _box(volume, op)
    values = volume.voxels[box]
    return box, (values >= _values(volume, op, "low")) & (values <= _values(volume, op, "high"))


def _otsu(volume: Volume, op: dict[str, Any]) -> tuple[tuple[slice, ...], np.ndarray]:
    box = _box(volume, op)
    patch = sitk.GetImageFromArray(np.ascontiguousarray(volume.voxels[box], dtype=np.float32))
    above = sitk.OtsuThreshold(patch, 0, 1)
    return box, _mask_array(above)


def _grow(volume: Volume, op: dict[str, Any]) -> tuple[tuple[slice, ...], np.ndarray]:
    seeds = _seeds(volume, op)
    low, high = _values(volume, op, "low"), _values(volume, op, "high")
    if not any(low <= float(volume.voxels[k, j, i]) <= high for i, j, k in seeds):
        # SimpleITK would grow nothing and say nothing: the reader would see an empty segment.
        raise SegmentError(gettext_noop("no seed lies inside the range %(low)g to %(high)g: widen it or "
                                        "click inside the structure"), low=op["low"], high=op["high"])
    grown = sitk.ConnectedThreshold(_image(volume), seedList=seeds, lower=low, upper=high)
    return _whole(volume), _mask_array(grown)


def _confidence(volume: Volume, op: dict[str, Any]) -> tuple[tuple[slice, ...], np.ndarray]:
    grown = sitk.ConfidenceConnected(_image(volume), seedList=_seeds(volume, op),
                                     numberOfIterations=int(op.get("iterations", 3)),
                                     multiplier=float(op.get("multiplier", 2.5)),
                                     initialNeighborhoodRadius=1, replaceValue=1)
    return _whole(volume), _mask_array(grown)


def _suv_fraction(volume: Volume, op: dict[str, Any]) -> tuple[tuple[slice, ...], np.ndarray]:
    """The voxels connected to the box's hottest one at ``fraction`` of its value or more."""
    box = _box(volume, op)
    values = volume.voxels[box]
    hottest = np.unravel_index(int(np.argmax(values)), values.shape)
    if not values[hottest] > 0:
        raise SegmentError(gettext_noop("the box holds no uptake"))
    above = values >= float(op["fraction"]) * float(values[hottest])
    connected = sitk.ConnectedComponent(sitk.GetImageFromArray(above.astype(np.uint8)))
    components = sitk.GetArrayFromImage(connected)
    return box, components == components[hottest]


def _brush(volume: Volume, op: dict[str, Any]) -> tuple[tuple[slice, ...], np.ndarray]:
    """Spheres along a stroke, or discs one voxel thick on the view's plane (``normal``).

    Distances are taken in index space scaled by the spacing (the direction is orthonormal, so
    they are patient millimetres), each point over the few voxels it can reach.
    """
    points = np.asarray(op["points_mm"], dtype=np.float64)
    radius = float(op["radius_mm"])
    reach = radius + float(np.max(volume.spacing))
    low = points.min(axis=0) - reach
    high = points.max(axis=0) + reach
    box = region_box(volume, (low + high) / 2.0, float(np.max(high - low)) / 2.0)
    spacing = np.asarray(volume.spacing, dtype=np.float64)
    origin = np.array([axis.start for axis in box])
    size = np.array([axis.stop - axis.start for axis in box])
    inside = np.zeros(tuple(size), dtype=bool)
    normal = op.get("normal")
    across = None if normal is None else _normal_kji(volume, normal)
    half = _half_thickness(volume, normal)
    for centre in volume.patient_to_index(points):
        first = np.clip(np.floor(centre - reach / spacing).astype(int) - origin, 0, size)
        last = np.clip(np.ceil(centre + reach / spacing).astype(int) + 1 - origin, 0, size)
        if np.any(last <= first):
            continue
        k, j, i = ((np.arange(first[n], last[n]) + origin[n] - centre[n]) * spacing[n] for n in range(3))
        offsets = (k[:, None, None], j[None, :, None], i[None, None, :])
        distance2 = offsets[0] ** 2 + offsets[1] ** 2 + offsets[2] ** 2
        window = inside[first[0]:last[0], first[1]:last[1], first[2]:last[2]]
        if across is None:
            window |= distance2 <= radius * radius
            continue
        depth = offsets[0] * across[0] + offsets[1] * across[1] + offsets[2] * across[2]
        window |= (np.abs(depth) <= half) & (distance2 - depth * depth <= radius * radius)
    return box, inside


def _normal_kji(volume: Volume, normal: Any) -> np.ndarray:
    """A patient direction's components along the volume's k, j, i axes."""
    direction = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)
    return (direction.T @ np.asarray(normal, dtype=np.float64))[::-1]


def _half_thickness(volume: Volume, normal: Any) -> float:
    """Half a voxel along ``normal``: a 2-D stroke marks one layer of voxels, whatever the plane."""
    if normal is None:
        return 0.0
    direction = np.asarray(volume.direction, dtype=np.float64).reshape(3, 3)
    along = np.abs(direction.T @ np.asarray(normal, dtype=np.float64))
    spacing_xyz = np.asarray(volume.spacing, dtype=np.float64)[::-1]
    return 0.5 * float(np.max(along * spacing_xyz) / max(float(np.linalg.norm(along)), 1e-9))


def _whole(volume: Volume) -> tuple[slice, slice, slice]:
    return (slice(0, volume.shape[0]), slice(0, volume.shape[1]), slice(0, volume.shape[2]))


MASKS: dict[str, Callable[[Volume, dict[str, Any]], tuple[tuple[slice, ...], np.ndarray]]] = {
    "threshold": _threshold, "otsu": _otsu, "grow": _grow, "confidence": _confidence,
    "suv_fraction": _suv_fraction, "brush": _brush, "erase": _brush,
}


def _segment_box(labels: np.ndarray, segment: int) -> tuple[slice, ...] | None:
    where = np.nonzero(labels == segment)
    if not where[0].size:
        return None
    return tuple(slice(int(axis.min()), int(axis.max()) + 1) for axis in where)


def _fill_holes(patch: np.ndarray, segment: int) -> None:
    """Fill what the segment encloses on each slice: a cavity enclosed in 3-D is enclosed on every
    slice through it, and a ring drawn slice by slice is filled though it is open at its ends."""
    for k in range(patch.shape[0]):
        layer = patch[k]
        mask = sitk.GetImageFromArray((layer == segment).astype(np.uint8))
        filled = _mask_array(sitk.BinaryFillhole(mask, fullyConnected=False, foregroundValue=1))
        layer[filled & (layer == 0)] = segment


def _signed_distance(mask: np.ndarray, spacing_yx: tuple[float, float]) -> np.ndarray:
    """Millimetres to the mask's edge on a slice: negative inside, positive outside.

    Maurer's map puts zero on the mask's outermost pixel centres; half a pixel less puts it
    on the edge between them and the first pixels outside, where the outline really is.
    """
    image = sitk.GetImageFromArray(mask.astype(np.uint8))
    image.SetSpacing((spacing_yx[1], spacing_yx[0]))
    distance = sitk.SignedMaurerDistanceMap(image, insideIsPositive=False, squaredDistance=False,
                                            useImageSpacing=True)
    return sitk.GetArrayFromImage(distance) - 0.5 * float(np.mean(spacing_yx))


def _interpolate(labels: np.ndarray, volume: Volume, segment: int) -> None:
    """Fill the empty slices between drawn ones (along the series' slice axis) with the shape that
    blends the two nearest drawn outlines: their signed distances, weighted by how near each is."""
    box = _segment_box(labels, segment)
    if box is None:
        return
    rows, columns = box[1], box[2]
    drawn = [k for k in range(box[0].start, box[0].stop) if np.any(labels[k, rows, columns] == segment)]
    spacing_yx = (float(volume.spacing[1]), float(volume.spacing[2]))
    for first, last in itertools.pairwise(drawn):
        if last - first < 2:
            continue
        near = _signed_distance(labels[first, rows, columns] == segment, spacing_yx)
        far = _signed_distance(labels[last, rows, columns] == segment, spacing_yx)
        for k in range(first + 1, last):
            weight = (k - first) / (last - first)
            patch = labels[k, rows, columns]
            patch[((1.0 - weight) * near + weight * far <= 0.0) & (patch == 0)] = segment


def _morphology(labels: np.ndarray, volume: Volume, op: dict[str, Any]) -> None:
    segment = int(op["segment"])
    box = _segment_box(labels, segment)
    if box is None:
        return
    patch = labels[box]
    mask = sitk.GetImageFromArray((patch == segment).astype(np.uint8))
    tool = op["tool"]
    if tool == "fill_holes":
        _fill_holes(patch, segment)
        return
    components = sitk.ConnectedComponent(mask)
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    smallest = 1 if tool == "largest" else max(int(np.ceil(float(op["min_ml"]) / voxel_ml)), 1)
    ranked = sitk.GetArrayFromImage(sitk.RelabelComponent(components, minimumObjectSize=smallest))
    kept = ranked == 1 if tool == "largest" else ranked > 0
    patch[(patch == segment) & ~kept] = 0


def labels_encode(labels: np.ndarray) -> bytes:
    """A label map as stored (a model's output): compressed npz, shape and values kept."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, labels=np.ascontiguousarray(labels, dtype=np.uint8))
    return buffer.getvalue()


def labels_decode(data: bytes, shape: tuple[int, ...]) -> np.ndarray:
    with np.load(io.BytesIO(data), allow_pickle=False) as stored:
        labels = stored["labels"]
    if labels.shape != tuple(shape) or labels.dtype != np.uint8:
        raise SegmentError(gettext_noop("the stored label map does not fit this series"))
    return labels


def probabilities_encode(probabilities: Mapping[int, np.ndarray]) -> bytes:
    """A model's probability of each label value (uint8, 0..255) as stored beside its label map."""
    arrays: dict[str, Any] = {f"value_{value}": np.ascontiguousarray(probability, dtype=np.uint8)
                              for value, probability in probabilities.items()}
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()


def probabilities_decode(data: bytes, shape: tuple[int, ...], values: Iterable[int]) -> dict[int, np.ndarray]:
    """The stored probabilities of ``values`` (only those are read)."""
    with np.load(io.BytesIO(data), allow_pickle=False) as stored:
        probabilities = {value: stored[f"value_{value}"] for value in values}
    if any(p.shape != tuple(shape) or p.dtype != np.uint8 for p in probabilities.values()):
        raise SegmentError(gettext_noop("the stored probabilities do not fit this series"))
    return probabilities


def _paint_labels(labels: np.ndarray, volume: Volume, op: dict[str, Any], load: ObjectLoader | None) -> None:
    """A stored label map (a model's result) painted in: each of its values as the segment it maps to."""
    if load is None:
        raise SegmentError(gettext_noop("a stored label map cannot be read here"))
    stored = labels_decode(load(str(op["object"])), volume.shape)
    for value, segment in op["segments"].items():
        labels[stored == int(value)] = int(segment)


def segmentation_apply(labels: np.ndarray, volume: Volume, op: dict[str, Any],
                       load: ObjectLoader | None = None) -> None:
    """Apply one edit to ``labels`` (uint8, the reference volume's shape) in place; ``load`` reads
    a stored label map by object id (the ``labels`` edit)."""
    tool, segment = op["tool"], int(op["segment"])
    if not 1 <= segment <= MAX_SEGMENTS:
        raise SegmentError(gettext_noop("a segment is numbered 1 to %(most)s"), most=MAX_SEGMENTS)
    if tool == "labels":
        _paint_labels(labels, volume, op, load)
        return
    if tool == "clear":
        labels[labels == segment] = 0
        return
    if tool == "interpolate":
        _interpolate(labels, volume, segment)
        return
    if tool in ("fill_holes", "islands", "largest"):
        _morphology(labels, volume, op)
        return
    if tool not in MASKS:
        raise SegmentError(gettext_noop("unknown segmentation tool %(tool)s"), tool=repr(tool))
    box, mask = MASKS[tool](volume, op)
    patch = labels[box]
    if tool == "erase":
        patch[mask & (patch == segment)] = 0
    else:
        patch[mask] = segment


def segmentation_replay(volume: Volume, edits: list[dict[str, Any]], start: np.ndarray | None = None,
                        load: ObjectLoader | None = None) -> np.ndarray:
    """The label map after ``edits``, from ``start`` (a copy is changed) or an empty map."""
    labels = np.zeros(volume.shape, dtype=np.uint8) if start is None else start.copy()
    for op in edits:
        segmentation_apply(labels, volume, op, load)
    return labels


def _scored(op: dict[str, Any]) -> bool:
    return op["tool"] == "labels" and "probabilities" in op


def segmentation_fractions(volume: Volume, edits: list[dict[str, Any]], labels: np.ndarray,
                           load: ObjectLoader) -> dict[int, np.ndarray]:
    """Per segment a model found and ``labels`` (the map after ``edits``) still holds: the model's
    probability (uint8, 0..255), except where a later edit changed the segment, which is 255
    inside its mask in ``labels`` and 0 outside. The edits are replayed up to the last model run,
    whose map is compared with ``labels``; a segment drawn by hand has none."""
    last = max((n for n, op in enumerate(edits) if _scored(op)), default=-1)
    replayed = np.zeros(volume.shape, dtype=np.uint8)
    fractions: dict[int, np.ndarray] = {}
    for op in edits[:last + 1]:
        segmentation_apply(replayed, volume, op, load)
        if _scored(op):
            fractions.update(_model_fractions(op, replayed, labels, load))
    return fractions


def _model_fractions(op: dict[str, Any], replayed: np.ndarray, labels: np.ndarray,
                     load: ObjectLoader) -> dict[int, np.ndarray]:
    """The fractions of the segments of one model run, ``replayed`` being the map just after it."""
    segments = {int(value): int(segment) for value, segment in op["segments"].items()}
    kept = {value: segment for value, segment in segments.items() if np.any(labels == segment)}
    probabilities = probabilities_decode(load(str(op["probabilities"])), labels.shape, kept)
    fractions = {}
    for value, segment in kept.items():
        fraction = probabilities[value]
        inside = labels == segment
        changed = (replayed == segment) != inside
        fraction[changed] = np.where(inside[changed], np.uint8(255), np.uint8(0))
        fractions[segment] = fraction
    return fractions


def segment_statistics(labels: np.ndarray, volume: Volume, scale: float = 1.0) -> dict[str, dict[str, float]]:
    """Per segment (by number, as text): voxels, ml, and the mean and maximum of the reference
    series, times ``scale`` (an SUV factor, where the series has one)."""
    out: dict[str, dict[str, float]] = {}
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    counts = np.bincount(labels.ravel(), minlength=256)
    for segment in np.nonzero(counts[1:])[0] + 1:
        values = volume.voxels[labels == segment]
        count = int(counts[segment])
        out[str(int(segment))] = {"voxels": count, "volume_ml": count * voxel_ml,
                                  "mean": float(values.mean()) * scale, "max": float(values.max()) * scale}
    return out


@operation("segment_statistics")
def _segment_statistics(context: WorkerContext, state: ViewState, volumes: Mapping[str, Volume],
                        arguments: dict[str, Any]) -> dict[str, Any]:
    """Layers: the reference series, then the segmentation. Builds the revision (so an edit that
    cannot be made fails here, before the reader sees it) and measures each segment."""
    reference, segmentation = (volumes[layer.series_id] for layer in state.layers[:2])
    factor = state.layers[0].suv_factor or reference.suv_factor
    unit = "SUV" if factor and reference.modality in MODALITIES_SUV else (reference.presentation.units or "")
    scale = float(factor) if unit == "SUV" and factor else 1.0
    return {"unit": unit, "segments": segment_statistics(np.asarray(segmentation.voxels), reference, scale)}


@operation("segmentation_store")
def _segmentation_store(context: WorkerContext, state: ViewState, volumes: Mapping[str, Volume],
                        arguments: dict[str, Any]) -> dict[str, Any]:
    """Layers: the reference series, then the segmentation; written here, where its map is.
    ``fractional``: the segments a model found as its probabilities (a FRACTIONAL SEG)."""
    from imaging.findings_dicom import FindingsExportError
    from imaging.segmentation_dicom import segmentation_dicom_store

    reference, segmentation = (volumes[layer.series_id] for layer in state.layers[:2])
    labels = np.asarray(segmentation.voxels)
    positions = reference.index_to_patient(
        np.stack([np.arange(reference.shape[0]), np.zeros(reference.shape[0]), np.zeros(reference.shape[0])],
                 axis=1).astype(np.float64))
    fractions = (_stored_fractions(reference, state.layers[1].series_id, labels)
                 if arguments.get("fractional") else None)
    try:
        return segmentation_dicom_store(segmentation_id=int(arguments["segmentation"]), labels=labels,
                                        slice_positions=positions, fractions=fractions)
    except FindingsExportError as error:
        raise RenderError.from_error(error) from error


def _stored_fractions(reference: Volume, layer_id: str, labels: np.ndarray) -> dict[int, np.ndarray]:
    """:func:`segmentation_fractions` of the segmentation layer's revision, from the database."""
    from imaging import storage
    from imaging.segmentations import segmentation_edits, segmentation_layer_parse

    parsed = segmentation_layer_parse(layer_id)
    if parsed is None:
        raise RenderError(gettext_noop("%(layer)s is not a segmentation"), layer=repr(layer_id))
    edits = [op for _, op in segmentation_edits(*parsed)]
    return segmentation_fractions(reference, edits, labels, load=storage.object_get)
