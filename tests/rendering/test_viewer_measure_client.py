"""The viewer's measuring tools, measurement panel and findings list, against a scripted server.

As in test_viewer_client.py, Playwright's websocket routing plays the gateway:
it announces ``ready`` with ``vocabulary.measure_tools``, answers every
``resize`` with a frame (whose overlay a test may give a plane), answers each
``measure`` with a canned ``measurement`` that echoes the points (or with a
``refused`` error, as the gateway answers a nurse), and ``keep`` / ``forget``
with a ``findings`` message, so each test sees exactly what the client sends
and shows. Every number on screen comes from the scripted answer: the client
computes none.
"""

from __future__ import annotations

import copy
import io
import json
from typing import Any

import numpy as np
import pytest
from PIL import Image

from rendering.protocol import Encoding, frame_pack
from tests.rendering.scripted import canvas as _canvas
from tests.rendering.scripted import until as _until
from tests.rendering.scripted import viewer_pages
from tests.rendering.test_viewer_client import VOCABULARY

pytestmark = pytest.mark.browser

STUDY = "2.25.1"
CT = "2.25.20"
PET = "2.25.21"
TOOLS = ["line", "ellipse", "rectangle", "polygon", "sphere"]
REFUSAL = "measuring is not part of what you may do here"
SERIES = [
    {"uid": CT, "modality": "CT", "description": "Thorax", "number": 1, "images": 40, "kind": "volume",
     "plane": "axial", "mpr": True, "colour": False, "frame_time_ms": None, "units": "", "panels": [],
     "time_points": 1, "study": STUDY, "available": True},
    {"uid": PET, "modality": "PT", "description": "PET WB", "number": 2, "images": 40, "kind": "volume",
     "plane": "axial", "mpr": True, "colour": False, "frame_time_ms": None, "units": "BQML", "panels": [],
     "time_points": 1, "study": STUDY, "available": True},
]
CT_LAYER = {"series_id": CT, "unit": "HU", "voxels": 2145, "volume_ml": 10.5, "mean": 31.2, "sd": 12.0,
            "minimum": -80.0, "maximum": 140.0, "median": 30.0, "max_point_mm": [1.0, 2.0, 3.0],
            "peak": None, "total": None}
PET_LAYER = {"series_id": PET, "unit": "SUV", "voxels": 2145, "volume_ml": 10.5, "mean": 5.2, "sd": 2.1,
             "minimum": 0.4, "maximum": 9.6, "median": 4.9, "max_point_mm": [1.0, 2.0, 3.0],
             "peak": 9.4, "total": 54.6}
AREA_CT = {"series_id": CT, "unit": "HU", "pixels": 310, "area_mm2": 245.0, "mean": 12.5, "sd": 4.0,
           "minimum": 2.0, "maximum": 30.0, "median": 12.0, "max_point_mm": [0.0, 0.0, 0.0]}
LINE = {"length_mm": 42.26, "start_mm": [0.0, 0.0, 0.0], "end_mm": [42.26, 0.0, 0.0],
        "profiles": [[CT, "HU", [10.0, 20.0, None, 40.0, 30.0]]]}
GROWN = {"series_id": PET, "unit": "SUV", "threshold": 4.8, "how": "seed 9.6 SUV ± 50 %: 4.8 to 14.4 SUV",
         "voxels": 81, "volume_ml": 4.94, "mean": 7.1, "maximum": 9.6, "peak": 9.2, "total": 35.1,
         "max_point_mm": [1.0, 2.0, 3.0]}
ANSWERS: dict[str, Any] = {"sphere": [CT_LAYER, PET_LAYER], "rectangle": [CT_LAYER, PET_LAYER],
                           "ellipse": [AREA_CT], "polygon": [AREA_CT], "line": LINE, "grow": GROWN}
OTHERS_FINDING = {"id": 3, "label": "aorta", "tool": "line", "series": CT, "points": [[1, 2], [3, 4]],
                  "result": LINE, "by": "colleague", "consultant": True, "at": "2024-05-01T09:00:00+00:00"}
# An axial plane: right +x, down +y (patient mm), centre (0, 0, z).
def _plane(z: float = 0.0) -> dict[str, Any]:
    return {"center_mm": [0.0, 0.0, z], "right": [1.0, 0.0, 0.0], "down": [0.0, 1.0, 0.0],
            "normal": [0.0, 0.0, 1.0], "mm_per_pixel": 0.5}


def _vocabulary(tools: list[str] | None) -> dict[str, Any]:
    vocabulary = copy.deepcopy(VOCABULARY)
    if tools is not None:
        vocabulary["measure_tools"] = tools
    return vocabulary


def _ready(*, tools: list[str] | None = TOOLS, views: list[dict[str, Any]] | None = None,
           layout: str = "1x1") -> dict[str, Any]:
    return {"type": "ready", "study": {"uid": STUDY, "description": "PET/CT staging"}, "layout": layout,
            "limits": {"max_message_bytes": 8192, "messages_per_second": 120, "message_burst": 240},
            "vocabulary": _vocabulary(tools), "related": [], "studies": [STUDY],
            "views": views or [{"kind": "axial", "layers": [CT, PET]}], "series": SERIES}


def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 90, dtype=np.uint8)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


class ScriptedGateway:
    """Announces ``ready``, records what the page sends, answers like the gateway would."""

    def __init__(self, ready: dict[str, Any], *, refuse_measuring: bool = False) -> None:
        self.ready = ready
        self.refuse_measuring = refuse_measuring
        self.received: list[dict[str, Any]] = []
        self.sequences: dict[int, int] = {}
        self.overlays: dict[int, dict[str, Any]] = {}
        self.findings: list[dict[str, Any]] = []
        self.last_measurement: dict[str, Any] | None = None
        self.socket: Any = None

    def __call__(self, ws: Any) -> None:
        self.socket = ws
        ws.on_message(self.on_message)
        ws.send(json.dumps(self.ready))
        self.send_findings()

    def send(self, message: dict[str, Any]) -> None:
        self.socket.send(json.dumps(message))

    def send_findings(self) -> None:
        self.send({"type": "findings", "findings": self.findings})

    def on_message(self, message: str | bytes) -> None:
        data = json.loads(message)
        self.received.append(data)
        kind = data["type"]
        if kind == "resize":
            self.frame(data["view"])
        elif kind == "measure":
            if self.refuse_measuring:
                self.send({"type": "error", "code": "refused", "message": REFUSAL})
                return
            self.last_measurement = {"type": "measurement", "view": data["view"], "tool": data["tool"],
                                     "points": data["points"], "result": copy.deepcopy(ANSWERS[data["tool"]])}
            self.send(self.last_measurement)
        elif kind == "keep" and self.last_measurement:
            kept = self.last_measurement
            self.findings.append({"id": 7, "label": data["label"], "tool": kept["tool"], "series": CT,
                                  "points": kept["points"], "result": kept["result"], "by": "doctor",
                                  "consultant": False, "at": "2024-05-02T10:11:12+00:00"})
            self.send_findings()
        elif kind == "forget":
            self.findings = [f for f in self.findings if f["id"] != data["finding"]]
            self.send_findings()

    def frame(self, view: int, **overlay: Any) -> None:
        """A frame of ``view``; the overlay given is kept for the frames that follow."""
        self.overlays[view] = {**self.overlays.get(view, {"kind": "axial", "slice": [20, 40]}), **overlay}
        self.sequences[view] = self.sequences.get(view, 0) + 1
        self.socket.send(frame_pack(view=view, sequence=self.sequences[view], quality=1,
                                    encoding=Encoding.JPEG, width=64, height=64, image=_jpeg(),
                                    overlay=self.overlays[view]))

    def sent(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        return [m for m in self.received
                if m["type"] == kind and all(m.get(k) == v for k, v in fields.items())]


@pytest.fixture(scope="module")
def measure_page(served_demo):
    """The real viewer page, wide enough for the views and the measurement panel side by side."""
    with viewer_pages(served_demo) as open_page:
        yield open_page


def _shapes(page, view: int):
    return page.locator(f".view:nth-child({view + 1}) svg.shapes")


def _box(page, view: int) -> dict[str, float]:
    """The canvas's CSS box and its own pixel size."""
    return _canvas(page, view).evaluate("""canvas => { const r = canvas.getBoundingClientRect();
        return {left: r.left, top: r.top, width: r.width, height: r.height,
                pixels: canvas.width, rows: canvas.height}; }""")


def _at(box: dict[str, float], fx: float, fy: float) -> tuple[float, float]:
    """The page position a fraction of the way across the canvas."""
    return box["left"] + fx * box["width"], box["top"] + fy * box["height"]


def _in_canvas_pixels(box: dict[str, float], x: float, y: float) -> tuple[float, float]:
    return ((x - box["left"]) * box["pixels"] / box["width"], (y - box["top"]) * box["rows"] / box["height"])


def _drag(page, start: tuple[float, float], end: tuple[float, float], *, release: bool = True) -> None:
    page.mouse.move(*start)
    page.mouse.down()
    page.mouse.move(*end, steps=8)
    if release:
        page.mouse.up()


def _click(page, where: tuple[float, float]) -> None:
    page.mouse.move(*where)
    page.mouse.down()
    page.mouse.up()


def _options(page, select: str) -> list[str]:
    return page.locator(f"{select} option").evaluate_all("options => options.map((option) => option.value)")


def _keys(page) -> list[str]:
    return page.locator("#key-map .help-row").evaluate_all("rows => rows.map((row) => row.dataset.key)")


def _text(page, selector: str) -> str:
    return page.locator(selector).text_content() or ""


def _row(page, unit: str):
    return page.locator(f"#measurement tr.measure-layer[data-unit='{unit}']")


def _stat(row, key: str) -> str:
    return " ".join((row.locator(f"td[data-stat='{key}']").text_content() or "").split())


def _measured(page, gateway: ScriptedGateway, tool: str) -> None:
    _until(page, lambda: gateway.sent("measure", tool=tool), what=f"a {tool} measure")
    _until(page, lambda: page.locator(f"#measurement[data-tool='{tool}']").count() == 1,
           what=f"the {tool} answer on screen")


# --- the tool menu -----------------------------------------------------------------------------


def test_the_tool_menu_and_keys_follow_the_announced_tools(measure_page):
    gateway = ScriptedGateway(_ready(tools=["line", "sphere"]))
    page = measure_page(gateway)
    try:
        assert _options(page, "#measure-tool") == ["none", "line", "sphere"]
        assert page.locator("#measure-tool").is_visible() and page.locator("#sphere-radius").is_visible()
        assert page.locator("#sphere-radius").input_value() == "10"
        keys = _keys(page)
        assert {"l", "b", "Escape"} <= set(keys)
        assert not {"e", "q", "g", "Enter"} & set(keys), "keys of tools the server did not announce"
        _canvas(page, 0).focus()
        page.keyboard.press("b")
        assert page.locator("#measure-tool").input_value() == "sphere"
        page.keyboard.press("e")  # not announced: nothing changes
        assert page.locator("#measure-tool").input_value() == "sphere"
        page.keyboard.press("Escape")
        assert page.locator("#measure-tool").input_value() == "none"
    finally:
        page.close()

    gateway = ScriptedGateway(_ready(tools=None))
    page = measure_page(gateway)
    try:
        assert not page.locator("#measure-tool").is_visible(), "a tool menu without announced tools"
        # The side panel holds only what is not measuring: the fused view's layers.
        assert page.locator("#layers-section").is_visible()
        assert not {"l", "e", "q", "g", "b", "Escape", "Enter"} & set(_keys(page))
        box = _box(page, 0)
        _drag(page, _at(box, .3, .3), _at(box, .5, .5))
        _until(page, lambda: gateway.sent("input", op="window"), what="window/level by drag")
        assert not gateway.sent("measure")
    finally:
        page.close()


# --- drawing -----------------------------------------------------------------------------------


def test_an_ellipse_drawn_by_drag_sends_its_corners_in_canvas_pixels(measure_page):
    gateway = ScriptedGateway(_ready(layout="1x2", views=[{"kind": "axial", "layers": [CT]},
                                                          {"kind": "3d", "layers": [CT]}]))
    page = measure_page(gateway)
    try:
        # The canvas's own pixels need not be its CSS pixels (a size clamped to 2048, a resize
        # in flight): the points are the canvas's.
        _canvas(page, 0).evaluate("canvas => { canvas.width = Math.round(canvas.clientWidth * 0.6); }")
        page.locator("#measure-tool").select_option("ellipse")
        box = _box(page, 0)
        assert abs(box["pixels"] - box["width"]) > 20, box
        start, end = _at(box, .25, .3), _at(box, .6, .7)
        _drag(page, start, end, release=False)
        _until(page, lambda: gateway.sent("measure"), what="a measure while dragging")
        _until(page, lambda: page.locator("#measurement[data-tool='ellipse']").count() == 1,
               what="the live answer")
        page.mouse.up()
        _until(page, lambda: gateway.sent("measure") and all(
            abs(a - b) < 0.6 for a, b in zip(gateway.sent("measure")[-1]["points"][1],
                                              _in_canvas_pixels(box, *end), strict=True)),
            what="the measure of the released ellipse")
        last = gateway.sent("measure")[-1]
        assert last["tool"] == "ellipse" and last["view"] == 0
        assert set(last) == {"type", "view", "tool", "points"}
        expected = [_in_canvas_pixels(box, *start), _in_canvas_pixels(box, *end)]
        for got, want in zip(last["points"], expected, strict=True):
            assert abs(got[0] - want[0]) < 0.6 and abs(got[1] - want[1]) < 0.6, (last["points"], expected)
        assert not gateway.sent("input", op="window"), "the drag also moved the window"
        ellipse = _shapes(page, 0).locator(".shape.current ellipse")
        assert ellipse.count() == 1
        drawn = [float(ellipse.get_attribute(name) or "nan") for name in ("cx", "cy", "rx", "ry")]
        (x0, y0), (x1, y1) = expected
        centre_and_radii = [(x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2]
        assert np.allclose(drawn, centre_and_radii, atol=0.6), drawn
        assert _shapes(page, 0).locator(".handle").count() == 2

        # Dragging a handle measures the moved shape again.
        before = len(gateway.sent("measure"))
        moved = _at(box, .7, .8)
        _drag(page, end, moved)
        _until(page, lambda: len(gateway.sent("measure")) > before, what="a measure of the moved handle")
        moved_x = _in_canvas_pixels(box, *moved)[0]
        _until(page, lambda: abs(gateway.sent("measure")[-1]["points"][1][0] - moved_x) < 0.6,
               what="the moved corner")
        first = gateway.sent("measure")[-1]["points"][0]
        assert abs(first[0] - expected[0][0]) < 0.6, "the other corner moved"

        # A 3-D view has no plane to draw on: there a drag still moves the window.
        measures = len(gateway.sent("measure"))
        three_d = _box(page, 1)
        _drag(page, _at(three_d, .3, .3), _at(three_d, .6, .6))
        _until(page, lambda: gateway.sent("input", op="window", view=1), what="window/level on the 3-D view")
        assert len(gateway.sent("measure")) == measures
    finally:
        page.close()


def test_a_fused_view_shows_both_layers_in_their_units(measure_page):
    gateway = ScriptedGateway(_ready())
    page = measure_page(gateway)
    try:
        page.locator("#measure-tool").select_option("sphere")
        box = _box(page, 0)
        _click(page, _at(box, .5, .5))
        _measured(page, gateway, "sphere")
        sphere = gateway.sent("measure", tool="sphere")[-1]
        assert sphere["radius_mm"] == 10 and len(sphere["points"]) == 1

        ct, pet = _row(page, "HU"), _row(page, "SUV")
        assert ct.locator("th").text_content() == "CT (HU)"
        assert pet.locator("th").text_content() == "PT (SUV)"
        assert [_stat(ct, key) for key in ("mean", "sd", "minimum", "maximum", "median", "volume_ml")] == [
            "mean 31.2", "SD 12", "min -80", "max 140", "median 30", "volume 10.5 ml"]
        assert [_stat(pet, key) for key in ("maximum", "peak", "mean", "volume_ml", "total")] == [
            "SUVmax 9.6", "SUVpeak 9.4", "mean 5.2", "volume 10.5 ml", "TLG 54.6"]
        assert ct.locator("td[data-stat='peak'], td[data-stat='total']").count() == 0, "SUVpeak, TLG on a CT"
        rows = page.locator("#measurement tr.measure-layer")
        assert [rows.nth(i).get_attribute("data-series") for i in range(rows.count())] == [CT, PET]

        page.locator("#sphere-radius").fill("15")
        page.locator("#sphere-radius").press("Enter")
        _until(page, lambda: gateway.sent("measure", tool="sphere")[-1].get("radius_mm") == 15,
               what="the sphere measured again with its new radius")
    finally:
        page.close()


def test_a_line_shows_its_length_and_a_profile_chart(measure_page):
    gateway = ScriptedGateway(_ready(views=[{"kind": "axial", "layers": [CT]}]))
    page = measure_page(gateway)
    try:
        _canvas(page, 0).focus()
        page.keyboard.press("l")
        assert page.locator("#measure-tool").input_value() == "line"
        box = _box(page, 0)
        _drag(page, _at(box, .2, .5), _at(box, .7, .5))
        _measured(page, gateway, "line")
        assert " ".join(_text(page, "#measurement .line-length").split()) == "length 42.3 mm"
        assert _shapes(page, 0).locator(".shape.current line.outline").count() == 1

        figure = page.locator("#measurement figure.profile")
        assert figure.count() == 1 and figure.get_attribute("data-unit") == "HU"
        assert "CT (HU)" in (figure.locator("figcaption").text_content() or "")
        runs = figure.locator("polyline.profile-line")
        assert runs.count() == 2, "the value outside the series breaks the curve"
        points = [[tuple(map(float, pair.split(",")))
                   for pair in (runs.nth(i).get_attribute("points") or "").split()] for i in range(2)]
        assert [len(run) for run in points] == [2, 2]
        heights = {value: y for value, (_x, y) in zip([10, 20, 40, 30], points[0] + points[1], strict=True)}
        assert heights[40] < heights[30] < heights[20] < heights[10], heights
        xs = [x for x, _y in points[0] + points[1]]
        assert xs == sorted(xs) and xs[0] < xs[-1]

        chart = figure.locator("svg.profile-chart").bounding_box()
        assert chart is not None
        page.mouse.move(chart["x"] + chart["width"] * 0.74, chart["y"] + chart["height"] / 2)  # sample 3
        readout = "#measurement .profile-readout"
        _until(page, lambda: "40 HU" in _text(page, readout), what="the value hovered")
        assert _text(page, readout).startswith("31.7 mm")

        figure.locator("details.profile-table summary").click()
        rows = figure.locator("table.profile-values tbody tr")
        _until(page, lambda: rows.count() == 5, what="the table of values")
        cells = figure.locator("table.profile-values tbody tr").evaluate_all(
            "rows => rows.map((row) => Array.from(row.cells, (cell) => cell.textContent))")
        assert cells == [["0", "10"], ["10.6", "20"], ["21.1", "outside"], ["31.7", "40"], ["42.3", "30"]]
    finally:
        page.close()


def test_escape_cancels_a_polygon_in_progress_without_sending(measure_page):
    gateway = ScriptedGateway(_ready(views=[{"kind": "axial", "layers": [CT]}]))
    page = measure_page(gateway)
    try:
        page.locator("#measure-tool").select_option("polygon")
        box = _box(page, 0)
        corners = [_at(box, .3, .3), _at(box, .6, .3), _at(box, .5, .6)]
        for corner in corners:
            _click(page, corner)
        polyline = _shapes(page, 0).locator(".shape.current polyline")
        _until(page, lambda: polyline.count() == 1, what="the open polygon")
        page.mouse.move(*_at(box, .35, .55))
        _until(page, lambda: len((polyline.get_attribute("points") or "").split()) == 4, what="a rubber band")
        page.keyboard.press("Escape")
        _until(page, lambda: _shapes(page, 0).locator(".shape").count() == 0, what="the polygon gone")
        page.wait_for_timeout(300)
        assert not gateway.sent("measure"), "a polygon given up was measured"
        assert page.locator("#measure-tool").input_value() == "polygon", "the first Esc ends only the shape"

        for corner in corners:
            _click(page, corner)
        page.keyboard.press("Enter")
        _until(page, lambda: gateway.sent("measure"), what="the closed polygon's measure")
        sent = gateway.sent("measure")
        assert len(sent) == 1 and sent[0]["tool"] == "polygon" and len(sent[0]["points"]) == 3
        assert _shapes(page, 0).locator(".shape.current polygon").count() == 1
        page.keyboard.press("Escape")
        assert page.locator("#measure-tool").input_value() == "none", "Esc with nothing drawn: no tool"
    finally:
        page.close()


# --- keep, findings, refusal -------------------------------------------------------------------


def test_keep_sends_the_label_and_the_findings_list_deletes_and_downloads(measure_page, served_demo):
    gateway = ScriptedGateway(_ready(layout="1x2", views=[{"kind": "axial", "layers": [CT, PET]},
                                                          {"kind": "axial", "layers": [CT]}]))
    gateway.findings = [copy.deepcopy(OTHERS_FINDING)]
    page = measure_page(gateway)
    try:
        study = served_demo.study_uid
        assert page.locator("#findings-xlsx").get_attribute("href") == f"/viewer/{study}/findings.xlsx"
        assert page.locator("#findings-csv").get_attribute("href") == f"/viewer/{study}/findings.csv"
        assert page.locator("#findings .finding").count() == 1
        assert "length 42.3 mm" in _text(page, "#findings .finding[data-finding='3'] .finding-numbers")
        assert "by colleague (consultant)" in _text(page, "#findings .finding[data-finding='3'] .finding-by")

        assert page.locator("#keep").is_disabled(), "nothing measured yet"
        page.locator("#measure-tool").select_option("rectangle")
        box = _box(page, 0)
        _drag(page, _at(box, .3, .3), _at(box, .5, .6))
        _measured(page, gateway, "rectangle")
        page.locator("#keep-label").fill("  lesion\t1 ")
        _until(page, lambda: page.locator("#keep").is_enabled(), what="Keep offered")
        page.locator("#keep").click()
        _until(page, lambda: gateway.sent("keep"), what="the keep message")
        assert gateway.sent("keep") == [{"type": "keep", "label": "lesion 1"}]

        item = page.locator("#findings .finding[data-finding='7']")
        _until(page, lambda: item.count() == 1, what="the kept finding listed")
        assert _text(page, "#findings .finding[data-finding='7'] .finding-label") == "lesion 1"
        assert _text(page, "#findings .finding[data-finding='7'] .finding-tool") == "rectangle"
        numbers = _text(page, "#findings .finding[data-finding='7'] .finding-numbers")
        assert "SUVmax 9.6" in numbers and "mean 5.2" in numbers and "volume 10.5 ml" in numbers, numbers
        assert "by doctor" in _text(page, "#findings .finding[data-finding='7'] .finding-by")
        # Drawn where its series is shown in the plane it was drawn on: both views show the CT.
        assert _shapes(page, 0).locator(".shape.kept[data-finding='7'] rect.outline").count() == 1
        assert _shapes(page, 0).locator(".shape.kept text").text_content() == "lesion 1"
        assert page.locator("#keep-label").input_value() == ""

        item.locator("button.finding-delete").click()
        _until(page, lambda: gateway.sent("forget"), what="the forget message")
        assert gateway.sent("forget") == [{"type": "forget", "finding": 7}]
        _until(page, lambda: item.count() == 0, what="the finding gone from the list")
        assert _shapes(page, 0).locator(".shape.kept").count() == 0
        assert page.locator("#findings .finding").count() == 1
    finally:
        page.close()


def test_a_kept_finding_follows_its_plane_onto_other_views(measure_page):
    gateway = ScriptedGateway(_ready(layout="1x2", views=[{"kind": "axial", "layers": [CT]},
                                                          {"kind": "axial", "layers": [CT]}]))
    page = measure_page(gateway)
    try:
        gateway.frame(0, plane=_plane(5.0), mm_per_pixel=0.5, position=5.0)
        gateway.frame(1, plane=_plane(5.0), mm_per_pixel=0.25, position=5.0)  # zoomed in twice as far
        for view in (0, 1):
            _until(page, lambda view=view: _canvas(page, view).get_attribute("data-sequence")
                   == str(gateway.sequences[view]), what=f"the plane of view {view}")
        left, right = _box(page, 0), _box(page, 1)
        page.locator("#measure-tool").select_option("line")
        _drag(page, _at(left, .55, .5), _at(left, .7, .6))
        _measured(page, gateway, "line")
        page.locator("#keep-label").fill("node")
        page.locator("#keep").click()
        kept = _shapes(page, 1).locator(".shape.kept line.outline")
        _until(page, lambda: kept.count() == 1, what="the kept line on the other view")
        drawn = [float(kept.get_attribute(name) or "nan") for name in ("x1", "y1", "x2", "y2")]
        # mm = (p - size / 2) * 0.5 on the left; the right shows 0.25 mm a pixel about the same centre.
        (x0, y0), (x1, y1) = gateway.sent("measure", tool="line")[-1]["points"]
        mm = [(x - left["pixels"] / 2) * 0.5 if axis == 0 else (x - left["rows"] / 2) * 0.5
              for axis, x in ((0, x0), (1, y0), (0, x1), (1, y1))]
        expected = [value / 0.25 + (right["pixels"] if axis % 2 == 0 else right["rows"]) / 2
                    for axis, value in enumerate(mm)]
        assert np.allclose(drawn, expected, atol=0.15), (drawn, expected)
        assert _shapes(page, 0).locator(".shape.kept line.outline").count() == 1

        gateway.frame(1, plane=_plane(8.0), position=8.0)  # another slice: not there
        _until(page, lambda: kept.count() == 0, what="the line gone from another slice")
        gateway.frame(1, plane=_plane(5.0), position=5.0)
        _until(page, lambda: kept.count() == 1, what="the line back on its slice")
    finally:
        page.close()


def test_a_sphere_kept_in_an_earlier_session_is_drawn_with_its_radius_on_every_slice_it_cuts(measure_page):
    gateway = ScriptedGateway(_ready(views=[{"kind": "axial", "layers": [CT]}]))
    gateway.findings = [{**OTHERS_FINDING, "id": 4, "label": "liver VOI", "tool": "sphere",
                         "points": [[100, 100]], "plane": {**_plane(5.0), "width": 200, "height": 200},
                         "result": [CT_LAYER], "arguments": {"radius_mm": 10}}]
    page = measure_page(gateway)
    try:
        circle = _shapes(page, 0).locator(".shape.kept circle.outline")
        box = _box(page, 0)
        for z, radius_mm in ((5.0, 10.0), (11.0, 8.0)):  # through the centre; 6 mm off: sqrt(10² - 6²)
            gateway.frame(0, plane=_plane(z), mm_per_pixel=0.5, position=z)
            _until(page, lambda radius_mm=radius_mm: circle.count() == 1
                   and abs(float(circle.get_attribute("r") or 0) - radius_mm / 0.5) < 0.2,
                   what=f"the sphere's cut at z={z}")
            centre = [float(circle.get_attribute(name) or "nan") for name in ("cx", "cy")]
            assert np.allclose(centre, [box["pixels"] / 2, box["rows"] / 2], atol=0.6), centre
        gateway.frame(0, plane=_plane(16.0), position=16.0)  # beyond the radius
        _until(page, lambda: _shapes(page, 0).locator(".shape.kept").count() == 0, what="no cut 11 mm away")
    finally:
        page.close()


def test_a_refusal_disables_the_tools_and_shows_in_the_status_line(measure_page):
    gateway = ScriptedGateway(_ready(), refuse_measuring=True)
    gateway.findings = [copy.deepcopy(OTHERS_FINDING)]
    page = measure_page(gateway)
    try:
        label = _text(page, "#study-label")
        assert page.locator("#findings .finding-delete").count() == 1
        page.locator("#measure-tool").select_option("line")
        box = _box(page, 0)
        _drag(page, _at(box, .3, .3), _at(box, .6, .6))
        _until(page, lambda: "refused" in _text(page, "#error"), what="the refusal on the status line")
        assert REFUSAL in _text(page, "#error")
        assert _text(page, "#study-label") == label == "PET/CT staging · 2 series"
        _until(page, lambda: page.locator("#measure-tool").is_disabled(), what="the tool menu disabled")
        assert page.locator("#measure-tool").input_value() == "none"
        assert page.locator("#measure-refused").is_visible()
        assert not page.locator("#keep-form").is_visible()
        assert page.locator("#findings .finding").count() == 1, "the findings stay listed"
        assert page.locator("#findings .finding-delete").count() == 0
        assert not {"l", "e", "q", "g", "b", "Escape", "Enter"} & set(_keys(page))

        measures = len(gateway.sent("measure"))
        _canvas(page, 0).focus()
        page.keyboard.press("l")
        _drag(page, _at(box, .3, .3), _at(box, .6, .6))
        _until(page, lambda: gateway.sent("input", op="window"), what="window/level by drag again")
        assert len(gateway.sent("measure")) == measures
        assert _shapes(page, 0).locator(".shape").count() == 0
    finally:
        page.close()


def test_a_reporting_reader_stores_the_findings_in_the_study_and_others_are_not_offered_it(measure_page):
    gateway = ScriptedGateway({**_ready(), "findings_store": True})
    gateway.findings = [dict(OTHERS_FINDING)]
    page = measure_page(gateway)
    button = page.locator("#findings-store")
    _until(page, lambda: button.is_visible() and button.is_enabled(), what="the store button")
    button.click()
    _until(page, lambda: gateway.sent("findings_store"), what="findings_store sent")
    assert button.is_disabled()  # one store at a time
    gateway.send({"type": "findings_stored", "sr_series": "2.25.90", "seg_series": "2.25.91",
                  "findings": 1, "segmentations": 0})
    status = page.locator("#findings-store-status")
    _until(page, lambda: "stored in the study" in status.text_content(), what="the stored status")
    assert button.is_enabled()
    button.click()
    _until(page, lambda: len(gateway.sent("findings_store")) == 2, what="a second store")
    gateway.send({"type": "error", "code": "store_failed", "of": "findings_store",
                  "message": "a segmentation of multi-frame images is not written yet"})
    _until(page, lambda: "not stored" in status.text_content() and "multi-frame" in status.text_content(),
           what="the failure shown")
    page.close()

    nurse_like = ScriptedGateway({**_ready(tools=[]), "findings_store": False})
    nurse_like.findings = [dict(OTHERS_FINDING)]
    page = measure_page(nurse_like)
    _until(page, lambda: page.locator("#findings li.finding").count() == 1, what="the finding listed")
    assert page.locator("#findings-store").is_hidden()
    page.close()


SUV_METHODS = [{"name": "bw", "label": "SUVbw"}, {"name": "lbm_james", "label": "SUVlbm (James)"}]


def test_the_suv_menu_chooses_a_method_and_enters_a_missing_weight(measure_page):
    suv = {"method": "bw", "label": "SUVbw", "methods": SUV_METHODS,
           "series": {PET: {"factor": None, "missing": ["no patient weight"], "entered": {}}}}
    gateway = ScriptedGateway({**_ready(), "suv": suv})
    page = measure_page(gateway)
    _until(page, lambda: page.locator("#suv").is_visible(), what="the SUV menu")
    page.locator("#suv summary").click()
    assert "no patient weight" in page.locator("#suv-series").text_content()
    page.fill("#suv-weight", "72.5")
    page.locator("#suv-inputs button").click()
    _until(page, lambda: gateway.sent("suv_inputs"), what="suv_inputs sent")
    assert gateway.sent("suv_inputs")[-1] == {"type": "suv_inputs", "series": PET, "weight_kg": 72.5}
    gateway.send({"type": "suv", **suv, "series": {PET: {"factor": 0.0003, "missing": [],
                                                        "entered": {"weight_kg": 72.5}}}})
    _until(page, lambda: page.locator("#suv-inputs").is_hidden(), what="the form gone once SUV is known")
    page.select_option("#suv-method", "lbm_james")
    _until(page, lambda: gateway.sent("suv", method="lbm_james"), what="the method sent")
    gateway.send({"type": "error", "code": "refused", "of": "suv", "message": "SUVlbm cannot be computed"})
    _until(page, lambda: page.locator("#suv-method").input_value() == "bw", what="the menu back")
    page.close()


def test_the_grow_tool_sends_one_seed_and_shows_the_grown_voi(measure_page):
    gateway = ScriptedGateway(_ready(tools=[*TOOLS, "grow"]))
    page = measure_page(gateway)
    try:
        assert "grow" in _options(page, "#measure-tool") and "u" in _keys(page)
        _canvas(page, 0).focus()
        page.keyboard.press("u")
        assert page.locator("#measure-tool").input_value() == "grow"
        box = _box(page, 0)
        seed = _at(box, .4, .45)
        _click(page, seed)
        _measured(page, gateway, "grow")
        sent = gateway.sent("measure", tool="grow")[-1]
        assert set(sent) == {"type", "view", "tool", "points", "radius_mm", "mode", "value"}
        assert sent["view"] == 0
        assert (sent["radius_mm"], sent["mode"], sent["value"]) == (30, "range", 0.5), "not the defaults"
        ((x, y),) = sent["points"]
        want = _in_canvas_pixels(box, *seed)
        assert abs(x - want[0]) < 0.6 and abs(y - want[1]) < 0.6, (sent["points"], want)
        assert not gateway.sent("input", op="focus"), "the seed's click also moved the crosshair"
        assert _shapes(page, 0).locator(".shape.current.grow").count() == 1

        row = _row(page, "SUV")
        assert row.locator("th").text_content() == "PT (SUV)"
        assert [_stat(row, key) for key in ("maximum", "peak", "mean", "volume_ml", "total")] == [
            "SUVmax 9.6", "SUVpeak 9.2", "mean 7.1", "volume 4.94 ml", "TLG 35.1"]
        assert "± 50 %" in _text(page, "#measurement .measure-how")

        page.keyboard.press("Escape")
        assert page.locator("#measure-tool").input_value() == "none"
        page.locator("#measure-tool").select_option("grow")
        before = len(gateway.sent("measure", tool="grow"))
        _click(page, _at(_box(page, 0), .6, .3))
        _until(page, lambda: len(gateway.sent("measure", tool="grow")) > before,
               what="a seed from the menu's tool")
        assert len(gateway.sent("measure", tool="grow")[-1]["points"]) == 1
        page.locator("#keep-label").fill("grown node")
        _until(page, lambda: page.locator("#keep").is_enabled(), what="Keep offered")
        page.locator("#keep").click()
        _until(page, lambda: gateway.sent("keep", label="grown node"), what="keep sent")
        _until(page, lambda: page.locator("#findings li.finding").count() == 1, what="the finding listed")
        assert "max 9.6" in _text(page, "#findings li.finding .finding-numbers")
    finally:
        page.close()


def test_the_grow_controls_show_with_the_tool_and_send_their_fields(measure_page):
    gateway = ScriptedGateway(_ready(tools=[*TOOLS, "grow"], views=[{"kind": "axial", "layers": [PET]}]))
    page = measure_page(gateway)
    try:
        controls = page.locator("#grow-controls")
        assert not controls.is_visible(), "grow controls without the grow tool"
        page.locator("#measure-tool").select_option("grow")
        assert controls.is_visible() and page.locator("#sphere-radius").is_visible()
        assert page.locator("#grow-box").input_value() == "30"
        assert page.locator("#grow-mode option").evaluate_all("os => os.map((o) => o.value)") == [
            "range", "confidence"]
        assert page.locator("#grow-value").input_value() == "50", "the range in per cent of the seed's value"

        page.locator("#grow-box").fill("45")
        page.locator("#grow-box").press("Enter")
        page.locator("#grow-value").fill("20")
        page.locator("#grow-value").press("Enter")
        _click(page, _at(_box(page, 0), .5, .5))
        _measured(page, gateway, "grow")
        sent = gateway.sent("measure", tool="grow")[-1]
        assert (sent["radius_mm"], sent["mode"], sent["value"]) == (45, "range", 0.2), sent

        # A control changed with the seed on screen grows that seed again.
        page.locator("#grow-mode").select_option("confidence")
        assert page.locator("#grow-value").input_value() == "2.5"
        _until(page, lambda: gateway.sent("measure", tool="grow")[-1].get("mode") == "confidence",
               what="the seed grown again by confidence")
        sent = gateway.sent("measure", tool="grow")[-1]
        seed = gateway.sent("measure")[-2]["points"]
        assert (sent["radius_mm"], sent["value"], sent["points"]) == (45, 2.5, seed)
        page.locator("#grow-value").fill("9")  # over the protocol's bound: held at 5
        page.locator("#grow-value").press("Enter")
        _until(page, lambda: gateway.sent("measure", tool="grow")[-1]["value"] == 5, what="the value bounded")
        assert page.locator("#grow-value").input_value() == "5"
        page.locator("#grow-mode").select_option("range")
        assert page.locator("#grow-value").input_value() == "20", "each mode keeps its own value"

        page.locator("#measure-tool").select_option("sphere")
        assert not controls.is_visible()
    finally:
        page.close()


def test_a_finding_is_renamed_in_place(measure_page):
    gateway = ScriptedGateway(_ready())
    gateway.findings = [dict(OTHERS_FINDING)]
    page = measure_page(gateway)
    _until(page, lambda: page.locator("#findings li.finding").count() == 1, what="the finding listed")
    page.locator(".finding-rename").click()
    field = page.locator(".finding-label-field")
    assert field.input_value() == "aorta"
    field.fill("  aortic   arch ")
    field.press("Enter")
    _until(page, lambda: gateway.sent("relabel"), what="relabel sent")
    assert gateway.sent("relabel")[-1] == {"type": "relabel", "finding": 3, "label": "aortic   arch"}
    page.close()
