"""A registered segmentation model run by a render worker on a reader's reference series.

The worker reads the model file, checks its SHA-256 against the registration, runs it
(:func:`rendering.engine.onnx_models.segment_volume_scored`) and stores the label map, encrypted,
as an object of its own, and the labels' probabilities (where the model gives probabilities) as
another; the segmentation then gets a ``labels`` edit naming them, so replaying the segmentation
never runs the model again, and a fractional DICOM SEG writes what the model gave.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from gateway.i18n import gettext_noop
from rendering.engine.core import RenderError
from rendering.engine.onnx_models import (
    ModelError,
    manifest_parse,
    model_file_verify,
    model_session,
    segment_volume_scored,
)
from rendering.operations import Urgency, WorkerContext, operation
from rendering.segment_ops import labels_encode, probabilities_encode
from rendering.viewstate import ViewState
from rendering.volume import Volume

MODEL_RUN_LIMIT_S = 1800.0


PROGRESS_EVERY_S = 0.5


def _progress(run_id: int) -> Callable[[int, int], None]:
    """Tiles done, written to the run's row at most every half second (and when the last is done)."""
    from imaging.models import ModelRun

    written = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - written[0] < PROGRESS_EVERY_S:
            return
        written[0] = now
        ModelRun.objects.filter(pk=run_id).update(tiles_done=done, tiles_total=total)

    return report


def _background(state: ViewState) -> Urgency:
    return Urgency.BACKGROUND


@operation("model_run", urgency=_background, timeout_s=MODEL_RUN_LIMIT_S)
def _model_run(context: WorkerContext, state: ViewState, volumes: Mapping[str, Volume],
               arguments: dict[str, Any]) -> dict[str, Any]:
    """Layers: the reference series. Returns the stored map's object id and the values it holds, and
    the stored probabilities' object id where the model gives probabilities."""
    from imaging import storage
    from imaging.models import SegmentationModel

    model = SegmentationModel.objects.filter(pk=int(arguments["model"]), active=True).first()
    if model is None:
        raise RenderError(gettext_noop("no such model, or it was withdrawn"))
    reference = volumes[state.layers[0].series_id]
    progress = _progress(int(arguments["run"])) if arguments.get("run") else None
    try:
        session = model_session(model_file_verify(model.path, model.sha256))
        found = segment_volume_scored(reference.voxels, reference.spacing, manifest_parse(model.manifest),
                                      session, progress=progress)
    except ModelError as error:
        raise RenderError.from_error(error) from error
    object_id = f"segmodel-{uuid.uuid4().hex}"
    storage.object_put(object_id, labels_encode(found.labels))
    values = [int(v) for v in np.unique(found.labels) if v]
    result: dict[str, Any] = {"object": object_id, "values": values,
                              "voxels": int(np.count_nonzero(found.labels))}
    probabilities = {value: found.probabilities[value] for value in values if value in found.probabilities}
    if probabilities:
        result["probabilities"] = f"segprob-{uuid.uuid4().hex}"
        storage.object_put(result["probabilities"], probabilities_encode(probabilities))
    return result
