"""Segmentations readers draw: created on a series, edited, undone and redone, kept in the clinical zone.

What a segmentation looks like at a revision is built by the render workers from its edits
(:mod:`rendering.segmentation_volumes`); this module keeps the record. A render layer names
a segmentation as ``seg:<id>:<revision>:<style>``, so a worker's cache holds each revision
and each look of it apart, and a stale revision is never shown for a new one.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from django.db import transaction
from django.utils import timezone

from gateway.i18n import gettext_noop
from imaging import storage
from imaging.models import Segmentation, SegmentationEdit, SegmentationModel, Study
from imaging.segmentation_models import model_labels
from rendering.said import SaidError

MAX_SEGMENTS = 32
MAX_EDITS = 2000
SEGMENT_COLOURS = ("#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0",
                   "#f032e6", "#bcf60c", "#fabebe", "#008080", "#e6beff")
LAYER_PREFIX = "seg:"
_LAYER = re.compile(r"^seg:(\d{1,12}):(\d{1,6}):([0-9a-f]{12})$")
_COLOUR = re.compile(r"^#[0-9a-f]{6}$")


class SegmentationNotFound(LookupError):
    """No such segmentation of the study (or not one this principal may change)."""


class SegmentationError(SaidError, ValueError):
    """A change that cannot be made (said to the reader)."""


def _segment(number: int) -> dict[str, Any]:
    return {"number": number, "name": f"Segment {number}",
            "colour": SEGMENT_COLOURS[(number - 1) % len(SEGMENT_COLOURS)], "visible": True, "opacity": 0.5}


def segmentation_create(*, study_uid: str, series_uid: str, label: str, author: str,
                        by_consultant: bool = False) -> Segmentation:
    study = Study.objects.filter(study_instance_uid=study_uid).first()
    if study is None or not study.series.filter(series_instance_uid=series_uid).exists():
        raise SegmentationNotFound(series_uid)
    return Segmentation.objects.create(study=study, series_instance_uid=series_uid, label=label,
                                       segments=[_segment(1)], author=author, by_consultant=by_consultant)


def segmentation_get(segmentation_id: int, *study_uids: str) -> Segmentation:
    found = (Segmentation.objects.filter(pk=segmentation_id, study__study_instance_uid__in=study_uids,
                                         deleted_at__isnull=True).select_related("study").first())
    if found is None:
        raise SegmentationNotFound(segmentation_id)
    return found


def segmentations_of(*study_uids: str) -> list[Segmentation]:
    return list(Segmentation.objects.filter(study__study_instance_uid__in=study_uids, deleted_at__isnull=True)
                .select_related("study"))


def segmentation_edit(segmentation_id: int, op: dict[str, Any], *, author: str) -> Segmentation:
    """Record ``op`` as the next revision; edits undone before it are dropped."""
    with transaction.atomic():
        segmentation = Segmentation.objects.select_for_update().get(pk=segmentation_id)
        if segmentation.revision >= MAX_EDITS:
            raise SegmentationError(gettext_noop("a segmentation keeps at most %(most)s edits: save it and "
                                                 "start another"), most=MAX_EDITS)
        if int(op.get("segment", 0)) not in {s["number"] for s in segmentation.segments}:
            raise SegmentationError(gettext_noop("no such segment in this segmentation: add it first"))
        segmentation.edits.filter(revision__gt=segmentation.revision).delete()
        segmentation.revision += 1
        SegmentationEdit.objects.create(segmentation=segmentation, revision=segmentation.revision, op=op,
                                        author=author)
        segmentation.save(update_fields=["revision", "updated_at"])
    return segmentation


def segmentation_step(segmentation_id: int, *, back: bool) -> Segmentation:
    """Undo (``back``) or redo one edit; refused where there is none."""
    with transaction.atomic():
        segmentation = Segmentation.objects.select_for_update().get(pk=segmentation_id)
        target = segmentation.revision - 1 if back else segmentation.revision + 1
        if target < 0 or (not back and not segmentation.edits.filter(revision=target).exists()):
            raise SegmentationError(gettext_noop("nothing to undo") if back
                                    else gettext_noop("nothing to redo"))
        segmentation.revision = target
        segmentation.save(update_fields=["revision", "updated_at"])
    return segmentation


def segmentation_forget_last(segmentation_id: int) -> Segmentation:
    """Take back the edit just recorded (it could not be applied): as if it was never made."""
    with transaction.atomic():
        segmentation = Segmentation.objects.select_for_update().get(pk=segmentation_id)
        segmentation.edits.filter(revision=segmentation.revision).delete()
        segmentation.revision -= 1
        segmentation.save(update_fields=["revision", "updated_at"])
    return segmentation


def segment_set(segmentation_id: int, number: int, **changes: Any) -> Segmentation:
    """Add segment ``number`` or change its name, colour, visibility or opacity."""
    if not 1 <= number <= MAX_SEGMENTS:
        raise SegmentationError(gettext_noop("a segment is numbered 1 to %(most)s"), most=MAX_SEGMENTS)
    if "colour" in changes and not _COLOUR.match(str(changes["colour"])):
        raise SegmentationError(gettext_noop("a colour is #rrggbb"))
    with transaction.atomic():
        segmentation = Segmentation.objects.select_for_update().get(pk=segmentation_id)
        segments = {s["number"]: s for s in segmentation.segments}
        segments[number] = {**segments.get(number, _segment(number)), **changes}
        segmentation.segments = [segments[n] for n in sorted(segments)]
        segmentation.save(update_fields=["segments", "updated_at"])
    return segmentation


def segmentation_delete(segmentation_id: int) -> None:
    Segmentation.objects.filter(pk=segmentation_id).update(deleted_at=timezone.now())


def style_key(segments: list[dict[str, Any]]) -> str:
    text = json.dumps(segments, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def segmentation_layer_id(segmentation: Segmentation) -> str:
    """The render layer's series id of this segmentation as it is now."""
    return f"{LAYER_PREFIX}{segmentation.id}:{segmentation.revision}:{style_key(segmentation.segments)}"


def segmentation_layer_parse(layer_id: str) -> tuple[int, int] | None:
    """(segmentation id, revision) of a layer id, or None for a series."""
    found = _LAYER.match(layer_id)
    return (int(found.group(1)), int(found.group(2))) if found else None


def segmentation_edits(segmentation_id: int, revision: int) -> list[tuple[int, dict[str, Any]]]:
    """(edit id, op) of revisions 1..``revision``, in order."""
    return list(SegmentationEdit.objects.filter(segmentation_id=segmentation_id, revision__lte=revision)
                .order_by("revision").values_list("id", "op"))


def segmentations_wire(*study_uids: str) -> list[dict[str, Any]]:
    """Every live segmentation of the studies, as the viewer lists them."""
    return [segmentation_wire(segmentation) for segmentation in segmentations_of(*study_uids)]


def segments_scored(segmentation: Segmentation) -> set[int]:
    """The segments a model run at this revision found with their probabilities (a fractional SEG
    can write those)."""
    runs = segmentation.edits.filter(revision__lte=segmentation.revision, op__tool="labels",
                                     op__has_key="probabilities").values_list("op", flat=True)
    return {int(number) for op in runs for number in op["segments"].values()}


def segmentation_wire(segmentation: Segmentation) -> dict[str, Any]:
    """As the viewer shows it; a segment a model found with probabilities says ``fractional``."""
    redo = segmentation.edits.filter(revision__gt=segmentation.revision).exists()
    scored = segments_scored(segmentation)
    segments = [{**segment, "fractional": True} if segment["number"] in scored else segment
                for segment in segmentation.segments]
    return {"id": segmentation.id, "label": segmentation.label, "series": segmentation.series_instance_uid,
            "study": segmentation.study.study_instance_uid, "revision": segmentation.revision,
            "can_undo": segmentation.revision > 0, "can_redo": redo, "segments": segments,
            "layer": segmentation_layer_id(segmentation), "by": segmentation.author,
            "consultant": segmentation.by_consultant}


def segmentation_from_model(segmentation_id: int, model: SegmentationModel, found: dict[str, Any], *,
                            author: str) -> Segmentation:
    """The labels a model found, each as a new segment named and coloured as its manifest says;
    the run's probabilities (where it gave them) are named in the same edit."""
    named = {int(label["value"]): label for label in model_labels(model)}
    values = [value for value in found["values"] if value in named]
    if not values:
        _run_forget(found)
        raise SegmentationError(gettext_noop("%(model)s found nothing in this series"), model=model.name)
    segmentation = Segmentation.objects.get(pk=segmentation_id)
    taken = {int(s["number"]) for s in segmentation.segments}
    free = [n for n in range(1, MAX_SEGMENTS + 1) if n not in taken][:len(values)]
    if len(free) < len(values):
        _run_forget(found)
        raise SegmentationError(gettext_noop("a segmentation has at most %(most)s segments"),
                                most=MAX_SEGMENTS)
    for value, number in zip(values, free, strict=True):
        segment_set(segmentation_id, number, name=f"{named[value]['name']} ({model.name})"[:64],
                    colour=str(named[value]["colour"]).lower())
    op = {"tool": "labels", "segment": free[0], "object": str(found["object"]), "model": model.id,
          "segments": {str(value): number for value, number in zip(values, free, strict=True)}}
    if found.get("probabilities"):
        op["probabilities"] = str(found["probabilities"])
    return segmentation_edit(segmentation_id, op, author=author)


def _run_forget(found: dict[str, Any]) -> None:
    """The objects a model run stored, deleted: no edit will name them."""
    for key in ("object", "probabilities"):
        if found.get(key):
            storage.object_delete(str(found[key]))
