"""Measurements of structured reports (DICOM SR) other systems stored in the study, against a scripted server.

As in test_viewer_measure_client.py, Playwright's websocket routing plays the
gateway: it announces ``ready``, sends ``findings`` and then ``documents`` (the
groups of measurements the gateway read from the study's SRs, each perhaps
with a graphic in patient mm and the series it was drawn on), and answers
every ``resize`` with a frame whose overlay a test may give a plane. The
strings come from other systems: the page shows them as text only, and a
malformed document costs only itself.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from tests.rendering.scripted import canvas as _canvas
from tests.rendering.scripted import until as _until
from tests.rendering.scripted import viewer_pages
from tests.rendering.test_viewer_measure_client import (
    CT,
    OTHERS_FINDING,
    PET,
    ScriptedGateway,
    _box,
    _plane,
    _ready,
    _shapes,
)

pytestmark = pytest.mark.browser

SR = "2.25.80"
REPORT: dict[str, Any] = {
    "series": SR, "title": "Imaging Measurement Report", "date": "2025-03-02", "class": "Comprehensive 3D SR",
    "groups": [
        {"label": "Lesion 1", "finding": "Lesion", "site": "Liver",
         "measurements": [{"name": "SUVbw (Maximum)", "value": 7.3142, "unit": "SUVbw"},
                          {"name": "Volume", "value": 12.06, "unit": "ml"},
                          {"name": "Long axis", "value": None, "unit": "mm", "qualifier": "Not a number"},
                          {"name": "Short axis", "value": None, "unit": "mm", "qualifier": ""}],
         "graphic": None},
        {"label": "Node", "finding": "", "measurements": [{"name": "Mean", "value": 123.456, "unit": "HU"}],
         "graphic": None},
    ]}
NURSE_LIKE_TOOLS: list[str] = []


def _group(label: str, shape: str, points: list[list[Any]],
           series: list[str] | None = None) -> dict[str, Any]:
    return {"label": label, "finding": "Lesion", "site": "", "measurements": [],
            "graphic": {"shape": shape, "points_mm": points, "series": series or [CT]}}


class DocumentsGateway(ScriptedGateway):
    """The measure tests' gateway, which also sends ``documents`` once after ``findings``."""

    def __init__(self, ready: dict[str, Any], documents: list[Any]) -> None:
        super().__init__(ready)
        self.documents = documents
        self.page_errors: list[str] = []

    def __call__(self, ws: Any) -> None:
        super().__call__(ws)
        self.send({"type": "documents", "documents": self.documents})


@pytest.fixture(scope="module")
def documents_page(served_demo):
    """The real viewer page, wide enough for three views and the panel; page errors are recorded."""
    with viewer_pages(served_demo) as open_page:
        yield open_page


def _texts(within, selector: str) -> list[str]:
    return within.locator(selector).evaluate_all("nodes => nodes.map((node) => node.textContent)")


def _on_plane(page, gateway: DocumentsGateway, z: float, views: range) -> None:
    for view in views:
        gateway.frame(view, plane=_plane(z), mm_per_pixel=0.5, position=z)
    for view in views:
        _until(page, lambda view=view: _canvas(page, view).get_attribute("data-sequence")
               == str(gateway.sequences[view]), what=f"the plane of view {view}")


def _pixels(box: dict[str, float], points_mm: list[list[float]]) -> list[tuple[float, float]]:
    """Where the axial plane of _plane (0.5 mm a pixel about the canvas's centre) shows these points."""
    return [(x / 0.5 + box["pixels"] / 2, y / 0.5 + box["rows"] / 2) for x, y, _z in points_mm]


def _points(attribute: str | None) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in (pair.split(",") for pair in (attribute or "").split())]


# --- the list ----------------------------------------------------------------------------------


def test_the_documents_are_listed_with_their_measurements_even_for_a_reader_who_may_not_measure(
        documents_page):
    gateway = DocumentsGateway(_ready(tools=NURSE_LIKE_TOOLS), [copy.deepcopy(REPORT)])
    page = documents_page(gateway)
    try:
        section = page.locator("#documents-section")
        _until(page, lambda: section.is_visible(), what="the reports' section")
        assert page.locator("#measure-panel").is_visible(), "no panel without measuring tools"
        assert not page.locator("#measure-section").is_visible()
        assert _texts(page, "#documents-title") == ["From reports in the study"]
        title = page.locator("#documents .document-title")
        assert _texts(page, "#documents .document-title") == ["Imaging Measurement Report · 2025-03-02"]
        assert title.get_attribute("title") == "Comprehensive 3D SR"
        assert _texts(page, "#documents .document-group-label") == ["Lesion 1", "Node"]
        assert _texts(page, "#documents .document-group-what") == ["Lesion · Liver"]
        first, second = (page.locator("#documents .document-group").nth(i) for i in range(2))
        # A null value shows its qualifier, or an en dash without one.
        assert _texts(first, ".document-measurement") == [
            "SUVbw (Maximum) 7.31 SUVbw", "Volume 12.1 ml", "Long axis Not a number", "Short axis \u2013"]
        assert second.locator(".document-measurement").text_content() == "Mean 123 HU"
        assert section.locator("button").count() == 0, "a report's measurement offered for editing"

        # A later message replaces the list; an empty one leaves nothing to show, and no panel here.
        other = {**copy.deepcopy(REPORT), "title": "Follow-up", "date": "", "groups": [REPORT["groups"][1]]}
        gateway.send({"type": "documents", "documents": [other]})
        _until(page, lambda: _texts(page, "#documents .document-title") == ["Follow-up"], what="the new list")
        assert _texts(page, "#documents .document-group-label") == ["Node"]
        gateway.send({"type": "documents", "documents": []})
        _until(page, lambda: not section.is_visible(), what="the section hidden")
        assert page.locator("#documents .document").count() == 0
        # What is left in the side panel is the fused view's layers, nothing to measure with.
        assert page.locator("#layers-section").is_visible()
        assert not page.locator("#measure-tool").is_visible()
        assert gateway.page_errors == []
    finally:
        page.close()

    gateway = DocumentsGateway(_ready(), [copy.deepcopy(REPORT)])
    gateway.findings = [copy.deepcopy(OTHERS_FINDING)]
    page = documents_page(gateway)
    try:
        groups = page.locator("#documents .document-group")
        _until(page, lambda: groups.count() == 2, what="the groups listed")
        assert page.locator("#findings .finding").count() == 1, "the kept findings stay listed"
        assert page.locator("#findings .finding-delete").count() == 1
        assert page.locator("#documents-section button").count() == 0
    finally:
        page.close()


# --- drawn on the views ------------------------------------------------------------------------


def test_the_graphics_are_drawn_where_their_series_is_shown_on_their_plane(documents_page):
    polygon = [[-10.0, -5.0, 5.0], [10.0, -5.0, 5.0], [0.0, 12.0, 5.0]]
    report = {"series": SR, "title": "Imaging Measurement Report", "groups": [
        _group("Lesion 1", "polygon", polygon),
        _group("Seed", "point", [[4.0, 6.0, 5.3]], ["2.25.99", CT]),
        _group("Axis", "line", [[0.0, 0.0, 5.0], [8.0, 0.0, 5.0]]),
        _group("Path", "polyline", [[0.0, 0.0, 5.0], [4.0, 4.0, 5.0], [8.0, 0.0, 5.0]]),
        _group("Deeper", "polygon", [[x, y, 10.0] for x, y, _z in polygon]),
    ]}
    gateway = DocumentsGateway(_ready(layout="1x3", views=[{"kind": "axial", "layers": [CT]},
                                                           {"kind": "axial", "layers": [PET]},
                                                           {"kind": "3d", "layers": [CT]}]), [report])
    page = documents_page(gateway)
    try:
        _on_plane(page, gateway, 5.0, range(3))
        drawn = _shapes(page, 0).locator(".shape.document")
        _until(page, lambda: drawn.count() == 4, what="the graphics on the CT's plane")
        box = _box(page, 0)
        outline = _shapes(page, 0).locator(".shape.document.polygon polygon.outline")
        assert outline.count() == 1, "the polygon 5 mm off the plane is drawn"
        assert np.allclose(_points(outline.get_attribute("points")), _pixels(box, polygon), atol=0.15), (
            outline.get_attribute("points"), _pixels(box, polygon))
        assert _shapes(page, 0).locator(".shape.document.polygon text").text_content() == "Lesion 1"
        seed = _shapes(page, 0).locator(".shape.document.point circle.outline")
        assert seed.count() == 1
        centre = [float(seed.get_attribute(name) or "nan") for name in ("cx", "cy")]
        assert np.allclose(centre, _pixels(box, [[4.0, 6.0, 5.3]])[0], atol=0.15), centre
        line = _shapes(page, 0).locator(".shape.document.line line.outline")
        assert line.count() == 1
        assert np.allclose([float(line.get_attribute(name) or "nan") for name in ("x1", "y1", "x2", "y2")],
                           [v for point in _pixels(box, [[0, 0, 5], [8, 0, 5]]) for v in point], atol=0.15)
        assert _shapes(page, 0).locator(".shape.document.polyline polyline.outline").count() == 1
        assert _shapes(page, 0).locator(".shape.document.polyline polygon").count() == 0, "a polyline closed"
        assert all(drawn.nth(i).get_attribute("data-document-group") for i in range(4))
        assert _shapes(page, 1).locator(".shape.document").count() == 0, "drawn over another series"
        assert _shapes(page, 2).locator(".shape.document").count() == 0, "drawn on a 3-D view"

        _on_plane(page, gateway, 10.0, range(1))  # 5 mm deeper: only the deeper polygon lies there
        _until(page, lambda: drawn.count() == 1, what="the graphics of another slice")
        assert _shapes(page, 0).locator(".shape.document.polygon text").text_content() == "Deeper"

        gateway.send({"type": "documents", "documents": []})
        _until(page, lambda: drawn.count() == 0, what="the graphics gone with their documents")
        assert gateway.page_errors == []
    finally:
        page.close()


# --- other systems' strings and malformed documents ---------------------------------------------


def test_a_label_with_markup_is_shown_as_text(documents_page):
    markup = '<img src=x onerror="window.__injected = 1">'
    report = {"series": SR, "title": f"<b>{markup}</b>", "date": "2025-03-02", "class": markup, "groups": [
        {**_group(markup, "point", [[0.0, 0.0, 0.0]]), "finding": "<i>bold</i>", "site": markup,
         "measurements": [{"name": markup, "value": 1.5, "unit": "<sup>2</sup>"}]}]}
    gateway = DocumentsGateway(_ready(), [report])
    page = documents_page(gateway)
    try:
        _on_plane(page, gateway, 0.0, range(1))
        _until(page, lambda: _shapes(page, 0).locator(".shape.document").count() == 1, what="the point drawn")
        assert _texts(page, "#documents .document-group-label") == [markup]
        assert _texts(page, "#documents .document-title") == [f"<b>{markup}</b> · 2025-03-02"]
        assert _texts(page, "#documents .document-group-what") == [f"<i>bold</i> · {markup}"]
        assert _texts(page, "#documents .document-measurement") == [f"{markup} 1.5 <sup>2</sup>"]
        assert _texts(page, ".view svg.shapes .shape.document text") == [markup]
        assert page.locator("#documents-section img, #documents-section b, #documents-section i").count() == 0
        assert page.locator("svg.shapes img, svg.shapes foreignObject").count() == 0
        page.wait_for_timeout(300)
        assert page.evaluate("() => window.__injected") is None
        assert gateway.page_errors == []
    finally:
        page.close()


def test_malformed_documents_cost_only_themselves(documents_page):
    broken = {"series": SR, "title": "Broken", "date": 20250302, "class": ["x"], "groups": [
        None, "group", 7, [],
        {"label": "Bad graphic", "measurements": [
            {"name": "Volume", "value": "NaN", "unit": "ml"}, {"name": "SUV", "value": "Infinity"},
            "junk", None, {"name": "Area", "value": 3.5, "unit": "mm2"}, {"name": "Mean", "value": True}],
         "graphic": {"shape": "polygon", "points_mm": [[0.0, 0.0, 0.0]], "series": [CT]}},
        _group("Bad points", "line", [["NaN", 0.0, 0.0], [1.0, 2.0, "x"]]),
        _group("Bad shape", "circle", [[0.0, 0.0, 0.0]]),
        {**_group("Bad series", "point", [[0.0, 0.0, 0.0]]),
         "graphic": {"shape": "point", "points_mm": [[0.0, 0.0, 0.0]], "series": CT}},
        {"label": 5, "finding": None, "measurements": "many", "graphic": "a picture"},
    ]}
    documents: list[Any] = [
        "a report", None, 3, [], {"title": "No groups"}, {"title": "Groups not a list", "groups": "many"},
        {"title": "Groups an object", "groups": {"0": REPORT["groups"][0]}},
        broken,
        {**copy.deepcopy(REPORT), "groups": [_group("Good", "point", [[2.0, 2.0, 0.0]])]},
    ]
    gateway = DocumentsGateway(_ready(tools=NURSE_LIKE_TOOLS), documents)
    page = documents_page(gateway)
    try:
        _on_plane(page, gateway, 0.0, range(1))
        for sent in ({}, {"documents": "many"}, {"documents": {"0": REPORT}}, {"documents": None}):
            gateway.send({"type": "documents", **sent})
        gateway.send({"type": "documents", "documents": documents})
        labels = "#documents .document-group-label"
        _until(page, lambda: "Good" in _texts(page, labels), what="the valid document listed")
        titles = _texts(page, "#documents .document-title")
        assert titles == ["Broken", "Imaging Measurement Report · 2025-03-02"], titles
        assert page.locator("#documents .document-title").first.get_attribute("title") is None
        listed = _texts(page, labels)
        assert listed == ["Bad graphic", "Bad points", "Bad shape", "Bad series", "unnamed", "Good"], listed
        bad = page.locator("#documents .document-group").first
        assert _texts(bad, ".document-measurement") == ["Area 3.5 mm2"]
        text = page.locator("#documents-section").text_content() or ""
        assert "NaN" not in text and "Infinity" not in text and "true" not in text, text
        # Only the valid graphic is drawn: a polygon of one point, NaN points, an unknown shape are not.
        drawn = _shapes(page, 0).locator(".shape.document")
        _until(page, lambda: drawn.count() == 1, what="the valid point drawn")
        assert drawn.locator("text").text_content() == "Good"
        assert page.locator("#measure-panel").is_visible()
        assert gateway.page_errors == [], gateway.page_errors
    finally:
        page.close()
