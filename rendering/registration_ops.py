"""Automatic registration as a render worker's job: the fixed and moving series are the worker's
volumes already, the registration runs beside them (:mod:`rendering.engine.registration`), its
progress goes to the registration's row every half second and a cancel asked there stops it."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from gateway.i18n import gettext_noop
from rendering.engine.core import RenderError
from rendering.engine.registration import RegistrationCancelled, RegistrationError, register_automatic
from rendering.operations import Urgency, WorkerContext, operation
from rendering.viewstate import ViewState
from rendering.volume import Volume

REGISTER_LIMIT_S = 900.0
PROGRESS_EVERY_S = 0.5


def _followed(registration_id: int) -> tuple[Callable[[int, int], None], Callable[[], bool]]:
    """(progress, cancelled) bound to the registration's row, written and read at most every half second."""
    from imaging.registrations import registration_progress

    state = {"at": 0.0, "cancelled": False}

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done < total and now - state["at"] < PROGRESS_EVERY_S:
            return
        state["at"] = now
        state["cancelled"] = registration_progress(registration_id, done, total)

    return progress, lambda: bool(state["cancelled"])


def _background(state: ViewState) -> Urgency:
    return Urgency.BACKGROUND


@operation("register", urgency=_background, timeout_s=REGISTER_LIMIT_S)
def _register(context: WorkerContext, state: ViewState, volumes: Mapping[str, Volume],
              arguments: dict[str, Any]) -> dict[str, Any]:
    """Layers: the fixed series, then the moving one. Returns the moving-to-fixed matrix."""
    fixed, moving = (volumes[layer.series_id] for layer in state.layers[:2])
    progress, cancelled = _followed(int(arguments["registration"]))
    initial = arguments.get("initial")
    try:
        result = register_automatic(fixed, moving, kind=str(arguments.get("kind", "rigid")),
                                    initial=None if initial is None else np.asarray(initial).reshape(4, 4),
                                    progress=progress, cancelled=cancelled)
    except RegistrationCancelled as error:
        raise RenderError(gettext_noop("registration cancelled: %(error)s"), error=error) from error
    except RegistrationError as error:
        raise RenderError.from_error(error) from error
    return {"matrix": [float(v) for v in np.asarray(result.matrix).ravel()], "metric": result.metric,
            "iterations": result.iterations, "seconds": round(result.seconds, 2)}
