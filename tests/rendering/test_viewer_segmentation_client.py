"""The viewer's segmentation panel and tools, against a scripted server.

As in test_viewer_measure_client.py, Playwright's websocket routing plays the
gateway: it announces ``ready`` with the real ``vocabulary.segment_tools``,
sends ``findings`` and then ``segmentations``, and answers each ``seg_*``
message as the gateway would: a ``segmentation`` with the revision, undo and
redo, segments and statistics after it (or a ``refused`` error where the reader
may not edit). The overlay is the server's, drawn into the frames; every number
in the panel comes from the scripted answer.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from typing import Any

import pytest

from rendering.protocol import vocabulary
from tests.rendering.scripted import canvas as _canvas
from tests.rendering.scripted import until as _until
from tests.rendering.scripted import viewer_pages
from tests.rendering.test_viewer_measure_client import (
    CT,
    PET,
    STUDY,
    ScriptedGateway,
    _at,
    _box,
    _click,
    _drag,
    _in_canvas_pixels,
    _keys,
    _options,
    _plane,
    _ready,
    _shapes,
    _text,
)

pytestmark = pytest.mark.browser

SEGMENT_TOOLS = vocabulary({})["segment_tools"]
SEGMENT_ONE = {"number": 1, "name": "Segment 1", "colour": "#e6194b", "visible": True, "opacity": 0.5}
SEGMENT_TWO = {"number": 2, "name": "Node", "colour": "#3cb44b", "visible": True, "opacity": 0.5}
# What segment 1 measures at revision 0 (each edit adds a millilitre): "12.3 ml · mean 4.57 · max 9.87 SUV".
STATISTICS_AT_START = "12.3 ml · mean 4.57 · max 9.87 SUV"
FAILURE = "the edit cannot be drawn on this series"


def _segmentation(identifier: int, label: str, *, by: str = "doctor", consultant: bool = False,
                  segments: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"id": identifier, "label": label, "series": PET, "study": STUDY, "revision": 0, "top": 0,
            "segments": copy.deepcopy(segments or [SEGMENT_ONE]), "by": by, "consultant": consultant}


def _statistics(revision: int) -> dict[str, Any]:
    return {"unit": "SUV", "segments": {"1": {"voxels": 1000 + revision, "volume_ml": 12.345 + revision,
                                              "mean": 4.567, "max": 9.87}}}


class SegmentationGateway(ScriptedGateway):
    """The measure tests' gateway, which also announces the segment tools and keeps segmentations."""

    def __init__(self, ready: dict[str, Any], *, may_edit: bool = True,
                 listed: list[dict[str, Any]] | None = None) -> None:
        ready = copy.deepcopy(ready)
        ready["vocabulary"]["segment_tools"] = copy.deepcopy(SEGMENT_TOOLS)
        super().__init__(ready)
        self.may_edit = may_edit
        self.listed = copy.deepcopy(listed or [])
        self.open_id: int | None = None
        self.answer_store = True
        self.page_errors: list[str] = []

    def __call__(self, ws: Any) -> None:
        super().__call__(ws)
        self.send_segmentations()

    models: list[dict[str, Any]] = []

    def send_segmentations(self) -> None:
        self.send({"type": "segmentations", "may_edit": self.may_edit, "models": self.models,
                   "segmentations": [self.wire(listed) for listed in self.listed]})

    def wire(self, segmentation: dict[str, Any]) -> dict[str, Any]:
        body = {name: copy.deepcopy(value) for name, value in segmentation.items() if name != "top"}
        revision = segmentation["revision"]
        return {**body, "can_undo": revision > 0, "can_redo": revision < segmentation["top"],
                "layer": f"seg:{segmentation['id']}:{revision}"}

    def opened(self) -> dict[str, Any] | None:
        return next((listed for listed in self.listed if listed["id"] == self.open_id), None)

    def show(self) -> None:
        opened = self.opened()
        assert opened is not None
        self.send({"type": "segmentation", "segmentation": {
            **self.wire(opened), "editable": self.may_edit, "statistics": _statistics(opened["revision"])}})

    def refuse(self, kind: str) -> None:
        self.send({"type": "error", "code": "refused", "of": kind,
                   "message": "segmenting is part of reporting, which is not granted here"})

    def on_message(self, message: str | bytes) -> None:
        super().on_message(message)
        data = self.received[-1]
        kind = data["type"]
        if not kind.startswith("seg_"):
            return
        if kind == "seg_open":
            self.open_id = data["segmentation"]
            self.show()
        elif kind == "seg_close":
            self.open_id = None
            self.send({"type": "segmentation", "segmentation": None})
        elif not self.may_edit:
            self.refuse(kind)
        elif kind == "seg_new":
            self.listed.append(_segmentation(9, data["label"]))
            self.open_id = 9
            self.show()
            self.send_segmentations()
        else:
            self.edit(kind, data)

    def edit(self, kind: str, data: dict[str, Any]) -> None:
        opened = self.opened()
        assert opened is not None, f"{kind} with no segmentation open"
        if kind == "seg_edit":
            opened["revision"] += 1
            opened["top"] = opened["revision"]
        elif kind == "seg_undo":
            opened["revision"] -= 1
        elif kind == "seg_redo":
            opened["revision"] += 1
        elif kind == "seg_segment":
            segments = {segment["number"]: segment for segment in opened["segments"]}
            number = data["segment"]
            changes = {name: value for name, value in data.items() if name not in ("type", "segment")}
            added = {"number": number, "name": f"Segment {number}", "colour": "#4363d8", "visible": True,
                     "opacity": 0.5}
            segments[number] = {**segments.get(number, added), **changes}
            opened["segments"] = [segments[n] for n in sorted(segments)]
        elif kind == "seg_delete":
            self.listed = [listed for listed in self.listed if listed["id"] != data["segmentation"]]
            self.open_id = None
            self.send({"type": "segmentation", "segmentation": None})
            self.send_segmentations()
            return
        elif kind == "seg_model":
            self.send({"type": "segmentation_job", "model": data["model"], "state": "running", "done": 3,
                       "total": 12})
            return
        elif kind == "seg_store":
            if not self.answer_store:
                return
            self.send({"type": "segmentation_stored", "segmentation": opened["id"], "seg_series": "2.25.99",
                       "segments": len(opened["segments"]), "frames": 120,
                       "fractional": data.get("fractional", False)})
            return
        self.show()


@pytest.fixture(scope="module")
def segmentation_page(served_demo):
    """The real viewer page, wide enough for the views and the panel; page errors are recorded."""
    with viewer_pages(served_demo) as open_page:
        yield open_page


def _pet_ready(**kwargs: Any) -> dict[str, Any]:
    return _ready(views=[{"kind": "axial", "layers": [PET]}], **kwargs)


def _row(page, number: int):
    return page.locator(f"#seg-segments .seg-segment[data-segment='{number}']")


def _statistics_of(page, number: int) -> str:
    return " ".join((_row(page, number).locator(".seg-statistics").text_content() or "").split())


def _field(page, name: str):
    return page.locator(f"#seg-settings [data-setting='{name}'] :is(input, select)")


def _on_plane(page, gateway: SegmentationGateway, view: int = 0) -> None:
    """A frame that names its plane at 0.5 mm a canvas pixel, so a brush has a size on screen."""
    gateway.frame(view, plane=_plane(), mm_per_pixel=0.5, position=0.0)
    _until(page, lambda: _canvas(page, view).get_attribute("data-sequence") == str(gateway.sequences[view]),
           what="the frame with a plane")


def _open(page, gateway: SegmentationGateway, identifier: int = 4) -> None:
    page.locator("#seg-list").select_option(str(identifier))
    page.locator("#seg-open").click()
    _until(page, lambda: gateway.sent("seg_open", segmentation=identifier), what="seg_open sent")
    _until(page, lambda: _row(page, 1).count() == 1, what="the open segmentation's segments")


def _seg_edits(gateway: SegmentationGateway) -> list[dict[str, Any]]:
    return gateway.sent("seg_edit")


def _near(a: Sequence[float], b: Sequence[float], reach: float = 0.6) -> bool:
    return abs(a[0] - b[0]) < reach and abs(a[1] - b[1]) < reach


def _off_line(point: list[float], start: tuple[float, float], end: tuple[float, float]) -> float:
    """How far a point lies from the straight line through start and end, in pixels."""
    (x0, y0), (x1, y1) = start, end
    return abs((x1 - x0) * (y0 - point[1]) - (x0 - point[0]) * (y1 - y0)) / math.hypot(x1 - x0, y1 - y0)


# --- creating and opening ----------------------------------------------------------------------


def test_a_doctor_creates_a_segmentation_on_the_active_view_and_sees_its_segments(segmentation_page):
    gateway = SegmentationGateway(_ready(layout="1x2", views=[{"kind": "axial", "layers": [CT]},
                                                              {"kind": "axial", "layers": [PET]}]))
    page = segmentation_page(gateway)
    try:
        section = page.locator("#segmentation-section")
        _until(page, lambda: section.is_visible(), what="the segmentation section for a doctor")
        assert not page.locator("#seg-list").is_visible(), "a list of no segmentations"
        assert page.locator("#seg-new-label").is_visible()
        assert not page.locator("#seg-open-panel").is_visible()

        _canvas(page, 1).focus()
        page.locator("#seg-new-label").fill("  liver\tlesions ")
        page.locator("#seg-new button[type='submit']").click()
        _until(page, lambda: gateway.sent("seg_new"), what="seg_new sent")
        assert gateway.sent("seg_new") == [{"type": "seg_new", "view": 1, "label": "liver lesions"}]

        _until(page, lambda: _row(page, 1).count() == 1, what="the new segmentation's segments")
        assert _statistics_of(page, 1) == STATISTICS_AT_START
        assert " ".join(_text(page, "#seg-label").split()) == "liver lesions · doctor"
        assert page.locator("#seg-new-label").input_value() == ""
        _until(page, lambda: page.locator("#seg-list option").count() == 1, what="the new one listed")
        assert page.locator("#seg-list").input_value() == "9"
        assert page.locator("#seg-close").is_visible() and page.locator("#seg-open").is_disabled()
        assert page.locator("#seg-undo").is_disabled() and page.locator("#seg-redo").is_disabled()
        assert _row(page, 1).locator("input.seg-active-choice").is_checked()

        page.locator("#seg-add").click()
        _until(page, lambda: gateway.sent("seg_segment"), what="the segment asked for")
        assert gateway.sent("seg_segment") == [{"type": "seg_segment", "segment": 2}]
        _until(page, lambda: _row(page, 2).count() == 1, what="segment 2 listed")
        assert _statistics_of(page, 2) == "empty"
        assert _row(page, 2).locator("input.seg-active-choice").is_checked(), "the added segment not active"

        page.locator("#seg-close").click()
        _until(page, lambda: gateway.sent("seg_close"), what="seg_close sent")
        _until(page, lambda: not page.locator("#seg-open-panel").is_visible(), what="the panel closed")
        assert page.locator("#seg-open").is_enabled() and not page.locator("#seg-close").is_visible()
        assert not gateway.page_errors
    finally:
        page.close()


# --- tools on the canvas -------------------------------------------------------------------------


def test_a_brush_stroke_sends_its_points_in_canvas_pixels_in_pieces(segmentation_page):
    gateway = SegmentationGateway(_pet_ready(), listed=[_segmentation(4, "nodes", segments=[SEGMENT_ONE,
                                                                                             SEGMENT_TWO])])
    page = segmentation_page(gateway)
    try:
        _on_plane(page, gateway)
        _open(page, gateway)
        _row(page, 2).locator("input.seg-active-choice").check()

        # One tool at a time: a measuring tool and a segmentation tool never act on the same click.
        page.locator("#measure-tool").select_option("line")
        page.locator("#seg-tool").select_option("brush")
        assert page.locator("#measure-tool").input_value() == "none"
        page.locator("#measure-tool").select_option("line")
        assert page.locator("#seg-tool").input_value() == "none"
        page.locator("#seg-tool").select_option("brush")
        assert page.locator("#measure-tool").input_value() == "none"

        assert _field(page, "radius_mm").input_value() == "5"
        assert _field(page, "planar").is_checked()
        _field(page, "radius_mm").fill("8")
        _field(page, "planar").uncheck()

        box = _box(page, 0)
        start, middle, end = _at(box, .3, .4), _at(box, .45, .45), _at(box, .6, .5)
        page.mouse.move(*start)
        preview = _shapes(page, 0).locator("circle.brush-preview")
        _until(page, lambda: preview.count() == 1, what="the brush under the pointer")
        assert abs(float(preview.get_attribute("r") or 0) - 8 / 0.5) < 0.2
        assert _near([float(preview.get_attribute("cx") or 0), float(preview.get_attribute("cy") or 0)],
                     _in_canvas_pixels(box, *start))

        _drag(page, start, middle, release=False)
        _until(page, lambda: _seg_edits(gateway), what="a piece of the stroke while it is drawn")
        page.mouse.move(*end, steps=8)
        page.mouse.up()
        want_end = _in_canvas_pixels(box, *end)
        _until(page, lambda: _seg_edits(gateway) and _near(_seg_edits(gateway)[-1]["points"][-1], want_end),
               what="the stroke's last piece")
        edits = _seg_edits(gateway)
        for edit in edits:
            assert set(edit) == {"type", "view", "tool", "segment", "points", "radius_mm", "planar"}, edit
            assert (edit["view"], edit["tool"], edit["segment"], edit["radius_mm"], edit["planar"]) == (
                0, "brush", 2, 8, False), edit
        points = [point for edit in edits for point in edit["points"]]
        want_start = _in_canvas_pixels(box, *start)
        assert _near(points[0], want_start), (points[0], want_start)
        want_middle = _in_canvas_pixels(box, *middle)
        for point in points:
            line = (want_start, want_middle) if point[0] <= want_middle[0] else (want_middle, want_end)
            assert _off_line(point, *line) < 0.6, (point, line)
        assert [x for x, _y in points] == sorted(x for x, _y in points), "the points do not follow the drag"
        assert max(math.dist(a, b) for a, b in itertools.pairwise(points)) <= 8 / 0.5 / 2 + 0.2, "gaps"
        assert not gateway.sent("measure") and not gateway.sent("input", op="window"), "the drag did more"

        # A long stroke with a fine brush: many points, sent as several edits of at most 64 each.
        _field(page, "radius_mm").fill("0.5")
        before = len(_seg_edits(gateway))
        far_start, far_end = _at(box, .1, .2), _at(box, .9, .8)
        _drag(page, far_start, far_end)
        want_far = _in_canvas_pixels(box, *far_end)
        _until(page, lambda: _near(_seg_edits(gateway)[-1]["points"][-1], want_far),
               what="the long stroke sent")
        long_edits = _seg_edits(gateway)[before:]
        assert len(long_edits) >= 5, len(long_edits)
        sizes = [len(edit["points"]) for edit in long_edits]
        assert all(1 <= size <= 64 for size in sizes), sizes
        assert all(edit["radius_mm"] == 0.5 for edit in long_edits)
        stroke = [point for edit in long_edits for point in edit["points"]]
        assert _near(stroke[0], _in_canvas_pixels(box, *far_start))
        assert max(math.dist(a, b) for a, b in itertools.pairwise(stroke)) <= 1.2, "the pieces do not join up"
        assert not gateway.page_errors
    finally:
        page.close()


def test_a_grow_seed_is_sent_with_low_and_high_and_never_without(segmentation_page):
    gateway = SegmentationGateway(_pet_ready(), listed=[_segmentation(4, "nodes")])
    page = segmentation_page(gateway)
    try:
        _open(page, gateway)
        page.locator("#seg-tool").select_option("grow")
        assert _field(page, "low").input_value() == "" and _field(page, "high").input_value() == ""
        box = _box(page, 0)
        seed = _at(box, .4, .45)
        _click(page, seed)
        _until(page, lambda: _field(page, "low").get_attribute("aria-invalid") == "true",
               what="low marked as required")
        assert _field(page, "high").get_attribute("aria-invalid") == "true"
        assert "needs low and high" in _text(page, "#seg-status")
        page.wait_for_timeout(200)
        assert not _seg_edits(gateway), "a grow without its range was sent"
        assert not gateway.sent("input", op="focus"), "the seed's click also moved the crosshair"

        _field(page, "low").fill("2.5")
        assert _field(page, "low").get_attribute("aria-invalid") is None
        _field(page, "high").fill("30")
        _field(page, "unit").select_option("suv")
        _click(page, seed)
        _until(page, lambda: _seg_edits(gateway), what="the seed's edit")
        (edit,) = _seg_edits(gateway)
        assert set(edit) == {"type", "view", "tool", "segment", "points", "low", "high", "unit"}, edit
        assert (edit["view"], edit["tool"], edit["segment"]) == (0, "grow", 1)
        assert (edit["low"], edit["high"], edit["unit"]) == (2.5, 30, "suv")
        ((x, y),) = edit["points"]
        assert _near((x, y), _in_canvas_pixels(box, *seed)), (edit["points"], seed)
        _until(page, lambda: page.locator("#seg-undo").is_enabled(), what="undo offered after the edit")
        assert not gateway.page_errors
    finally:
        page.close()


def test_the_other_tools_take_their_defaults_and_apply_without_a_point(segmentation_page):
    gateway = SegmentationGateway(_pet_ready(), listed=[_segmentation(4, "nodes")])
    page = segmentation_page(gateway)
    try:
        _open(page, gateway)
        box = _box(page, 0)
        page.locator("#seg-tool").select_option("confidence")
        assert not page.locator("#seg-apply").is_visible(), "Apply for a tool that needs a point"
        _click(page, _at(box, .5, .5))
        _until(page, lambda: gateway.sent("seg_edit", tool="confidence"), what="a confidence seed")
        sent = gateway.sent("seg_edit", tool="confidence")[-1]
        assert (sent["multiplier"], sent["iterations"], len(sent["points"])) == (2.5, 2, 1)

        page.locator("#seg-tool").select_option("suv_fraction")
        _click(page, _at(box, .5, .5))
        _until(page, lambda: gateway.sent("seg_edit", tool="suv_fraction"), what="an SUV fraction edit")
        sent = gateway.sent("seg_edit", tool="suv_fraction")[-1]
        assert (sent["fraction"], sent["box_mm"]) == (0.41, 20)

        # A threshold at a point covers a box about it; applied without one, the whole series.
        page.locator("#seg-tool").select_option("threshold")
        _field(page, "low").fill("3")
        _field(page, "high").fill("50")
        _click(page, _at(box, .5, .5))
        _until(page, lambda: gateway.sent("seg_edit", tool="threshold"), what="a threshold at a point")
        assert gateway.sent("seg_edit", tool="threshold")[-1]["box_mm"] == 20
        page.locator("#seg-apply").click()
        _until(page, lambda: len(gateway.sent("seg_edit", tool="threshold")) == 2, what="a threshold applied")
        whole = gateway.sent("seg_edit", tool="threshold")[-1]
        assert whole == {"type": "seg_edit", "view": 0, "tool": "threshold", "segment": 1,
                         "low": 3, "high": 50, "unit": "native"}

        page.locator("#seg-tool").select_option("islands")
        assert _field(page, "min_ml").input_value() == "0.1"
        page.locator("#seg-apply").click()
        _until(page, lambda: gateway.sent("seg_edit", tool="islands"), what="islands applied")
        assert gateway.sent("seg_edit", tool="islands")[-1] == {
            "type": "seg_edit", "view": 0, "tool": "islands", "segment": 1, "min_ml": 0.1}
        page.locator("#seg-tool").select_option("largest")
        assert page.locator("#seg-settings :is(input, select)").count() == 0
        before = len(_seg_edits(gateway))
        _click(page, _at(box, .5, .5))  # a tool without points leaves the canvas to navigate
        _until(page, lambda: gateway.sent("input", op="focus"), what="the click moving the crosshair")
        assert len(_seg_edits(gateway)) == before
        assert not gateway.page_errors
    finally:
        page.close()


# --- undo, redo and the segments' own controls -------------------------------------------------


def test_undo_and_redo_follow_the_server_by_button_and_key_but_not_while_typing(segmentation_page):
    gateway = SegmentationGateway(_pet_ready(), listed=[_segmentation(4, "nodes")])
    page = segmentation_page(gateway)
    undo, redo = page.locator("#seg-undo"), page.locator("#seg-redo")
    try:
        assert not {"Ctrl+Z", "Ctrl+Y"} & set(_keys(page)), "undo keys with nothing open"
        _open(page, gateway)
        assert {"Ctrl+Z", "Ctrl+Y"} <= set(_keys(page))
        assert undo.is_disabled() and redo.is_disabled()
        _canvas(page, 0).focus()
        page.keyboard.press("Control+z")
        page.wait_for_timeout(200)
        assert not gateway.sent("seg_undo"), "an undo the server said cannot be made"

        page.locator("#seg-tool").select_option("fill_holes")
        page.locator("#seg-apply").click()
        _until(page, lambda: undo.is_enabled(), what="undo offered")
        assert redo.is_disabled()
        assert _statistics_of(page, 1) == "13.3 ml · mean 4.57 · max 9.87 SUV"

        _canvas(page, 0).focus()
        page.keyboard.press("Control+z")
        _until(page, lambda: len(gateway.sent("seg_undo")) == 1, what="Ctrl+Z undoing")
        _until(page, lambda: redo.is_enabled() and undo.is_disabled(), what="redo offered, undo not")
        page.keyboard.press("Control+y")
        _until(page, lambda: len(gateway.sent("seg_redo")) == 1, what="Ctrl+Y redoing")
        _until(page, lambda: undo.is_enabled() and redo.is_disabled(), what="undo offered again")
        undo.click()
        _until(page, lambda: len(gateway.sent("seg_undo")) == 2, what="the Undo button")
        _until(page, lambda: redo.is_enabled(), what="redo offered")
        _canvas(page, 0).focus()
        page.keyboard.press("Control+Shift+z")
        _until(page, lambda: len(gateway.sent("seg_redo")) == 2, what="Ctrl+Shift+Z redoing")
        _until(page, lambda: undo.is_enabled() and redo.is_disabled(), what="undo offered after the redo")
        redo_button_sent = len(gateway.sent("seg_redo"))

        # Ctrl+Z in a field undoes the typing there, never an edit.
        page.locator("#seg-new-label").fill("abc")
        page.locator("#seg-new-label").press("Control+z")
        page.locator("#seg-tool").select_option("islands")
        _field(page, "min_ml").press("Control+z")
        page.locator("#seg-new-label").press("Control+y")
        page.wait_for_timeout(200)
        assert len(gateway.sent("seg_undo")) == 2 and len(gateway.sent("seg_redo")) == redo_button_sent
        assert not gateway.page_errors
    finally:
        page.close()


def test_a_segments_colour_visibility_and_opacity_each_send_only_what_changed(segmentation_page):
    gateway = SegmentationGateway(_pet_ready(), listed=[_segmentation(4, "nodes")])
    page = segmentation_page(gateway)
    try:
        _open(page, gateway)
        row = _row(page, 1)
        assert row.locator("input.seg-colour").input_value() == "#e6194b"
        assert row.locator("input.seg-visible").is_checked()
        assert row.locator("input.seg-opacity").input_value() == "0.5"

        row.locator("input.seg-colour").fill("#00FF80")
        _until(page, lambda: gateway.sent("seg_segment"), what="the colour sent")
        assert gateway.sent("seg_segment")[-1] == {"type": "seg_segment", "segment": 1, "colour": "#00ff80"}
        _until(page, lambda: _row(page, 1).locator("input.seg-colour").input_value() == "#00ff80",
               what="the colour the server answers")

        _row(page, 1).locator("input.seg-visible").uncheck()
        _until(page, lambda: len(gateway.sent("seg_segment")) == 2, what="the visibility sent")
        assert gateway.sent("seg_segment")[-1] == {"type": "seg_segment", "segment": 1, "visible": False}
        _until(page, lambda: not _row(page, 1).locator("input.seg-visible").is_checked(),
               what="shown as hidden")

        _row(page, 1).locator("input.seg-opacity").fill("0.8")
        _until(page, lambda: len(gateway.sent("seg_segment")) == 3, what="the opacity sent")
        assert gateway.sent("seg_segment")[-1] == {"type": "seg_segment", "segment": 1, "opacity": 0.8}
        assert len(gateway.sent("seg_segment")) == 3
        assert not gateway.page_errors
    finally:
        page.close()


# --- who may edit, and what fails --------------------------------------------------------------


def test_a_reader_who_may_not_edit_sees_the_list_and_numbers_but_no_edit_controls(segmentation_page):
    gateway = SegmentationGateway(_pet_ready(), may_edit=False,
                                  listed=[_segmentation(4, "nodes", by="colleague", consultant=True)])
    page = segmentation_page(gateway)
    try:
        _until(page, lambda: page.locator("#segmentation-section").is_visible(), what="the section")
        assert page.locator("#seg-list option").evaluate_all("os => os.map((o) => o.textContent)") == [
            "nodes · colleague (consultant)"]
        assert not page.locator("#seg-new").is_visible(), "New offered to a reader who may not edit"
        _open(page, gateway)
        assert _statistics_of(page, 1) == STATISTICS_AT_START
        assert _row(page, 1).locator(".segment-swatch").count() == 1
        assert _row(page, 1).locator("input").count() == 0, "segment controls for a reader who may not edit"
        for control in ("#seg-edit", "#seg-tool", "#seg-undo", "#seg-redo", "#seg-add", "#seg-store",
                        "#seg-apply"):
            assert not page.locator(control).is_visible(), control
        assert page.locator("#seg-close").is_visible()
        assert not {"Ctrl+Z", "Ctrl+Y"} & set(_keys(page))

        _click(page, _at(_box(page, 0), .5, .5))
        _until(page, lambda: gateway.sent("input", op="focus"), what="the click moving the crosshair")
        _canvas(page, 0).focus()
        page.keyboard.press("Control+z")
        page.wait_for_timeout(200)
        assert not _seg_edits(gateway) and not gateway.sent("seg_undo")

        page.locator("#seg-close").click()
        _until(page, lambda: not page.locator("#seg-open-panel").is_visible(), what="closed")
        assert not gateway.page_errors
    finally:
        page.close()


def test_a_failed_edit_and_a_store_show_in_the_segmentation_status_line(segmentation_page):
    gateway = SegmentationGateway(_pet_ready(), listed=[_segmentation(4, "nodes")])
    page = segmentation_page(gateway)
    status = page.locator("#seg-status")
    try:
        _open(page, gateway)
        page.locator("#seg-tool").select_option("otsu")
        _click(page, _at(_box(page, 0), .5, .5))
        _until(page, lambda: gateway.sent("seg_edit", tool="otsu"), what="an Otsu edit")
        assert gateway.sent("seg_edit", tool="otsu")[-1]["box_mm"] == 20
        gateway.send({"type": "error", "code": "segment_failed", "of": "seg_edit", "message": FAILURE})
        _until(page, lambda: FAILURE in (status.text_content() or ""), what="the failure in the status line")
        assert (status.text_content() or "").startswith("segment_failed")
        assert "failed" in (status.get_attribute("class") or "")

        gateway.send({"type": "error", "code": "refused", "of": "seg_edit", "message": "not on this view"})
        _until(page, lambda: "not on this view" in (status.text_content() or ""), what="the refusal shown")
        assert page.locator("#measure-tool").is_enabled(), "a segmentation refusal disabled measuring"
        assert not page.locator("#measure-refused").is_visible()
        assert page.locator("#seg-tool").input_value() == "otsu"

        store = page.locator("#seg-store")
        store.click()
        _until(page, lambda: gateway.sent("seg_store"), what="seg_store sent")
        _until(page, lambda: "stored in the study as DICOM SEG" in (status.text_content() or ""),
               what="the store reported")
        assert "1 segment, 120 frames" in (status.text_content() or "")
        assert store.is_enabled()
        gateway.answer_store = False  # the answer is an error, sent below
        store.click()
        _until(page, lambda: len(gateway.sent("seg_store")) == 2, what="a second store")
        assert store.is_disabled(), "one store at a time"
        gateway.send({"type": "error", "code": "store_failed", "of": "seg_store",
                      "message": "the archive is away"})
        _until(page, lambda: "store_failed: the archive is away" in (status.text_content() or ""),
               what="the store failure shown")
        assert store.is_enabled()
        assert not gateway.page_errors
    finally:
        page.close()


def test_fractional_is_offered_only_for_a_segmentation_a_model_contributed_to(segmentation_page):
    from_model = {**SEGMENT_TWO, "name": "heart (heart)", "fractional": True}
    gateway = SegmentationGateway(_pet_ready(), listed=[
        _segmentation(4, "by hand"), _segmentation(5, "with a model", segments=[SEGMENT_ONE, from_model])])
    page = segmentation_page(gateway)
    status = page.locator("#seg-status")
    choice, fractional, store = (page.locator(s) for s in ("#seg-store-fractional", "#seg-fractional",
                                                             "#seg-store"))
    try:
        _open(page, gateway)
        assert not choice.is_visible()
        store.click()
        _until(page, lambda: gateway.sent("seg_store"), what="seg_store sent")
        assert gateway.sent("seg_store")[-1] == {"type": "seg_store"}
        _until(page, lambda: "stored in the study as DICOM SEG: 1 segment" in (status.text_content() or ""),
               what="the binary store reported")

        _open(page, gateway, 5)
        _until(page, lambda: choice.is_visible(), what="fractional offered")
        assert not fractional.is_checked()
        store.click()
        _until(page, lambda: len(gateway.sent("seg_store")) == 2, what="a binary store of the model's")
        assert gateway.sent("seg_store")[-1] == {"type": "seg_store"}
        _until(page, lambda: store.is_enabled(), what="the store answered")
        fractional.check()
        store.click()
        _until(page, lambda: gateway.sent("seg_store", fractional=True), what="a fractional seg_store")
        _until(page, lambda: "DICOM SEG (fractional): 2 segments" in (status.text_content() or ""),
               what="the fractional store reported")

        _open(page, gateway, 4)
        _until(page, lambda: not choice.is_visible(), what="fractional no longer offered")
        assert not fractional.is_checked()
        assert not gateway.page_errors
    finally:
        page.close()


def test_a_registered_model_is_offered_run_once_and_its_result_or_failure_shown(segmentation_page):
    gateway = SegmentationGateway(_pet_ready(), listed=[_segmentation(4, "nodes")])
    gateway.models = [{"id": 3, "name": "heart", "version": "2", "labels": ["heart"]},
                      {"id": "x", "name": "<b>broken</b>"}]
    page = segmentation_page(gateway)
    status = page.locator("#seg-status")
    run = page.locator("#seg-model-run")
    try:
        _open(page, gateway)
        assert page.locator("#seg-models").is_visible()
        assert _options(page, "#seg-model") == ["3"]
        run.click()
        _until(page, lambda: gateway.sent("seg_model"), what="seg_model sent")
        assert gateway.sent("seg_model")[-1] == {"type": "seg_model", "model": 3}
        _until(page, lambda: "heart 2: running… 3/12 tiles" in (status.text_content() or ""),
               what="the run and its tiles shown")
        assert run.is_disabled(), "one run at a time"
        run.click(force=True)
        assert len(gateway.sent("seg_model")) == 1
        gateway.edit("seg_edit", {})
        _until(page, lambda: "heart 2: done" in (status.text_content() or ""), what="the run done")
        assert run.is_enabled()
        run.click()
        _until(page, lambda: len(gateway.sent("seg_model")) == 2, what="a second run")
        gateway.send({"type": "error", "code": "model_failed", "of": "seg_model",
                      "message": "model file does not match the registered SHA-256"})
        _until(page, lambda: "model_failed" in (status.text_content() or ""), what="the failure shown")
        assert run.is_enabled() and not gateway.page_errors
    finally:
        page.close()


def test_deleting_a_segmentation_asks_twice_and_the_list_follows(segmentation_page):
    gateway = SegmentationGateway(_pet_ready(), listed=[_segmentation(4, "nodes"), _segmentation(5, "liver")])
    page = segmentation_page(gateway)
    delete = page.locator("#seg-delete")
    try:
        _open(page, gateway)
        assert delete.is_visible()
        delete.click()
        assert delete.text_content() == "Delete? click again" and not gateway.sent("seg_delete")
        delete.click()
        _until(page, lambda: gateway.sent("seg_delete"), what="seg_delete sent")
        assert gateway.sent("seg_delete")[-1] == {"type": "seg_delete", "segmentation": 4}
        _until(page, lambda: _options(page, "#seg-list") == ["5"], what="the list without it")
        assert not delete.is_visible() and not gateway.page_errors
    finally:
        page.close()
