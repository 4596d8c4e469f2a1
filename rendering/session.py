"""What one open viewer shows: its layout, each view's settings, and the shared crosshair.

The consumer owns a :class:`ViewerSession`; every validated client message
becomes a change here, and the session answers with the views to render
again. Views whose base series share a frame of reference share one focus
point, so scrolling or clicking in one moves the crosshair — and the slice —
in all of them. The session never touches voxels: geometry comes from the
render workers' ``describe``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from django.utils.translation import gettext

from gateway.i18n import gettext_noop
from imaging.registrations import FrameLink, frame_transform, layer_transform
from imaging.suv import SUV_METHODS
from rendering.grids import NAMED_GRIDS, Grid
from rendering.hanging import PALETTES, Hanging, LayerRule, ViewRule, description_fragment
from rendering.protocol import LAYOUTS, Input, Setting
from rendering.said import Said, SaidError
from rendering.suv_reading import SuvReading, SuvReadingError
from rendering.viewstate import (
    MAX_LAYERS,
    WINDOW_LIMIT,
    WINDOW_PRESETS,
    ZOOM_MAX,
    ZOOM_MIN,
    ViewState,
    ViewStateError,
    viewstate_from_dict,
    viewstate_to_dict,
)
from rendering.workspaces import (
    MAX_TABS,
    MAX_VIEWS,
    TAB_NAME_LENGTH,
    KeptTab,
    ReadingStateError,
    Workspace,
    reading_snapshot,
    reading_tabs,
)

MPR_KINDS = {"native", "axial", "coronal", "sagittal", "oblique"}
PLANE_KINDS = {"axial", "coronal", "sagittal"}
NORMALS = {"axial": (0.0, 0.0, 1.0), "coronal": (0.0, 1.0, 0.0), "sagittal": (1.0, 0.0, 0.0)}
PRESET_NAMES = {"suv_0_5": "pet_suv_0_5", "suv_0_10": "pet_suv_0_10"}
SUV_MODALITIES = {"PT", "NM"}
OVERLAY_OPACITY = 0.5
TRUE_SIZE_MM_PER_PIXEL = 25.4 / 96
LINKED_INPUTS = frozenset({"scroll", "window", "zoom", "pan"})
TAB_LINKED_INPUTS = frozenset({"window", "zoom"})
BOOKMARK_REFUSED = gettext_noop("the bookmark cannot be shown here: %(why)s")


@dataclass(frozen=True)
class ShownSegmentation:
    """The reader's segmentation on screen: its render layer and the frame of reference it is on."""

    layer_id: str
    frame_of_reference: str


class SessionError(SaidError, ValueError):
    """A request the session cannot honour (no such series, no PET for fusion...); said to the reader."""


class ViewLimitError(SessionError):
    """More views than a reading may hold (rendering.workspaces.MAX_VIEWS)."""

    code = "too_many_views"


@dataclass(frozen=True)
class SeriesInfo:
    """A series the principal may view, with its geometry from ``describe``."""

    uid: str
    modality: str
    description: str
    geometry: dict[str, Any]
    number: int | None = None
    images: int = 0
    study: str = ""
    """The study the series belongs to (empty: the session's first study)."""

    @property
    def kind(self) -> str:
        return str(self.geometry.get("kind", "volume"))

    @property
    def mpr(self) -> bool:
        """Reformats, 3-D and fusion apply (a volume of at least three slices, not colour)."""
        return bool(self.geometry.get("mpr", True))

    @property
    def opening_kind(self) -> str:
        """The view kind a series opens in: its acquisition plane, as a reader names it."""
        plane = str(self.geometry.get("plane", "axial"))
        return plane if self.mpr and plane in PLANE_KINDS else "native"

    @property
    def opening(self) -> list[float]:
        """Where a view of the series opens: the voxel centre nearest the middle, so the first slice
        shown is an acquired one, not a blend of the two either side of an even stack's middle."""
        return self.geometry.get("opening", self.geometry["center"])

    @property
    def time_points(self) -> int:
        return int(self.geometry.get("time_points") or 1)

    @property
    def frame_of_reference(self) -> str:
        if self.kind not in {"volume", "dynamic", "label"}:
            return self.uid  # pictures have no patient geometry to share
        return str(self.geometry.get("frame_of_reference_uid") or self.uid)

    def wire(self) -> dict[str, Any]:
        """This series in the ``ready`` message (no identifying data)."""
        shape = self.geometry.get("shape", [0])
        return {"uid": self.uid, "modality": self.modality, "description": self.description,
                "number": self.number, "images": self.images or int(shape[0]), "kind": self.kind,
                "plane": self.geometry.get("plane", "axial"), "mpr": self.mpr,
                "colour": bool(self.geometry.get("colour")),
                "frame_time_ms": self.geometry.get("frame_time_ms"), "units": self.geometry.get("units", ""),
                "panels": list(self.geometry.get("panels") or []), "time_points": self.time_points,
                "study": self.study, "suv_calculation": self.geometry.get("suv_calculation"),
                "presentation": self._presentation_wire(), "windows": self.file_windows(),
                "segments": self.geometry.get("segments"), "available": True}

    def file_windows(self) -> list[dict[str, Any]]:
        """The series' own window presets, named for a menu (a ``voi`` setting picks one by index).

        A name is the file's explanation, else ``LUT n`` (a VOI LUT), ``sigmoid`` or ``window n``.
        """
        vois = self.geometry.get("vois") or []
        windows = []
        for index, (center, width) in enumerate(self.geometry.get("windows") or []):
            voi = vois[index] if index < len(vois) and isinstance(vois[index], dict) else {}
            name = voi.get("name") or gettext("window %(number)s") % {"number": index + 1}
            windows.append({"name": str(name),
                            "function": str(voi.get("function") or "LINEAR"),
                            "center": float(center), "width": float(width)})
        return windows

    def _presentation_wire(self) -> dict[str, Any] | None:
        facts = self.presentation
        if facts is None:
            return None
        area = facts.get("area") or {}
        return {"label": facts.get("label", ""), "description": facts.get("description", ""),
                "size_mode": area.get("mode"), "window": facts.get("window")}

    @property
    def suv(self) -> bool:
        return bool(self.geometry.get("suv"))

    @property
    def presentation(self) -> dict[str, Any] | None:
        """What the series' presentation state asks (``imaging.objects.presentation_facts``)."""
        return self.geometry.get("presentation")

    def presented_camera(self, width: int, height: int) -> tuple[float, tuple[float, float]] | None:
        """(zoom, pan mm) of a native view showing the presentation's displayed area (PS3.3 C.10.4).

        Corners are 1-based image pixels; TRUE SIZE takes a CSS pixel as 1/96 inch.
        """
        area = (self.presentation or {}).get("area")
        if not area:
            return None
        rows, cols = self.geometry["shape"][1], self.geometry["shape"][2]
        row_mm, col_mm = self.geometry["spacing"][1], self.geometry["spacing"][2]
        (left, top), (right, bottom) = area["top_left"], area["bottom_right"]
        pan = (((left - 1 + right) / 2 - cols / 2) * col_mm, ((top - 1 + bottom) / 2 - rows / 2) * row_mm)
        if area["mode"] == "TRUE SIZE":
            mm_per_pixel = TRUE_SIZE_MM_PER_PIXEL
        elif area["mode"] == "MAGNIFY":
            mm_per_pixel = col_mm / float(area["magnification"])
        else:
            mm_per_pixel = max((right - left + 1) * col_mm / width, (bottom - top + 1) * row_mm / height)
        fitted = max(cols * col_mm / width, rows * row_mm / height)
        return float(np.clip(fitted / mm_per_pixel, ZOOM_MIN, ZOOM_MAX)), pan

    def slice_step(self, normal: np.ndarray) -> float:
        """Spacing of the volume axis most aligned with ``normal`` (mm)."""
        direction = np.asarray(self.geometry["direction"], dtype=np.float64)
        spacing_kji = self.geometry["spacing"]
        alignment = np.abs(direction.T @ normal)
        axis_ijk = int(np.argmax(alignment))
        return float(spacing_kji[2 - axis_ijk])

    @functools.cached_property
    def corners(self) -> np.ndarray:
        """Patient positions (8, 3) of the corner voxels' centres."""
        direction = np.asarray(self.geometry["direction"], dtype=np.float64)
        shape_kji = self.geometry["shape"]
        spacing_kji = self.geometry["spacing"]
        origin = np.asarray(self.geometry["origin"], dtype=np.float64)
        extent_ijk = np.array([(shape_kji[2 - a] - 1) * spacing_kji[2 - a] for a in range(3)])
        return np.array([origin + direction @ (extent_ijk * np.array(c)) for c in np.ndindex(2, 2, 2)])

    @functools.cached_property
    def _bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.min(self.corners, axis=0), np.max(self.corners, axis=0)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Patient-space box of the voxel centres (computed once: the geometry never changes)."""
        low, high = self._bounds
        return low.copy(), high.copy()


@dataclass
class ViewModel:
    kind: str
    layers: list[dict[str, Any]]
    slab: dict[str, Any] = field(default_factory=lambda: {"mode": "none", "thickness_mm": 0.0})
    zoom: float = 1.0
    pan_mm: tuple[float, float] = (0.0, 0.0)
    camera3d: dict[str, float] = field(
        default_factory=lambda: {"azimuth": 0.0, "elevation": 0.0, "zoom": 1.0})
    preset3d: str = "ct_soft_tissue"
    oblique_deg: tuple[float, float] = (0.0, 0.0)
    width: int = 512
    height: int = 512
    plane: dict[str, Any] | None = None
    presented: bool = True
    """The camera follows the series' presentation state until the reader zooms or pans."""
    rotation: int = 0
    """Quick functions (2-D): turned clockwise on screen (degrees), then mirrored, grey inverted."""
    flip_h: bool = False
    flip_v: bool = False
    invert: bool = False
    crop_mm: tuple[float, ...] | None = None
    """Crop box of the base series (along its axes, mm from its origin; rendering.engine.crop)."""


def _layer(series: SeriesInfo, *, palette: str | None = None, opacity: float = 1.0) -> dict[str, Any]:
    if palette is None:
        palette = "inverted" if series.geometry.get("invert") else "grey"
    windows = series.geometry.get("windows") or []
    presented = (series.presentation or {}).get("window")
    if presented:
        center, width, unit = float(presented[0]), float(presented[1]), "native"
    elif series.modality in SUV_MODALITIES and series.suv:
        preset = WINDOW_PRESETS["pet_suv_0_5"]
        center, width, unit = preset.center, preset.width, "suv"
    elif windows:
        center, width, unit = float(windows[0][0]), float(windows[0][1]), "native"
    elif series.modality == "CT":
        center, width, unit = 40.0, 400.0, "native"
    else:
        low, high = series.geometry.get("range", [0.0, 1000.0])
        center, width, unit = (low + high) / 2, max(high - low, 1e-3), "native"
    return {"series_id": series.uid, "window_center": center, "window_width": width,
            "window_unit": unit, "palette": palette, "opacity": opacity,
            "voi": 0 if windows and not presented and unit == "native" else None}


def _drawn(layer: dict[str, Any]) -> dict[str, Any]:
    """A layer as the engine draws it: a hidden one transparent, its own opacity kept for later."""
    if "hidden" not in layer:
        return layer
    drawn = {key: value for key, value in layer.items() if key != "hidden"}
    return {**drawn, "opacity": 0.0} if layer["hidden"] else drawn


def _focus_copy(focus: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {frame: point.copy() for frame, point in focus.items()}


def _series_lacking(view: int, layer: LayerRule, *, reformats: bool) -> Said:
    """Why a hanging rule's view finds no series for ``layer``: one sentence per case, for translators."""
    values = {"view": view, "modality": layer.modality, "description": repr(layer.description)}
    if layer.description and reformats:
        return Said.made(gettext_noop("view %(view)s needs a %(modality)s series described %(description)s "
                                      "that reformats; this study has none"), values)
    if layer.description:
        return Said.made(gettext_noop("view %(view)s needs a %(modality)s series described %(description)s; "
                                      "this study has none"), values)
    if reformats:
        return Said.made(gettext_noop("view %(view)s needs a %(modality)s series that reformats; this study "
                                      "has none"), values)
    return Said.made(gettext_noop("view %(view)s needs a %(modality)s series; this study has none"), values)


class ViewerSession:
    """Layout, per-view settings and one focus point per frame of reference."""

    def __init__(self, *, study_uid: str, series: list[SeriesInfo],
                 unavailable: list[dict[str, Any]] | None = None) -> None:
        if not series:
            raise SessionError(gettext_noop("this study has no series that can be shown"))
        self.study_uid = study_uid
        self.studies = [study_uid]
        self.series: dict[str, SeriesInfo] = {}
        self.unavailable: list[dict[str, Any]] = []
        self.centers: dict[str, np.ndarray] = {}
        """Each frame of reference's first focus point: a new tab starts there."""
        self.tabs = [Workspace(NAMED_GRIDS["1x1"], "", [], {})]
        self.tab = 0
        self._series_add(series, unavailable or [])
        self.suv = SuvReading()
        self.segmentation: ShownSegmentation | None = None
        self.links: list[FrameLink] = []
        self.proposal: FrameLink | None = None
        self.linked = False
        """Link all (a quick function): scroll, window, zoom and pan in one view move the others."""
        self.layout_apply(self._default_layout())

    def _series_add(self, series: list[SeriesInfo], unavailable: list[dict[str, Any]]) -> None:
        for info in series:
            self.series.setdefault(info.uid, info)
            self.centers.setdefault(info.frame_of_reference,
                                    np.asarray(info.opening, dtype=np.float64))
        for tab in self.tabs:
            for frame, center in self.centers.items():
                tab.focus.setdefault(frame, center.copy())
        self.unavailable.extend(unavailable)

    @property
    def views(self) -> list[ViewModel]:
        """The views of the tab on screen (a message's ``view`` counts among these)."""
        return self.tabs[self.tab].views

    @property
    def layout(self) -> str:
        return self.tabs[self.tab].layout

    @property
    def focus(self) -> dict[str, np.ndarray]:
        """The tab on screen's focus point per frame of reference (shared by linked tabs)."""
        return self.tabs[self.tab].focus

    def study_add(self, study_uid: str, series: list[SeriesInfo],
                  unavailable: list[dict[str, Any]]) -> None:
        """Another study of the patient beside the first: its series join; views sharing a frame
        of reference stay in step, others move on their own until they are registered."""
        if study_uid in self.studies:
            return
        if not series:
            raise SessionError(gettext_noop("that study has no series that can be shown"))
        self.studies.append(study_uid)
        self._series_add(series, unavailable)

    def _of_study(self, study_uid: str) -> list[SeriesInfo]:
        return [s for s in self.series.values() if (s.study or self.study_uid) == study_uid]

    # --- layouts ----------------------------------------------------------------------------

    def _first(self, modalities: set[str]) -> SeriesInfo | None:
        return next((s for s in self.series.values() if s.modality in modalities and s.mpr), None)

    def _volume_base(self) -> SeriesInfo:
        base = self._first({"CT"}) or next((s for s in self.series.values() if s.mpr), None)
        if base is None:
            raise SessionError(gettext_noop("this layout needs a volume; the study has only 2-D images"))
        return base

    def _default_layout(self) -> str:
        return "petct" if self._first({"CT"}) and self._first(SUV_MODALITIES) else "1x1"

    def layout_apply(self, name: str) -> list[int]:
        if name not in LAYOUTS:
            raise SessionError(gettext_noop("unknown layout %(layout)s"), layout=repr(name))
        ct = self._first({"CT"})
        pet = self._first(SUV_MODALITIES)
        first = next(iter(self.series.values()))
        if name == "petct":
            if ct is None or pet is None:
                raise SessionError(gettext_noop("the PET/CT layout needs a CT and a PET series"))
            views = [
                ViewModel("axial", [_layer(ct)]),
                ViewModel("axial", [_layer(pet, palette="inverted")]),
                ViewModel("axial", [_layer(ct), _layer(pet, palette="hot_iron", opacity=0.5)]),
                ViewModel("3d", [_layer(pet, palette="inverted")], preset3d="pet_mip"),
            ]
        elif name == "compare":
            views = self._compare_views()
        elif name == "1x2":
            base = ct or first
            others = [s for s in self.series.values() if s is not base]
            second = pet or (others[0] if others else base)
            second_kind = "coronal" if second is base and base.mpr else second.opening_kind
            views = [ViewModel(base.opening_kind, [_layer(base)]), ViewModel(second_kind, [_layer(second)])]
        elif name == "1x3":
            base = self._volume_base()
            views = [ViewModel(kind, [_layer(base)]) for kind in ("axial", "coronal", "sagittal")]
        elif name == "2x2":
            base = self._volume_base()
            views = [ViewModel(kind, [_layer(base)]) for kind in ("axial", "coronal", "sagittal")]
            views.append(ViewModel("3d", [_layer(base)],
                                   preset3d="ct_bone" if base.modality == "CT" else "pet_mip"))
        else:
            base = ct or first
            views = [ViewModel(base.opening_kind, [_layer(base)])]
        self._views_set(views, name)
        return list(range(len(views)))

    def _views_set(self, views: list[ViewModel], layout: str, grid: Grid | None = None) -> None:
        """Show ``views`` in ``layout`` (a named one, else ``grid``) on the tab on screen; each keeps
        the size of the view it replaces."""
        self._views_allowed(len(views), replacing=self.tab)
        for old, new in zip(self.views, views, strict=False):
            new.width, new.height = old.width, old.height
        tab = self.tabs[self.tab]
        tab.views, tab.layout, tab.grid = views, layout, grid or NAMED_GRIDS[layout]

    def _views_allowed(self, count: int, *, replacing: int | None = None) -> None:
        others = sum(len(tab.views) for number, tab in enumerate(self.tabs) if number != replacing)
        if others + count > MAX_VIEWS:
            raise ViewLimitError(gettext_noop("a reading shows at most %(most)s views at once (%(open)s are "
                                            "open in the other tabs): close a tab or choose a smaller "
                                            "layout"),
                               most=MAX_VIEWS, open=others)

    def _compare_views(self) -> list[ViewModel]:
        """The first study's main series beside the latest other study's series most like it."""
        if len(self.studies) < 2:
            raise SessionError(gettext_noop("the compare layout needs another study of the patient: open one "
                                            "first"))
        current = self._of_study(self.studies[0])
        other = self._of_study(self.studies[-1])
        left = next((s for s in current if s.modality == "CT" and s.mpr), current[0])
        right = max(other, key=lambda s: (s.modality == left.modality, s.mpr == left.mpr,
                                          s.geometry.get("plane") == left.geometry.get("plane")))
        return [ViewModel(left.opening_kind, [_layer(left)]), ViewModel(right.opening_kind, [_layer(right)])]

    # --- tabs (rendering.workspaces) ---------------------------------------------------------

    def _tab_open(self, fill: Callable[[], object]) -> list[int]:
        """A new tab after the others, on screen, filled by ``fill``; none if ``fill`` is refused."""
        if len(self.tabs) >= MAX_TABS:
            raise SessionError(gettext_noop("a reading has at most %(most)s tabs"), most=MAX_TABS)
        previous = self.tab
        self.tabs.append(Workspace(NAMED_GRIDS["1x1"], "", [], _focus_copy(self.focus)))
        self.tab = len(self.tabs) - 1
        try:
            fill()
        except SessionError:
            self.tabs.pop()
            self.tab = previous
            raise
        return list(range(len(self.views)))

    def tab_add(self, layout: str) -> list[int]:
        return self._tab_open(lambda: self.layout_apply(layout))

    def view_duplicate(self, index: int) -> list[int]:
        """A new tab showing a copy of view ``index`` alone, at the same place."""
        copy = deepcopy(self.views[index])
        return self._tab_open(lambda: self._views_set([copy], "1x1"))

    def _tab_number(self, number: int) -> Workspace:
        if not 0 <= number < len(self.tabs):
            raise SessionError(gettext_noop("there is no tab %(tab)s"), tab=number + 1)
        return self.tabs[number]

    def tab_select(self, number: int) -> list[int]:
        self._tab_number(number)
        self.tab = number
        return list(range(len(self.views)))

    def tab_close(self, number: int) -> list[int]:
        """Close a tab and forget its views; the last tab stays."""
        self._tab_number(number)
        if len(self.tabs) == 1:
            raise SessionError(gettext_noop("the last tab stays open"))
        del self.tabs[number]
        if number < self.tab or self.tab == len(self.tabs):
            self.tab -= 1
        return list(range(len(self.views)))

    def tab_rename(self, number: int, name: str) -> None:
        self._tab_number(number).name = name.strip()[:TAB_NAME_LENGTH]

    def tab_link(self, number: int, linked: bool) -> list[int]:
        """Link a tab to the other linked tabs (it takes their focus points) or let it go."""
        tab = self._tab_number(number)
        if linked and not tab.linked:
            group = next((other for other in self.tabs if other.linked), None)
            if group is not None:
                tab.focus = group.focus
        elif tab.linked and not linked:
            tab.focus = _focus_copy(tab.focus)
        tab.linked = linked
        return list(range(len(self.views))) if number == self.tab else []

    def _tabs_follow(self, operation: str, source: ViewModel, args: dict[str, float]) -> None:
        """Linked tabs off screen take a window or zoom where :meth:`_follows` says so; a scroll
        moves them through the focus they share."""
        for number, tab in enumerate(self.tabs):
            if number != self.tab and tab.linked:
                for other in tab.views:
                    if self._follows(operation, source, other):
                        getattr(self, f"_input_{operation}")(0, other, args)

    def views_swap(self, index: int, other: int) -> list[int]:
        """Views ``index`` and ``other`` exchange cells; each takes the size of the cell it moves to."""
        views = self.views
        first, second = views[index], views[other]
        first.width, second.width = second.width, first.width
        first.height, second.height = second.height, first.height
        views[index], views[other] = second, first
        return list(range(len(views)))

    def grid_apply(self, grid: Grid) -> list[int]:
        """Draw the tab on screen in ``grid``: its views keep their cells in order, a cell more shows
        a series not yet in the tab (else the last view's series in another plane)."""
        views = self.views[:len(grid.cells)]
        while len(views) < len(grid.cells):
            views.append(self._view_more(views))
        self._views_set(views, "grid", grid)
        return list(range(len(views)))

    def _view_more(self, views: list[ViewModel]) -> ViewModel:
        shown = {layer["series_id"] for view in views for layer in view.layers}
        fresh = next((s for s in self._of_study(self.studies[0]) if s.uid not in shown), None)
        if fresh is not None:
            return ViewModel(fresh.opening_kind, [_layer(fresh)])
        base = self._base(views[-1]) if views else next(iter(self.series.values()))
        kinds = ("axial", "coronal", "sagittal")
        kind = kinds[len(views) % 3] if base.mpr else base.opening_kind
        return ViewModel(kind, [_layer(base)])

    def reading_snapshot(self) -> dict[str, Any]:
        """The whole reading state, as a bookmark keeps it."""
        return reading_snapshot(self.tabs, self.tab, linked_all=self.linked)

    def reading_restore(self, state: Any) -> list[int]:
        """Show a bookmark's reading state; refused whole, the reading unchanged, if any part is not
        one this reading can show."""
        try:
            kept, active, linked_all = reading_tabs(state, lambda uid: uid in self.series, set(self.centers))
        except ReadingStateError as error:
            raise SessionError(BOOKMARK_REFUSED, why=error.said) from error
        tabs = self._tabs_kept(kept)
        previous = self.tabs, self.tab, self.linked
        self.tabs, self.linked = tabs, linked_all
        try:
            for self.tab, shown in enumerate(tabs):
                for index in range(len(shown.views)):
                    self.state(index)
        except (ViewStateError, KeyError, ValueError) as error:
            self.tabs, self.tab, self.linked = previous
            raise SessionError(BOOKMARK_REFUSED,
                               why=error.said if isinstance(error, SaidError) else Said("")) from error
        self.tab = active
        return list(range(len(self.views)))

    def _tabs_kept(self, kept: list[KeptTab]) -> list[Workspace]:
        tabs = [Workspace(tab.grid, tab.layout, [self._view_kept(fields) for fields in tab.views],
                          {**_focus_copy(self.centers), **tab.focus}, tab.name, tab.linked) for tab in kept]
        shared = next((tab.focus for tab in tabs if tab.linked), None)
        for tab in tabs:
            if tab.linked and shared is not None:
                tab.focus = shared
        return tabs

    def _view_kept(self, fields: dict[str, Any]) -> ViewModel:
        view = ViewModel(**fields)
        if view.kind not in MPR_KINDS | {"3d"} or (view.kind != "native" and not self._base(view).mpr) \
                or view.rotation % 90:
            raise SessionError(BOOKMARK_REFUSED,
                               why=Said(gettext_noop("a view's kind or turn does not fit its series")))
        return view

    # --- hanging rules (rendering.hanging) --------------------------------------------------

    def _hanging_fit(self, rule: Hanging, *, description: str) -> tuple[list[ViewModel] | None, Said]:
        """The views ``rule`` hangs on the first study, or None and why it does not fit.

        Each layer takes the first series of its modality whose description holds the
        layer's fragment; a later layer or view asking for the same takes the next such
        series where there is one, else the first again. Reformats, 3-D and fused views
        need series that reformat; ``native`` is each series' acquisition plane.
        """
        own = self._of_study(self.studies[0])
        missing = [modality for modality in rule.modalities if modality not in {s.modality for s in own}]
        if missing:
            return None, Said.made(gettext_noop("this study has no %(modalities)s series that can be shown"),
                                   {"modalities": ", ".join(missing)})
        if rule.description and rule.description.casefold() not in description.casefold():
            return None, Said.made(gettext_noop("the rule is for studies described %(description)s"),
                                   {"description": repr(rule.description)})
        prior = self._of_study(self.studies[-1]) if len(self.studies) > 1 else []
        used: set[str] = set()
        views = []
        for number, view in enumerate(rule.views, start=1):
            volume = view.kind != "native" or len(view.layers) > 1
            layers = []
            for layer in view.layers:
                fragment = layer.description.casefold()
                candidates = [s for s in (prior if layer.prior else own) if s.modality == layer.modality
                              and fragment in s.description.casefold() and (s.mpr or not volume)]
                if not candidates and layer.prior:
                    return None, Said.made(gettext_noop("view %(view)s needs a %(modality)s series of a "
                                                        "prior study of the patient; none is open"),
                                           {"view": number, "modality": layer.modality})
                if not candidates:
                    return None, _series_lacking(number, layer, reformats=volume)
                series = next((s for s in candidates if s.uid not in used), candidates[0])
                used.add(series.uid)
                layers.append(_layer(series, palette=layer.palette, opacity=layer.opacity))
            base = self.series[layers[0]["series_id"]]
            kind = base.opening_kind if view.kind == "native" else view.kind
            shown = ViewModel(kind, layers)
            if kind == "3d":
                default = "pet_mip" if base.modality in SUV_MODALITIES else "ct_bone"
                shown.preset3d = view.preset3d or default
            views.append(shown)
        return views, Said("")

    def hanging_fits(self, rule: Hanging, *, description: str) -> bool:
        """Whether ``rule`` can hang this session's first study (described ``description``)."""
        return self._hanging_fit(rule, description=description)[0] is not None

    def hanging_apply(self, rule: Hanging, *, description: str) -> list[int]:
        """Hang ``rule`` on the first study, in the grid its view count fills; refused, saying
        why, where it does not fit."""
        views, why = self._hanging_fit(rule, description=description)
        if views is None:
            raise SessionError(gettext_noop("this hanging rule does not fit this study: %(why)s"), why=why)
        self._views_set(views, rule.grid)
        return list(range(len(views)))

    def hanging_first(self, rules: list[Hanging], *, description: str) -> int | None:
        """At open: hang the first of ``rules`` that fits and return its index; with none,
        the built-in default stays."""
        for index, rule in enumerate(rules):
            views, _ = self._hanging_fit(rule, description=description)
            if views is not None:
                self._views_set(views, rule.grid)
                return index
        return None

    def hanging_of_views(self) -> Hanging:
        """The views on screen as a rule: each layer by its series' modality and description,
        with its palette and opacity; each view's kind and 3-D preset."""
        modalities: dict[str, None] = {}
        views = []
        for view in self.views:
            layers = []
            for layer in view.layers:
                series = self.series[layer["series_id"]]
                prior = (series.study or self.study_uid) != self.studies[0]
                if not prior:
                    modalities.setdefault(series.modality)
                palette = layer["palette"] if layer["palette"] in PALETTES else None
                layers.append(LayerRule(series.modality, description_fragment(series.description), palette,
                                        float(layer["opacity"]), prior=prior))
            views.append(ViewRule(view.kind, tuple(layers), view.preset3d if view.kind == "3d" else None))
        if not modalities:
            raise SessionError(gettext_noop("a hanging rule needs a view of the study opened, not only "
                                            "of its priors"))
        return Hanging(tuple(modalities), tuple(views))

    # --- state ------------------------------------------------------------------------------

    def _base(self, view: ViewModel) -> SeriesInfo:
        return self.series[view.layers[0]["series_id"]]

    def segmentation_show(self, layer_id: str, series_uid: str) -> list[int]:
        """Lay a reader's segmentation (its render layer ``layer_id``) over every 2-D view of its
        reference series' frame of reference; the views to render again."""
        reference = self.series.get(series_uid)
        if reference is None or reference.kind != "volume" or not reference.mpr:
            raise SessionError(gettext_noop("a segmentation is drawn on a volume series of this reading"))
        shown = ShownSegmentation(layer_id, reference.frame_of_reference)
        views = sorted(set(self._segmented_views(self.segmentation)) | set(self._segmented_views(shown)))
        self.segmentation = shown
        return views

    def segmentation_hide(self) -> list[int]:
        views = self._segmented_views(self.segmentation)
        self.segmentation = None
        return views

    def segmentation_layers(self, series_uid: str, layer_id: str) -> list[dict[str, Any]]:
        """A segmentation's reference series (in this reading's SUV) and the segmentation over it."""
        plain = {"window_center": 0.5, "window_width": 1.0, "window_unit": "native", "palette": "grey"}
        return self._with_suv([{"series_id": series_uid, **plain}, {"series_id": layer_id, **plain}])

    def view_point_mm(self, index: int, point: tuple[float, float]) -> list[float]:
        """Patient mm of a viewport pixel of view ``index``, on the plane its last frame showed."""
        view = self.views[index]
        plane = view.plane
        if plane is None or view.kind not in MPR_KINDS:
            raise SessionError(gettext_noop("the view has no plane to place that on yet (a 2-D view with a "
                                            "frame shown)"))
        step = float(plane["mm_per_pixel"])
        at = (np.asarray(plane["center_mm"], dtype=np.float64)
              + (point[0] - view.width / 2) * step * np.asarray(plane["right"], dtype=np.float64)
              + (point[1] - view.height / 2) * step * np.asarray(plane["down"], dtype=np.float64))
        return [float(v) for v in at]

    def view_normal(self, index: int) -> list[float]:
        return [float(v) for v in self._normal(self.views[index])]

    def view_frame_of_reference(self, index: int) -> str:
        return self._base(self.views[index]).frame_of_reference

    def _segmented_views(self, shown: ShownSegmentation | None) -> list[int]:
        if shown is None:
            return []
        return [i for i, view in enumerate(self.views) if (view.kind in MPR_KINDS or view.kind == "3d")
                and self._base(view).frame_of_reference == shown.frame_of_reference
                and len(view.layers) < MAX_LAYERS]

    def _layers_shown(self, index: int) -> list[dict[str, Any]]:
        layers = self._with_suv(self.views[index].layers)
        if index in self._segmented_views(self.segmentation) and self.segmentation is not None:
            layers = [*layers, {"series_id": self.segmentation.layer_id, "window_center": 0.5,
                                "window_width": 1.0, "window_unit": "native", "palette": "grey",
                                "opacity": 1.0}]
        return layers

    def state(self, index: int, *, quality: str = "interactive", segmentation: bool = False) -> ViewState:
        """The view's state; with the reader's segmentation laid over it where ``segmentation``
        (frames), without it for what reads values (probe, measurements)."""
        view = self.views[index]
        focus = self.focus[self._base(view).frame_of_reference]
        layers = self._layers_shown(index) if segmentation else self._with_suv(view.layers)
        layers = [_drawn(layer) for layer in layers]
        return viewstate_from_dict({
            "view": view.kind,
            "layers": self._with_registration(view, layers),
            "focus_mm": [float(v) for v in focus],
            "oblique_deg": list(view.oblique_deg), "slab": view.slab,
            "camera2d": self._camera2d(view),
            "camera3d": view.camera3d, "preset3d": view.preset3d,
            "width": view.width, "height": view.height, "quality": quality, "invert": view.invert,
            "crop_mm": None if view.crop_mm is None else list(view.crop_mm),
        })

    def crop_set(self, index: int, box: tuple[float, ...] | None) -> list[int]:
        """Crop view ``index``'s base series to ``box`` (None: uncropped); the views to render again."""
        view = self.views[index]
        if box is not None and not self._base(view).mpr:
            raise SessionError(gettext_noop("a crop box is for volume series"))
        view.crop_mm = None if box is None else tuple(float(v) for v in box)
        return [index]

    def key_image(self, index: int) -> dict[str, Any]:
        """What a report keeps of view ``index``: its still state (segmentation shown), the
        direction and spacing of one slice step, and a caption made from the view."""
        view = self.views[index]
        base = self._base(view)
        normal = self._normal(view)
        modalities = "/".join(dict.fromkeys(self.series[layer["series_id"]].modality for layer in view.layers
                                            if layer["series_id"] in self.series))
        caption = " ".join(part for part in (modalities, view.kind, base.description) if part)
        return {"state": viewstate_to_dict(self.state(index, quality="still", segmentation=True)),
                "normal": [float(v) for v in normal], "step_mm": base.slice_step(normal),
                "caption": caption[:128]}

    # --- registration (imaging.registrations) -----------------------------------------------

    def _frame_of(self, series_id: str) -> str | None:
        series = self.series.get(series_id)
        return series.frame_of_reference if series is not None else None

    def series_join(self, series: list[SeriesInfo]) -> None:
        """Series made during the reading (derived series) join it."""
        self._series_add(series, [])

    def frame_transform(self, source: str, target: str) -> np.ndarray | None:
        """The transform from frame ``source``'s patient mm into ``target``'s, or None."""
        return self._transform(source, target)

    def series_transform(self, source: str, target: str) -> np.ndarray | None:
        """Accepted registrations only: the transform from series ``source``'s patient mm into series
        ``target``'s (frame links, and either series' own correction), None when neither frames nor
        corrections need one; raises KeyError when the frames differ and nothing connects them."""
        source_frame = self.series[source].frame_of_reference
        target_frame = self.series[target].frame_of_reference
        transform = layer_transform(self.links, series=source, frame=source_frame, base_series=target,
                                    base_frame=target_frame)
        if transform is None and source_frame != target_frame:
            raise KeyError(source)
        return transform

    def _links(self) -> list[FrameLink]:
        """Accepted links, then the proposal on screen (which wins for a series it corrects)."""
        return [*self.links, *([self.proposal] if self.proposal is not None else [])]

    def _transform(self, source: str, target: str) -> np.ndarray | None:
        return frame_transform(self._links(), source, target)

    def _with_registration(self, view: ViewModel, layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each layer of another frame of reference than the base's, with the transform from its
        frame into the base's (the proposal on screen first, then accepted registrations); a
        series with a series-level registration (two series of one frame registered) carries it
        too, and a base series with one has it undone on every other layer."""
        base_info = self._base(view)
        shown = []
        for layer in layers:
            frame = self._frame_of(layer["series_id"])
            transform = None if frame is None else layer_transform(
                self._links(), series=layer["series_id"], frame=frame, base_series=base_info.uid,
                base_frame=base_info.frame_of_reference)
            shown.append(layer if transform is None or layer["series_id"] == base_info.uid else
                         {**layer, "registration": [float(v) for v in transform.ravel()]})
        return shown

    def _registered_views(self, frames: set[str], series: frozenset[str] = frozenset()) -> list[int]:
        """Fused views that ``frames``' links or ``series``' corrections change."""
        changed = []
        for n, view in enumerate(self.views):
            uids = {layer["series_id"] for layer in view.layers}
            shown = {self._frame_of(uid) for uid in uids}
            if (shown & frames and len(shown) > 1) or (uids & series and len(uids) > 1):
                changed.append(n)
        return changed

    @staticmethod
    def _touched(links: list[FrameLink]) -> tuple[set[str], frozenset[str]]:
        return ({frame for link in links if not link.series for frame in (link.source, link.target)},
                frozenset(link.series for link in links if link.series))

    def registrations_set(self, links: list[FrameLink]) -> list[int]:
        """The accepted registrations of this reading; the fused views to render again."""
        self.links = list(links)
        return self._registered_views(*self._touched(self.links))

    def proposal_show(self, moving_series: str, fixed_series: str, matrix: list[float]) -> list[int]:
        """Show a registration not yet accepted in every view fusing the two series' frames (two
        series of one frame: in every fused view showing the moving series)."""
        moving, fixed = self._frame_of(moving_series), self._frame_of(fixed_series)
        if moving is None or fixed is None:
            raise SessionError(gettext_noop("both series of a registration must be in this reading"))
        earlier = self._touched([self.proposal] if self.proposal is not None else [])
        self.proposal = FrameLink(moving, fixed, np.asarray(matrix, dtype=np.float64).reshape(4, 4),
                                  series=moving_series if moving == fixed else "")
        frames, series = self._touched([self.proposal])
        return sorted(set(self._registered_views(frames | earlier[0], series | earlier[1])))

    def proposal_clear(self) -> list[int]:
        if self.proposal is None:
            return []
        touched = self._touched([self.proposal])
        self.proposal = None
        return self._registered_views(*touched)

    def fuse_toggle(self, index: int, uid: str) -> list[int]:
        """Lay series ``uid`` over view ``index`` as a fused layer, or take it off. Another frame
        of reference than the view's is fused only through a registration."""
        view, series = self.views[index], self.series.get(uid)
        if series is None or series.kind != "volume" or not series.mpr:
            raise SessionError(gettext_noop("only a volume series of this reading can be fused"))
        if any(layer["series_id"] == uid for layer in view.layers[1:]):
            view.layers = [view.layers[0], *(layer for layer in view.layers[1:] if layer["series_id"] != uid)]
            return [index]
        if uid == view.layers[0]["series_id"]:
            raise SessionError(gettext_noop("a series is not fused with itself"))
        base = self._base(view).frame_of_reference
        if series.frame_of_reference != base and self._transform(series.frame_of_reference, base) is None:
            raise SessionError(gettext_noop("that series is in another frame of reference: register it onto "
                                            "this view's series first"))
        if len(view.layers) >= MAX_LAYERS:
            raise SessionError(gettext_noop("a view shows at most %(most)s layers"), most=MAX_LAYERS)
        palette = "hot_iron" if series.modality in SUV_MODALITIES else "grey"
        view.layers.append(_layer(series, palette=palette, opacity=OVERLAY_OPACITY))
        return [index]

    def thumbnail_state(self, uid: str, *, size: int) -> dict[str, Any]:
        """The view state of a series' thumbnail: its middle image, in its own plane, whole."""
        series = self.series[uid]
        return {"view": series.opening_kind, "layers": [_layer(series)],
                "focus_mm": [float(v) for v in series.opening],
                "width": size, "height": size, "quality": "interactive"}

    def rendered(self, index: int, plane: dict[str, Any] | None) -> None:
        """Remember the plane the last frame of view ``index`` showed (for clicks and pans)."""
        if 0 <= index < len(self.views):
            self.views[index].plane = plane

    def _sharing_focus(self, index: int) -> list[int]:
        frame = self._base(self.views[index]).frame_of_reference
        return [i for i, view in enumerate(self.views)
                if view.kind in MPR_KINDS and self._base(view).frame_of_reference == frame]

    def _normal(self, view: ViewModel) -> np.ndarray:
        if view.plane is not None:
            return np.asarray(view.plane["normal"], dtype=np.float64)
        if view.kind == "native":
            return np.asarray(self._base(view).geometry["direction"], dtype=np.float64)[:, 2]
        return np.asarray(NORMALS.get(view.kind, (0.0, 0.0, 1.0)))

    def _move_focus(self, index: int, point: np.ndarray) -> list[int]:
        base = self._base(self.views[index])
        low, high = base.bounds()
        self.focus[base.frame_of_reference] = np.clip(point, low, high)
        return self._sharing_focus(index)

    # --- input ------------------------------------------------------------------------------

    def resize(self, index: int, width: int, height: int) -> list[int]:
        view = self.views[index]
        view.width, view.height = width, height
        return [index]

    def apply_input(self, message: Input) -> list[int]:
        index, view, args = message.view, self.views[message.view], message.arguments
        handler = getattr(self, f"_input_{message.operation}")
        changed = handler(index, view, args)
        if self.linked and message.operation in LINKED_INPUTS:
            changed = sorted({*changed, *self._linked_follow(index, message.operation, args)})
        if self.tabs[self.tab].linked and message.operation in TAB_LINKED_INPUTS:
            self._tabs_follow(message.operation, view, args)
        return changed

    def _input_link_all(self, index: int, view: ViewModel, args: dict[str, float]) -> list[int]:
        self.linked = not self.linked
        return []

    def _linked_follow(self, index: int, operation: str, args: dict[str, float]) -> list[int]:
        """The other views of the layout take the same input where :meth:`_follows` says so."""
        source = self.views[index]
        changed: list[int] = []
        for other_index, other in enumerate(self.views):
            if other_index != index and self._follows(operation, source, other):
                changed += getattr(self, f"_input_{operation}")(other_index, other, args)
        return changed

    def _follows(self, operation: str, source: ViewModel, other: ViewModel) -> bool:
        """Whether a linked view takes ``source``'s input: a scroll where it does not already follow
        the focus (another frame of reference) and shows the same kind of plane, a window where its
        base is of the same modality, a zoom or pan where it is of the same dimension (2-D or 3-D)."""
        base, other_base = self._base(source), self._base(other)
        if operation == "scroll":
            return other.kind == source.kind and other_base.frame_of_reference != base.frame_of_reference
        if operation == "window":
            return other_base.modality == base.modality
        return (other.kind == "3d") == (source.kind == "3d")

    def _input_scroll(self, index: int, view: ViewModel, args: dict[str, float]) -> list[int]:
        if view.kind == "3d":
            view.camera3d["azimuth"] = ((view.camera3d["azimuth"] + 5 * args["delta"] + 360) % 720) - 360
            return [index]
        normal = self._normal(view)
        focus = self.focus[self._base(view).frame_of_reference]
        step = self._base(view).slice_step(normal)
        return self._move_focus(index, focus + normal * step * args["delta"])

    def _input_frame(self, index: int, view: ViewModel, args: dict[str, float]) -> list[int]:
        """Go to image (slice) ``index`` counted from the start of the series along the view's normal."""
        if view.kind not in MPR_KINDS:
            return []
        normal = self._normal(view)
        base = self._base(view)
        start = float((base.corners @ normal).min())
        focus = self.focus[base.frame_of_reference]
        target = start + base.slice_step(normal) * args["index"]
        return self._move_focus(index, focus + normal * (target - float(focus @ normal)))

    def _input_time(self, index: int, view: ViewModel, args: dict[str, float]) -> list[int]:
        """Show time point ``index`` of the view's dynamic series, in every view that shows it."""
        dynamic = {layer["series_id"] for layer in view.layers
                   if self.series[layer["series_id"]].time_points > 1}
        changed = []
        for number, other in enumerate(self.views):
            for layer in other.layers:
                if layer["series_id"] in dynamic:
                    last = self.series[layer["series_id"]].time_points - 1
                    layer["time_point"] = int(min(max(args["index"], 0), last))
                    changed.append(number)
        return sorted(set(changed))

    def _input_window(self, index: int, view: ViewModel, args: dict[str, float]) -> list[int]:
        layer = view.layers[0]
        scale = max(float(layer["window_width"]), 1e-3) / 512
        layer["window_center"] = float(np.clip(layer["window_center"] + args["dc"] * scale,
                                               -WINDOW_LIMIT, WINDOW_LIMIT))
        layer["window_width"] = float(np.clip(layer["window_width"] + args["dw"] * scale,
                                              1e-6, WINDOW_LIMIT))
        layer["voi"] = None  # the reader's own window: linear, no longer the file's preset
        return [index]

    def _input_zoom(self, index: int, view: ViewModel, args: dict[str, float]) -> list[int]:
        if view.kind == "3d":
            view.camera3d["zoom"] = float(np.clip(view.camera3d["zoom"] * args["factor"], 0.05, 50))
        else:
            self._camera_take(view)
            view.zoom = float(np.clip(view.zoom * args["factor"], ZOOM_MIN, ZOOM_MAX))
        return [index]

    def _input_pan(self, index: int, view: ViewModel, args: dict[str, float]) -> list[int]:
        self._camera_take(view)
        mm_per_pixel = view.plane["mm_per_pixel"] if view.plane else 1.0
        view.pan_mm = (view.pan_mm[0] - args["dx"] * view.width * mm_per_pixel,
                       view.pan_mm[1] - args["dy"] * view.height * mm_per_pixel)
        return [index]

    def _camera(self, view: ViewModel) -> tuple[float, tuple[float, float]]:
        """The view's zoom and pan: the presentation state's until the reader moves the picture."""
        if view.presented and view.kind == "native":
            camera = self._base(view).presented_camera(view.width, view.height)
            if camera is not None:
                return camera
        return view.zoom, view.pan_mm

    def _camera2d(self, view: ViewModel) -> dict[str, Any]:
        zoom, pan_mm = self._camera(view)
        return {"zoom": zoom, "pan_mm": list(pan_mm), "rotation": view.rotation, "flip_h": view.flip_h,
                "flip_v": view.flip_v}

    def _camera_take(self, view: ViewModel) -> None:
        """The reader moves the picture from where the presentation state put it."""
        view.zoom, view.pan_mm = self._camera(view)
        view.presented = False

    def _input_rotate(self, index: int, view: ViewModel, args: dict[str, float]) -> list[int]:
        if view.kind == "oblique":
            return self._input_tilt(index, view, {"dtilt": args["delevation"],
                                                  "dspin": args["dazimuth"]})
        camera = view.camera3d
        camera["azimuth"] = ((camera["azimuth"] + args["dazimuth"] + 360) % 720) - 360
        camera["elevation"] = float(np.clip(camera["elevation"] + args["delevation"], -90, 90))
        return [index]

    def _input_tilt(self, index: int, view: ViewModel, args: dict[str, float]) -> list[int]:
        tilt = float(np.clip(view.oblique_deg[0] + args["dtilt"], -180, 180))
        spin = float(np.clip(view.oblique_deg[1] + args["dspin"], -180, 180))
        view.oblique_deg = (tilt, spin)
        return [index]

    def _input_focus(self, index: int, view: ViewModel, args: dict[str, float]) -> list[int]:
        if view.kind not in MPR_KINDS or view.plane is None:
            return []
        plane = view.plane
        center = np.asarray(plane["center_mm"], dtype=np.float64)
        point = (center
                 + (args["x"] - view.width / 2) * plane["mm_per_pixel"] * np.asarray(plane["right"])
                 + (args["y"] - view.height / 2) * plane["mm_per_pixel"] * np.asarray(plane["down"]))
        return self._move_focus(index, point)

    def _input_reset(self, index: int, view: ViewModel, args: dict[str, float]) -> list[int]:
        fresh = [_layer(self.series[layer["series_id"]], palette=layer["palette"],
                        opacity=layer["opacity"]) for layer in view.layers]
        self.views[index] = replace(view, layers=fresh, zoom=1.0, pan_mm=(0.0, 0.0),
                                    oblique_deg=(0.0, 0.0), presented=True, rotation=0, flip_h=False,
                                    flip_v=False, invert=False,
                                    camera3d={"azimuth": 0.0, "elevation": 0.0, "zoom": 1.0})
        base = self._base(view)
        self.focus[base.frame_of_reference] = np.asarray(base.opening, np.float64)
        return sorted({index, *self._sharing_focus(index)})

    # --- quick functions (one input each, no arguments) -------------------------------------

    def _input_invert(self, index: int, view: ViewModel, args: dict[str, float]) -> list[int]:
        view.invert = not view.invert
        return [index]

    def _input_flip_h(self, index: int, view: ViewModel, args: dict[str, float]) -> list[int]:
        if view.kind not in MPR_KINDS:
            return []
        view.flip_h = not view.flip_h
        return [index]

    def _input_flip_v(self, index: int, view: ViewModel, args: dict[str, float]) -> list[int]:
        if view.kind not in MPR_KINDS:
            return []
        view.flip_v = not view.flip_v
        return [index]

    def _turn(self, index: int, view: ViewModel, degrees: int) -> list[int]:
        """Turn the picture on screen. The turn applies before the mirrors, so turning a mirrored
        picture swaps which mirror it shows (a quarter turn after a left-right mirror is a top-bottom
        mirror after the turn)."""
        if view.kind not in MPR_KINDS:
            return []
        view.rotation = (view.rotation + degrees) % 360
        view.flip_h, view.flip_v = view.flip_v, view.flip_h
        return [index]

    def _input_rotate_cw(self, index: int, view: ViewModel, args: dict[str, float]) -> list[int]:
        return self._turn(index, view, 90)

    def _input_rotate_ccw(self, index: int, view: ViewModel, args: dict[str, float]) -> list[int]:
        return self._turn(index, view, -90)

    def _input_fit(self, index: int, view: ViewModel, args: dict[str, float]) -> list[int]:
        """Zoom so the whole image fits the view, centred."""
        if view.kind == "3d":
            view.camera3d["zoom"] = 1.0
            return [index]
        self._camera_take(view)
        view.zoom, view.pan_mm = 1.0, (0.0, 0.0)
        return [index]

    def _input_one_to_one(self, index: int, view: ViewModel, args: dict[str, float]) -> list[int]:
        """One image pixel per screen pixel (the base series' spacing along the screen's right)."""
        if view.kind not in MPR_KINDS or view.plane is None:
            return []
        zoom, _ = self._camera(view)
        self._camera_take(view)
        fitted = float(view.plane["mm_per_pixel"]) * zoom
        spacing = self._base(view).slice_step(np.asarray(view.plane["right"], dtype=np.float64))
        view.zoom = float(np.clip(fitted / spacing, ZOOM_MIN, ZOOM_MAX))
        return [index]

    def apply_setting(self, message: Setting) -> list[int]:
        view = self.views[message.view]
        if message.layer >= len(view.layers):
            raise SessionError(gettext_noop("view %(view)s has no layer %(layer)s"), view=message.view,
                               layer=message.layer)
        layer = view.layers[message.layer]
        name, value = message.name, message.value
        if name == "series":
            return self._show_series(message.view, str(value))
        if name == "overlay":
            return self._overlay_toggle(message.view, str(value))
        if name == "fuse":
            return self.fuse_toggle(message.view, str(value))
        if name in {"visible", "order"} and message.layer == 0:
            raise SessionError(gettext_noop("the base layer is always shown, first: choose a fused layer "
                                            "(layer 1 or more)"))
        if name == "order":
            return self._layer_move(message.view, message.layer, int(value))
        if name == "kind":
            if value != "native" and not self._base(view).mpr:
                raise SessionError(gettext_noop("this series is shown in its own plane only "
                                                "(no reformat or 3-D of 2-D images, cine or colour)"))
            view.kind, view.plane = str(value), None
            if view.kind == "3d":
                view.preset3d = "pet_mip" if self._base(view).modality in SUV_MODALITIES else "ct_bone"
        elif name == "slab_mode":
            view.slab = {"mode": value, "thickness_mm": view.slab["thickness_mm"] or 20.0}
        elif name == "slab_thickness":
            view.slab = {**view.slab, "thickness_mm": float(value)}
        elif name == "window_preset":
            self._window_preset(layer, str(value))
        elif name == "voi":
            self._file_window(layer, int(value))
        elif name == "volume_preset":
            view.preset3d = str(value)
        elif name in {"palette", "opacity"}:
            layer[name] = value
        elif name == "visible":
            layer["hidden"] = not bool(value)
        return [message.view]

    def _layer_move(self, index: int, layer: int, to: int) -> list[int]:
        """Move a fused layer to position ``to`` among the fused layers (drawn in that order)."""
        layers = self.views[index].layers
        if to >= len(layers):
            raise SessionError(gettext_noop("view %(view)s has %(count)s fused layer(s)"), view=index,
                               count=len(layers) - 1)
        layers.insert(to, layers.pop(layer))
        return [index]

    def _overlay_toggle(self, index: int, uid: str) -> list[int]:
        """Lay segmentation ``uid`` over view ``index`` (its frame of reference), or take it off."""
        view, series = self.views[index], self.series.get(uid)
        if series is None or series.kind != "label":
            raise SessionError(gettext_noop("an overlay is a segmentation of this study"))
        if any(layer["series_id"] == uid for layer in view.layers):
            view.layers = [layer for layer in view.layers if layer["series_id"] != uid]
            return [index]
        if series.frame_of_reference != self._base(view).frame_of_reference:
            raise SessionError(gettext_noop("that segmentation was drawn on another frame of reference than "
                                            "this view's"))
        if len(view.layers) >= MAX_LAYERS:
            raise SessionError(gettext_noop("a view shows at most %(most)s layers"), most=MAX_LAYERS)
        view.layers.append({"series_id": uid, "window_center": 0.5, "window_width": 1.0,
                            "window_unit": "native", "palette": "grey", "opacity": OVERLAY_OPACITY})
        return [index]

    def _show_series(self, index: int, uid: str) -> list[int]:
        """Put series ``uid`` alone in view ``index``, in its acquisition plane."""
        series = self.series.get(uid)
        if series is None:
            raise SessionError(gettext_noop("no such series in this study, or it cannot be shown"))
        old = self.views[index]
        self.views[index] = ViewModel(series.opening_kind, [_layer(series)],
                                      width=old.width, height=old.height)
        return [index]

    def _window_preset(self, layer: dict[str, Any], name: str) -> None:
        preset = WINDOW_PRESETS.get(PRESET_NAMES.get(name, name))
        if preset is None:
            raise SessionError(gettext_noop("unknown window preset %(preset)s"), preset=repr(name))
        series = self.series[layer["series_id"]]
        calibrated = series.suv or (
            series.modality in SUV_MODALITIES
            and self.suv.factor(series.geometry.get("suv_calculation"), series.uid)[0] is not None)
        if preset.unit.value == "suv" and not calibrated:
            raise SessionError(gettext_noop("this series has no SUV calibration"))
        if preset.unit.value == "native" and series.modality in SUV_MODALITIES and calibrated:
            raise SessionError(gettext_noop("a CT window does not apply to a PET layer"))
        layer.update(window_center=preset.center, window_width=preset.width,
                     window_unit=preset.unit.value, voi=None)

    def _file_window(self, layer: dict[str, Any], index: int) -> None:
        """One of the series' own presets: its window, mapped to grey as the file says (``voi``)."""
        windows = self.series[layer["series_id"]].geometry.get("windows") or []
        if not 0 <= index < len(windows):
            raise SessionError(gettext_noop("this series has no window preset %(preset)s of its own"),
                               preset=index + 1)
        center, width = windows[index]
        layer.update(window_center=float(center), window_width=float(width), window_unit="native",
                     voi=index)

    # --- SUV of this reading (rendering.suv_reading) ----------------------------------------

    def _suv_calculations(self) -> dict[str, dict[str, Any] | None]:
        return {uid: series.geometry.get("suv_calculation") for uid, series in self.series.items()
                if series.modality in SUV_MODALITIES}

    def _with_suv(self, layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        overrides = self.suv.overrides(self._suv_calculations())
        return [{**layer, "suv_factor": overrides[layer["series_id"]]}
                if overrides.get(layer["series_id"]) is not None else layer for layer in layers]

    def _suv_views(self) -> list[int]:
        calculations = self._suv_calculations()
        return [n for n, view in enumerate(self.views)
                if any(layer["series_id"] in calculations for layer in view.layers)]

    def suv_choose(self, method: str) -> list[int]:
        """Every PET/NM layer in SUV ``method``; refused, with what is missing, where one cannot be."""
        trial = SuvReading(sex=self.suv.sex, entered=self.suv.entered)
        try:
            trial.choose(method)
        except SuvReadingError as error:
            raise SessionError.from_error(error) from error
        gaps = sorted({reason for uid, calculation in self._suv_calculations().items() if calculation
                       for reason in trial.factor(calculation, uid)[1]}, key=str)
        if gaps:
            raise SessionError(gettext_noop("%(method)s cannot be computed here: %(gaps)s"),
                               method=Said(SUV_METHODS[method]), gaps=Said.joined("; ", gaps))
        self.suv = trial
        return self._suv_views()

    def suv_enter(self, series_uid: str, *, weight_kg: float | None, dose_bq: float | None) -> list[int]:
        """A weight or injected dose the reader entered for a series, used for this reading only."""
        series = self.series.get(series_uid)
        if series is None or series.modality not in SUV_MODALITIES:
            raise SessionError(gettext_noop("a weight or dose is entered for a PET or NM series of this "
                                            "study"))
        try:
            self.suv.enter(series_uid, series.geometry.get("suv_calculation"), weight_kg=weight_kg,
                           dose_bq=dose_bq)
        except SuvReadingError as error:
            raise SessionError.from_error(error) from error
        if self.suv.factor(series.geometry.get("suv_calculation"), series_uid)[0] is not None:
            for view in (view for tab in self.tabs for view in tab.views):
                for layer in view.layers:
                    if layer["series_id"] == series_uid and layer["window_unit"] != "suv":
                        preset = WINDOW_PRESETS["pet_suv_0_5"]
                        layer.update(window_center=preset.center, window_width=preset.width,
                                     window_unit="suv", voi=None)
        return self._suv_views()

    def suv_wire(self) -> dict[str, Any]:
        return self.suv.wire(self._suv_calculations())

    def describe(self) -> dict[str, Any]:
        """The ``ready`` message body: views and series, no identifying data."""
        return {
            "layout": self.layout, "studies": list(self.studies), "suv": self.suv_wire(),
            "tabs": [tab.wire() for tab in self.tabs], "tab": self.tab,
            "grid": self.tabs[self.tab].grid.wire(), "max_views": MAX_VIEWS,
            "linked": self.linked,
            "views": [{"kind": view.kind, "layers": [layer["series_id"] for layer in view.layers]}
                      for view in self.views],
            "series": sorted([*(s.wire() for s in self.series.values()), *self.unavailable],
                             key=lambda item: (item["number"] is None, item["number"] or 0)),
        }

