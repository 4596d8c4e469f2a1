"""The viewer's derived series: filters and image arithmetic made by the workers, and previews.

``derive`` records a recipe (:mod:`imaging.derived`), has a worker make it beside the socket's
loop, and once made the series joins the reading like any other (``ready`` again, marked
``Derived:``); arithmetic resamples through the registration that links the inputs' frames at
that moment. ``filter_preview`` answers with the view as it is, its shown slice filtered in
2-D, for a reader choosing parameters before the whole volume runs. Both are reporting acts
(``study.report``); a derived series made is audited ``derived.create``.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from channels.db import database_sync_to_async
from django.utils import translation

from gateway.audit.catalogue import Action, Outcome
from gateway.i18n import gettext_noop
from imaging.derived import (
    ARITHMETIC,
    CROP,
    DerivedError,
    derived_create,
    derived_forget,
    derived_layer_id,
    derived_made,
    derived_of,
)
from imaging.models import DerivedSeries
from rendering import protocol
from rendering.engine.filters import FILTERS, filters_vocabulary
from rendering.engine.reorient import OPERATIONS as REORIENT
from rendering.engine.reorient import reorient_vocabulary
from rendering.pool import CLINICAL
from rendering.reading_host import ReadingHost
from rendering.said import said
from rendering.session import SeriesInfo, SessionError
from rendering.viewstate import viewstate_from_dict
from rendering.workers import RenderError

if TYPE_CHECKING:
    from rendering.session import ViewerSession

DERIVING_IS_REPORTING = gettext_noop("filters and image arithmetic are part of reporting, which is not "
                                     "granted here")
SHOWN_KEYS = ("shape", "spacing", "origin", "direction", "center", "opening", "modality",
              "frame_of_reference_uid", "range", "plane", "mpr", "colour", "suv", "units", "kind")


def derive_vocabulary() -> dict[str, Any]:
    return {"filters": filters_vocabulary(), "arithmetic": list(ARITHMETIC),
            "reorient": reorient_vocabulary(), "crop": {"operation": CROP, "space": "box"}}


class DerivedReading(ReadingHost):
    """Handlers of the reading's derived series; ``derived_jobs`` are the ones being made."""

    derived_jobs: dict[int, asyncio.Task] | None = None
    async def _deriving(self) -> None:
        await self._reporting(DERIVING_IS_REPORTING)

    async def _derived_open(self) -> None:
        """The studies' derived series already made join the reading (not for a consultant)."""
        if getattr(self.principal, "is_capability", False) is True:
            return
        made = [d for d in await database_sync_to_async(derived_of)(list(self.session.studies)) if d.shown]
        self.session.series_join([_series_info(d) for d in made])

    def _inputs_checked(self, series: tuple[str, ...]) -> list[list[float] | None]:
        """Each input's matrix into the first series' mm through accepted registrations, a series-level
        one (two series of one frame registered) included (None: none needed); refused otherwise."""
        infos = []
        for uid in series:
            info = self.session.series.get(uid)
            if info is None or info.kind != "volume" or not info.mpr:
                raise SessionError(gettext_noop("derived series are made of volume series of this reading"))
            infos.append(info)
        matrices: list[list[float] | None] = [None]
        for info in infos[1:]:
            try:
                transform = self.session.series_transform(info.uid, infos[0].uid)
            except KeyError:
                raise SessionError(gettext_noop("%(series)s is in another frame of reference: register it "
                                                "onto the first series first"),
                                   series=info.description or info.uid) from None
            matrices.append(None if transform is None else [float(v) for v in np.asarray(transform).ravel()])
        return matrices

    async def _on_derive(self, message: protocol.Derive) -> None:
        await self._deriving()
        matrices = self._inputs_checked(message.series)
        first = self.session.series[message.series[0]]
        try:
            recipe = await database_sync_to_async(derived_create)(
                study_uid=first.study or self.study.study_uid, operation=message.operation,
                series=list(message.series), author=self.principal.username,
                parameters=dict(message.parameters), weights=list(message.weights) or None,
                matrices=matrices, dims=message.dims, description=_description(message, self.session),
                space=message.space, box=list(message.box) if message.box is not None else None)
        except DerivedError as error:
            raise SessionError.from_error(error) from error
        await self._send_derived(recipe, "running")
        jobs = self.derived_jobs if self.derived_jobs is not None else {}
        self.derived_jobs = jobs
        jobs[recipe.id] = asyncio.ensure_future(self._derived_made(recipe))
        jobs[recipe.id].add_done_callback(lambda _: jobs.pop(recipe.id, None))

    async def _derived_made(self, recipe: DerivedSeries) -> None:
        with translation.override(self.language):
            await self._derived_making(recipe)

    async def _derived_making(self, recipe: DerivedSeries) -> None:
        uid = derived_layer_id(recipe)
        state = viewstate_from_dict({"view": "native", "layers": [
            {"series_id": uid, "window_center": 0, "window_width": 1}]})
        details = {"derived": recipe.id, "operation": recipe.operation,
                   "inputs": [item["series"] for item in recipe.inputs], "parameters": recipe.parameters,
                   "dims": recipe.dims}
        try:
            described = (await self.pool.describe(state, source=CLINICAL))[uid]
        except RenderError as error:
            await database_sync_to_async(derived_forget)(recipe.id)
            await self._audit(Action.DERIVED_CREATE, Outcome.FAILURE, study=_study_of(recipe),
                              details={**details, "reason": str(error)[:200]})
            await self._send_derived(recipe, "failed", reason=said(error))
            return
        recipe.shown = {key: described[key] for key in SHOWN_KEYS if key in described}
        await database_sync_to_async(derived_made)(recipe.id, recipe.shown)
        await self._audit(Action.DERIVED_CREATE, Outcome.SUCCESS, study=_study_of(recipe), details=details)
        self.session.series_join([_series_info(recipe)])
        await self._send_derived(recipe, "done")
        await self._send_ready()
        self._render(list(range(len(self.session.views))))

    async def _send_derived(self, recipe: DerivedSeries, state: str, *, reason: str = "") -> None:
        await self.send(text_data=json.dumps({
            "type": "derived", "id": recipe.id, "state": state, "series": derived_layer_id(recipe),
            "operation": recipe.operation, "description": recipe.description, "reason": reason}))

    async def _on_filter_preview(self, message: protocol.FilterPreview) -> None:
        await self._deriving()
        if message.filter not in FILTERS:
            raise SessionError(gettext_noop("unknown filter %(filter)s"), filter=repr(message.filter))
        state = self.session.state(message.view, quality="interactive")
        try:
            preview = await self.pool.request("filter_preview", state, source=CLINICAL,
                                              filter=message.filter, parameters=dict(message.parameters))
        except RenderError as error:
            raise SessionError.from_error(error) from error
        frame = preview.frame
        answer = {"type": "filter_preview", "view": message.view, "filter": message.filter,
                  "encoding": frame.encoding.value, "width": frame.width, "height": frame.height,
                  "image": base64.b64encode(frame.data).decode()}
        if preview.reduced > 1:
            answer["reduced"] = preview.reduced
        await self.send(text_data=json.dumps(answer))

    async def _derived_jobs_stop(self) -> None:
        for task in list((self.derived_jobs or {}).values()):
            task.cancel()


def _description(message: protocol.Derive, session: ViewerSession) -> str:
    names = [session.series[uid].description or session.series[uid].modality for uid in message.series]
    if message.operation in FILTERS:
        settings = ", ".join(f"{name} {value:g}" for name, value in message.parameters)
        return f"Derived: {message.operation} ({settings}) of {names[0]}"[:128]
    if message.operation in REORIENT:
        given = dict(message.parameters)
        turns, degrees = given.get("turns"), given.get("degrees")
        settings = (f" {turns:g}x90°" if turns is not None else f" {degrees:g}°" if degrees is not None
                    else "")
        return f"Derived: {message.operation}{settings} of {names[0]}"[:128]
    space = "" if message.space == "reference" else f" ({message.space})"
    return f"Derived: {message.operation} of {' and '.join(names)}{space}"[:128]


def _study_of(recipe: DerivedSeries) -> str:
    """The recipe's study UID (its study is always loaded with it: no query on the event loop)."""
    return recipe.study.study_instance_uid


def _series_info(recipe: DerivedSeries) -> SeriesInfo:
    shown = dict(recipe.shown or {})
    return SeriesInfo(derived_layer_id(recipe), str(shown.get("modality", "OT")), recipe.description, shown,
                      study=_study_of(recipe))


DERIVED_HANDLERS: dict[type, Callable[[Any, Any], Awaitable[None]]] = {
    protocol.Derive: DerivedReading._on_derive,
    protocol.FilterPreview: DerivedReading._on_filter_preview,
}
