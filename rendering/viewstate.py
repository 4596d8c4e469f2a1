"""The whole view state of one viewport, built only from untrusted JSON through a strict validator.

A :class:`ViewState` is frozen and complete: a render request carries it whole, so any
worker can serve it. The only way in from the wire is :func:`viewstate_from_dict`, which
checks types, ranges, enum values and sizes, rejects unknown keys and raises one
:class:`ViewStateError` for anything wrong. :func:`viewstate_to_dict` is its inverse.

Units: positions in patient LPS mm; angles in degrees; window centre/width in the layer's
native unit (HU, Bq/ml) or in SUVbw when ``window_unit`` is ``"suv"``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from gateway.i18n import gettext_noop
from rendering.said import Said, SaidError


class ViewStateError(SaidError, ValueError):
    """The view state is malformed; the message says which field and why (no data echoed at length)."""


class ViewKind(Enum):
    AXIAL = "axial"
    CORONAL = "coronal"
    SAGITTAL = "sagittal"
    OBLIQUE = "oblique"
    NATIVE = "native"
    """The series' own acquisition plane, shown as stored (rows down, columns right)."""
    VOLUME_3D = "3d"


class SlabMode(Enum):
    NONE = "none"
    MIP = "mip"
    MINIP = "minip"
    AVERAGE = "average"


class Palette(Enum):
    GREY = "grey"
    HOT_IRON = "hot_iron"
    RAINBOW = "rainbow"
    INVERTED = "inverted"


class Quality(Enum):
    INTERACTIVE = "interactive"
    STILL = "still"


class Preset3D(Enum):
    CT_BONE = "ct_bone"
    CT_SOFT_TISSUE = "ct_soft_tissue"
    CT_LUNG = "ct_lung"
    PET_MIP = "pet_mip"


class WindowUnit(Enum):
    NATIVE = "native"
    SUV = "suv"


@dataclass(frozen=True)
class WindowPreset:
    center: float
    width: float
    unit: WindowUnit


WINDOW_PRESETS: Mapping[str, WindowPreset] = {
    "brain": WindowPreset(40.0, 80.0, WindowUnit.NATIVE),
    "lung": WindowPreset(-600.0, 1500.0, WindowUnit.NATIVE),
    "bone": WindowPreset(400.0, 1800.0, WindowUnit.NATIVE),
    "abdomen": WindowPreset(40.0, 400.0, WindowUnit.NATIVE),
    "pet_suv_0_5": WindowPreset(2.5, 5.0, WindowUnit.SUV),
    "pet_suv_0_10": WindowPreset(5.0, 10.0, WindowUnit.SUV),
}

MAX_LAYERS = 4
MAX_TIME_POINT = 4095
SUV_FACTOR_MIN, SUV_FACTOR_MAX = 1e-12, 1e3  # per Bq/ml: ~1e-4 for an adult's FDG scan
VIEWPORT_MIN, VIEWPORT_MAX = 64, 2048
COORD_LIMIT_MM = 100_000.0
WINDOW_LIMIT = 1.0e7
ZOOM_MIN, ZOOM_MAX = 0.05, 50.0
ROTATIONS = (0, 90, 180, 270)
SLAB_MAX_MM = 1000.0
SERIES_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
MAX_FILE_WINDOWS = 8
"""How many of a series' own window presets a layer's ``voi`` can name (as ``rendering.volume`` keeps)."""


@dataclass(frozen=True)
class Layer:
    series_id: str
    window_center: float
    window_width: float
    window_unit: WindowUnit = WindowUnit.NATIVE
    palette: Palette = Palette.GREY
    opacity: float = 1.0
    registration: tuple[float, ...] | None = None
    """Row-major 4x4 rigid/affine matrix mapping this layer's patient mm into layer 0's frame."""
    time_point: int = 0
    """Which volume of a dynamic series (0 for any other)."""
    voi: int | None = None
    """Which of the series' file window presets maps values to grey, exactly as the file
    says (its VOI LUT, or its window's VOILUTFunction); None: the linear window above."""
    suv_factor: float | None = None
    """SUV per stored unit for this reading (an SUV method other than SUVbw, or a weight or dose
    a reader entered); None: the series' SUVbw from its header. Set by the server's session."""


@dataclass(frozen=True)
class Slab:
    mode: SlabMode = SlabMode.NONE
    thickness_mm: float = 0.0


@dataclass(frozen=True)
class Camera2D:
    zoom: float = 1.0
    pan_mm: tuple[float, float] = (0.0, 0.0)
    """Offset of the view centre along the screen's right and down directions, in mm."""
    rotation: int = 0
    """The picture turned clockwise on screen by this many degrees (0, 90, 180 or 270), first."""
    flip_h: bool = False
    """Then mirrored left-right on screen."""
    flip_v: bool = False
    """Then mirrored top-bottom on screen."""


@dataclass(frozen=True)
class Camera3D:
    azimuth: float = 0.0
    elevation: float = 0.0
    zoom: float = 1.0


@dataclass(frozen=True)
class ViewState:
    view: ViewKind
    layers: tuple[Layer, ...]
    focus_mm: tuple[float, float, float] | None = None
    """Crosshair in patient LPS mm; MPR views show the plane through it (None: volume centre)."""
    oblique_deg: tuple[float, float] = (0.0, 0.0)
    """Oblique plane: the axial plane rotated about patient x (first), then about patient y."""
    slab: Slab = field(default_factory=Slab)
    camera2d: Camera2D = field(default_factory=Camera2D)
    camera3d: Camera3D = field(default_factory=Camera3D)
    preset3d: Preset3D = Preset3D.CT_SOFT_TISSUE
    width: int = 512
    height: int = 512
    quality: Quality = Quality.STILL
    invert: bool = False
    """The final grey scale inverted (255 - value), after window and palette."""
    crop_mm: tuple[float, float, float, float, float, float] | None = None
    """Crop box of the base series: i_min, i_max, j_min, j_max, k_min, k_max mm along its own axes
    from its origin (:mod:`rendering.engine.crop`); None: the whole series."""

    @property
    def series_ids(self) -> tuple[str, ...]:
        return tuple(layer.series_id for layer in self.layers)


# --- validation -------------------------------------------------------------------------------


def _fail(path: str, why: str, **params: Any) -> ViewStateError:
    """``why`` is a template (``gettext_noop``) of ``params``; the path is the field's, as sent."""
    return ViewStateError(gettext_noop("%(path)s: %(why)s"), path=path, why=Said.made(why, params))


def _mapping(value: Any, path: str, allowed: Set[str], required: Set[str] = frozenset()) -> dict:
    if not isinstance(value, Mapping):
        raise _fail(path, gettext_noop("must be an object"))
    for key in value:
        if not isinstance(key, str):
            raise _fail(path, gettext_noop("keys must be strings"))
        if key not in allowed:
            raise _fail(path, gettext_noop("unknown key %(key)s"), key=repr(key[:40]))
    missing = sorted(required - set(value))
    if missing:
        raise _fail(path, gettext_noop("missing %(keys)s"), keys=", ".join(missing))
    return dict(value)


def _number(value: Any, path: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(path, gettext_noop("must be a number"))
    number = float(value)
    if not math.isfinite(number) or not low <= number <= high:
        raise _fail(path, gettext_noop("must be between %(low)g and %(high)g"), low=low, high=high)
    return number


def _integer(value: Any, path: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(path, gettext_noop("must be an integer"))
    if not low <= value <= high:
        raise _fail(path, gettext_noop("must be between %(low)s and %(high)s"), low=low, high=high)
    return int(value)


def _flag(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(path, gettext_noop("must be true or false"))
    return value


def _vector(value: Any, path: str, n: int, low: float, high: float) -> tuple[float, ...]:
    if not isinstance(value, list | tuple) or len(value) != n:
        raise _fail(path, gettext_noop("must be a list of %(n)s numbers"), n=n)
    return tuple(_number(v, f"{path}[{i}]", low, high) for i, v in enumerate(value))


def _enum(kind: type[Enum], value: Any, path: str) -> Any:
    if isinstance(value, kind):
        return value
    if not isinstance(value, str):
        raise _fail(path, gettext_noop("must be a string"))
    for member in kind:
        if member.value == value:
            return member
    choices = ", ".join(str(member.value) for member in kind)
    raise _fail(path, gettext_noop("must be one of %(choices)s"), choices=choices)


def _layer(value: Any, path: str) -> Layer:
    data = _mapping(
        value, path,
        {"series_id", "window_center", "window_width", "window_unit", "palette", "opacity",
         "registration", "window_preset", "time_point", "voi", "suv_factor"},
        {"series_id"},
    )
    series_id = data["series_id"]
    if not isinstance(series_id, str) or not SERIES_ID.fullmatch(series_id):
        raise _fail(f"{path}.series_id", gettext_noop("must be 1-128 characters of A-Z a-z 0-9 . _ : -"))
    unit = _enum(WindowUnit, data.get("window_unit", "native"), f"{path}.window_unit")
    if "window_preset" in data:
        if "window_center" in data or "window_width" in data:
            raise _fail(path, gettext_noop("give window_preset or window_center/window_width, not both"))
        name = data["window_preset"]
        if not isinstance(name, str) or name not in WINDOW_PRESETS:
            raise _fail(f"{path}.window_preset", gettext_noop("must be one of %(choices)s"),
                        choices=", ".join(WINDOW_PRESETS))
        preset = WINDOW_PRESETS[name]
        center, width, unit = preset.center, preset.width, preset.unit
    else:
        if "window_center" not in data or "window_width" not in data:
            raise _fail(path, gettext_noop("missing window_center/window_width (or window_preset)"))
        center = _number(data["window_center"], f"{path}.window_center", -WINDOW_LIMIT, WINDOW_LIMIT)
        width = _number(data["window_width"], f"{path}.window_width", 1e-6, WINDOW_LIMIT)
    registration = None
    if data.get("registration") is not None:
        registration = _vector(data["registration"], f"{path}.registration", 16, -COORD_LIMIT_MM,
                               COORD_LIMIT_MM)
        if registration[12:] != (0.0, 0.0, 0.0, 1.0):
            raise _fail(f"{path}.registration", gettext_noop("last row must be 0 0 0 1"))
        linear = [registration[0:3], registration[4:7], registration[8:11]]
        det = (linear[0][0] * (linear[1][1] * linear[2][2] - linear[1][2] * linear[2][1])
               - linear[0][1] * (linear[1][0] * linear[2][2] - linear[1][2] * linear[2][0])
               + linear[0][2] * (linear[1][0] * linear[2][1] - linear[1][1] * linear[2][0]))
        if not 1e-3 <= abs(det) <= 1e3:
            raise _fail(f"{path}.registration", gettext_noop("matrix must be invertible and near-rigid"))
    voi = None
    if data.get("voi") is not None:
        voi = _integer(data["voi"], f"{path}.voi", 0, MAX_FILE_WINDOWS - 1)
        if "window_preset" in data or unit is not WindowUnit.NATIVE:
            raise _fail(f"{path}.voi",
                        gettext_noop("a file window goes with a native window_center/window_width"))
    return Layer(
        series_id=series_id,
        window_center=center,
        window_width=width,
        window_unit=unit,
        palette=_enum(Palette, data.get("palette", "grey"), f"{path}.palette"),
        opacity=_number(data.get("opacity", 1.0), f"{path}.opacity", 0.0, 1.0),
        registration=registration,
        time_point=_integer(data.get("time_point", 0), f"{path}.time_point", 0, MAX_TIME_POINT),
        voi=voi,
        suv_factor=(None if data.get("suv_factor") is None
                    else _number(data["suv_factor"], f"{path}.suv_factor", SUV_FACTOR_MIN, SUV_FACTOR_MAX)),
    )


TOP_KEYS = {"view", "layers", "focus_mm", "oblique_deg", "slab", "camera2d", "camera3d", "preset3d",
            "width", "height", "quality", "invert", "crop_mm"}


def viewstate_from_dict(data: Any) -> ViewState:
    """Validate an untrusted JSON-like object and build the :class:`ViewState`.

    Raises
    ------
    ViewStateError
        For anything malformed: wrong type, out of range, unknown key or enum value,
        too many layers. No other exception escapes.
    """
    try:
        return _viewstate(data)
    except ViewStateError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError) as exc:
        raise ViewStateError(gettext_noop("malformed view state (%(kind)s)"),
                             kind=type(exc).__name__) from None


def _viewstate(data: Any) -> ViewState:
    top = _mapping(data, "state", TOP_KEYS, {"view", "layers"})
    layers_raw = top["layers"]
    if not isinstance(layers_raw, list | tuple) or not 1 <= len(layers_raw) <= MAX_LAYERS:
        raise _fail("layers", gettext_noop("must be a list of 1 to %(most)s layers"), most=MAX_LAYERS)
    layers = tuple(_layer(layer, f"layers[{i}]") for i, layer in enumerate(layers_raw))
    focus = None
    if top.get("focus_mm") is not None:
        focus = _vector(top["focus_mm"], "focus_mm", 3, -COORD_LIMIT_MM, COORD_LIMIT_MM)
    slab = Slab()
    if "slab" in top:
        raw = _mapping(top["slab"], "slab", {"mode", "thickness_mm"})
        mode = _enum(SlabMode, raw.get("mode", "none"), "slab.mode")
        thickness = _number(raw.get("thickness_mm", 0.0), "slab.thickness_mm", 0.0, SLAB_MAX_MM)
        slab = Slab(mode, thickness)
    camera2d = Camera2D()
    if "camera2d" in top:
        raw = _mapping(top["camera2d"], "camera2d", {"zoom", "pan_mm", "rotation", "flip_h", "flip_v"})
        rotation = _integer(raw.get("rotation", 0), "camera2d.rotation", 0, 270)
        if rotation not in ROTATIONS:
            raise _fail("camera2d.rotation", gettext_noop("must be one of %(choices)s"),
                        choices=", ".join(str(r) for r in ROTATIONS))
        camera2d = Camera2D(
            zoom=_number(raw.get("zoom", 1.0), "camera2d.zoom", ZOOM_MIN, ZOOM_MAX),
            pan_mm=_vector(raw.get("pan_mm", [0, 0]), "camera2d.pan_mm", 2, -COORD_LIMIT_MM,
                           COORD_LIMIT_MM),  # type: ignore[arg-type]
            rotation=rotation,
            flip_h=_flag(raw.get("flip_h", False), "camera2d.flip_h"),
            flip_v=_flag(raw.get("flip_v", False), "camera2d.flip_v"),
        )
    camera3d = Camera3D()
    if "camera3d" in top:
        raw = _mapping(top["camera3d"], "camera3d", {"azimuth", "elevation", "zoom"})
        camera3d = Camera3D(
            azimuth=_number(raw.get("azimuth", 0.0), "camera3d.azimuth", -360.0, 360.0),
            elevation=_number(raw.get("elevation", 0.0), "camera3d.elevation", -90.0, 90.0),
            zoom=_number(raw.get("zoom", 1.0), "camera3d.zoom", ZOOM_MIN, ZOOM_MAX),
        )
    return ViewState(
        view=_enum(ViewKind, top["view"], "view"),
        layers=layers,
        focus_mm=focus,  # type: ignore[arg-type]
        oblique_deg=_vector(top.get("oblique_deg", [0, 0]), "oblique_deg", 2, -180.0, 180.0),  # type: ignore[arg-type]
        slab=slab,
        camera2d=camera2d,
        camera3d=camera3d,
        preset3d=_enum(Preset3D, top.get("preset3d", "ct_soft_tissue"), "preset3d"),
        width=_integer(top.get("width", 512), "width", VIEWPORT_MIN, VIEWPORT_MAX),
        height=_integer(top.get("height", 512), "height", VIEWPORT_MIN, VIEWPORT_MAX),
        quality=_enum(Quality, top.get("quality", "still"), "quality"),
        invert=_flag(top.get("invert", False), "invert"),
        crop_mm=None if top.get("crop_mm") is None else crop_box(top["crop_mm"], "crop_mm"),
    )


def crop_box(value: Any, path: str) -> tuple[float, float, float, float, float, float]:
    """A crop box checked: six finite mm within ±COORD_LIMIT_MM, each min below its max."""
    if not isinstance(value, list | tuple) or len(value) != 6:
        raise _fail(path, gettext_noop("must be six numbers: i_min, i_max, j_min, j_max, k_min, k_max (mm)"))
    box = tuple(_number(v, f"{path}[{n}]", -COORD_LIMIT_MM, COORD_LIMIT_MM) for n, v in enumerate(value))
    for axis, low, high in zip("ijk", box[0::2], box[1::2], strict=True):
        if not low < high:
            raise _fail(path, gettext_noop("%(axis)s_min must be below %(axis)s_max"), axis=axis)
    return box  # type: ignore[return-value]


def viewstate_to_dict(state: ViewState) -> dict[str, Any]:
    """The JSON-ready form; ``viewstate_from_dict(viewstate_to_dict(s)) == s``."""
    out: dict[str, Any] = {
        "view": state.view.value,
        "layers": [
            {
                "series_id": layer.series_id,
                "window_center": layer.window_center,
                "window_width": layer.window_width,
                "window_unit": layer.window_unit.value,
                "palette": layer.palette.value,
                "opacity": layer.opacity,
                **({"registration": list(layer.registration)} if layer.registration else {}),
                **({"time_point": layer.time_point} if layer.time_point else {}),
                **({"voi": layer.voi} if layer.voi is not None else {}),
                **({"suv_factor": layer.suv_factor} if layer.suv_factor is not None else {}),
            }
            for layer in state.layers
        ],
        "oblique_deg": list(state.oblique_deg),
        "slab": {"mode": state.slab.mode.value, "thickness_mm": state.slab.thickness_mm},
        "camera2d": {"zoom": state.camera2d.zoom, "pan_mm": list(state.camera2d.pan_mm),
                     **({"rotation": state.camera2d.rotation} if state.camera2d.rotation else {}),
                     **({"flip_h": True} if state.camera2d.flip_h else {}),
                     **({"flip_v": True} if state.camera2d.flip_v else {})},
        "camera3d": {"azimuth": state.camera3d.azimuth, "elevation": state.camera3d.elevation,
                     "zoom": state.camera3d.zoom},
        "preset3d": state.preset3d.value,
        "width": state.width,
        "height": state.height,
        "quality": state.quality.value,
    }
    if state.invert:
        out["invert"] = True
    if state.crop_mm is not None:
        out["crop_mm"] = list(state.crop_mm)
    if state.focus_mm is not None:
        out["focus_mm"] = list(state.focus_mm)
    return out
