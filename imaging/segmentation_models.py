"""Segmentation models IT registers: the file's digest taken now, the manifest checked now.

A worker runs a model only after reading the file and finding the digest registered here
(:func:`rendering.engine.onnx_models.model_file_verify`): a file changed after registration
is refused, and nothing is downloaded. Registering and withdrawing are audited.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from imaging.models import ModelRun, SegmentationModel
from rendering.engine.onnx_models import MAX_MODEL_BYTES, ModelError, manifest_parse


def _digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_register(*, path: str, manifest: dict[str, Any], actor: str) -> SegmentationModel:
    """Register the ONNX file at ``path`` with ``manifest`` (raises ModelError with why not)."""
    parsed = manifest_parse(manifest)
    file = Path(path).resolve()
    if not file.is_file():
        raise ModelError(f"{file} is not a file")
    if file.stat().st_size > MAX_MODEL_BYTES:
        raise ModelError(f"{file} is larger than {MAX_MODEL_BYTES} bytes")
    if SegmentationModel.objects.filter(name=parsed.name, version=parsed.version).exists():
        raise ModelError(f"{parsed.name} {parsed.version} is registered already: give a new version")
    model = SegmentationModel.objects.create(name=parsed.name, version=parsed.version, path=str(file),
                                             sha256=_digest(file), manifest=manifest, registered_by=actor)
    audit_record(actor=actor, action=Action.ADMIN_MODEL, outcome=Outcome.SUCCESS,
                 details={"model": model.id, "name": model.name, "version": model.version,
                          "sha256": model.sha256})
    return model


def model_manifest_file(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ModelError(f"the manifest cannot be read: {error}") from error
    if not isinstance(data, dict):
        raise ModelError("the manifest is a JSON object")
    return data


def models_offered() -> list[dict[str, Any]]:
    """The active models, as the viewer lists them."""
    return [{"id": model.id, "name": model.name, "version": model.version,
             "labels": [label["name"] for label in _labels(model.manifest)]}
            for model in SegmentationModel.objects.filter(active=True)]


def _labels(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    output = manifest.get("output") or {}
    return list(output.get("labels") or ([output["label"]] if "label" in output else []))


def model_labels(model: SegmentationModel) -> list[dict[str, Any]]:
    return _labels(model.manifest)


def model_offered(model_id: int) -> SegmentationModel | None:
    return SegmentationModel.objects.filter(pk=model_id, active=True).first()


def model_run_start(segmentation_id: int, model: SegmentationModel) -> int:
    return ModelRun.objects.create(segmentation_id=segmentation_id, model=model).pk


def model_run_progress(run_id: int) -> tuple[int, int]:
    """(tiles done, tiles in all) of a run, as its worker last wrote them."""
    row = ModelRun.objects.filter(pk=run_id).values_list("tiles_done", "tiles_total").first()
    return (int(row[0]), int(row[1])) if row else (0, 0)
