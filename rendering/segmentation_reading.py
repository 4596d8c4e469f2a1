"""The viewer socket's segmentation messages: open, edit, undo, style and store a segmentation.

Mixed into :class:`rendering.consumers.ViewerConsumer`. Who may do what: a reader who may
report (``study.report``: doctors) creates, edits and stores segmentations; everyone else who
opens the study sees them, a consultant only where the share carries ``measure``. Every edit
is recorded first and then built by a render worker with the segment statistics; an edit the
worker cannot make is taken back, so what is recorded is always what can be drawn.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from channels.db import database_sync_to_async

from gateway.audit.catalogue import Action, Outcome
from gateway.i18n import gettext_noop
from imaging.segmentation_models import model_offered, model_run_progress, model_run_start, models_offered
from imaging.segmentations import (
    SegmentationError,
    SegmentationNotFound,
    segment_set,
    segmentation_create,
    segmentation_delete,
    segmentation_edit,
    segmentation_forget_last,
    segmentation_from_model,
    segmentation_get,
    segmentation_layer_id,
    segmentation_step,
    segmentation_wire,
    segmentations_wire,
)
from rendering import protocol
from rendering.pool import CLINICAL
from rendering.reading_host import ReadingHost
from rendering.session import SessionError
from rendering.viewstate import viewstate_from_dict
from rendering.workers import RenderError

if TYPE_CHECKING:
    from imaging.models import Segmentation


class SegmentFailed(SessionError):
    """A worker could not build the segmentation (an edit it cannot make, a worker that died)."""

    code = "segment_failed"


REPORTING_ONLY = gettext_noop("segmenting is part of reporting, which is not granted here")


class SegmentationReading(ReadingHost):
    """State and handlers of the reader's segmentation (one open at a time per socket)."""

    segmentation_id: int | None = None

    async def _segmentation_editing(self) -> None:
        await self._reporting(REPORTING_ONLY)

    async def _recorded(self, change: Callable[..., Segmentation], *args: Any, **kwargs: Any) -> Segmentation:
        """A change of a segmentation's record; what it refuses is said to the reader."""
        try:
            return await database_sync_to_async(change)(*args, **kwargs)
        except SegmentationError as error:
            raise SessionError.from_error(error) from error

    async def _segmentation_may_see(self) -> bool:
        consultant = getattr(self.principal, "is_capability", False) is True
        return not consultant or bool(self.may_measure)

    async def _send_segmentations(self) -> None:
        listed: list[dict[str, Any]] = []
        if await self._segmentation_may_see():
            listed = await database_sync_to_async(segmentations_wire)(*self.session.studies)
        may_edit = await self._may_report()
        models = await database_sync_to_async(models_offered)() if may_edit else []
        await self.send(text_data=_json({"type": "segmentations", "may_edit": may_edit, "models": models,
                                         "segmentations": listed}))

    async def _on_seg_new(self, message: protocol.SegNew) -> None:
        await self._segmentation_editing()
        session = self.session
        series = session.series[session.views[message.view].layers[0]["series_id"]]
        if series.kind != "volume" or not series.mpr:
            raise SessionError(gettext_noop("a segmentation is drawn on a volume series (CT, MR, PET, "
                                            "SPECT)"))
        try:
            created = await database_sync_to_async(segmentation_create)(
                study_uid=series.study or self.study.study_uid, series_uid=series.uid,
                label=message.label, author=self.principal.username)
        except SegmentationNotFound as error:
            raise SessionError(gettext_noop("that series is not one of this reading's studies")) from error
        await self._audit(Action.SEGMENTATION_CREATE, Outcome.SUCCESS,
                          study=created.study.study_instance_uid,
                          details={"segmentation": created.id, "series": series.uid})
        await self._segmentation_show(created.id)
        await self._send_segmentations()

    async def _on_seg_open(self, message: protocol.SegOpen) -> None:
        if not await self._segmentation_may_see():
            raise SessionError(gettext_noop("seeing segmentations needs a share that carries measure"))
        await self._segmentation_show(message.segmentation)

    async def _on_seg_close(self, message: protocol.SegClose) -> None:
        self.segmentation_id = None
        self._render(self.session.segmentation_hide())
        await self.send(text_data=_json({"type": "segmentation", "segmentation": None}))

    async def _segmentation_open(self) -> Segmentation:
        if self.segmentation_id is None:
            raise SessionError(gettext_noop("no segmentation is open"))
        try:
            return await database_sync_to_async(segmentation_get)(
                self.segmentation_id, *self.session.studies)
        except SegmentationNotFound as error:
            raise SessionError(gettext_noop("no such segmentation of this reading")) from error

    async def _segmentation_show(self, segmentation_id: int) -> None:
        try:
            segmentation = await database_sync_to_async(segmentation_get)(
                segmentation_id, *self.session.studies)
        except SegmentationNotFound as error:
            raise SessionError(gettext_noop("no such segmentation of this reading")) from error
        await self._segmentation_changed(segmentation, editable=await self._may_report())
        self.segmentation_id = segmentation.id

    def _segmentation_state(self, segmentation: Segmentation, *, reference_only: bool = False) -> Any:
        """Layers: the reference series (in this reading's SUV), then the segmentation over it."""
        layers = self.session.segmentation_layers(
            segmentation.series_instance_uid, segmentation_layer_id(segmentation))
        return viewstate_from_dict({"view": "native", "layers": layers[:1] if reference_only else layers})

    async def _segmentation_changed(self, segmentation: Segmentation, *, editable: bool = True) -> None:
        """The revision built and measured by a worker, then shown: its numbers sent, its views drawn."""
        try:
            statistics = await self.pool.request("segment_statistics", self._segmentation_state(segmentation),
                                                 source=CLINICAL)
        except RenderError as error:  # MissingVolumeError, a crash, a timeout: all are RenderErrors
            raise SegmentFailed.from_error(error) from error
        views = self.session.segmentation_show(
            segmentation_layer_id(segmentation), segmentation.series_instance_uid)
        wire = await database_sync_to_async(segmentation_wire)(segmentation)
        await self.send(text_data=_json({"type": "segmentation", "segmentation": {
            **wire, "statistics": statistics, "editable": editable}}))
        self._render(views)

    def _edit_op(self, message: protocol.SegEdit, frame_of_reference: str) -> dict[str, Any]:
        session = self.session
        if message.points and session.view_frame_of_reference(message.view) != frame_of_reference:
            raise SessionError(gettext_noop("that view shows another frame of reference than the "
                                            "segmentation's"))
        points = [session.view_point_mm(message.view, point) for point in message.points]
        op: dict[str, Any] = {"tool": message.tool, "segment": message.segment, **message.settings}
        planar = op.pop("planar", False)
        if message.tool in ("grow", "confidence"):
            op["seeds_mm"] = points
        elif message.tool in ("brush", "erase"):
            op["points_mm"] = points
            if planar:
                op["normal"] = session.view_normal(message.view)
        elif points:
            op["center_mm"] = points[0]
        if message.tool == "threshold" and points and "box_mm" not in op:
            raise SessionError(gettext_noop("a threshold at a point needs box_mm (else it covers the whole "
                                            "series)"))
        return op

    async def _on_seg_edit(self, message: protocol.SegEdit) -> None:
        await self._segmentation_editing()
        segmentation = await self._segmentation_open()
        reference = self.session.series.get(segmentation.series_instance_uid)
        op = self._edit_op(message, reference.frame_of_reference if reference else "")
        edited = await self._recorded(segmentation_edit, segmentation.id, op, author=self.principal.username)
        try:
            await self._segmentation_changed(edited)
        except SegmentFailed:
            await database_sync_to_async(segmentation_forget_last)(edited.id)
            raise

    async def _on_seg_undo(self, message: protocol.SegUndo) -> None:
        await self._segmentation_step(back=True)

    async def _on_seg_redo(self, message: protocol.SegRedo) -> None:
        await self._segmentation_step(back=False)

    async def _segmentation_step(self, *, back: bool) -> None:
        await self._segmentation_editing()
        segmentation = await self._segmentation_open()
        await self._segmentation_changed(await self._recorded(segmentation_step, segmentation.id, back=back))

    async def _on_seg_segment(self, message: protocol.SegSegment) -> None:
        await self._segmentation_editing()
        segmentation = await self._segmentation_open()
        await self._segmentation_changed(
            await self._recorded(segment_set, segmentation.id, message.segment, **message.changes))

    async def _on_seg_store(self, message: protocol.SegStore) -> None:
        if not await self._may_report():
            await self._audit(Action.SEGMENTATION_STORE, Outcome.DENIED,
                              details={"reason": "study.report not granted"})
            raise SessionError(gettext_noop("storing a segmentation in the study is part of reporting, "
                                            "which is not granted here"))
        segmentation = await self._segmentation_open()
        study = segmentation.study.study_instance_uid
        try:
            stored = await self.pool.request(
                "segmentation_store", self._segmentation_state(segmentation), source=CLINICAL,
                segmentation=segmentation.id, fractional=message.fractional)
        except RenderError as error:
            await self._audit(Action.SEGMENTATION_STORE, Outcome.FAILURE, study=study,
                              details={"segmentation": segmentation.id, "fractional": message.fractional,
                                       "reason": str(error)[:200]})
            await self._error("store_failed", error, of="seg_store")
            return
        await self._audit(Action.SEGMENTATION_STORE, Outcome.SUCCESS, study=study,
                          details={"segmentation": segmentation.id, **stored})
        await self.send(text_data=_json({"type": "segmentation_stored",
                                         "segmentation": segmentation.id, **stored}))


    async def _on_seg_model(self, message: protocol.SegModel) -> None:
        """Run a registered model on the open segmentation's series; its labels become segments."""
        await self._segmentation_editing()
        segmentation = await self._segmentation_open()
        model = await database_sync_to_async(model_offered)(message.model)
        if model is None:
            raise SessionError(gettext_noop("no such model, or it was withdrawn"))
        about = {"segmentation": segmentation.id, "model": model.id, "name": model.name,
                 "version": model.version, "sha256": model.sha256, "registered_by": model.registered_by}
        study = segmentation.study.study_instance_uid
        run = await database_sync_to_async(model_run_start)(segmentation.id, model)
        reference = self._segmentation_state(segmentation, reference_only=True)
        try:
            found = await self._model_run_followed(model.id, run, reference)
            changed = await database_sync_to_async(segmentation_from_model)(segmentation.id, model, found,
                                                                            author=self.principal.username)
        except (RenderError, SegmentationError) as error:
            await self._audit(Action.SEGMENTATION_MODEL, Outcome.FAILURE, study=study,
                              details={**about, "reason": str(error)[:200]})
            await self._error("model_failed", error, of="seg_model")
            return
        await self._audit(Action.SEGMENTATION_MODEL, Outcome.SUCCESS, study=study,
                          details={**about, "voxels": found["voxels"]})
        await self._segmentation_changed(changed)

    async def _on_seg_delete(self, message: protocol.SegDelete) -> None:
        """Delete a segmentation of the reading (kept, marked deleted: the audit can name it)."""
        await self._segmentation_editing()
        try:
            segmentation = await database_sync_to_async(segmentation_get)(
                message.segmentation, *self.session.studies)
        except SegmentationNotFound as error:
            raise SessionError(gettext_noop("no such segmentation of this reading")) from error
        await database_sync_to_async(segmentation_delete)(segmentation.id)
        await self._audit(Action.SEGMENTATION_DELETE, Outcome.SUCCESS,
                          study=segmentation.study.study_instance_uid,
                          details={"segmentation": segmentation.id, "label": segmentation.label})
        if self.segmentation_id == segmentation.id:
            await self._on_seg_close(protocol.SegClose())
        await self._send_segmentations()

    async def _model_run_followed(self, model_id: int, run: int, reference: Any) -> dict[str, Any]:
        """The worker's answer; meanwhile ``segmentation_job`` says how many tiles are done, every
        second, and once more when the run ends."""
        job = asyncio.ensure_future(self.pool.request("model_run", reference, source=CLINICAL, model=model_id,
                                                      run=run))
        while True:
            done, total = await database_sync_to_async(model_run_progress)(run)
            state = "running" if not job.done() else "failed" if job.exception() else "done"
            await self.send(text_data=_json({"type": "segmentation_job", "model": model_id, "state": state,
                                             "done": done, "total": total}))
            if job.done():
                found: dict[str, Any] = job.result()
                return found
            await asyncio.wait({job}, timeout=MODEL_PROGRESS_EVERY_S)


MODEL_PROGRESS_EVERY_S = 1.0


def _json(body: dict[str, Any]) -> str:
    return json.dumps(body)


SEGMENTATION_HANDLERS: dict[type, Callable[[Any, Any], Awaitable[None]]] = {
    protocol.SegNew: SegmentationReading._on_seg_new,
    protocol.SegOpen: SegmentationReading._on_seg_open,
    protocol.SegClose: SegmentationReading._on_seg_close,
    protocol.SegEdit: SegmentationReading._on_seg_edit,
    protocol.SegUndo: SegmentationReading._on_seg_undo,
    protocol.SegRedo: SegmentationReading._on_seg_redo,
    protocol.SegSegment: SegmentationReading._on_seg_segment,
    protocol.SegStore: SegmentationReading._on_seg_store,
    protocol.SegModel: SegmentationReading._on_seg_model,
    protocol.SegDelete: SegmentationReading._on_seg_delete,
}
"""Each segmentation message and its handler (:data:`rendering.consumers.MESSAGE_HANDLERS` takes them)."""
