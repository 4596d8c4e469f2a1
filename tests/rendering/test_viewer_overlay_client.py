"""Segmentation overlays in the series strip, and findings of earlier sessions drawn again.

As in test_viewer_measure_client.py, Playwright's websocket routing plays the
gateway: ``ready`` lists a segmentation (``kind: "label"`` with its
``segments``) and announces the ``overlay`` setting; a ``set overlay`` is
answered, as the gateway does, with a frame only (one window per layer), or
with a ``refused`` error; ``findings`` carry the plane each finding was drawn
on, and each test gives the frames the plane it needs.
"""

from __future__ import annotations

import colorsys
import copy
from typing import Any

import pytest

from tests.rendering.scripted import canvas as _canvas
from tests.rendering.scripted import until as _until
from tests.rendering.test_viewer_measure_client import (  # noqa: F401
    CT,
    GROWN,
    LINE,
    OTHERS_FINDING,
    PET,
    SERIES,
    STUDY,
    ScriptedGateway,
    _box,
    _plane,
    _ready,
    _shapes,
    measure_page,
)

pytestmark = pytest.mark.browser

SEG = "2.25.30"
SEGMENTS = [{"number": 1, "label": "liver"}, {"number": 2, "label": "tumour"}, {"number": 7, "label": ""}]
LABELS = {"uid": SEG, "modality": "SEG", "description": "Liver segmentation", "number": 3, "images": 40,
          "kind": "label", "plane": "axial", "mpr": True, "colour": False, "frame_time_ms": None, "units": "",
          "panels": [], "time_points": 1, "study": STUDY, "segments": SEGMENTS, "available": True}
REFUSAL = "that segmentation was drawn on another frame of reference than this view's"


def _overlay_ready(views: list[dict[str, Any]], *, layout: str = "1x2",
                   announced: bool = True) -> dict[str, Any]:
    ready = _ready(views=views, layout=layout)
    ready["series"] = [*SERIES, LABELS]
    if announced:
        ready["vocabulary"]["settings"]["overlay"] = {"identifier": True}
    return ready


class OverlayGateway(ScriptedGateway):
    """Answers ``set overlay`` as the gateway does: a frame with one window per layer, or a refusal."""

    def __init__(self, ready: dict[str, Any], *, refuse: bool = False) -> None:
        super().__init__(ready)
        self.refuse = refuse
        self.layers = {index: list(view["layers"]) for index, view in enumerate(ready["views"])}

    def on_message(self, message: str | bytes) -> None:
        super().on_message(message)
        data = self.received[-1]
        if data["type"] != "set" or data["name"] != "overlay":
            return
        if self.refuse:
            self.send({"type": "error", "code": "refused", "message": REFUSAL})
            return
        layers = self.layers[data["view"]]
        if data["value"] in layers:
            layers.remove(data["value"])
        else:
            layers.append(data["value"])
        self.frame(data["view"], windows=[{"center": 0.5, "width": 1, "unit": "", "modality": "CT",
                                           "palette": "grey", "opacity": 1}] * len(layers))


def _toggle(page):
    return page.locator(f".overlay-toggle[data-series='{SEG}']")


def _pressed(page) -> str | None:
    return _toggle(page).get_attribute("aria-pressed")


def _hsv(number: int) -> str:
    red, green, blue = (round(255 * c) for c in colorsys.hsv_to_rgb((number * 0.6180339887) % 1.0, 0.85, 1.0))
    return f"rgb({red}, {green}, {blue})"


def test_a_segmentation_is_listed_with_its_segments_and_toggled_over_the_active_view(measure_page):  # noqa: F811
    gateway = OverlayGateway(_overlay_ready([{"kind": "axial", "layers": [CT]},
                                            {"kind": "axial", "layers": [CT, SEG]}]))
    page = measure_page(gateway)
    try:
        entry = page.locator(f".series-entry[data-series='{SEG}']")
        assert entry.locator(".series-item .series-title").text_content() == "SEG · Liver segmentation"
        segments = entry.locator(".segment")
        assert segments.evaluate_all("items => items.map((item) => item.textContent)") == [
            "liver", "tumour", "segment 7"]
        swatches = entry.locator(".segment-swatch").evaluate_all(
            "swatches => swatches.map((swatch) => getComputedStyle(swatch).backgroundColor)")
        assert swatches == [_hsv(1), _hsv(2), _hsv(7)], "not the colours the server draws the labels in"
        assert page.locator(".overlay-toggle").count() == 1, "a toggle on a series that is not a segmentation"

        # The first view is active: ready says its layers hold no segmentation.
        assert _pressed(page) == "false"
        _toggle(page).click()
        _until(page, lambda: gateway.sent("set", name="overlay"), what="the overlay set")
        assert gateway.sent("set", name="overlay") == [
            {"type": "set", "view": 0, "name": "overlay", "value": SEG}]
        assert _pressed(page) == "true"
        _until(page, lambda: _canvas(page, 0).get_attribute("data-sequence") == str(gateway.sequences[0]),
               what="the frame with the overlay")
        assert _pressed(page) == "true"

        # The second view's layers, from ready, hold it: its toggle takes it off that view.
        _canvas(page, 1).focus()
        assert _pressed(page) == "true"
        assert not page.locator("#opacity").is_visible(), "a segmentation counted as a fused layer"
        _toggle(page).click()
        _until(page, lambda: gateway.sent("set", name="overlay", view=1), what="the overlay set of view 1")
        assert _pressed(page) == "false"
        _canvas(page, 0).focus()
        assert _pressed(page) == "true", "view 0 keeps its overlay"
    finally:
        page.close()


def test_a_refused_overlay_goes_back_and_ready_sets_the_toggle(measure_page):  # noqa: F811
    gateway = OverlayGateway(_overlay_ready([{"kind": "axial", "layers": [CT]}], layout="1x1"), refuse=True)
    page = measure_page(gateway)
    try:
        assert _pressed(page) == "false"
        _toggle(page).click()
        _until(page, lambda: gateway.sent("set", name="overlay"), what="the overlay set")
        _until(page, lambda: _pressed(page) == "false", what="the toggle back after the refusal")
        assert REFUSAL in (page.locator("#error").text_content() or "")
        assert page.locator("#measure-tool").is_enabled(), "an overlay refusal switched measuring off"

        gateway.send(_overlay_ready([{"kind": "axial", "layers": [CT, SEG]}], layout="1x1"))
        _until(page, lambda: _pressed(page) == "true", what="the toggle from ready")

        # A server that does not announce the setting gets no toggle; the segments are listed still.
        gateway.send(_overlay_ready([{"kind": "axial", "layers": [CT]}], layout="1x1", announced=False))
        _until(page, lambda: _toggle(page).count() == 0, what="no toggle without the setting")
        assert page.locator(f".series-entry[data-series='{SEG}'] .segment").count() == 3
    finally:
        page.close()


# --- findings kept in earlier sessions --------------------------------------------------------

KEPT_PLANE = {**_plane(5.0), "width": 200, "height": 160}
EARLIER_LINE = {"id": 21, "label": "node 1", "tool": "line", "study": STUDY, "series": CT,
                "points": [[40, 30], [120, 90]], "plane": KEPT_PLANE, "result": LINE, "by": "doctor",
                "consultant": False, "at": "2024-04-01T08:00:00+00:00"}
EARLIER_SEED = {"id": 22, "label": "grown", "tool": "grow", "study": STUDY, "series": CT,
                "points": [[110, 70]], "plane": KEPT_PLANE, "result": GROWN, "by": "doctor",
                "consultant": False, "at": "2024-04-01T08:01:00+00:00"}
ON_PET = {**EARLIER_LINE, "id": 23, "label": "on the PET", "series": PET}


def _expected(box: dict[str, float], point: list[float], mm_per_pixel: float) -> tuple[float, float]:
    """A stored point (viewport 200x160, 0.5 mm a pixel, same centre) on a canvas of the frame's scale."""
    return ((point[0] - 100) * 0.5 / mm_per_pixel + box["pixels"] / 2,
            (point[1] - 80) * 0.5 / mm_per_pixel + box["rows"] / 2)


def test_findings_of_earlier_sessions_are_drawn_on_their_plane_only(measure_page):  # noqa: F811
    gateway = ScriptedGateway(_ready(views=[{"kind": "axial", "layers": [CT]}]))
    gateway.findings = [copy.deepcopy(EARLIER_LINE), copy.deepcopy(EARLIER_SEED), copy.deepcopy(ON_PET),
                        copy.deepcopy(OTHERS_FINDING)]
    page = measure_page(gateway)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        _until(page, lambda: page.locator("#findings li.finding").count() == 4, what="the findings listed")
        line = _shapes(page, 0).locator(".shape.kept[data-finding='21'] line.outline")
        seed = _shapes(page, 0).locator(".shape.kept[data-finding='22'] circle.seed")
        assert line.count() == 0, "drawn before a frame named its plane"

        gateway.frame(0, plane=_plane(5.0), mm_per_pixel=0.25, position=5.0)  # zoomed in twice as far
        _until(page, lambda: line.count() == 1, what="the earlier line on its plane")
        box = _box(page, 0)
        drawn = [float(line.get_attribute(name) or "nan") for name in ("x1", "y1", "x2", "y2")]
        want = [*_expected(box, [40, 30], 0.25), *_expected(box, [120, 90], 0.25)]
        assert all(abs(a - b) <= 1 for a, b in zip(drawn, want, strict=True)), (drawn, want)
        assert seed.count() == 1
        centre = [float(seed.get_attribute(name) or "nan") for name in ("cx", "cy")]
        want = list(_expected(box, [110, 70], 0.25))
        assert all(abs(a - b) <= 1 for a, b in zip(centre, want, strict=True)), (centre, want)
        labels = _shapes(page, 0).locator(".shape.kept text").evaluate_all(
            "texts => texts.map((text) => text.textContent)")
        assert sorted(labels) == ["grown", "node 1"], "a finding of another series, or without a plane, drawn"

        gateway.frame(0, plane=_plane(8.0), position=8.0)  # another slice
        _until(page, lambda: _shapes(page, 0).locator(".shape.kept").count() == 0,
               what="the findings gone from another slice")
        coronal = {"center_mm": [0.0, 0.0, 5.0], "right": [1.0, 0.0, 0.0], "down": [0.0, 0.0, -1.0],
                   "normal": [0.0, 1.0, 0.0], "mm_per_pixel": 0.5}
        gateway.frame(0, kind="coronal", plane=coronal, position=0.0)  # through the seed, another normal
        page.wait_for_timeout(300)
        assert _canvas(page, 0).get_attribute("data-sequence") == str(gateway.sequences[0])
        assert _shapes(page, 0).locator(".shape.kept").count() == 0, "drawn on a plane of another normal"
        gateway.frame(0, kind="axial", plane=_plane(5.2), position=5.2)  # within half a millimetre
        _until(page, lambda: line.count() == 1 and seed.count() == 1, what="the findings back on their slice")
        assert not errors, errors
    finally:
        page.close()
