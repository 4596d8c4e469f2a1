"""What a render worker can be asked to do: each operation is one registration here.

An operation is a name, the function a worker runs on the volumes of a view
state's layers, how urgent it is in a worker's queue, and how its result
crosses to another host as plain data (msgpack, never pickles). The local pool
(:mod:`rendering.workers`), the remote pool and its serving side
(:mod:`rendering.remote`) all go through :data:`OPERATIONS` and one entry
point, ``request(name, state, source=…, **arguments)``; none of them names an
operation. Measurements, filters and segmentation register here too.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from gateway.i18n import gettext_noop
from rendering.encoding import Encoding
from rendering.engine.core import (
    LayerInfo,
    Overlay,
    ProbeResult,
    ProbeValue,
    RenderedFrame,
    RenderError,
)
from rendering.viewstate import Quality, ViewState
from rendering.volume import Volume, volume_describe

if TYPE_CHECKING:
    from rendering.engine.core import RenderEngine


class Urgency(IntEnum):
    """A worker's queue order: lower first."""

    OPENING = 0
    INTERACTIVE = 1
    BACKGROUND = 2


@dataclass
class WorkerContext:
    """What an operation may use in a worker besides the volumes: kept for the worker's life."""

    engine: RenderEngine
    source: str
    memo: dict[tuple[str, ...], Any] = field(default_factory=dict)


Runner = Callable[[WorkerContext, ViewState, Mapping[str, Volume], dict[str, Any]], Any]


def _same(value: Any) -> Any:
    return value


def _interactive(state: ViewState) -> Urgency:
    return Urgency.INTERACTIVE


@dataclass(frozen=True)
class Operation:
    name: str
    run: Runner
    urgency: Callable[[ViewState], Urgency] = _interactive
    to_wire: Callable[[Any], Any] = _same
    from_wire: Callable[[Any], Any] = _same
    timeout_s: float | None = None
    """How long a worker may take (None: the pool's limit for frames); a job, such as a model run."""


OPERATIONS: dict[str, Operation] = {}
MODULES = ("rendering.measure", "rendering.measure_views", "rendering.segment_ops",
           "rendering.segment_models", "rendering.registration_ops", "rendering.derived_volumes")
"""Modules beyond this one whose operations every process knows (imported on first lookup)."""


def operation(name: str, *, urgency: Callable[[ViewState], Urgency] = _interactive,
              to_wire: Callable[[Any], Any] = _same,
              from_wire: Callable[[Any], Any] = _same,
              timeout_s: float | None = None) -> Callable[[Runner], Runner]:
    """Register the decorated function as operation ``name``."""
    def register(run: Runner) -> Runner:
        if name in OPERATIONS:
            raise ValueError(f"operation {name!r} is registered twice")
        OPERATIONS[name] = Operation(name, run, urgency, to_wire, from_wire, timeout_s)
        return run
    return register


@functools.cache
def _registrations_loaded() -> None:
    for module in MODULES:
        importlib.import_module(module)


def operation_named(name: object) -> Operation:
    """The registered operation, or :class:`RenderError` for a name nobody registered."""
    _registrations_loaded()
    found = OPERATIONS.get(name) if isinstance(name, str) else None
    if found is None:
        raise RenderError(gettext_noop("unknown operation %(name)s"), name=repr(name))
    return found


class OperationClient:
    """Typed shortcuts over ``request`` for the viewer's own operations (any backend)."""

    async def request(self, name: str, state: ViewState, *, source: str, **arguments: Any) -> Any:
        raise NotImplementedError

    async def render(self, state: ViewState, *, source: str,
                     encoding: Encoding | None = None) -> RenderedFrame:
        """Render and encode one frame of ``state``."""
        return await self.request("render", state, source=source,
                                  encoding=encoding.value if encoding else None)

    async def probe(self, state: ViewState, *, source: str, x: float, y: float) -> ProbeResult:
        """Patient point and every layer's value under viewport pixel (x, y)."""
        return await self.request("probe", state, source=source, x=x, y=y)

    async def describe(self, state: ViewState, *, source: str) -> dict[str, dict]:
        """Geometry and presentation of every layer's volume (and warms the worker's cache)."""
        return await self.request("describe", state, source=source)


# --- the viewer's operations ------------------------------------------------------------------


def _render_urgency(state: ViewState) -> Urgency:
    """A still nobody is looking at yet never delays another session's scroll."""
    return Urgency.BACKGROUND if state.quality is Quality.STILL else Urgency.INTERACTIVE


def frame_to_wire(frame: RenderedFrame) -> dict[str, Any]:
    return {"data": frame.data, "encoding": frame.encoding.value, "width": frame.width,
            "height": frame.height, "quality": frame.quality.value, "overlay": asdict(frame.overlay),
            "render_ms": frame.render_ms, "encode_ms": frame.encode_ms}


def _tuple_or_none(value: Any) -> Any:
    return tuple(value) if value is not None else None


def frame_from_wire(wire: dict[str, Any]) -> RenderedFrame:
    overlay = dict(wire["overlay"])
    overlay["layers"] = tuple(LayerInfo(**layer) for layer in overlay.get("layers", ()))
    for name in ("focus_mm", "crosshair_px", "slab", "time_point"):
        overlay[name] = _tuple_or_none(overlay.get(name))
    return RenderedFrame(data=wire["data"], encoding=Encoding(wire["encoding"]),
                         width=wire["width"], height=wire["height"],
                         quality=Quality(wire["quality"]), overlay=Overlay(**overlay),
                         render_ms=wire["render_ms"], encode_ms=wire["encode_ms"])


@operation("render", urgency=_render_urgency, to_wire=frame_to_wire, from_wire=frame_from_wire)
def _render(context: WorkerContext, state: ViewState, volumes: Mapping[str, Volume],
            arguments: dict[str, Any]) -> RenderedFrame:
    encoding = Encoding(arguments["encoding"]) if arguments.get("encoding") else None
    return context.engine.render(state, volumes, encoding=encoding)


def _probe_to_wire(probe: ProbeResult) -> dict[str, Any]:
    return {"point_mm": list(probe.point_mm), "values": [asdict(v) for v in probe.values]}


def _probe_from_wire(wire: dict[str, Any]) -> ProbeResult:
    return ProbeResult(point_mm=tuple(wire["point_mm"]),  # type: ignore[arg-type]
                       values=tuple(ProbeValue(**value) for value in wire["values"]))


@operation("probe", to_wire=_probe_to_wire, from_wire=_probe_from_wire)
def _probe(context: WorkerContext, state: ViewState, volumes: Mapping[str, Volume],
           arguments: dict[str, Any]) -> ProbeResult:
    return context.engine.probe(state, volumes, float(arguments["x"]), float(arguments["y"]))


def _opening(state: ViewState) -> Urgency:
    return Urgency.OPENING


@operation("describe", urgency=_opening)
def _describe(context: WorkerContext, state: ViewState, volumes: Mapping[str, Volume],
              arguments: dict[str, Any]) -> dict[str, dict]:
    # Computed once per worker and volume (a percentile pass): every viewer connect asks.
    return {series_id: context.memo.get(("describe", context.source, series_id))
            or context.memo.setdefault(("describe", context.source, series_id), volume_describe(volume))
            for series_id, volume in volumes.items()}
