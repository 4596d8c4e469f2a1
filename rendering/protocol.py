"""The viewer's wire protocol: JSON messages in, binary frames out.

Every client message is untrusted, also after authentication: it is parsed
with a size limit, must be a JSON object of a known ``type``, and every
field is type- and range-checked here, before the consumer acts on it. A bad
message becomes a :class:`ProtocolError` (answered with an ``error``
message), never an exception that closes the socket. docs/protocol.md is the
reference for clients.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, get_type_hints

from gateway.i18n import gettext_noop
from imaging.suv import SUV_METHODS
from rendering.engine.arithmetic import MAX_BOX_MM, SPACES
from rendering.grids import Grid, GridError, grid_parse
from rendering.said import Said, SaidError
from rendering.viewstate import MAX_FILE_WINDOWS
from rendering.workspaces import MAX_TABS, MAX_VIEWS, TAB_NAME_LENGTH

MAX_MESSAGE_BYTES = 8192
SHOWN_CHARS = 40
FRAME_MAGIC = b"FGF1"
FRAME_VERSION = 1
FRAME_HEADER = struct.Struct(">4sBBBBIHHI")
LAYOUTS = {"1x1": 1, "1x2": 2, "1x3": 3, "2x2": 4, "petct": 4, "compare": 2}


class Encoding(IntEnum):
    JPEG = 1
    PNG = 2
    WEBP = 3


class ProtocolError(SaidError, ValueError):
    """A client message that cannot be acted on; ``code`` is stable for clients, the message said to
    the reader (a template marked ``gettext_noop`` and its values, as for :class:`SaidError`)."""

    def __init__(self, code: str, message: str | Said, /, **params: Any) -> None:
        super().__init__(message, **params)
        self.code = code
        self.of: str | None = None
        """The message type refused, once known (a client may have several kinds in flight)."""


@dataclass(frozen=True)
class Number:
    low: float
    high: float
    integer: bool = False


@dataclass(frozen=True)
class Text:
    choices: tuple[str, ...]
    """In the order a client offers them (menus, number keys)."""


@dataclass(frozen=True)
class Identifier:
    """A name the server gave the client (a series UID); the session checks it exists."""

    pattern: re.Pattern[str]


@dataclass(frozen=True)
class Label:
    """Free text a reader types (a finding's name): printable, short."""

    max_length: int


@dataclass(frozen=True)
class Flag:
    """true or false."""


FieldRule = Number | Text | Identifier | Label | Flag
SERIES_UID = Identifier(re.compile(r"[A-Za-z0-9._:\-]{1,128}"))
STUDY_UID = Identifier(re.compile(r"[0-9.]{1,64}"))

# The arguments of every input operation; anything not listed is refused.
OPERATIONS: dict[str, dict[str, FieldRule]] = {
    "scroll": {"delta": Number(-2000, 2000, integer=True)},
    "window": {"dc": Number(-10000, 10000), "dw": Number(-10000, 10000)},
    "zoom": {"factor": Number(0.05, 20)},
    "pan": {"dx": Number(-4, 4), "dy": Number(-4, 4)},
    "rotate": {"dazimuth": Number(-360, 360), "delevation": Number(-360, 360)},
    "tilt": {"dtilt": Number(-180, 180), "dspin": Number(-180, 180)},
    "focus": {"x": Number(0, 4096, integer=True), "y": Number(0, 4096, integer=True)},
    "frame": {"index": Number(0, 100_000, integer=True)},
    "time": {"index": Number(0, 4095, integer=True)},
    "reset": {},
    # Quick functions: each toggles or sets one thing of the view (docs/protocol.md).
    "invert": {},
    "flip_h": {},
    "flip_v": {},
    "rotate_cw": {},
    "rotate_ccw": {},
    "fit": {},
    "one_to_one": {},
    "link_all": {},
}
SETTINGS: dict[str, FieldRule] = {
    "kind": Text(("native", "axial", "coronal", "sagittal", "oblique", "3d")),
    "series": SERIES_UID,
    # A segmentation of the study (ready.series[].kind "label") laid over the view, or taken off it.
    "overlay": SERIES_UID,
    # A volume series fused over the view (another frame of reference: registered first), or taken off.
    "fuse": SERIES_UID,
    # A fused layer (``layer`` >= 1) hidden (false) or shown again (true), keeping its settings.
    "visible": Flag(),
    # A fused layer (``layer`` >= 1) moved to this position among the fused layers (the base stays 0).
    "order": Number(1, 3, integer=True),
    "slab_mode": Text(("none", "mip", "minip", "average")),
    "slab_thickness": Number(0, 500),
    "window_preset": Text(("abdomen", "lung", "bone", "brain", "suv_0_5", "suv_0_10")),
    # One of the series' own window presets (ready.series[].windows), mapped as the file says.
    "voi": Number(0, MAX_FILE_WINDOWS - 1, integer=True),
    "volume_preset": Text(("ct_bone", "ct_soft_tissue", "ct_lung", "pet_mip")),
    "palette": Text(("grey", "hot_iron", "rainbow", "inverted")),
    "opacity": Number(0, 1),
}


@dataclass(frozen=True)
class Acknowledge:
    view: int
    sequence: int


@dataclass(frozen=True)
class Input:
    view: int
    operation: str
    arguments: dict[str, float]


@dataclass(frozen=True)
class Setting:
    view: int
    name: str
    value: float | str
    layer: int


@dataclass(frozen=True)
class Layout:
    layout: str


@dataclass(frozen=True)
class Probe:
    view: int
    x: int
    y: int


@dataclass(frozen=True)
class Resize:
    view: int
    width: int
    height: int


@dataclass(frozen=True)
class Thumbnails:
    """Asks for one small picture of every series the viewer may show."""


@dataclass(frozen=True)
class OpenStudy:
    """Adds another study of the same patient (a prior) to the session, beside the first."""

    study: str


@dataclass(frozen=True)
class Measure:
    """A measurement drawn on a view: the server computes every number from the voxels."""

    view: int
    tool: str
    points: tuple[tuple[float, float], ...]
    radius_mm: float | None = None
    fraction: float | None = None
    mode: str | None = None
    """How a ``grow`` VOI grows (:data:`GROW_MODES`)."""
    value: float | None = None
    """The grow mode's value: the range as a fraction of the seed's value, or the SD multiplier."""


MEASURE_TOOLS = {"line": (2, 2), "ellipse": (2, 2), "rectangle": (2, 2), "polygon": (3, 256),
                 "sphere": (1, 1), "threshold": (1, 1), "grow": (1, 1)}
"""Each tool and how many viewport points it takes: a sphere its centre, with ``radius_mm``; a
threshold VOI the centre of a box reaching ``radius_mm``, above ``fraction`` of its maximum; a
grown VOI its seed, in a box reaching ``radius_mm`` (:data:`GROW_BOX_MM` when omitted)."""
SIZED_TOOLS = frozenset({"sphere", "threshold"})


@dataclass(frozen=True)
class Chart:
    """A chart of a region drawn on a view: its histogram, or a sphere's time-activity curve.

    ``region`` is the region exactly as a ``measure`` message gives it (the same fields beside ``kind``).
    """

    kind: str
    region: Measure


CHART_KINDS = {"histogram": ("ellipse", "rectangle", "polygon", "sphere", "threshold", "grow"),
               "tac": ("sphere",)}
"""Each chart and the measuring tools whose regions it is made of."""
MEASURE_FIELDS = {"sphere": {"radius_mm"}, "threshold": {"radius_mm", "fraction"},
                  "grow": {"radius_mm", "mode", "value"}}
"""The fields a tool takes besides its points; any other is refused."""
GROW_BOX_MM = 30.0
GROW_MODES: dict[str, tuple[Number, float]] = {"range": (Number(0.01, 0.99), 0.5),
                                               "confidence": (Number(0.5, 5), 2.5)}
"""How a VOI grows from its seed (``mode``, ``range`` when omitted), with the bounds and default of
its ``value``: ``range`` takes the voxels within the seed's value ± value x |seed's value|,
``confidence`` those within mean ± value x SD of the region as it grows (rendering.measure)."""

@dataclass(frozen=True)
class Keep:
    """Keep the last measurement of this socket in the study's findings, under ``label``."""

    label: str


@dataclass(frozen=True)
class Forget:
    """Delete a kept finding of the study."""

    finding: int


@dataclass(frozen=True)
class Relabel:
    """Give a kept finding of the study a new ``label``."""

    finding: int
    label: str


@dataclass(frozen=True)
class SuvMethod:
    """Show every PET/NM layer of the reading in SUV ``method`` (``ready.suv.methods``)."""

    method: str


@dataclass(frozen=True)
class SuvInputs:
    """A patient weight (kg) or injected dose (MBq) the reader enters for ``series``, for this reading."""

    series: str
    weight_kg: float | None
    dose_mbq: float | None


@dataclass(frozen=True)
class StoreFindings:
    """Add the study's kept findings to it as DICOM: an SR Measurement Report and a SEG per VOI."""


@dataclass(frozen=True)
class ReportCapture:
    """Keep view ``view`` as it is now (its state, not its pixels) as a key image of the reader's
    draft report, under ``caption`` (empty: one made from the view)."""

    view: int
    caption: str = ""


@dataclass(frozen=True)
class RegRun:
    """Register series ``moving`` onto series ``fixed`` automatically (a worker's job)."""

    fixed: str
    moving: str
    kind: str = "rigid"


@dataclass(frozen=True)
class RegLandmarks:
    """Register from pairs of points clicked on the same structure: ``fixed_points`` on view
    ``fixed_view`` (showing the fixed series), ``moving_points`` on ``moving_view``, in order;
    ``refine``: then refine automatically from there."""

    fixed_view: int
    moving_view: int
    fixed_points: tuple[tuple[float, float], ...]
    moving_points: tuple[tuple[float, float], ...]
    refine: bool = False


@dataclass(frozen=True)
class RegNudge:
    """Move the proposal by hand: a translation (mm) and rotations (degrees about x, y, z) of the
    moving series about its centre, applied after the current proposal."""

    registration: int
    translate_mm: tuple[float, float, float]
    rotate_deg: tuple[float, float, float]


@dataclass(frozen=True)
class RegDecide:
    """Accept (into the study as DICOM REG) or reject a proposal, or cancel a running job."""

    registration: int
    decision: str


@dataclass(frozen=True)
class Derive:
    """Make a derived series: ``operation`` a filter of ``series[0]`` (its ``parameters``, in 2-D
    or 3-D) or image arithmetic of all ``series`` (with ``weights``), resampled onto a grid on the
    first's lattice: its ``space`` (``box``: i_min, i_max, j_min, j_max, k_min, k_max mm along the
    first's axes from its origin, with the space ``box`` only)."""

    operation: str
    series: tuple[str, ...]
    parameters: tuple[tuple[str, float], ...] = ()
    weights: tuple[float, ...] = ()
    dims: int = 3
    space: str = "reference"
    box: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Crop:
    """Crop view ``view``'s base series to ``box`` (i_min, i_max, j_min, j_max, k_min, k_max mm along
    its own axes from its origin, :mod:`rendering.engine.crop`), in 2-D and 3-D; None: uncropped."""

    view: int
    box: tuple[float, float, float, float, float, float] | None


@dataclass(frozen=True)
class TabChange:
    """A workspace tab added (in ``layout``), selected, closed, renamed, linked, or a view duplicated
    into a new tab (rendering.workspaces); fields an action does not use are left at their defaults."""

    action: str
    tab: int = 0
    layout: str = "1x1"
    name: str = ""
    linked: bool = False
    view: int = 0


@dataclass(frozen=True)
class GridSave:
    """Keep ``grid`` under ``name`` as one of the reader's own grids (accounts.grids)."""

    name: str
    grid: Grid


@dataclass(frozen=True)
class Swap:
    """Views ``view`` and ``other`` of the tab on screen exchange cells (one dragged onto the other)."""

    view: int
    other: int


@dataclass(frozen=True)
class GridChange:
    """The tab on screen drawn in a grid of the reader's (rendering.grids)."""

    grid: Grid


@dataclass(frozen=True)
class BookmarkChange:
    """A bookmark of the reading state: ``save`` under ``name``; ``open``, ``delete``, or ``share``
    with (``shared``) or take back from a consultant's share ``share`` the bookmark ``bookmark``."""

    action: str
    bookmark: int = 0
    name: str = ""
    share: str = ""
    shared: bool = False


@dataclass(frozen=True)
class FilterPreview:
    """View ``view`` as it is, its base layer's shown slice filtered (2-D) with ``parameters``."""

    view: int
    filter: str
    parameters: tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class Hang:
    """Hang the reader's saved rule ``rule`` (``ready.vocabulary.hanging_rules``) on this study."""

    rule: int


@dataclass(frozen=True)
class HangSave:
    """Keep the views on screen as a new hanging rule of the reader, named ``name``."""

    name: str


@dataclass(frozen=True)
class HangDelete:
    """Delete the reader's hanging rule ``rule``."""

    rule: int


@dataclass(frozen=True)
class SegNew:
    view: int
    label: str


@dataclass(frozen=True)
class SegOpen:
    segmentation: int


@dataclass(frozen=True)
class SegClose:
    pass


@dataclass(frozen=True)
class SegEdit:
    """An edit of the open segmentation; ``points`` are viewport pixels of ``view``, the rest its settings."""

    view: int
    tool: str
    segment: int
    points: tuple[tuple[float, float], ...]
    settings: dict[str, Any]


@dataclass(frozen=True)
class SegUndo:
    pass


@dataclass(frozen=True)
class SegRedo:
    pass


@dataclass(frozen=True)
class SegSegment:
    segment: int
    changes: dict[str, Any]


@dataclass(frozen=True)
class SegStore:
    """``fractional``: the segments a model found as its probabilities (a FRACTIONAL SEG)."""

    fractional: bool = False


@dataclass(frozen=True)
class SegModel:
    model: int


@dataclass(frozen=True)
class SegDelete:
    segmentation: int


Message = (Acknowledge | Input | Setting | Layout | Probe | Resize | Thumbnails | OpenStudy | Measure
           | Keep | Forget | Relabel | StoreFindings | SuvMethod | SuvInputs | Hang | HangSave | HangDelete
           | Chart | SegNew | SegOpen | SegClose | SegEdit | SegUndo | SegRedo | SegSegment | SegStore
           | SegModel | SegDelete | ReportCapture | RegRun | RegLandmarks | RegNudge | RegDecide | Derive
           | FilterPreview | Crop | TabChange | GridChange | BookmarkChange | Swap
           | GridSave)


def _field(message: dict[str, Any], name: str, rule: FieldRule) -> Any:
    if name not in message:
        raise ProtocolError("missing_field", gettext_noop("%(name)s is required"), name=repr(name))
    value = message[name]
    if isinstance(rule, Identifier):
        if not isinstance(value, str) or not rule.pattern.fullmatch(value):
            raise ProtocolError("bad_value", gettext_noop("%(name)s must be an identifier the server gave"),
                                name=repr(name))
        return value
    if isinstance(rule, Label):
        if not isinstance(value, str) or not 0 < len(value) <= rule.max_length or not value.isprintable():
            raise ProtocolError("bad_value", gettext_noop("%(name)s must be 1 to %(most)s printable "
                                                          "characters"),
                                name=repr(name), most=rule.max_length)
        return value
    if isinstance(rule, Flag):
        if not isinstance(value, bool):
            raise ProtocolError("bad_value", gettext_noop("%(name)s must be true or false"), name=repr(name))
        return value
    if isinstance(rule, Text):
        if not isinstance(value, str) or value not in rule.choices:
            raise ProtocolError("bad_value", gettext_noop("%(name)s must be one of %(choices)s"),
                                name=repr(name), choices=str(list(rule.choices)))
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError("bad_value", gettext_noop("%(name)s must be a number"), name=repr(name))
    if not math.isfinite(value) or not rule.low <= value <= rule.high:
        raise ProtocolError("bad_value", gettext_noop("%(name)s must be between %(low)s and %(high)s"),
                            name=repr(name), low=str(rule.low), high=str(rule.high))
    if rule.integer and value != int(value):
        raise ProtocolError("bad_value", gettext_noop("%(name)s must be a whole number"), name=repr(name))
    return int(value) if rule.integer else float(value)


def shown(value: object) -> str:
    """A client-supplied value as an error may quote it: short, never the whole string."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "…"


def _exact_keys(message: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(message) - allowed)
    if unknown:
        listed = ", ".join(shown(name) for name in unknown[:3])
        if len(unknown) > 3:
            raise ProtocolError("unknown_field",
                                gettext_noop("unknown field(s): %(fields)s and %(more)s more"),
                                fields=listed, more=len(unknown) - 3)
        raise ProtocolError("unknown_field", gettext_noop("unknown field(s): %(fields)s"), fields=listed)


def _view(message: dict[str, Any], views: int) -> int:
    return int(_field(message, "view", Number(0, max(0, views - 1), integer=True)))


def message_parse(raw: str | bytes | None, *, views: int) -> Message:
    """Validate one client message against the protocol; raises :class:`ProtocolError`."""
    if raw is None:
        raise ProtocolError("not_text", gettext_noop("messages are JSON text"))
    if len(raw) > MAX_MESSAGE_BYTES:
        raise ProtocolError("too_large", gettext_noop("messages are limited to %(most)s bytes"),
                            most=MAX_MESSAGE_BYTES)
    try:
        message = json.loads(raw, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError("not_json", gettext_noop("the message is not valid JSON")) from exc
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("bad_message", gettext_noop("a message is a JSON object with a string 'type'"))
    parser = _PARSERS.get(message["type"])
    if parser is None:
        raise ProtocolError("unknown_type", gettext_noop("unknown message type %(type)s"),
                            type=shown(message["type"]))
    try:
        return parser(message, views)
    except ProtocolError as error:
        error.of = message["type"]
        raise


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def _parse_ack(message: dict[str, Any], views: int) -> Acknowledge:
    # Any view a layout can have: an acknowledgement may cross a layout change in flight.
    _exact_keys(message, {"type", "view", "seq"})
    return Acknowledge(_view(message, MAX_VIEWS), _field(message, "seq", Number(0, 2**32 - 1, True)))


def _parse_input(message: dict[str, Any], views: int) -> Input:
    operation = message.get("op")
    if not isinstance(operation, str) or operation not in OPERATIONS:
        raise ProtocolError("unknown_operation", gettext_noop("unknown input operation %(operation)s"),
                            operation=shown(operation))
    rules = OPERATIONS[operation]
    _exact_keys(message, {"type", "view", "op", *rules})
    arguments = {name: _field(message, name, rule) for name, rule in rules.items()}
    return Input(_view(message, views), operation, arguments)


def _parse_set(message: dict[str, Any], views: int) -> Setting:
    _exact_keys(message, {"type", "view", "name", "value", "layer"})
    name = message.get("name")
    if not isinstance(name, str) or name not in SETTINGS:
        raise ProtocolError("unknown_setting", gettext_noop("unknown setting %(setting)s"),
                            setting=shown(name))
    layer = _field(message, "layer", Number(0, 3, True)) if "layer" in message else 0
    return Setting(_view(message, views), name, _field(message, "value", SETTINGS[name]), layer)


def _parse_layout(message: dict[str, Any], views: int) -> Layout:
    _exact_keys(message, {"type", "layout"})
    return Layout(_field(message, "layout", Text(tuple(LAYOUTS))))


def _parse_probe(message: dict[str, Any], views: int) -> Probe:
    _exact_keys(message, {"type", "view", "x", "y"})
    coordinate = Number(0, 4096, integer=True)
    return Probe(_view(message, views), _field(message, "x", coordinate),
                 _field(message, "y", coordinate))


def _parse_resize(message: dict[str, Any], views: int) -> Resize:
    _exact_keys(message, {"type", "view", "width", "height"})
    size = Number(64, 2048, integer=True)
    return Resize(_view(message, views), _field(message, "width", size),
                  _field(message, "height", size))


def _parse_thumbnails(message: dict[str, Any], views: int) -> Thumbnails:
    _exact_keys(message, {"type"})
    return Thumbnails()


def _parse_open(message: dict[str, Any], views: int) -> OpenStudy:
    _exact_keys(message, {"type", "study"})
    return OpenStudy(_field(message, "study", STUDY_UID))


def _parse_measure(message: dict[str, Any], views: int) -> Measure:
    tool = _field(message, "tool", Text(tuple(MEASURE_TOOLS)))
    _exact_keys(message, {"type", "view", "tool", "points", *MEASURE_FIELDS.get(tool, set())})
    low, high = MEASURE_TOOLS[tool]
    raw = message.get("points")
    if not isinstance(raw, list) or not low <= len(raw) <= high:
        raise ProtocolError("bad_value", gettext_noop("a %(tool)s takes %(low)s to %(high)s points"),
                            tool=tool, low=low, high=high)
    coordinate = Number(-4096, 8192)
    points = []
    for point in raw:
        if not isinstance(point, list) or len(point) != 2:
            raise ProtocolError("bad_value", gettext_noop("each point is [x, y] in viewport pixels"))
        points.append((_field({"x": point[0]}, "x", coordinate), _field({"y": point[1]}, "y", coordinate)))
    radius = _field(message, "radius_mm", Number(0.5, 150)) if tool in SIZED_TOOLS else None
    fraction = None
    if tool == "threshold":
        fraction = _field(message, "fraction", Number(0.05, 0.95)) if "fraction" in message else 0.41
    if tool == "grow":
        mode = _field(message, "mode", Text(tuple(GROW_MODES))) if "mode" in message else "range"
        rule, default = GROW_MODES[mode]
        box = _field(message, "radius_mm", Number(1, 150)) if "radius_mm" in message else GROW_BOX_MM
        return Measure(_view(message, views), tool, tuple(points), box, mode=mode,
                       value=_field(message, "value", rule) if "value" in message else default)
    return Measure(_view(message, views), tool, tuple(points), radius, fraction)


def _parse_chart(message: dict[str, Any], views: int) -> Chart:
    kind = _field(message, "kind", Text(tuple(CHART_KINDS)))
    _field(message, "tool", Text(CHART_KINDS[kind]))
    region = {name: value for name, value in message.items() if name != "kind"}
    return Chart(kind, _parse_measure(region, views))


def _parse_keep(message: dict[str, Any], views: int) -> Keep:
    _exact_keys(message, {"type", "label"})
    return Keep(_field(message, "label", Label(64)))


def _parse_forget(message: dict[str, Any], views: int) -> Forget:
    _exact_keys(message, {"type", "finding"})
    return Forget(_field(message, "finding", Number(1, 2**53, integer=True)))


def _parse_relabel(message: dict[str, Any], views: int) -> Relabel:
    _exact_keys(message, {"type", "finding", "label"})
    return Relabel(_field(message, "finding", Number(1, 2**53, integer=True)),
                   _field(message, "label", Label(64)))


def _parse_suv(message: dict[str, Any], views: int) -> SuvMethod:
    _exact_keys(message, {"type", "method"})
    return SuvMethod(_field(message, "method", Text(tuple(SUV_METHODS))))


WEIGHT_KG = Number(1, 500)
DOSE_MBQ = Number(1, 100_000)


def _parse_suv_inputs(message: dict[str, Any], views: int) -> SuvInputs:
    _exact_keys(message, {"type", "series", "weight_kg", "dose_mbq"})
    if "weight_kg" not in message and "dose_mbq" not in message:
        raise ProtocolError("missing_field", gettext_noop("give weight_kg, dose_mbq or both"))
    return SuvInputs(_field(message, "series", SERIES_UID),
                     _field(message, "weight_kg", WEIGHT_KG) if "weight_kg" in message else None,
                     _field(message, "dose_mbq", DOSE_MBQ) if "dose_mbq" in message else None)


def _parse_findings_store(message: dict[str, Any], views: int) -> StoreFindings:
    _exact_keys(message, {"type"})
    return StoreFindings()


def _parse_report_capture(message: dict[str, Any], views: int) -> ReportCapture:
    _exact_keys(message, {"type", "view", "caption"})
    caption = _field(message, "caption", Label(128)) if "caption" in message else ""
    return ReportCapture(_view(message, views), caption)


RULE_ID = Number(1, 2**53, integer=True)
HANGING_NAME = Label(64)


def _parse_hang(message: dict[str, Any], views: int) -> Hang:
    _exact_keys(message, {"type", "rule"})
    return Hang(_field(message, "rule", RULE_ID))


def _parse_hang_save(message: dict[str, Any], views: int) -> HangSave:
    _exact_keys(message, {"type", "name"})
    return HangSave(_field(message, "name", HANGING_NAME))


def _parse_hang_delete(message: dict[str, Any], views: int) -> HangDelete:
    _exact_keys(message, {"type", "rule"})
    return HangDelete(_field(message, "rule", RULE_ID))


SEGMENT_NUMBER = Number(1, 32, integer=True)
SEG_POINTS = {  # points each segmentation tool takes (viewport pixels); 0: none
    "threshold": (0, 1), "otsu": (1, 1), "grow": (1, 16), "confidence": (1, 16), "suv_fraction": (1, 1),
    "brush": (1, 64), "erase": (1, 64), "fill_holes": (0, 0), "islands": (0, 0), "largest": (0, 0),
    "interpolate": (0, 0), "clear": (0, 0),
}
SEG_SETTINGS: dict[str, dict[str, FieldRule]] = {
    "threshold": {"low": Number(-1e6, 1e7), "high": Number(-1e6, 1e7), "unit": Text(("native", "suv")),
                  "box_mm": Number(1, 250)},
    "otsu": {"box_mm": Number(1, 250)},
    "grow": {"low": Number(-1e6, 1e7), "high": Number(-1e6, 1e7), "unit": Text(("native", "suv"))},
    "confidence": {"multiplier": Number(0.5, 6), "iterations": Number(0, 10, integer=True)},
    "suv_fraction": {"fraction": Number(0.05, 0.95), "box_mm": Number(1, 150)},
    "brush": {"radius_mm": Number(0.5, 50), "planar": Flag()},
    "erase": {"radius_mm": Number(0.5, 50), "planar": Flag()},
    "islands": {"min_ml": Number(0.001, 1000)},
}
SEG_REQUIRED = {"threshold": {"low", "high"}, "otsu": {"box_mm"}, "grow": {"low", "high"},
                "suv_fraction": {"fraction", "box_mm"}, "brush": {"radius_mm"}, "erase": {"radius_mm"},
                "islands": {"min_ml"}}
SEG_LABEL = Label(64)
SEGMENT_CHANGES: dict[str, FieldRule] = {"name": Label(64), "colour": Identifier(re.compile(r"#[0-9a-f]{6}")),
                                         "visible": Flag(), "opacity": Number(0, 1)}


def _points(raw: Any, low: int, high: int, what: Said) -> tuple[tuple[float, float], ...]:
    if raw is None and low == 0:
        return ()
    if not isinstance(raw, list) or not low <= len(raw) <= high:
        raise ProtocolError("bad_value", gettext_noop("%(what)s takes %(low)s to %(high)s points"), what=what,
                            low=low, high=high)
    coordinate = Number(-4096, 8192)
    points = []
    for point in raw:
        if not isinstance(point, list) or len(point) != 2:
            raise ProtocolError("bad_value", gettext_noop("each point is [x, y] in viewport pixels"))
        points.append((_field({"x": point[0]}, "x", coordinate), _field({"y": point[1]}, "y", coordinate)))
    return tuple(points)


REGISTRATION_KINDS = ("rigid", "affine")
REGISTRATION_DECISIONS = ("accept", "reject", "cancel")
LANDMARKS_MAX = 32


def _parse_reg_run(message: dict[str, Any], views: int) -> RegRun:
    _exact_keys(message, {"type", "fixed", "moving", "kind"})
    kind = _field(message, "kind", Text(REGISTRATION_KINDS)) if "kind" in message else "rigid"
    return RegRun(_field(message, "fixed", SERIES_UID), _field(message, "moving", SERIES_UID), kind)


def _parse_reg_landmarks(message: dict[str, Any], views: int) -> RegLandmarks:
    _exact_keys(message, {"type", "fixed_view", "moving_view", "fixed_points", "moving_points", "refine"})
    what = Said(gettext_noop("a landmark registration"))
    fixed = _points(message.get("fixed_points"), 3, LANDMARKS_MAX, what)
    moving = _points(message.get("moving_points"), 3, LANDMARKS_MAX, what)
    if len(fixed) != len(moving):
        raise ProtocolError("bad_value", gettext_noop("landmarks come in pairs: as many fixed points as "
                                                      "moving points"))
    view = Number(0, max(0, views - 1), integer=True)
    refine = bool(_field(message, "refine", Flag())) if "refine" in message else False
    return RegLandmarks(_field(message, "fixed_view", view), _field(message, "moving_view", view),
                        fixed, moving, refine)


def _triple(message: dict[str, Any], name: str, rule: Number) -> tuple[float, float, float]:
    raw = message.get(name, [0, 0, 0])
    if not isinstance(raw, list) or len(raw) != 3:
        raise ProtocolError("bad_value", gettext_noop("%(name)s is three numbers (x, y, z)"), name=name)
    x, y, z = (_field({name: value}, name, rule) for value in raw)
    return (x, y, z)


def _parse_reg_nudge(message: dict[str, Any], views: int) -> RegNudge:
    _exact_keys(message, {"type", "registration", "translate_mm", "rotate_deg"})
    return RegNudge(_field(message, "registration", RULE_ID),
                    _triple(message, "translate_mm", Number(-100, 100)),
                    _triple(message, "rotate_deg", Number(-30, 30)))


def _parse_reg_decide(message: dict[str, Any], views: int) -> RegDecide:
    _exact_keys(message, {"type", "registration", "decision"})
    return RegDecide(_field(message, "registration", RULE_ID),
                     _field(message, "decision", Text(REGISTRATION_DECISIONS)))


OPERATION_NAME = Identifier(re.compile(r"[a-z_]{1,48}"))
PARAMETER_NAME = re.compile(r"[a-z_]{1,32}")
PARAMETERS_MAX = 8
PARAMETER_VALUE = Number(-1e7, 1e7)


def _parameters(message: dict[str, Any]) -> tuple[tuple[str, float], ...]:
    raw = message.get("parameters", {})
    if not isinstance(raw, dict) or len(raw) > PARAMETERS_MAX:
        raise ProtocolError("bad_value", gettext_noop("parameters is an object of at most %(most)s numbers"),
                            most=PARAMETERS_MAX)
    if not all(isinstance(name, str) and PARAMETER_NAME.fullmatch(name) for name in raw):
        raise ProtocolError("bad_value", gettext_noop("a parameter's name is lower-case letters and "
                                                      "underscores"))
    return tuple(sorted((name, float(_field(raw, name, PARAMETER_VALUE))) for name in raw))


BOX_EDGE = Number(-2 * MAX_BOX_MM, 2 * MAX_BOX_MM)


def _box(message: dict[str, Any], space: str) -> tuple[float, ...] | None:
    """The ``box`` of the space ``box`` (required there, refused elsewhere): six mm, min below max."""
    if space != "box":
        if "box" in message:
            raise ProtocolError("bad_value", gettext_noop("'box' is given only with the space 'box'"))
        return None
    raw = message.get("box")
    if raw is None:
        raise ProtocolError("missing_field", gettext_noop("'box' is required with the space 'box'"))
    box = _box_edges(raw)
    for axis, low, high in zip("ijk", box[0::2], box[1::2], strict=True):
        if high - low > MAX_BOX_MM:
            raise ProtocolError("bad_value", gettext_noop("'box': the %(axis)s side is at most %(most)g mm"),
                                axis=axis, most=MAX_BOX_MM)
    return box


def _box_edges(raw: Any) -> tuple[float, ...]:
    """Six edges in mm, each side's low below its high (a derive's box and a view's crop)."""
    if not isinstance(raw, list) or len(raw) != 6:
        raise ProtocolError("bad_value", gettext_noop("'box' is six numbers: i_min, i_max, j_min, j_max, "
                                                      "k_min, k_max (mm)"))
    box = tuple(float(_field({"box": value}, "box", BOX_EDGE)) for value in raw)
    for axis, low, high in zip("ijk", box[0::2], box[1::2], strict=True):
        if not low < high:
            raise ProtocolError("bad_value", gettext_noop("'box': %(axis)s_min must be below %(axis)s_max"),
                                axis=axis)
    return box


def _parse_derive(message: dict[str, Any], views: int) -> Derive:
    _exact_keys(message, {"type", "operation", "series", "parameters", "weights", "dims", "space", "box"})
    series = message.get("series")
    if not isinstance(series, list) or not 1 <= len(series) <= 4:
        raise ProtocolError("bad_value", gettext_noop("series is a list of 1 to 4 series uids"))
    uids = tuple(_field({"series": uid}, "series", SERIES_UID) for uid in series)
    weights = message.get("weights", [])
    if not isinstance(weights, list) or len(weights) > 4:
        raise ProtocolError("bad_value", gettext_noop("weights is a list of at most 4 numbers"))
    checked = tuple(float(_field({"weight": w}, "weight", Number(-1e6, 1e6))) for w in weights)
    dims = int(_field(message, "dims", Number(2, 3, integer=True))) if "dims" in message else 3
    space = str(_field(message, "space", Text(SPACES))) if "space" in message else "reference"
    return Derive(_field(message, "operation", OPERATION_NAME), uids, _parameters(message), checked, dims,
                  space, _box(message, space))


def _parse_crop(message: dict[str, Any], views: int) -> Crop:
    _exact_keys(message, {"type", "view", "box"})
    view = _view(message, views)
    if "box" not in message:
        raise ProtocolError("missing_field", gettext_noop("%(name)s is required"), name=repr("box"))
    raw = message["box"]
    if raw is None:
        return Crop(view, None)
    return Crop(view, _box_edges(raw))  # type: ignore[arg-type]


TAB_FIELDS = {"add": {"layout"}, "select": {"tab"}, "close": {"tab"}, "rename": {"tab", "name"},
              "link": {"tab", "linked"}, "duplicate": {"view"}}
TAB_NUMBER = Number(0, MAX_TABS - 1, integer=True)
TAB_NAME = Label(TAB_NAME_LENGTH)
BOOKMARK_FIELDS = {"save": {"name"}, "open": {"bookmark"}, "delete": {"bookmark"},
                   "share": {"bookmark", "share", "shared"}}
BOOKMARK_NAME = Label(64)
SHARE_ID = Identifier(re.compile(r"[A-Za-z0-9_\-]{1,24}"))


def _parse_tab(message: dict[str, Any], views: int) -> TabChange:
    action = _field(message, "action", Text(tuple(TAB_FIELDS)))
    _exact_keys(message, {"type", "action", *TAB_FIELDS[action]})
    if action == "add":
        return TabChange(action, layout=_field(message, "layout", Text(tuple(LAYOUTS))))
    if action == "duplicate":
        return TabChange(action, view=_view(message, views))
    tab = int(_field(message, "tab", TAB_NUMBER))
    if action == "rename":
        return TabChange(action, tab, name=_field(message, "name", TAB_NAME))
    if action == "link":
        return TabChange(action, tab, linked=bool(_field(message, "linked", Flag())))
    return TabChange(action, tab)


def _parse_swap(message: dict[str, Any], views: int) -> Swap:
    _exact_keys(message, {"type", "view", "other"})
    other = _field(message, "other", Number(0, max(0, views - 1), integer=True))
    return Swap(_view(message, views), int(other))


def _parse_grid(message: dict[str, Any], views: int) -> GridChange:
    _exact_keys(message, {"type", "rows", "columns", "cells"})
    try:
        return GridChange(grid_parse({key: message.get(key) for key in ("rows", "columns", "cells")}))
    except GridError as error:
        raise ProtocolError("bad_value", error.said) from error


def _parse_grid_save(message: dict[str, Any], views: int) -> GridSave:
    _exact_keys(message, {"type", "name", "rows", "columns", "cells"})
    grid = _parse_grid({key: value for key, value in message.items() if key != "name"}, views).grid
    return GridSave(_field(message, "name", BOOKMARK_NAME), grid)


def _parse_bookmark(message: dict[str, Any], views: int) -> BookmarkChange:
    action = _field(message, "action", Text(tuple(BOOKMARK_FIELDS)))
    _exact_keys(message, {"type", "action", *BOOKMARK_FIELDS[action]})
    if action == "save":
        return BookmarkChange(action, name=_field(message, "name", BOOKMARK_NAME))
    bookmark = int(_field(message, "bookmark", RULE_ID))
    if action == "share":
        return BookmarkChange(action, bookmark, share=_field(message, "share", SHARE_ID),
                              shared=bool(_field(message, "shared", Flag())))
    return BookmarkChange(action, bookmark)


def _parse_filter_preview(message: dict[str, Any], views: int) -> FilterPreview:
    _exact_keys(message, {"type", "view", "filter", "parameters"})
    return FilterPreview(_view(message, views), _field(message, "filter", OPERATION_NAME),
                         _parameters(message))


def _parse_seg_new(message: dict[str, Any], views: int) -> SegNew:
    _exact_keys(message, {"type", "view", "label"})
    return SegNew(_view(message, views), _field(message, "label", SEG_LABEL))


def _parse_seg_open(message: dict[str, Any], views: int) -> SegOpen:
    _exact_keys(message, {"type", "segmentation"})
    return SegOpen(_field(message, "segmentation", RULE_ID))


def _parse_seg_close(message: dict[str, Any], views: int) -> SegClose:
    _exact_keys(message, {"type"})
    return SegClose()


def _parse_seg_edit(message: dict[str, Any], views: int) -> SegEdit:
    tool = _field(message, "tool", Text(tuple(SEG_POINTS)))
    rules = SEG_SETTINGS.get(tool, {})
    _exact_keys(message, {"type", "view", "tool", "segment", "points", *rules})
    missing = SEG_REQUIRED.get(tool, set()) - set(message)
    if missing:
        raise ProtocolError("missing_field", gettext_noop("a %(tool)s edit needs %(fields)s"), tool=tool,
                            fields=", ".join(sorted(missing)))
    settings = {name: _field(message, name, rule) for name, rule in rules.items() if name in message}
    if "low" in settings and settings["low"] > settings["high"]:
        raise ProtocolError("bad_value", gettext_noop("low must not be above high"))
    low, high = SEG_POINTS[tool]
    return SegEdit(_view(message, views), tool, _field(message, "segment", SEGMENT_NUMBER),
                   _points(message.get("points"), low, high,
                           Said.made(gettext_noop("a %(tool)s edit"), {"tool": tool})), settings)


def _parse_seg_undo(message: dict[str, Any], views: int) -> SegUndo:
    _exact_keys(message, {"type"})
    return SegUndo()


def _parse_seg_redo(message: dict[str, Any], views: int) -> SegRedo:
    _exact_keys(message, {"type"})
    return SegRedo()


def _parse_seg_segment(message: dict[str, Any], views: int) -> SegSegment:
    _exact_keys(message, {"type", "segment", *SEGMENT_CHANGES})
    changes = {name: _field(message, name, rule) for name, rule in SEGMENT_CHANGES.items() if name in message}
    return SegSegment(_field(message, "segment", SEGMENT_NUMBER), changes)


def _parse_seg_store(message: dict[str, Any], views: int) -> SegStore:
    _exact_keys(message, {"type", "fractional"})
    return SegStore(bool(_field(message, "fractional", Flag())) if "fractional" in message else False)


def _parse_seg_model(message: dict[str, Any], views: int) -> SegModel:
    _exact_keys(message, {"type", "model"})
    return SegModel(_field(message, "model", RULE_ID))


def _parse_seg_delete(message: dict[str, Any], views: int) -> SegDelete:
    _exact_keys(message, {"type", "segmentation"})
    return SegDelete(_field(message, "segmentation", RULE_ID))


_PARSERS: dict[str, Callable[[dict[str, Any], int], Message]] = {
    "ack": _parse_ack, "input": _parse_input, "set": _parse_set,
    "layout": _parse_layout, "probe": _parse_probe, "resize": _parse_resize,
    "thumbnails": _parse_thumbnails, "open": _parse_open, "measure": _parse_measure,
    "keep": _parse_keep, "forget": _parse_forget, "relabel": _parse_relabel,
    "findings_store": _parse_findings_store, "report_capture": _parse_report_capture,
    "suv": _parse_suv, "suv_inputs": _parse_suv_inputs,
    "hang": _parse_hang, "hang_save": _parse_hang_save, "hang_delete": _parse_hang_delete,
    "chart": _parse_chart,
    "seg_new": _parse_seg_new, "seg_open": _parse_seg_open, "seg_close": _parse_seg_close,
    "seg_edit": _parse_seg_edit, "seg_undo": _parse_seg_undo, "seg_redo": _parse_seg_redo,
    "seg_segment": _parse_seg_segment, "seg_store": _parse_seg_store, "seg_model": _parse_seg_model,
    "seg_delete": _parse_seg_delete,
    "reg_run": _parse_reg_run, "reg_landmarks": _parse_reg_landmarks, "reg_nudge": _parse_reg_nudge,
    "reg_decide": _parse_reg_decide, "derive": _parse_derive, "filter_preview": _parse_filter_preview,
    "crop": _parse_crop, "tab": _parse_tab, "grid": _parse_grid, "bookmark": _parse_bookmark,
    "swap": _parse_swap, "grid_save": _parse_grid_save,
}


_KINDS: dict[type, str] = {get_type_hints(parser)["return"]: kind for kind, parser in _PARSERS.items()}


def message_kind(message: Message) -> str:
    """The wire ``type`` a parsed message came as: an error answering it names it in ``of``."""
    return _KINDS[type(message)]


def rule_wire(rule: FieldRule) -> dict[str, Any]:
    if isinstance(rule, Label):
        return {"text": True, "max_length": rule.max_length}
    if isinstance(rule, Text):
        return {"choices": list(rule.choices)}
    if isinstance(rule, Identifier):
        return {"identifier": True}
    if isinstance(rule, Flag):
        return {"flag": True}
    return {"min": rule.low, "max": rule.high, **({"integer": True} if rule.integer else {})}


def vocabulary(palettes: dict[str, list[str]]) -> dict[str, Any]:
    """What a client may send, announced in ``ready`` so its menus and keys follow the server."""
    return {
        "settings": {name: rule_wire(rule) for name, rule in SETTINGS.items()},
        "inputs": {op: {name: rule_wire(rule) for name, rule in rules.items()}
                   for op, rules in OPERATIONS.items()},
        "layouts": list(LAYOUTS),
        "measure_tools": list(MEASURE_TOOLS),
        "charts": {kind: list(tools) for kind, tools in CHART_KINDS.items()},
        "segment_tools": {tool: {"points": list(points), "required": sorted(SEG_REQUIRED.get(tool, ())),
                                 "settings": {name: rule_wire(rule) for name, rule in
                                              SEG_SETTINGS.get(tool, {}).items()}}
                          for tool, points in SEG_POINTS.items()},
        "palettes": palettes,
    }


def frame_pack(*, view: int, sequence: int, quality: int, encoding: Encoding, width: int,
               height: int, overlay: dict[str, Any], image: bytes) -> bytes:
    """One binary websocket message: 20-byte header, overlay JSON, encoded image."""
    overlay_bytes = json.dumps(overlay, separators=(",", ":"), allow_nan=False).encode()
    header = FRAME_HEADER.pack(FRAME_MAGIC, FRAME_VERSION, view, quality, int(encoding),
                               sequence, width, height, len(overlay_bytes))
    return header + overlay_bytes + image


@dataclass(frozen=True)
class Frame:
    view: int
    sequence: int
    quality: int
    encoding: Encoding
    width: int
    height: int
    overlay: dict[str, Any]
    image: bytes


def frame_unpack(message: bytes) -> Frame:
    """Inverse of :func:`frame_pack` (clients and tests)."""
    if len(message) < FRAME_HEADER.size:
        raise ProtocolError("short_frame", "frame shorter than its header")
    magic, version, view, quality, encoding, sequence, width, height, overlay_length = (
        FRAME_HEADER.unpack_from(message))
    if magic != FRAME_MAGIC or version != FRAME_VERSION:
        raise ProtocolError("bad_frame", "not a Fusion Gateway frame")
    start = FRAME_HEADER.size
    overlay = json.loads(message[start:start + overlay_length])
    return Frame(view, sequence, quality, Encoding(encoding), width, height, overlay,
                 message[start + overlay_length:])
