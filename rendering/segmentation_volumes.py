"""A segmentation's label map at a revision, built in a render worker from its edits.

The map is the reference series' voxel grid (uint8, one number per segment) with the edits
replayed; the worker keeps a few recent maps of each segmentation (within a byte budget), so
an edit, an undo or a redo replays only what the nearest kept map lacks. The segments' colours,
visibility and opacity travel with the volume (``Presentation.label_style``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from rendering.segment_ops import segmentation_replay
from rendering.volume import Presentation, Volume

KEPT_BYTES = 256 * 1024 * 1024


def label_style(segments: list[dict[str, Any]]) -> tuple[tuple[int, str, float], ...]:
    """(number, colour, alpha) of each segment; a hidden one has alpha 0."""
    return tuple((int(s["number"]), str(s["colour"]),
                  float(s.get("opacity", 0.5)) if s.get("visible", True) else 0.0) for s in segments)


class SegmentationMaps:
    """Builds ``seg:<id>:<revision>:<style>`` layers; ``load_reference`` gives a series' volume."""

    def __init__(self, load_reference: Callable[[str], Volume], kept_bytes: int = KEPT_BYTES) -> None:
        self._load_reference = load_reference
        self._kept: OrderedDict[tuple[int, tuple[int, ...]], np.ndarray] = OrderedDict()
        self._kept_bytes = kept_bytes

    def build(self, layer_id: str) -> Volume:
        from imaging.models import Segmentation
        from imaging.segmentations import segmentation_edits, segmentation_layer_parse

        parsed = segmentation_layer_parse(layer_id)
        segmentation = Segmentation.objects.filter(pk=parsed[0]).first() if parsed else None
        if parsed is None or segmentation is None:
            raise KeyError(layer_id)
        reference = self._load_reference(segmentation.series_instance_uid)
        edits = segmentation_edits(parsed[0], parsed[1])
        ids = tuple(edit_id for edit_id, _ in edits)
        start, done = self._nearest(parsed[0], ids)
        labels = segmentation_replay(reference, [op for _, op in edits[done:]], start, load=_object)
        self._keep((parsed[0], ids), labels)
        display = {"kind": "label", "modality": "SEG", "units": "",
                   "frame_of_reference_uid": reference.frame_of_reference_uid,
                   "segments": [{"number": s["number"], "label": s["name"]} for s in segmentation.segments]}
        look = Presentation(kind="label", label_style=label_style(segmentation.segments))
        return replace(reference, voxels=labels, modality="SEG", series_id=layer_id, suv_factor=None,
                       display=display, presentation=look)

    def _nearest(self, segmentation_id: int, ids: tuple[int, ...]) -> tuple[np.ndarray | None, int]:
        """The kept map whose edits are the longest prefix of ``ids``, and how many it holds."""
        best: tuple[np.ndarray | None, int] = (None, 0)
        for (kept_id, kept_ids), labels in self._kept.items():
            if kept_id == segmentation_id and len(kept_ids) > best[1] and ids[:len(kept_ids)] == kept_ids:
                best = (labels, len(kept_ids))
        return best

    def _keep(self, key: tuple[int, tuple[int, ...]], labels: np.ndarray) -> None:
        self._kept[key] = labels
        self._kept.move_to_end(key)
        while sum(map(_nbytes, self._kept.values())) > self._kept_bytes and len(self._kept) > 1:
            self._kept.popitem(last=False)


def _object(object_id: str) -> bytes:
    from imaging import storage

    return storage.object_get(object_id)


def _nbytes(labels: np.ndarray) -> int:
    return int(labels.nbytes)
