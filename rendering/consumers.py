"""The viewer websocket: JSON input in, encoded frames out, nothing else.

Lives exactly as long as its two-factor session, or as long as a consultant's
share grants this study (``PrincipalGuardedConsumer``: closed on sign-out,
revocation or expiry, without a database round trip per message); asks the
policy for the study on connect, audits the render session's start and end,
and owns the view state. Rendering happens in the worker pool; this consumer
only validates, schedules and forwards, and handles each message without
waiting on a worker, so input is counted (``rendering.flow``) and coalesced
as it arrives.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from channels.db import database_sync_to_async
from django.conf import settings
from django.urls import reverse
from django.utils import translation
from django.utils.translation import gettext as _
from django.utils.translation.trans_real import parse_accept_lang_header

from accounts.hanging import (
    HangingRuleNotFound,
    SavedHanging,
    hanging_owner,
    hanging_rule_delete,
    hanging_rule_save,
    hanging_rules_for,
)
from accounts.models import User
from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from gateway.i18n import gettext_noop
from gateway.net import scope_address
from gateway.policy import Permission, may
from gateway.sharing.principal import audit_fields
from gateway.sharing.services import share_use_record
from gateway.sharing.websocket import PrincipalGuardedConsumer
from imaging.access import StudyNotFound, ViewerSeries, ViewerStudy, related_studies, study_for_viewer
from imaging.documents import documents_of
from imaging.findings import (
    FindingNotFound,
    Kept,
    finding_delete,
    finding_keep,
    finding_relabel,
    finding_study,
    finding_wire,
    findings_of,
)
from imaging.findings_dicom import (
    MANUFACTURER,
    FindingsExportError,
    findings_dicom_store,
)
from imaging.identity.selectors import patient_sex_of
from imaging.models import ReportSigned
from imaging.reports import ReportError, key_image_add, report_summaries
from rendering import protocol
from rendering.crop_reading import CROP_HANDLERS
from rendering.derived_reading import DERIVED_HANDLERS, DerivedReading, derive_vocabulary
from rendering.engine.core import FrameOfReferenceError, MissingVolumeError, RenderedFrame
from rendering.engine.palettes import palette_stops
from rendering.flow import LatestWins, MessageBudget
from rendering.hanging import Hanging, HangingRuleError
from rendering.operations import operation_named
from rendering.pool import CLINICAL, render_pool_async
from rendering.registration_reading import REGISTRATION_HANDLERS, RegistrationReading
from rendering.reporting import finding_regions
from rendering.said import said
from rendering.scheduler import Quality as SchedulerQuality
from rendering.scheduler import ViewScheduler
from rendering.segmentation_reading import SEGMENTATION_HANDLERS, SegmentationReading
from rendering.session import SUV_MODALITIES, SeriesInfo, SessionError, ViewerSession
from rendering.toolbox import toolbox_wire
from rendering.viewstate import Quality, ViewStateError, viewstate_from_dict
from rendering.workers import RenderError
from rendering.workspace_reading import WORKSPACE_HANDLERS, bookmarks_send, grids_send

logger = logging.getLogger("rendering.viewer")

CLOSE_NOT_FOUND = 4404
MESSAGES_PER_SECOND = 120
MESSAGE_BURST = 240
THUMBNAIL_PIXELS = 96
VOCABULARY = protocol.vocabulary(palette_stops())
VOCABULARY_WITHOUT_MEASURING = {**VOCABULARY, "measure_tools": [], "charts": {}}
WIRE_ENCODING = {"jpeg": protocol.Encoding.JPEG, "png": protocol.Encoding.PNG,
                 "webp": protocol.Encoding.WEBP}


def overlay_wire(frame: RenderedFrame, kind: str, viewport_width: int) -> dict[str, Any]:
    """The overlay facts a client draws, as plain numbers and letters (no PHI).

    Scale is given per *viewport* pixel: a reduced interactive frame is stretched
    to the viewport by the client.
    """
    overlay = frame.overlay
    wire: dict[str, Any] = {
        "kind": kind, "orientation": overlay.orientation,
        "windows": [{"center": layer.window_center, "width": layer.window_width,
                     "unit": layer.unit, "modality": layer.modality, "palette": layer.palette,
                     "opacity": layer.opacity}
                    for layer in overlay.layers],
        "render_ms": round(frame.render_ms + frame.encode_ms, 2),
    }
    if overlay.mm_per_pixel is not None:
        wire["mm_per_pixel"] = overlay.mm_per_pixel * frame.width / max(viewport_width, 1)
    if overlay.slice_position_mm is not None:
        wire["position"] = overlay.slice_position_mm
    if overlay.slice_index is not None and overlay.slice_count is not None:
        wire["slice"] = [overlay.slice_index + 1, overlay.slice_count]
    if overlay.crosshair_px is not None:
        wire["crosshair"] = [round(v, 1) for v in overlay.crosshair_px]
    if overlay.plane is not None:
        wire["plane"] = overlay.plane
    if overlay.zoom is not None:
        wire["zoom"] = round(overlay.zoom, 3)
    if overlay.slab is not None:
        wire["slab"] = {"mode": overlay.slab[0], "thickness_mm": round(overlay.slab[1], 2)}
    if overlay.time_point is not None:
        wire["time"] = list(overlay.time_point)
    return wire


def reader_language(scope: dict[str, Any]) -> str:
    """The language the socket's reader reads, as ``LocaleMiddleware`` would choose it for a page.

    A websocket has no request for ``translation.get_language_from_request``: the language cookie
    (the page header's language form sets it) where it names a language offered, else the best
    match of the browser's Accept-Language, else the site's ``LANGUAGE_CODE``.
    """
    offered = {code for code, _name in settings.LANGUAGES}
    cookie = (scope.get("cookies") or {}).get(settings.LANGUAGE_COOKIE_NAME, "")
    if cookie in offered:
        return str(cookie)
    header = next((value for name, value in scope.get("headers") or () if name.lower() == b"accept-language"),
                  b"")
    for code, _quality in parse_accept_lang_header(header.decode("latin-1")):
        if code == "*":
            break
        try:
            return translation.get_supported_language_variant(code)
        except LookupError:
            continue
    return str(settings.LANGUAGE_CODE)


def _unavailable(series: ViewerSeries, reason: str, study: str) -> dict[str, Any]:
    return {"uid": series.uid, "modality": series.modality, "description": series.description,
            "number": series.number, "images": series.images, "study": study, "available": False,
            "reason": reason}


class ViewerConsumer(SegmentationReading, RegistrationReading, DerivedReading, PrincipalGuardedConsumer):
    """The viewer's socket. Everything it says is in its reader's language (:func:`reader_language`,
    chosen at connect): each message is handled, and each job's news sent, inside
    ``translation.override(self.language)``; a consumer runs outside ``LocaleMiddleware``."""

    study: ViewerStudy
    session: ViewerSession
    language: str | None = None

    def capability_resource(self) -> str | None:
        return str(self.scope["url_route"]["kwargs"]["study"])

    async def session_connect(self) -> bool:
        self.language = reader_language(self.scope)
        with translation.override(self.language):
            return await self._opened()

    async def _opened(self) -> bool:
        user = self.principal
        study_uid = self.scope["url_route"]["kwargs"]["study"]
        try:
            self.study = await database_sync_to_async(study_for_viewer)(
                principal=user, study_uid=study_uid)
        except StudyNotFound:
            await self._audit(Action.RENDER_START, Outcome.DENIED, study=study_uid[:64],
                              details={"reason": "study not found or not permitted"})
            self.refusal_code = CLOSE_NOT_FOUND
            return False
        self.pool = await render_pool_async()
        self.related = await database_sync_to_async(related_studies)(principal=user, study=self.study)
        self.may_measure = await database_sync_to_async(may)(user, Permission.STUDY_MEASURE,
                                                             self.study.study_uid)
        self.may_report = await database_sync_to_async(may)(user, Permission.STUDY_REPORT,
                                                            self.study.study_uid)
        sex = await database_sync_to_async(patient_sex_of)(pseudonym=self.study.patient_pseudonym)
        try:
            shown, unavailable = await self._describe_series(self.study)
            self.session = ViewerSession(study_uid=self.study.study_uid, series=shown,
                                         unavailable=unavailable)
            self.session.suv.sex = sex
            await self._derived_open()
        except (SessionError, RenderError, MissingVolumeError) as error:
            await self._audit(Action.RENDER_START, Outcome.FAILURE, details={"reason": str(error)})
            self.refusal_code = CLOSE_NOT_FOUND
            return False
        await self._hanging_open(user)
        self.schedulers: list[ViewScheduler] = []
        self.frames_sent = 0
        self.started = time.monotonic()
        self.budget = MessageBudget(rate=MESSAGES_PER_SECOND, burst=MESSAGE_BURST)
        self.probes = LatestWins(self._probe_one)
        self.measures = LatestWins(self._measure_one)
        self.charts = LatestWins(self._chart_one)
        self.last_measurement: tuple[str, Kept] | None = None  # (its study, what may be kept)
        self.thumbnail_task: asyncio.Task[None] | None = None
        self.thumbnails_wanted: dict[str, None] = {}  # series uids, in order, each queued once
        await self._audit(Action.RENDER_START, Outcome.SUCCESS,
                          details={"series": len(self.session.series),
                                   "layout": self.session.layout})
        if getattr(user, "is_capability", False) is True:
            await database_sync_to_async(share_use_record)(
                principal=user, source_ip=scope_address(self.scope), what="viewer",
                study=self.study.study_uid, pseudonym=self.study.patient_pseudonym)
        return True

    async def _describe_series(self, study: ViewerStudy) -> tuple[list[SeriesInfo], list[dict[str, Any]]]:
        """(series that can be shown, with geometry; the others, each with why not).

        Geometry is asked of the workers for every series at once (one round
        trip, not one each).
        """
        showable = study.showable
        answers = await asyncio.gather(*(self._describe(series.uid) for series in showable))
        uid = study.study_uid
        shown, unavailable = [], [_unavailable(s, s.refused, uid) for s in study.series if s.refused]
        for series, (geometry, reason) in zip(showable, answers, strict=True):
            if geometry is None:
                unavailable.append(_unavailable(series, reason, uid))
            else:
                presentation = study.presentations.get(series.uid)
                if presentation is not None:
                    geometry = {**geometry, "presentation": presentation}
                shown.append(SeriesInfo(series.uid, series.modality, series.description, geometry,
                                        number=series.number, images=series.images, study=uid))
        return shown, unavailable

    async def _describe(self, series_uid: str) -> tuple[dict[str, Any] | None, str]:
        state = viewstate_from_dict({"view": "native", "layers": [
            {"series_id": series_uid, "window_center": 0, "window_width": 1}]})
        try:
            return (await self.pool.describe(state, source=CLINICAL))[series_uid], ""
        except (RenderError, MissingVolumeError) as error:
            logger.info("series %s cannot be shown: %s", series_uid, error)
            return None, said(error) if isinstance(error, RenderError) else _("the images cannot be read")

    async def session_ready(self) -> None:
        with translation.override(self.language):
            await self._registration_links_load()
            await self._send_ready()
            self._render(list(range(len(self.session.views))))
            await self._send_findings()
            await self._send_documents()
            await self._send_segmentations()
            await self._send_registrations()
            await bookmarks_send(self)
            await grids_send(self)

    async def _report_wire(self) -> dict[str, Any] | None:
        """The study's latest report for the viewer's link (None for a consultant: no report pages)."""
        if getattr(self.principal, "is_capability", False):
            return None
        study = self.study.study_uid
        summary = (await database_sync_to_async(report_summaries)([study]))[study]
        return {"status": summary.status, "version": summary.version, "label": summary.label,
                "url": reverse("rendering:report", kwargs={"study": study})}

    async def _send_ready(self) -> None:
        for scheduler in self.schedulers:
            await scheduler.close()
        self.schedulers = [self._scheduler(index) for index in range(len(self.session.views))]
        await self.send(text_data=json.dumps({
            "type": "ready", "study": {"uid": self.study.study_uid,
                                       "description": self.study.description},
            "limits": {"max_message_bytes": protocol.MAX_MESSAGE_BYTES,
                       "messages_per_second": MESSAGES_PER_SECOND, "message_burst": MESSAGE_BURST},
            "vocabulary": {**(VOCABULARY if self.may_measure else VOCABULARY_WITHOUT_MEASURING),
                           "hanging_rules": self._hanging_wire(),
                           "toolbox": toolbox_wire(measuring=self.may_measure)},
            "related": [study.wire() for study in self.related],
            "findings_store": self.may_report,
            "derive": derive_vocabulary() if self.may_report else None,
            "report": await self._report_wire(),
            **self.session.describe(),
        }))

    def _scheduler(self, index: int) -> ViewScheduler:
        async def render(state: Any, quality: SchedulerQuality) -> RenderedFrame:
            wanted = Quality.STILL if quality is SchedulerQuality.STILL else Quality.INTERACTIVE
            return await self.pool.render(replace(state, quality=wanted), source=CLINICAL)

        async def push(sequence: int, quality: SchedulerQuality, frame: RenderedFrame) -> None:
            self.session.rendered(index, frame.overlay.plane)
            view = self.session.views[index]
            await self.send(bytes_data=protocol.frame_pack(
                view=index, sequence=sequence, quality=int(quality),
                encoding=WIRE_ENCODING[frame.encoding.value], width=frame.width,
                height=frame.height, overlay=overlay_wire(frame, view.kind, view.width),
                image=frame.data))
            self.frames_sent += 1

        async def failed(sequence: int, error: BaseException) -> None:
            code = "frame_of_reference" if isinstance(error, FrameOfReferenceError) else "render_failed"
            with translation.override(self.language):
                await self._error(code, error if isinstance(error, RenderError | FrameOfReferenceError)
                                  else _("the frame could not be rendered"), view=index)

        return ViewScheduler(render=render, push=push, on_failure=failed)

    async def session_receive(self, text_data: str | None, bytes_data: bytes | None) -> None:
        with translation.override(self.language):
            await self._received(text_data, bytes_data)

    async def _received(self, text_data: str | None, bytes_data: bytes | None) -> None:
        try:
            message = protocol.message_parse(text_data if text_data is not None else bytes_data,
                                              views=len(self.session.views))
        except protocol.ProtocolError as error:
            if self.budget.take():
                await self._error(error.code, error, of=error.of)
            return
        if not isinstance(message, protocol.Acknowledge) and not self.budget.take():
            await self._rate_limited()
            return
        try:
            await self._handle(message)
        except (SessionError, ViewStateError) as error:
            view = getattr(message, "view", None)
            await self._error(getattr(error, "code", "refused"), error,
                              view=view if isinstance(view, int) else None, of=protocol.message_kind(message))

    async def _rate_limited(self) -> None:
        if self.budget.notice_due():
            await self.send(text_data=json.dumps({
                "type": "error", "code": "rate_limited",
                "message": _("at most %(rate)s messages a second (bursts of %(burst)s); messages beyond it "
                             "were dropped unprocessed")
                           % {"rate": MESSAGES_PER_SECOND, "burst": MESSAGE_BURST},
                "retry_after_ms": self.budget.retry_after_ms()}))

    async def _handle(self, message: protocol.Message) -> None:
        await MESSAGE_HANDLERS[type(message)](self, message)

    async def _on_acknowledge(self, message: protocol.Acknowledge) -> None:
        if message.view < len(self.schedulers):
            self.schedulers[message.view].acknowledge(message.sequence)

    async def _on_input(self, message: protocol.Input) -> None:
        self._render(self.session.apply_input(message))

    async def _on_setting(self, message: protocol.Setting) -> None:
        self._render(self.session.apply_setting(message))

    async def _on_resize(self, message: protocol.Resize) -> None:
        self._render(self.session.resize(message.view, message.width, message.height))

    async def _on_layout(self, message: protocol.Layout) -> None:
        self.session.layout_apply(message.layout)
        await self._send_ready()
        self._render(list(range(len(self.session.views))))

    async def _on_thumbnails(self, message: protocol.Thumbnails) -> None:
        """Every series shown now, also those a study opened since the last request added."""
        self.thumbnails_wanted.update(dict.fromkeys(self.session.series))
        if self.thumbnail_task is None or self.thumbnail_task.done():
            self.thumbnail_task = asyncio.get_running_loop().create_task(self._thumbnails())

    async def _on_open_study(self, message: protocol.OpenStudy) -> None:
        """A prior beside the study: the policy decides, the audit records, then the compare layout."""
        if message.study in self.session.studies:
            return
        if not await self._study_beside(message.study):
            await self._error("refused", _("no such study of this patient, or not permitted"))
            return
        self.session.layout_apply("compare")
        await self._registration_links_load()
        await self._send_ready()
        self._render(list(range(len(self.session.views))))
        await self._send_findings()
        await self._send_documents()
        await self._send_registrations()

    async def _study_beside(self, study_uid: str) -> bool:
        """Open another study of the patient beside the first, if the policy lets this principal view
        it; audited either way."""
        try:
            if study_uid not in {study.study_uid for study in self.related}:
                raise StudyNotFound(study_uid)
            other = await database_sync_to_async(study_for_viewer)(principal=self.principal,
                                                                   study_uid=study_uid)
        except StudyNotFound:
            await self._audit(Action.RENDER_START, Outcome.DENIED, study=study_uid[:64],
                              details={"reason": "not a study of this patient the principal may view"})
            return False
        shown, unavailable = await self._describe_series(other)
        self.session.study_add(other.study_uid, shown, unavailable)
        await self._audit(Action.RENDER_START, Outcome.SUCCESS, study=other.study_uid,
                          details={"series": len(shown), "beside": self.study.study_uid})
        if getattr(self.principal, "is_capability", False) is True:
            await database_sync_to_async(share_use_record)(
                principal=self.principal, source_ip=scope_address(self.scope), what="viewer",
                study=other.study_uid, pseudonym=other.patient_pseudonym)
        await self._derived_open()
        return True

    async def _thumbnails(self) -> None:
        """One small interactive-quality picture of each wanted series: a frame like any other, as text."""
        while self.thumbnails_wanted:
            uid = next(iter(self.thumbnails_wanted))
            del self.thumbnails_wanted[uid]
            state = viewstate_from_dict(self.session.thumbnail_state(uid, size=THUMBNAIL_PIXELS))
            try:
                frame = await self.pool.render(state, source=CLINICAL)
            except (RenderError, FrameOfReferenceError, MissingVolumeError) as error:
                logger.info("no thumbnail for series %s: %s", uid, error)
                continue
            await self.send(text_data=json.dumps({
                "type": "thumbnail", "series": uid, "encoding": frame.encoding.value,
                "image": base64.b64encode(frame.data).decode("ascii")}))

    def _render(self, views: list[int]) -> None:
        for index in views:
            self.schedulers[index].submit(self.session.state(index, segmentation=True))

    async def _on_probe(self, message: protocol.Probe) -> None:
        self.probes.submit(message)

    async def _probe_one(self, message: protocol.Probe) -> None:
        if message.view >= len(self.session.views):
            return
        state = self.session.state(message.view, quality="still")
        try:
            result = await self.pool.probe(state, source=CLINICAL, x=message.x, y=message.y)
        except (RenderError, FrameOfReferenceError, MissingVolumeError) as error:
            await self._error("probe_failed", error, view=message.view)
            return
        top = next((item for item in reversed(result.values) if item.value is not None), None)
        unit = top.unit if top else (result.values[-1].unit if result.values else "")
        await self.send(text_data=json.dumps({
            "type": "probe", "view": message.view, "x": message.x, "y": message.y,
            "value": top.value if top else None, "unit": unit,
            "point": [round(v, 2) for v in result.point_mm],
        }))

    async def _on_measure(self, message: protocol.Measure) -> None:
        self.measures.submit(message)

    def _study_of_view(self, index: int) -> str:
        base = self.session.series[self.session.views[index].layers[0]["series_id"]]
        return base.study or self.study.study_uid

    async def _may_measure(self, study: str, asked: str) -> bool:
        if await database_sync_to_async(may)(self.principal, Permission.STUDY_MEASURE, study):
            return True
        await self._error("refused", _("measuring is not part of what you may do here"), of=asked)
        return False

    async def _measure_one(self, message: protocol.Measure) -> None:
        view = self.session.views[message.view]
        study = self._study_of_view(message.view)
        if not await self._may_measure(study, "measure"):
            return
        operation, arguments = MEASURE_OPERATIONS[message.tool](message)
        state = self.session.state(message.view, quality="still")
        try:
            result = await self.pool.request(operation, state, source=CLINICAL, **arguments)
        except (RenderError, FrameOfReferenceError, MissingVolumeError) as error:
            await self._error("measure_failed", error, view=message.view, of="measure")
            return
        wire = operation_named(operation).to_wire(result)
        points = [list(point) for point in message.points]
        plane = {**view.plane, "width": view.width, "height": view.height} if view.plane else None
        settings = {key: value for key, value in arguments.items() if key not in PLACED_BY_POINTS}
        suv_factors = {layer.series_id: layer.suv_factor for layer in state.layers if layer.suv_factor}
        if any(self.session.series[layer.series_id].modality in SUV_MODALITIES for layer in state.layers):
            settings["suv_method"] = self.session.suv.method
        if suv_factors:
            settings["suv_factors"] = suv_factors  # the SUV the numbers are in, where not the header's SUVbw
        self.last_measurement = (study, Kept(view.layers[0]["series_id"], message.tool, points, plane, wire,
                                             settings))
        await self.send(text_data=json.dumps({
            "type": "measurement", "view": message.view, "tool": message.tool, "points": points,
            "result": wire}, allow_nan=False))

    async def _on_chart(self, message: protocol.Chart) -> None:
        """A histogram or time-activity curve of a region."""
        self.charts.submit(message)

    async def _chart_one(self, message: protocol.Chart) -> None:
        """Made in a worker (rendering.measure_views): each layer's numbers and a PNG of them, as text."""
        region = message.region
        if region.view >= len(self.session.views):  # a layout change since it was asked
            return
        if not await self._may_measure(self._study_of_view(region.view), "chart"):
            return
        _, arguments = MEASURE_OPERATIONS[region.tool](region)
        state = self.session.state(region.view, quality="still")
        try:
            charts = await self.pool.request(CHART_OPERATIONS[message.kind], state, source=CLINICAL,
                                             tool=region.tool, **arguments)
        except (RenderError, FrameOfReferenceError, MissingVolumeError) as error:
            await self._error("chart_failed", error, view=region.view, of="chart")
            return
        await self.send(text_data=json.dumps({
            "type": "chart", "view": region.view, "kind": message.kind, "tool": region.tool,
            "points": [list(point) for point in region.points],
            "charts": [{"series_id": chart.series_id, "unit": chart.unit, "voxels": chart.voxels,
                        "table": chart.table, "encoding": chart.encoding, "width": chart.width,
                        "height": chart.height, "image": base64.b64encode(chart.image).decode("ascii")}
                       for chart in charts]}, allow_nan=False))

    async def _on_keep(self, message: protocol.Keep) -> None:
        """The socket's last measurement into the study's findings: the server's numbers, not the client's."""
        if self.last_measurement is None:
            await self._error("nothing_to_keep", _("measure first; the last measurement is what is kept"),
                              of="keep")
            return
        study, kept = self.last_measurement
        if not await self._may_measure(study, "keep"):
            return
        consultant = getattr(self.principal, "is_capability", False) is True
        finding = await database_sync_to_async(finding_keep)(
            study_uid=study, kept=kept, label=message.label, author=self.principal.username,
            by_consultant=consultant)
        await self._audit(Action.FINDING_KEEP, Outcome.SUCCESS, study=study,
                          details={"finding": finding.id, "tool": kept.tool, "label": finding.label})
        await self._send_findings()

    async def _finding_changeable(self, finding_id: int, asked: str) -> str | None:
        """The study of a live finding of this session that this principal may change (else None,
        the refusal sent)."""
        study = await database_sync_to_async(finding_study)(finding_id=finding_id,
                                                            study_uids=self.session.studies)
        if study is None:
            await self._error("refused", _("no such finding of these studies"), of=asked)
            return None
        return study if await self._may_measure(study, asked) else None

    async def _on_forget(self, message: protocol.Forget) -> None:
        study = await self._finding_changeable(message.finding, "forget")
        if study is None:
            return
        consultant = getattr(self.principal, "is_capability", False) is True
        try:
            await database_sync_to_async(finding_delete)(
                study_uid=study, finding_id=message.finding, by=self.principal.username,
                only_author=self.principal.username if consultant else None)
        except FindingNotFound:
            await self._error("refused", _("no such finding of this study that you may delete"), of="forget")
            return
        await self._audit(Action.FINDING_DELETE, Outcome.SUCCESS, study=study,
                          details={"finding": message.finding})
        await self._send_findings()

    async def _on_relabel(self, message: protocol.Relabel) -> None:
        study = await self._finding_changeable(message.finding, "relabel")
        if study is None:
            return
        consultant = getattr(self.principal, "is_capability", False) is True
        try:
            finding = await database_sync_to_async(finding_relabel)(
                study_uid=study, finding_id=message.finding, label=message.label,
                only_author=self.principal.username if consultant else None)
        except FindingNotFound:
            await self._error("refused", _("no such finding of this study that you may rename"), of="relabel")
            return
        await self._audit(Action.FINDING_EDIT, Outcome.SUCCESS, study=study,
                          details={"finding": finding.id, "label": finding.label})
        await self._send_findings()

    async def _on_findings_store(self, message: protocol.StoreFindings) -> None:
        """The study's findings into the study as DICOM SR + SEG: a reporting act, audited either way."""
        study = self.study.study_uid
        if not await database_sync_to_async(may)(self.principal, Permission.STUDY_REPORT, study):
            await self._audit(Action.FINDINGS_STORE, Outcome.DENIED, study=study,
                              details={"reason": "study.report not granted"})
            await self._error("refused", _("storing findings in the study is part of reporting, "
                                           "which is not granted here"), of="findings_store")
            return
        try:
            regions = await finding_regions(self.pool, study)
            stored = await database_sync_to_async(findings_dicom_store)(
                study_uid=study, regions=regions, author=self.principal.username)
        except (RenderError, MissingVolumeError, FindingsExportError) as error:
            await self._audit(Action.FINDINGS_STORE, Outcome.FAILURE, study=study,
                              details={"reason": str(error)[:200]})
            await self._error("store_failed", error, of="findings_store")
            return
        await self._audit(Action.FINDINGS_STORE, Outcome.SUCCESS, study=study, details=stored.wire())
        await self.send(text_data=json.dumps({"type": "findings_stored", **stored.wire()}))

    async def _on_report_capture(self, message: protocol.ReportCapture) -> None:
        """Keep the view, as it is now, as a key image of the reader's draft report of this study."""
        study = self.study.study_uid
        if not await database_sync_to_async(may)(self.principal, Permission.STUDY_REPORT, study):
            await self._audit(Action.REPORT_EDIT, Outcome.DENIED,
                              details={"reason": "study.report not granted"})
            await self._error("refused", _("reporting is not granted here"), of="report_capture")
            return
        kept = self.session.key_image(message.view)
        try:
            report, created = await database_sync_to_async(key_image_add)(
                study_uid=study, author=self.principal.username, state=kept["state"],
                caption=message.caption or kept["caption"], normal=kept["normal"], step_mm=kept["step_mm"])
        except (ReportError, ReportSigned) as error:
            await self._error("refused", error, of="report_capture")
            return
        if created:
            await self._audit(Action.REPORT_CREATE, Outcome.SUCCESS, details={"version": report.version})
        await self._audit(Action.REPORT_EDIT, Outcome.SUCCESS,
                          details={"version": report.version, "key_image": report.key_images[-1]["id"]})
        await self.send(text_data=json.dumps({
            "type": "report_captured", "version": report.version, "key_images": len(report.key_images),
            "url": reverse("rendering:report", kwargs={"study": study})}))

    async def _on_suv(self, message: protocol.SuvMethod) -> None:
        try:
            changed = self.session.suv_choose(message.method)
        except SessionError as error:
            await self._error("refused", error, of="suv")
            return
        await self.send(text_data=json.dumps({"type": "suv", **self.session.suv_wire()}))
        self._render(changed)

    async def _on_suv_inputs(self, message: protocol.SuvInputs) -> None:
        """A weight or dose for this reading's SUV: a reader who measures enters it; audited."""
        study = self.study.study_uid
        if not await self._may_measure(study, "suv_inputs"):
            return
        try:
            changed = self.session.suv_enter(
                message.series, weight_kg=message.weight_kg,
                dose_bq=None if message.dose_mbq is None else message.dose_mbq * 1e6)
        except SessionError as error:
            await self._error("refused", error, of="suv_inputs")
            return
        entered = [name for name, value in (("weight_kg", message.weight_kg), ("dose_mbq", message.dose_mbq))
                   if value is not None]
        await self._audit(Action.SUV_INPUT, Outcome.SUCCESS, study=study,
                          details={"series": message.series, "entered": entered})
        await self.send(text_data=json.dumps({"type": "suv", **self.session.suv_wire()}))
        self._render(changed)

    # --- hanging rules (accounts.hanging, rendering.hanging) ---------------------------------

    async def _hanging_open(self, principal: Any) -> None:
        """The reader's rules then the hospital's, and the first that fits hangs the study;
        a share keeps the default."""
        self.hanging_user = hanging_owner(principal)
        self.hanging: list[SavedHanging] | None = None
        if self.hanging_user is None:
            return
        self.hanging = await database_sync_to_async(hanging_rules_for)(user=self.hanging_user)
        await self._hanging_first([saved.hanging for saved in self.hanging])

    async def _hanging_first(self, rules: list[Hanging]) -> None:
        """The first rule that fits hangs the study. A rule that takes a prior first opens beside it the
        patient's newest other study holding its prior modalities (audited), where there is one."""
        description = self.study.description
        for rule in rules:
            if rule.prior_modalities and len(self.session.studies) == 1:
                prior = next((study for study in self.related
                              if rule.prior_modalities <= set(study.modalities)), None)
                try:
                    if prior is None or not await self._study_beside(prior.study_uid):
                        continue
                except SessionError:
                    continue
            if self.session.hanging_first([rule], description=description) is not None:
                return

    def _hanging_wire(self) -> list[dict[str, Any]] | None:
        """The reader's rules then the hospital's (``hospital``: IT's, not deletable here) for the menu,
        each with whether it fits this study; None: a share."""
        if self.hanging is None:
            return None
        return [{"id": saved.id, "name": saved.name, "hospital": saved.hospital,
                 "applies": self.session.hanging_fits(saved.hanging, description=self.study.description)}
                for saved in self.hanging]

    async def _hanging_sent(self, user: User) -> None:
        self.hanging = await database_sync_to_async(hanging_rules_for)(user=user)
        await self.send(text_data=json.dumps({"type": "hanging_rules", "rules": self._hanging_wire()}))

    async def _on_hang(self, message: protocol.Hang) -> None:
        saved = next((saved for saved in self.hanging or [] if saved.id == message.rule), None)
        try:
            if saved is None:
                raise SessionError(gettext_noop("no such hanging rule of yours"))
            self.session.hanging_apply(saved.hanging, description=self.study.description)
        except SessionError as error:
            await self._error("refused", error, of="hang")
            return
        await self._send_ready()
        self._render(list(range(len(self.session.views))))

    async def _on_hang_save(self, message: protocol.HangSave) -> None:
        """The views on screen become the reader's newest rule; a share has no account to keep it."""
        if self.hanging_user is None:
            await self._error("refused", _("hanging rules are kept with a user account; a share has none"),
                              of="hang_save")
            return
        try:
            rule = self.session.hanging_of_views().wire()
            await database_sync_to_async(hanging_rule_save)(user=self.hanging_user, name=message.name,
                                                            rule=rule)
        except (SessionError, HangingRuleError) as error:
            await self._error("refused", error, of="hang_save")
            return
        await self._hanging_sent(self.hanging_user)

    async def _on_hang_delete(self, message: protocol.HangDelete) -> None:
        if self.hanging_user is None:
            await self._error("refused", _("hanging rules are kept with a user account; a share has none"),
                              of="hang_delete")
            return
        try:
            await database_sync_to_async(hanging_rule_delete)(user=self.hanging_user, rule_id=message.rule)
        except HangingRuleNotFound:
            await self._error("refused", _("no such hanging rule of yours"), of="hang_delete")
            return
        await self._hanging_sent(self.hanging_user)

    async def _send_findings(self) -> None:
        rows = await database_sync_to_async(findings_of)(*self.session.studies)
        await self.send(text_data=json.dumps({"type": "findings",
                                              "findings": [finding_wire(row) for row in rows]}))

    async def _send_documents(self) -> None:
        """Measurements in the structured reports other systems stored: read once per study opened."""
        documents = await database_sync_to_async(documents_of)(
            *self.session.studies, exclude_manufacturer=MANUFACTURER)
        await self.send(text_data=json.dumps({"type": "documents", "documents": documents}))

    async def _error(self, code: str, text: str | BaseException, *, view: int | None = None,
                     of: str | None = None) -> None:
        """``of``: the message type the error answers, where a client may have several in flight;
        ``text`` an error's words (:func:`rendering.said.said`, in the active language) or a text."""
        body: dict[str, Any] = {"type": "error", "code": code, "message": said(text)}
        if view is not None:
            body["view"] = view
        if of is not None:
            body["of"] = of
        await self.send(text_data=json.dumps(body))

    async def _audit(self, action: Action, outcome: Outcome, *, study: str | None = None,
                     details: dict[str, Any] | None = None) -> None:
        viewer_study = getattr(self, "study", None)
        await database_sync_to_async(audit_record)(
            **audit_fields(self.principal), action=action, outcome=outcome,
            patient_pseudonym=viewer_study.patient_pseudonym if viewer_study else "",
            study=study or (viewer_study.study_uid if viewer_study else ""),
            source_ip=scope_address(self.scope), details=details)

    async def disconnect(self, code: int) -> None:
        await super().disconnect(code)
        if not hasattr(self, "started"):
            return
        for scheduler in self.schedulers:
            await scheduler.close()
        for latest in (self.probes, self.measures, self.charts):
            await latest.cancel()
        await self._registration_jobs_stop()
        await self._derived_jobs_stop()
        if self.thumbnail_task is not None:
            self.thumbnail_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.thumbnail_task
        await self._audit(Action.RENDER_END, Outcome.SUCCESS, details={
            "frames": self.frames_sent, "seconds": round(time.monotonic() - self.started, 1),
            "close_code": code})




MESSAGE_HANDLERS: dict[type, Callable[[ViewerConsumer, Any], Awaitable[None]]] = {
    protocol.Acknowledge: ViewerConsumer._on_acknowledge, protocol.Input: ViewerConsumer._on_input,
    protocol.Setting: ViewerConsumer._on_setting, protocol.Resize: ViewerConsumer._on_resize,
    protocol.Layout: ViewerConsumer._on_layout, protocol.Probe: ViewerConsumer._on_probe,
    protocol.Thumbnails: ViewerConsumer._on_thumbnails, protocol.OpenStudy: ViewerConsumer._on_open_study,
    protocol.Measure: ViewerConsumer._on_measure, protocol.Keep: ViewerConsumer._on_keep,
    protocol.Forget: ViewerConsumer._on_forget, protocol.Relabel: ViewerConsumer._on_relabel,
    protocol.StoreFindings: ViewerConsumer._on_findings_store,
    protocol.ReportCapture: ViewerConsumer._on_report_capture,
    protocol.SuvMethod: ViewerConsumer._on_suv, protocol.SuvInputs: ViewerConsumer._on_suv_inputs,
    protocol.Hang: ViewerConsumer._on_hang,
    protocol.HangSave: ViewerConsumer._on_hang_save, protocol.HangDelete: ViewerConsumer._on_hang_delete,
    protocol.Chart: ViewerConsumer._on_chart,
    **SEGMENTATION_HANDLERS,
    **REGISTRATION_HANDLERS,
    **DERIVED_HANDLERS,
    **CROP_HANDLERS,
    **WORKSPACE_HANDLERS,
}


def _area(message: protocol.Measure) -> tuple[str, dict[str, Any]]:
    return "measure_area", {"shape": message.tool, "points": [list(p) for p in message.points]}


MEASURE_OPERATIONS: dict[str, Callable[[protocol.Measure], tuple[str, dict[str, Any]]]] = {
    "line": lambda m: ("measure_line", {"points": [list(p) for p in m.points]}),
    "ellipse": _area, "rectangle": _area, "polygon": _area,
    "sphere": lambda m: ("measure_sphere", {"center_px": list(m.points[0]), "radius_mm": m.radius_mm}),
    "threshold": lambda m: ("measure_threshold", {"center_px": list(m.points[0]), "box_mm": m.radius_mm,
                                                  "mode": "fraction", "value": m.fraction}),
    "grow": lambda m: ("measure_grow", {"center_px": list(m.points[0]), "box_mm": m.radius_mm,
                                        "mode": m.mode, "value": m.value}),
}
"""Each measuring tool of the protocol and the registered operation that computes it."""
PLACED_BY_POINTS = frozenset({"center_px", "points", "shape"})
CHART_OPERATIONS = {"histogram": "region_histogram", "tac": "region_tac"}
"""Each chart of the protocol and the registered operation (rendering.measure_views) that makes it."""
