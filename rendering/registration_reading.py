"""The viewer's registrations: automatic jobs in the workers, landmarks, nudges, accept or reject.

A proposal (from a job, landmarks or a nudge) is shown at once in every view that fuses the two
series' frames of reference (two series of one frame, a PET that moved between the scans of a
PET/CT: every fused view showing the moving series, which alone it corrects), before anyone
accepts it; accepting adds it to the study as a DICOM
Spatial Registration and makes it one of the reading's links (``ViewerSession.links``), which any
later reading of these studies fuses through. A job runs as a task beside the socket's message
loop, so the reader keeps scrolling, nudging and may cancel it; its progress is sent every second.
Registering is a reporting act (``study.report``): asked of the policy per message, audited.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from channels.db import database_sync_to_async
from django.utils import translation

from gateway.audit.catalogue import Action, Outcome
from gateway.i18n import gettext_noop
from imaging.models import Registration, RegistrationState
from imaging.registration_store import incoming_links, registration_dicom_store
from imaging.registrations import (
    RegistrationStoreError,
    accepted_links,
    registration_cancel,
    registration_decide,
    registration_ended,
    registration_found,
    registration_get,
    registration_nudged,
    registration_start,
    registration_wire,
    registrations_of,
)
from rendering import protocol
from rendering.engine.registration import RegistrationError, register_landmarks
from rendering.pool import CLINICAL
from rendering.reading_host import ReadingHost
from rendering.said import said
from rendering.session import SessionError
from rendering.viewstate import viewstate_from_dict
from rendering.workers import RenderError

PROGRESS_EVERY_S = 1.0
REGISTERING_IS_REPORTING = gettext_noop("registering series is part of reporting, which is not granted here")


class RegistrationReading(ReadingHost):
    """Handlers of the reading's registrations; ``registration_jobs`` are the running tasks."""

    registration_jobs: dict[int, asyncio.Task] | None = None
    async def _registering(self) -> None:
        await self._reporting(REGISTERING_IS_REPORTING)

    async def _registration_links_load(self) -> list[int]:
        """The reading's links (accepted registrations, REG objects of its studies) into the
        session, before its views are drawn; the fused views they change."""
        if self.registration_jobs is None:
            self.registration_jobs = {}
        studies = list(self.session.studies)
        links = [*await database_sync_to_async(accepted_links)(studies),
                 *await database_sync_to_async(incoming_links)(studies)]
        return self.session.registrations_set(links)

    async def _send_registrations(self) -> None:
        listed = [registration_wire(r) for r in
                  await database_sync_to_async(registrations_of)(list(self.session.studies))]
        await self.send(text_data=json.dumps({"type": "registrations", "registrations": listed}))

    async def _send_registration(self, registration: Registration, *, reason: str | None = None) -> None:
        """``reason``: why a job of this socket ended, in the reader's words (the record keeps English)."""
        wire = registration_wire(registration)
        if reason is not None:
            wire["reason"] = reason
        await self.send(text_data=json.dumps({"type": "registration", **wire}))

    def _series_pair(self, fixed: str, moving: str) -> tuple[tuple[str, str], tuple[str, str]]:
        pair = []
        for uid in (fixed, moving):
            series = self.session.series.get(uid)
            if series is None or series.kind != "volume" or not series.mpr:
                raise SessionError(gettext_noop("registration takes two volume series of this reading"))
            pair.append((uid, series.frame_of_reference))
        if pair[0][0] == pair[1][0]:
            raise SessionError(gettext_noop("a series is not registered onto itself"))
        return pair[0], pair[1]

    def _study_of(self, series_uid: str) -> str:
        return self.session.series[series_uid].study or self.study.study_uid

    async def _reg_recorded(self, change: Callable[..., Registration], *args: Any,
                            **kwargs: Any) -> Registration:
        try:
            return await database_sync_to_async(change)(*args, **kwargs)
        except RegistrationStoreError as error:
            raise SessionError.from_error(error) from error

    # --- automatic ----------------------------------------------------------------------------

    async def _on_reg_run(self, message: protocol.RegRun) -> None:
        await self._registering()
        fixed, moving = self._series_pair(message.fixed, message.moving)
        registration = await self._reg_recorded(
            registration_start, study_uid=self._study_of(fixed[0]), fixed=fixed, moving=moving,
            method=message.kind, author=self.principal.username)
        self._job_start(registration, kind=message.kind, initial=None)

    def _job_start(self, registration: Registration, *, kind: str, initial: list[float] | None) -> None:
        jobs = self.registration_jobs if self.registration_jobs is not None else {}
        self.registration_jobs = jobs
        jobs[registration.id] = asyncio.ensure_future(self._job_followed(registration, kind, initial))
        jobs[registration.id].add_done_callback(lambda _: jobs.pop(registration.id, None))

    async def _job_followed(self, registration: Registration, kind: str, initial: list[float] | None) -> None:
        with translation.override(self.language):
            await self._job_run(registration, kind, initial)

    async def _job_run(self, registration: Registration, kind: str, initial: list[float] | None) -> None:
        state = viewstate_from_dict({"view": "axial", "layers": [
            {"series_id": registration.fixed_series, "window_center": 0, "window_width": 1},
            {"series_id": registration.moving_series, "window_center": 0, "window_width": 1}]})
        job = asyncio.ensure_future(self.pool.request(
            "register", state, source=CLINICAL, registration=registration.id, kind=kind,
            **({"initial": initial} if initial is not None else {})))
        try:
            while not job.done():
                await self._send_registration(await database_sync_to_async(Registration.objects.get)(
                    pk=registration.id))
                await asyncio.wait({job}, timeout=PROGRESS_EVERY_S)
            found = job.result()
            done = await database_sync_to_async(registration_found)(
                registration.id, matrix=found["matrix"], metric=found.get("metric"))
        except (RenderError, RegistrationStoreError) as error:
            await self._job_ended(registration, error)
            return
        await self._proposal_shown(done, audit={"seconds": found.get("seconds"),
                                                "iterations": found.get("iterations")})

    async def _job_ended(self, registration: Registration, error: Exception) -> None:
        cancelled = "cancelled" in str(error)
        state = RegistrationState.CANCELLED if cancelled else RegistrationState.FAILED
        await database_sync_to_async(registration_ended)(registration.id, state=state, reason=str(error))
        await self._audit(Action.REGISTRATION_RUN, Outcome.FAILURE,
                          study=self._study_of(registration.fixed_series),
                          details={"registration": registration.id, "method": registration.method,
                                   "reason": str(error)[:200]})
        ended = await database_sync_to_async(Registration.objects.get)(pk=registration.id)
        await self._send_registration(ended, reason=said(error))

    async def _proposal_shown(self, registration: Registration, *,
                              audit: dict[str, Any] | None = None) -> None:
        if registration.matrix is None:
            raise SessionError(gettext_noop("this registration has no transform yet"))
        self._render(self.session.proposal_show(registration.moving_series, registration.fixed_series,
                                                registration.matrix))
        if audit is not None:
            await self._audit(Action.REGISTRATION_RUN, Outcome.SUCCESS,
                              study=self._study_of(registration.fixed_series),
                              details={"registration": registration.id, "method": registration.method,
                                       "fixed": registration.fixed_series,
                                       "moving": registration.moving_series,
                                       "metric": registration.metric, "error_mm": registration.error_mm,
                                       **{k: v for k, v in audit.items() if v is not None}})
        await self._send_registration(registration)

    # --- landmarks and nudges -------------------------------------------------------------------

    def _view_points(self, view: int, points: tuple[tuple[float, float], ...]) -> list[list[float]]:
        return [self.session.view_point_mm(view, point) for point in points]

    async def _on_reg_landmarks(self, message: protocol.RegLandmarks) -> None:
        await self._registering()
        fixed_uid = self.session.views[message.fixed_view].layers[0]["series_id"]
        moving_uid = self.session.views[message.moving_view].layers[0]["series_id"]
        fixed, moving = self._series_pair(fixed_uid, moving_uid)
        fixed_mm = self._view_points(message.fixed_view, message.fixed_points)
        moving_mm = self._view_points(message.moving_view, message.moving_points)
        try:
            result = register_landmarks(fixed_mm, moving_mm)
        except RegistrationError as error:
            raise SessionError.from_error(error) from error
        matrix = [float(v) for v in np.asarray(result.matrix).ravel()]
        registration = await self._reg_recorded(
            registration_start, study_uid=self._study_of(fixed[0]), fixed=fixed, moving=moving,
            method="landmarks", author=self.principal.username, matrix=matrix,
            landmarks=[[f, m] for f, m in zip(fixed_mm, moving_mm, strict=True)], error_mm=result.fre_mm)
        if message.refine:
            await self._reg_recorded(registration_decide, registration.id, author=self.principal.username,
                                 accept=False)
            refined = await self._reg_recorded(
                registration_start, study_uid=self._study_of(fixed[0]), fixed=fixed, moving=moving,
                method="rigid", author=self.principal.username)
            self._job_start(refined, kind="rigid", initial=matrix)
            return
        await self._proposal_shown(registration, audit={"pairs": len(fixed_mm)})

    async def _on_reg_nudge(self, message: protocol.RegNudge) -> None:
        await self._registering()
        registration = await self._reg_recorded(registration_get, message.registration, self.session.studies)
        if registration.matrix is None:
            raise SessionError(gettext_noop("this registration has no transform yet"))
        centre = self.session.series[registration.moving_series].geometry["center"]
        moved = nudged(registration.matrix, centre, message.translate_mm, message.rotate_deg)
        changed = await self._reg_recorded(registration_nudged, registration.id,
                                           author=self.principal.username, matrix=moved)
        await self._proposal_shown(changed)

    # --- deciding -------------------------------------------------------------------------------

    async def _on_reg_decide(self, message: protocol.RegDecide) -> None:
        await self._registering()
        registration = await self._reg_recorded(registration_get, message.registration, self.session.studies)
        if message.decision == "cancel":
            try:
                await database_sync_to_async(registration_cancel)(registration.id,
                                                                  author=self.principal.username)
            except RegistrationStoreError as error:
                raise SessionError.from_error(error) from error
            return
        accept = message.decision == "accept"
        reg_series = ""
        if accept:
            mine = registration.author == self.principal.username
            if registration.state != RegistrationState.PROPOSED or not mine:
                raise SessionError(gettext_noop("no such proposal of yours"))
            try:
                reg_series = await database_sync_to_async(registration_dicom_store)(
                    registration, author=self.principal.username)
            except (RegistrationStoreError, ValueError) as error:
                await self._error("store_failed", error, of="reg_decide")
                return
        decided = await self._reg_recorded(registration_decide, registration.id,
                                           author=self.principal.username, accept=accept,
                                           reg_series=reg_series)
        action = Action.REGISTRATION_ACCEPT if accept else Action.REGISTRATION_REJECT
        await self._audit(action, Outcome.SUCCESS,
                          study=self._study_of(decided.fixed_series),
                          details={"registration": decided.id, "method": decided.method,
                                   "fixed": decided.fixed_series, "moving": decided.moving_series,
                                   "matrix": decided.matrix, "reg_series": reg_series})
        self._render(self.session.proposal_clear())
        self._render(await self._registration_links_load())
        await self._send_registration(decided)

    async def _registration_jobs_stop(self) -> None:
        for task in list((self.registration_jobs or {}).values()):
            task.cancel()


def nudged(matrix: list[float], moving_centre: list[float], translate_mm: tuple[float, float, float],
           rotate_deg: tuple[float, float, float]) -> list[float]:
    """``matrix`` followed by a rotation about where it puts the moving series' centre, then a
    translation, both in the fixed frame (what the reader sees move on screen)."""
    current = np.asarray(matrix, dtype=np.float64).reshape(4, 4)
    pivot = (current @ np.append(np.asarray(moving_centre, dtype=np.float64), 1.0))[:3]
    rx, ry, rz = (math.radians(a) for a in rotate_deg)
    rotation = (_rotation(2, rz) @ _rotation(1, ry) @ _rotation(0, rx))
    step = np.eye(4)
    step[:3, :3] = rotation
    step[:3, 3] = pivot - rotation @ pivot + np.asarray(translate_mm, dtype=np.float64)
    return [float(v) for v in (step @ current).ravel()]


def _rotation(axis: int, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    a, b = [n for n in range(3) if n != axis]
    rotation = np.eye(3)
    rotation[a, a], rotation[a, b], rotation[b, a], rotation[b, b] = c, -s, s, c
    return rotation


REGISTRATION_HANDLERS: dict[type, Callable[[Any, Any], Awaitable[None]]] = {
    protocol.RegRun: RegistrationReading._on_reg_run,
    protocol.RegLandmarks: RegistrationReading._on_reg_landmarks,
    protocol.RegNudge: RegistrationReading._on_reg_nudge,
    protocol.RegDecide: RegistrationReading._on_reg_decide,
}
