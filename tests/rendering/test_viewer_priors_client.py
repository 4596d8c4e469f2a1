"""The viewer's priors, dynamic series, panel names and probe units, against a scripted server.

As in test_viewer_client.py, Playwright's websocket routing plays the gateway:
it announces ``ready`` (with the patient's other studies in ``related``),
answers ``open`` and ``layout`` the way the gateway does (a new ``ready``, or a
``refused`` error), answers each view's first ``resize``, every ``series`` and
every ``time`` input with a frame, and every ``probe`` with a scripted value,
so each test sees exactly what the client sends and shows.
"""

from __future__ import annotations

import copy
import io
import json
import re
import time
from typing import Any

import numpy as np
import pytest
from PIL import Image

from rendering.protocol import Encoding, frame_pack
from tests.rendering.scripted import canvas as _canvas
from tests.rendering.scripted import until as _until
from tests.rendering.test_viewer_client import VOCABULARY, viewer_page  # noqa: F401

pytestmark = pytest.mark.browser

STUDY = "2.25.1"
PRIOR = "2.25.500"
OLDER = "2.25.501"
CT = "2.25.20"
PET = "2.25.21"
PRIOR_CT = "2.25.520"
DYNAMIC = "2.25.30"
WHOLE_BODY = "2.25.40"
ECHO = "2.25.41"
TIME_POINTS = 4
REFUSAL = "no such study of this patient, or not permitted"
COMPARE_REFUSAL = "the compare layout needs another study of the patient: open one first"

RELATED = [
    {"uid": PRIOR, "date": "2023-04-02", "description": "CT chest", "modalities": ["CT"]},
    {"uid": OLDER, "date": "2021-01-10", "description": "", "modalities": ["CT", "PT"]},
]


def _series(uid: str, modality: str, description: str, number: int, *, study: str = STUDY,
            **fields: Any) -> dict[str, Any]:
    series = {"uid": uid, "modality": modality, "description": description, "number": number,
              "images": 40, "kind": "volume", "plane": "axial", "mpr": True, "colour": False,
              "frame_time_ms": None, "units": "", "panels": [], "time_points": 1, "study": study,
              "available": True}
    series.update(fields)
    return series


SERIES = [_series(CT, "CT", "Thorax", 1), _series(PET, "PT", "PET WB", 2, units="BQML")]
PRIOR_SERIES = [_series(PRIOR_CT, "CT", "Thorax 2023", 1, study=PRIOR)]


def _ready(*, layout: str = "1x1", views: list[dict[str, Any]] | None = None,
           series: list[dict[str, Any]] | None = None, studies: list[str] | None = None,
           related: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"type": "ready", "study": {"uid": STUDY, "description": "PET/CT staging"}, "layout": layout,
            "limits": {"max_message_bytes": 8192, "messages_per_second": 120, "message_burst": 240},
            "vocabulary": copy.deepcopy(VOCABULARY), "related": RELATED if related is None else related,
            "studies": studies or [STUDY], "views": views or [{"kind": "axial", "layers": [CT]}],
            "series": SERIES if series is None else series}


def _compare_ready(opened: str) -> dict[str, Any]:
    """What the gateway answers an open with: both studies, the compare layout."""
    return _ready(layout="compare", studies=[STUDY, opened], series=[*SERIES, *PRIOR_SERIES],
                  views=[{"kind": "axial", "layers": [CT]}, {"kind": "axial", "layers": [PRIOR_CT]}])


def _jpeg(colour: tuple[int, int, int] = (90, 90, 90)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), colour, dtype=np.uint8)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


class ScriptedGateway:
    """Announces ``ready``, records what the page sends, answers like the gateway would."""

    def __init__(self, ready: dict[str, Any], *, open_answer: str = "ready") -> None:
        """``open_answer``: ``ready`` (the compare layout), ``refused``, or ``silence``."""
        self.ready = ready
        self.open_answer = open_answer
        self.received: list[dict[str, Any]] = []
        self.sequences: dict[int, int] = {}
        self.framed: set[int] = set()
        self.probe_answer: dict[str, Any] = {"value": 40.0, "unit": "HU"}
        self.socket: Any = None

    def __call__(self, ws: Any) -> None:
        self.socket = ws
        ws.on_message(self.on_message)
        self.announce(self.ready)

    def announce(self, ready: dict[str, Any]) -> None:
        self.ready = ready
        self.framed.clear()
        self.socket.send(json.dumps(ready))

    def refuse(self, message: str) -> None:
        self.socket.send(json.dumps({"type": "error", "code": "refused", "message": message}))

    def on_message(self, message: str | bytes) -> None:
        data = json.loads(message)
        self.received.append(data)
        kind = data["type"]
        if kind == "resize" and data["view"] not in self.framed:
            self.framed.add(data["view"])
            self.frame(data["view"])
        elif kind == "open":
            if self.open_answer == "ready":
                self.announce(_compare_ready(data["study"]))
            elif self.open_answer == "refused":
                self.refuse(REFUSAL)
        elif kind == "layout":
            self.refuse(COMPARE_REFUSAL)
        elif kind == "set" and data["name"] == "series":
            self.frame(data["view"], kind="native")
        elif kind == "input" and data["op"] == "time":
            self.frame(data["view"], time=[data["index"] + 1, TIME_POINTS])
        elif kind == "probe":
            self.socket.send(json.dumps({"type": "probe", "view": data["view"], "x": data["x"],
                                         "y": data["y"], "point": [-64.45, -17.58, -210.0],
                                         **self.probe_answer}))

    def frame(self, view: int, kind: str = "axial", **overlay: Any) -> None:
        self.sequences[view] = self.sequences.get(view, 0) + 1
        self.socket.send(frame_pack(view=view, sequence=self.sequences[view], quality=1,
                                    encoding=Encoding.JPEG, width=64, height=64, image=_jpeg(),
                                    overlay={"kind": kind, "slice": [20, 40], **overlay}))

    def sent(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        return [m for m in self.received
                if m["type"] == kind and all(m.get(k) == v for k, v in fields.items())]


def _framed(page, view: int) -> bool:
    return _canvas(page, view).get_attribute("data-sequence") is not None


def _open(viewer_page, gateway: ScriptedGateway):  # noqa: F811
    page = viewer_page(gateway)
    for view in range(len(gateway.ready["views"])):
        _until(page, lambda view=view: _framed(page, view), what=f"the first frame of view {view}")
    return page


def _text(page, selector: str) -> str:
    return page.locator(selector).text_content() or ""


def _facts(page, view: int = 0) -> str:
    return _text(page, f".view:nth-child({view + 1}) .overlay .facts")


def _sel(uid: str) -> str:
    return f"#series .related-item[data-study='{uid}']"


def _related(page, uid: str):
    return page.locator(_sel(uid))


# --- priors ---------------------------------------------------------------------------------------


def test_the_other_studies_are_listed_and_open_beside_sends_open(viewer_page):  # noqa: F811
    gateway = ScriptedGateway(_ready(), open_answer="silence")
    page = _open(viewer_page, gateway)
    try:
        assert _text(page, "#series .related-title") == "Other studies of this patient"
        items = page.locator("#series .related-item")
        assert items.count() == 2
        assert [items.nth(i).get_attribute("data-study") for i in range(2)] == [PRIOR, OLDER]
        prior, older = _related(page, PRIOR), _related(page, OLDER)
        assert _text(page, f"{_sel(PRIOR)} .related-date") == "2023-04-02"
        assert _text(page, f"{_sel(PRIOR)} .related-description") == "CT chest"
        assert _text(page, f"{_sel(PRIOR)} .related-modalities") == "CT"
        assert _text(page, f"{_sel(OLDER)} .related-description") == "(no description)"
        assert _text(page, f"{_sel(OLDER)} .related-modalities") == "CT, PT"
        assert prior.get_by_role("button").text_content() == "Open beside"
        assert older.get_by_role("button").is_enabled()
        assert page.locator("#series .study-group").count() == 0, "one study is not grouped"

        prior.get_by_role("button", name="Open beside").click()
        _until(page, lambda: gateway.sent("open"), what="the open message")
        prior.get_by_role("button").click(force=True)  # disabled while asked: nothing more goes out
        page.wait_for_timeout(300)
        assert gateway.sent("open") == [{"type": "open", "study": PRIOR}]
        assert prior.get_by_role("button").is_disabled()
    finally:
        page.close()


def test_an_opened_study_groups_the_strip_by_study_and_shows_as_open(viewer_page):  # noqa: F811
    gateway = ScriptedGateway(_ready())
    page = _open(viewer_page, gateway)
    try:
        assert _text(page, "#study-label") == "PET/CT staging · 2 series"
        _related(page, PRIOR).get_by_role("button", name="Open beside").click()
        _until(page, lambda: page.locator("#series .study-group").count() == 2, what="the grouped strip")
        _until(page, lambda: _framed(page, 1), what="the prior's view")
        groups = page.locator("#series .study-group")
        assert [groups.nth(i).get_attribute("data-study") for i in range(2)] == [STUDY, PRIOR]
        assert _text(page, "#series .study-group:nth-child(1) .study-when") == "This study"
        assert _text(page, "#series .study-group:nth-child(2) .study-when") == "2023-04-02"
        members = [groups.nth(i).locator(".series-item").evaluate_all(
            "items => items.map((item) => item.dataset.series)") for i in range(2)]
        assert members == [[CT, PET], [PRIOR_CT]]
        assert page.locator("#series .series-item").count() == 3

        prior_button = _related(page, PRIOR).get_by_role("button")
        assert prior_button.is_disabled() and prior_button.text_content() == "Opened"
        older_button = _related(page, OLDER).get_by_role("button")
        assert older_button.is_enabled() and older_button.text_content() == "Open beside"
        assert page.locator("#layout").input_value() == "compare"
        assert _text(page, "#study-label") == "PET/CT staging · 2 series · beside 2023-04-02"
        _until(page, lambda: len(gateway.sent("thumbnails")) == 2, what="thumbnails of the new series")

        _canvas(page, 1).focus()
        groups.nth(1).locator(".series-item").click()
        _until(page, lambda: gateway.sent("set", name="series"), what="set series")
        assert gateway.sent("set", name="series") == [
            {"type": "set", "view": 1, "name": "series", "value": PRIOR_CT}]
    finally:
        page.close()


def test_a_refused_open_shows_in_the_status_line_and_keeps_the_study_label(viewer_page):  # noqa: F811
    gateway = ScriptedGateway(_ready(), open_answer="refused")
    page = _open(viewer_page, gateway)
    try:
        label = _text(page, "#study-label")
        assert label == "PET/CT staging · 2 series"
        _related(page, OLDER).get_by_role("button", name="Open beside").click()
        _until(page, lambda: REFUSAL in _text(page, "#error"), what="the refusal")
        assert _text(page, "#error") == f"refused: {REFUSAL}"
        assert _text(page, "#study-label") == label
        button = _related(page, OLDER).get_by_role("button")
        _until(page, button.is_enabled, what="the button offered again")
        assert button.text_content() == "Open beside"
        assert page.locator("#series .study-group").count() == 0

        gateway.frame(0)  # a frame says rendering works; it does not answer the refusal
        _until(page, lambda: _canvas(page, 0).get_attribute("data-sequence") == "2", what="a frame")
        assert _text(page, "#error") == f"refused: {REFUSAL}"
    finally:
        page.close()


def test_compare_is_named_and_choosing_it_without_a_prior_shows_the_refusal(viewer_page):  # noqa: F811
    gateway = ScriptedGateway(_ready())
    page = _open(viewer_page, gateway)
    try:
        names = page.locator("#layout option").evaluate_all(
            "options => Object.fromEntries(options.map((option) => [option.value, option.textContent]))")
        assert names["compare"] == "Compare with prior"
        page.locator("#layout").select_option("compare")
        _until(page, lambda: COMPARE_REFUSAL in _text(page, "#error"), what="the refusal")
        assert gateway.sent("layout") == [{"type": "layout", "layout": "compare"}]
        assert _text(page, "#study-label") == "PET/CT staging · 2 series"
        assert page.locator("#layout").input_value() == "1x1", "the menu shows a layout not on screen"
    finally:
        page.close()


# --- dynamic series, panels -------------------------------------------------------------------------


def _dynamic_ready() -> dict[str, Any]:
    series = [_series(DYNAMIC, "PT", "Dynamic", 1, time_points=TIME_POINTS, kind="dynamic"),
              _series(CT, "CT", "Thorax", 2)]
    return _ready(series=series, views=[{"kind": "axial", "layers": [DYNAMIC]}], related=[])


def _time_indices(gateway: ScriptedGateway) -> list[int]:
    return [m["index"] for m in gateway.sent("input", op="time")]


def test_a_dynamic_series_steps_its_time_points_with_the_slider_play_and_keys(viewer_page):  # noqa: F811
    gateway = ScriptedGateway(_dynamic_ready())
    page = _open(viewer_page, gateway)
    slider = page.locator("#time-slider")
    try:
        assert page.locator("#time-control").is_visible()
        assert slider.get_attribute("min") == "1" and slider.get_attribute("max") == str(TIME_POINTS)
        assert page.locator("#cine-fps").input_value() == "2", "a dynamic series plays 2 time points/s"
        assert page.locator("#series .related").count() == 0, "an empty related list is shown"

        slider.fill("3")
        _until(page, lambda: gateway.sent("input", op="time"), what="a time input")
        assert gateway.sent("input", op="time") == [{"type": "input", "view": 0, "op": "time", "index": 2}]
        _until(page, lambda: f"time 3 / {TIME_POINTS}" in _facts(page), what="the overlay's time")
        assert _text(page, "#time-value") == f"3 / {TIME_POINTS}"

        page.locator("#cine-fps").fill("10")
        page.locator("#cine-fps").press("Enter")
        page.click("#cine-play")
        _until(page, lambda: len(_time_indices(gateway)) >= 6, what="five played time points")
        page.click("#cine-play")
        played = _time_indices(gateway)[1:6]
        assert played == [3, 0, 1, 2, 3], played
        assert not gateway.sent("input", op="frame") and not gateway.sent("input", op="scroll")
        stopped_at = len(_time_indices(gateway))
        page.wait_for_timeout(400)
        assert len(_time_indices(gateway)) <= stopped_at + 1, "pause did not stop the time points"
        _until(page, lambda: f"time {_time_indices(gateway)[-1] + 1} / {TIME_POINTS}" in _facts(page),
               what="the overlay following the played time points")

        gateway.frame(0, time=[2, TIME_POINTS])
        _until(page, lambda: slider.input_value() == "2", what="the slider following the frames")
        before = len(gateway.received)
        _canvas(page, 0).focus()
        for key, wanted in ((".", [2]), (",", [2, 1]), (",", [2, 1, 0]), (",", [2, 1, 0, 0])):
            page.keyboard.press(key)
            _until(page, lambda wanted=wanted: [m["index"] for m in gateway.received[before:]
                                                if m.get("op") == "time"] == wanted,
                   what=f"the time points {wanted} from the keys")
    finally:
        page.close()


def test_time_points_are_left_alone_for_a_series_with_one(viewer_page):  # noqa: F811
    gateway = ScriptedGateway(_dynamic_ready())
    page = _open(viewer_page, gateway)
    try:
        page.locator(f".series-item[data-series='{CT}']").click()
        _until(page, lambda: not page.locator("#time-control").is_visible(), what="the time control hidden")
        assert page.locator("#cine-fps").input_value() == "15"
        _canvas(page, 0).focus()
        page.keyboard.press(".")
        page.wait_for_timeout(300)
        assert gateway.sent("input", op="time") == []
        assert "time " not in _facts(page)
    finally:
        page.close()


def _panels_ready() -> dict[str, Any]:
    series = [_series(WHOLE_BODY, "NM", "Whole body", 1, kind="images", plane="image", mpr=False,
                      images=1, panels=["anterior", "posterior"]),
              _series(ECHO, "US", "Echo", 2, kind="images", plane="image", mpr=False, colour=True,
                      images=1)]
    return _ready(series=series, views=[{"kind": "native", "layers": [WHOLE_BODY]}], related=[])


def test_panel_names_stand_over_the_halves_of_a_side_by_side_picture(viewer_page):  # noqa: F811
    gateway = ScriptedGateway(_panels_ready())
    page = _open(viewer_page, gateway)
    try:
        labels = page.locator(".view:nth-child(1) .overlay .panel-label")
        _until(page, lambda: labels.count() == 2, what="the panel names")
        assert [labels.nth(i).text_content() for i in range(2)] == ["anterior", "posterior"]
        box = _canvas(page, 0).bounding_box()
        middle = box["x"] + box["width"] / 2
        left, right = labels.nth(0).bounding_box(), labels.nth(1).bounding_box()
        assert left["x"] >= box["x"] - 1 and left["x"] + left["width"] <= middle + 1, (left, box)
        assert right["x"] >= middle - 1 and right["x"] + right["width"] <= box["x"] + box["width"] + 1
        assert box["y"] <= left["y"] and left["y"] + left["height"] <= box["y"] + box["height"]
        assert labels.nth(0).is_visible() and labels.nth(1).is_visible()

        page.locator(f".series-item[data-series='{ECHO}']").click()
        _until(page, lambda: _canvas(page, 0).get_attribute("data-sequence") == "2", what="the echo frame")
        assert page.locator(".overlay .panel-label").count() == 0, "a picture of one view is named"
    finally:
        page.close()


# --- probe -------------------------------------------------------------------------------------------


def _probe_shows(page, gateway: ScriptedGateway, answer: dict[str, Any], wanted) -> str:
    gateway.probe_answer = answer
    box = _canvas(page, 0).bounding_box()
    deadline = time.monotonic() + 10
    step = 0
    while time.monotonic() < deadline:
        step += 1
        page.mouse.move(box["x"] + 40 + (step % 20) * 5, box["y"] + 60)
        page.wait_for_timeout(120)
        shown = _text(page, "#probe")
        if wanted(shown):
            return shown
    raise AssertionError(f"the probe never showed {answer}: {_text(page, '#probe')!r}")


def test_the_probe_readout_shows_the_unit_of_each_answer(viewer_page):  # noqa: F811
    gateway = ScriptedGateway(_ready(related=[]))
    page = _open(viewer_page, gateway)
    try:
        shown = _probe_shows(page, gateway, {"value": 13.84, "unit": "SUV"}, lambda text: "SUV" in text)
        assert shown == "13.8 SUV at (-64.5, -17.6, -210.0) mm"
        shown = _probe_shows(page, gateway, {"value": 2.47, "unit": "SUV"}, lambda text: "2.47" in text)
        assert shown.startswith("2.47 SUV at ")
        for unit in ("HU", "BQML", "CNTS", "raw"):
            shown = _probe_shows(page, gateway, {"value": 40.0, "unit": unit},
                                 lambda text, unit=unit: unit in text)
            assert shown.startswith(f"40 {unit} at "), shown
        shown = _probe_shows(page, gateway, {"value": 127.0, "unit": "RGB"}, lambda text: "RGB" in text)
        assert not re.search(r"\d", shown.split(" at ")[0]), f"a colour picture showed a number: {shown}"
        shown = _probe_shows(page, gateway, {"value": None, "unit": ""}, lambda text: "outside" in text)
        assert shown == "outside the volume"
    finally:
        page.close()


def test_a_colour_picture_probes_to_no_number(viewer_page):  # noqa: F811
    ready = _panels_ready()
    ready["views"] = [{"kind": "native", "layers": [ECHO]}]
    gateway = ScriptedGateway(ready)
    page = _open(viewer_page, gateway)
    try:
        # The gateway reads no single value of a colour picture (value null, no unit).
        shown = _probe_shows(page, gateway, {"value": None, "unit": ""}, lambda text: "colour" in text)
        assert shown.startswith("colour picture (RGB): no value"), shown
        assert not re.search(r"\d", shown.split(" at ")[0])
    finally:
        page.close()
