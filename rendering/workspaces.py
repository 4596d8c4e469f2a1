"""Workspaces (the viewer's tabs) and the reading state a bookmark keeps.

A reading holds up to :data:`MAX_VIEWS` views in all, spread over tabs; each tab has
its own grid and views and its own focus point per frame of reference, so its
views scroll on their own. Linked tabs share one focus (a scroll in one moves the
others) and take each other's window and zoom. Only the tab on screen is rendered;
a hidden tab is a few settings, so closing it frees nothing more than those.

A bookmark is :func:`reading_snapshot`'s JSON; :func:`reading_restore_views` reads
one back as untrusted data: every field is type- and range-checked and every series
must be one this reading shows, so restoring a bookmark never shows more than the
reader could open.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from gateway.i18n import gettext_noop
from rendering.grids import Grid, GridError, grid_parse
from rendering.said import SaidError

MAX_VIEWS = 16
MAX_TABS = 16
TAB_NAME_LENGTH = 40


class ReadingStateError(SaidError, ValueError):
    """A bookmark's reading state that cannot be restored here; the message says which part."""


@dataclass
class Workspace:
    """One tab: its name (empty: the viewer numbers it), grid, views and focus points."""

    grid: Grid
    layout: str
    views: list[Any]
    focus: dict[str, np.ndarray]
    name: str = ""
    linked: bool = False

    def wire(self) -> dict[str, Any]:
        return {"name": self.name, "layout": self.layout, "views": len(self.views), "linked": self.linked}


VIEW_NUMBERS = {"zoom": (0.01, 100.0)}
VIEW_WHOLE_NUMBERS = {"width": (64, 2048), "height": (64, 2048), "rotation": (0, 270)}
VIEW_FLAGS = ("presented", "flip_h", "flip_v", "invert")
VIEW_PAIRS = ("pan_mm", "oblique_deg")
VIEW_KEYS = {"kind", "layers", "slab", "camera3d", "preset3d", "crop_mm", *VIEW_NUMBERS, *VIEW_WHOLE_NUMBERS,
             *VIEW_FLAGS, *VIEW_PAIRS}
LAYER_KEYS = {"series_id", "window_center", "window_width", "window_unit", "palette", "opacity", "voi",
              "hidden", "time_point"}


def view_snapshot(view: Any) -> dict[str, Any]:
    return {
        "kind": view.kind, "layers": [dict(layer) for layer in view.layers], "slab": dict(view.slab),
        "camera3d": dict(view.camera3d), "preset3d": view.preset3d,
        "crop_mm": None if view.crop_mm is None else list(view.crop_mm),
        **{name: getattr(view, name) for name in (*VIEW_NUMBERS, *VIEW_WHOLE_NUMBERS)},
        **{name: bool(getattr(view, name)) for name in VIEW_FLAGS},
        **{name: list(getattr(view, name)) for name in VIEW_PAIRS},
    }


def reading_snapshot(tabs: list[Workspace], active: int, *, linked_all: bool) -> dict[str, Any]:
    """The whole reading state as JSON: tabs, grids, every view's settings, focus points."""
    return {"version": 1, "active": active, "linked_all": linked_all, "tabs": [{
        "name": tab.name, "layout": tab.layout, "linked": tab.linked, "grid": tab.grid.wire(),
        "focus": {frame: [float(v) for v in point] for frame, point in tab.focus.items()},
        "views": [view_snapshot(view) for view in tab.views],
    } for tab in tabs]}


def _number(value: Any, where: str, low: float = -1e7, high: float = 1e7) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or not low <= value <= high:
        raise ReadingStateError(gettext_noop("%(where)s is not a number the viewer can use"), where=where)
    return float(value)


def _mapping(value: Any, keys: set[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not set(value) <= keys:
        raise ReadingStateError(gettext_noop("%(where)s is not in the form the viewer keeps"), where=where)
    return value


def _text(value: Any, where: str, most: int = 128) -> str:
    if not isinstance(value, str) or len(value) > most or not value.isprintable():
        raise ReadingStateError(gettext_noop("%(where)s is not in the form the viewer keeps"), where=where)
    return value


def _layer(value: Any, where: str, series: Callable[[str], bool]) -> dict[str, Any]:
    layer = _mapping(value, LAYER_KEYS, where)
    uid = _text(layer.get("series_id"), f"{where} series")
    if not series(uid):
        raise ReadingStateError(gettext_noop("%(where)s shows a series this reading does not show"),
                                where=where)
    checked: dict[str, Any] = {"series_id": uid}
    for name in ("window_center", "window_width", "opacity"):
        checked[name] = _number(layer.get(name), f"{where} {name}")
    for name in ("window_unit", "palette"):
        checked[name] = _text(layer.get(name), f"{where} {name}", 32)
    if layer.get("voi") is not None:
        checked["voi"] = int(_number(layer["voi"], f"{where} voi", 0, 64))
    else:
        checked["voi"] = None
    if "hidden" in layer:
        checked["hidden"] = bool(layer["hidden"])
    if "time_point" in layer:
        checked["time_point"] = int(_number(layer["time_point"], f"{where} time point", 0, 4096))
    return checked


def view_fields(value: Any, where: str, series: Callable[[str], bool]) -> dict[str, Any]:
    """A kept view's fields, checked; the session builds the view and checks its render state."""
    view = _mapping(value, VIEW_KEYS, where)
    if set(view) != VIEW_KEYS:
        raise ReadingStateError(gettext_noop("%(where)s is not in the form the viewer keeps"), where=where)
    layers = view["layers"]
    if not isinstance(layers, list) or not 1 <= len(layers) <= 4:
        raise ReadingStateError(gettext_noop("%(where)s has no layers the viewer can show"), where=where)
    fields: dict[str, Any] = {
        "kind": _text(view["kind"], f"{where} kind", 16),
        "layers": [_layer(layer, f"{where} layer {n + 1}", series) for n, layer in enumerate(layers)],
        "slab": dict(_mapping(view["slab"], {"mode", "thickness_mm"}, f"{where} slab")),
        "camera3d": {name: _number(v, f"{where} camera")
                     for name, v in _mapping(view["camera3d"], {"azimuth", "elevation", "zoom"},
                                             f"{where} camera").items()},
        "preset3d": _text(view["preset3d"], f"{where} 3-D preset", 32),
        "crop_mm": None if view["crop_mm"] is None else tuple(
            _number(v, f"{where} crop box") for v in _list(view["crop_mm"], 6, f"{where} crop box")),
    }
    for name, (low, high) in VIEW_NUMBERS.items():
        fields[name] = _number(view[name], f"{where} {name}", low, high)
    for name, (low, high) in VIEW_WHOLE_NUMBERS.items():
        if not isinstance(view[name], int):
            raise ReadingStateError(gettext_noop("%(where)s is not a number the viewer can use"),
                                    where=f"{where} {name}")
        fields[name] = int(_number(view[name], f"{where} {name}", low, high))
    for name in VIEW_FLAGS:
        fields[name] = bool(view[name])
    for name in VIEW_PAIRS:
        fields[name] = tuple(_number(v, f"{where} {name}") for v in _list(view[name], 2, f"{where} {name}"))
    return fields


def _list(value: Any, length: int, where: str) -> list[Any]:
    if not isinstance(value, list) or len(value) != length:
        raise ReadingStateError(gettext_noop("%(where)s is not in the form the viewer keeps"), where=where)
    return value


@dataclass(frozen=True)
class KeptTab:
    name: str
    layout: str
    linked: bool
    grid: Grid
    focus: dict[str, np.ndarray]
    views: list[dict[str, Any]]


def reading_tabs(state: Any, series: Callable[[str], bool],
                 frames: set[str]) -> tuple[list[KeptTab], int, bool]:
    """A bookmark's tabs, checked: (tabs, the active one, link all). Views are fields for the
    session to build; focus points only for frames of reference this reading has."""
    kept = _mapping(state, {"version", "active", "linked_all", "tabs"}, "the bookmark")
    tabs = kept.get("tabs")
    if kept.get("version") != 1 or not isinstance(tabs, list) or not 1 <= len(tabs) <= MAX_TABS:
        raise ReadingStateError(gettext_noop("%(where)s is not in the form the viewer keeps"),
                                where="the bookmark")
    result = []
    for number, value in enumerate(tabs, start=1):
        where = f"tab {number}"
        tab = _mapping(value, {"name", "layout", "linked", "grid", "focus", "views"}, where)
        try:
            grid = grid_parse(tab.get("grid"))
        except GridError as error:
            raise ReadingStateError(gettext_noop("%(where)s: %(why)s"), where=where,
                                    why=error.said) from error
        views = tab.get("views")
        if not isinstance(views, list) or len(views) != len(grid.cells):
            raise ReadingStateError(gettext_noop("%(where)s has not one view per grid cell"), where=where)
        focus = {frame: np.asarray([_number(v, f"{where} focus") for v in _list(point, 3, f"{where} focus")])
                 for frame, point in _mapping(tab.get("focus"), frames, f"{where} focus").items()}
        result.append(KeptTab(_text(tab.get("name", ""), f"{where} name", TAB_NAME_LENGTH),
                              _text(tab.get("layout", ""), f"{where} layout", 16), bool(tab.get("linked")),
                              grid, focus, [view_fields(v, f"{where} view {n + 1}", series)
                                            for n, v in enumerate(views)]))
    if sum(len(tab.views) for tab in result) > MAX_VIEWS:
        raise ReadingStateError(gettext_noop("a reading shows at most %(most)s views"), most=MAX_VIEWS)
    active = kept.get("active")
    if isinstance(active, bool) or not isinstance(active, int) or not 0 <= active < len(result):
        active = 0
    return result, active, bool(kept.get("linked_all"))
