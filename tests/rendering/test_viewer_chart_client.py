"""The viewer's charts of a measurement (histogram, time-activity curve), against a scripted server.

As in test_viewer_measure_client.py, Playwright's websocket routing plays the
gateway: it measures as that file's gateway does and answers each ``chart``
with a canned answer (a real PNG and a table), so each test sees exactly what
the client sends and shows. The page shows the server's picture and the
numbers as an HTML table; it computes none of them.
"""

from __future__ import annotations

import base64
import copy
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.rendering.scripted import until as _until
from tests.rendering.test_viewer_measure_client import (
    CT,
    PET,
    REFUSAL,
    SERIES,
    ScriptedGateway,
    _at,
    _box,
    _click,
    _drag,
    _measured,
    _ready,
    measure_page,  # noqa: F401
)

pytestmark = pytest.mark.browser

CHARTS = {"histogram": ["ellipse", "rectangle", "polygon", "sphere", "threshold"], "tac": ["sphere"]}
CHART_SIZE = (320, 180)


def _png(colour: tuple[int, int, int]) -> str:
    pixels = np.zeros((CHART_SIZE[1], CHART_SIZE[0], 3), np.uint8)
    pixels[40:150, 60:300] = colour
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _picture(series: str, unit: str, table: dict[str, Any], voxels: int) -> dict[str, Any]:
    return {"series_id": series, "unit": unit, "voxels": voxels, "table": table, "encoding": "png",
            "width": CHART_SIZE[0], "height": CHART_SIZE[1], "image": _png((77, 163, 255))}


HISTOGRAMS = [_picture(CT, "HU", {"edges": [-10.5, -0.5, 9.5], "counts": [12, 30]}, 42),
              _picture(PET, "SUV", {"edges": [0.5, 1.25, 2.0, 2.75], "counts": [5, 0, 37]}, 42)]
CURVE = [_picture(PET, "SUV", {"time": [1, 2, 3], "time_unit": "time point", "mean": [1.5, 2.25, 3.0],
                               "max": [4.0, 5.5, 6.125]}, 33)]


class ChartGateway(ScriptedGateway):
    """The measuring gateway, which also answers ``chart`` (or refuses it, as for a nurse)."""

    def __init__(self, ready: dict[str, Any], *, refuse_charts: bool = False) -> None:
        super().__init__(ready)
        self.refuse_charts = refuse_charts

    def on_message(self, message: str | bytes) -> None:
        super().on_message(message)
        data = self.received[-1]
        if data["type"] != "chart":
            return
        if self.refuse_charts:
            self.send({"type": "error", "code": "refused", "message": REFUSAL, "of": "chart"})
            return
        self.send({"type": "chart", "view": data["view"], "kind": data["kind"], "tool": data["tool"],
                   "points": data["points"],
                   "charts": copy.deepcopy(HISTOGRAMS if data["kind"] == "histogram" else CURVE)})


def _ready_with_charts(*, charts: dict[str, list[str]] | None = CHARTS, dynamic: bool = False,
                       **overrides: Any) -> dict[str, Any]:
    ready = _ready(**overrides)
    if charts is not None:
        ready["vocabulary"]["charts"] = charts
    if dynamic:
        ready["series"] = [dict(series, time_points=5, kind="dynamic") if series["uid"] == PET else series
                           for series in copy.deepcopy(SERIES)]
    return ready


def _cells(page, figure: str) -> list[list[str]]:
    rows = page.locator(f"#chart figure.chart-figure[data-unit='{figure}'] table.chart-values tr")
    return rows.evaluate_all("rows => rows.map((row) => Array.from(row.cells, (cell) => cell.textContent))")


def _loaded_width(page, figure: str) -> int:
    return page.locator(f"#chart figure.chart-figure[data-unit='{figure}'] img.chart-picture").evaluate(
        "img => img.complete ? img.naturalWidth : 0")


def test_the_histogram_button_asks_for_the_chart_and_shows_the_picture_and_the_table(measure_page):  # noqa: F811
    gateway = ChartGateway(_ready_with_charts())
    page = measure_page(gateway)
    try:
        histogram, tac = page.locator("#chart-histogram"), page.locator("#chart-tac")
        assert not histogram.is_visible() and not tac.is_visible(), "a chart button before a measurement"
        page.locator("#measure-tool").select_option("ellipse")
        box = _box(page, 0)
        _drag(page, _at(box, .3, .3), _at(box, .5, .6))
        _measured(page, gateway, "ellipse")
        _until(page, histogram.is_visible, what="the Histogram button")
        assert not tac.is_visible(), "a time-activity curve offered for an ellipse on a static series"
        histogram.click()
        _until(page, lambda: gateway.sent("chart"), what="the chart message")
        measured = gateway.sent("measure", tool="ellipse")[-1]
        assert gateway.sent("chart") == [{"type": "chart", "kind": "histogram", "view": 0, "tool": "ellipse",
                                          "points": measured["points"]}]
        figures = page.locator("#chart figure.chart-figure")
        _until(page, lambda: figures.count() == 2, what="a chart per layer")
        assert [figures.nth(i).get_attribute("data-unit") for i in range(2)] == ["HU", "SUV"]
        assert "PT (SUV)" in (figures.nth(1).locator("figcaption").text_content() or "")
        _until(page, lambda: _loaded_width(page, "SUV") == CHART_SIZE[0], what="the server's picture decoded")
        assert _cells(page, "SUV") == [["from (SUV)", "to (SUV)", "count"], ["0.5", "1.25", "5"],
                                       ["1.25", "2", "0"], ["2", "2.75", "37"]]
        assert _cells(page, "HU") == [["from (HU)", "to (HU)", "count"], ["-10.5", "-0.5", "12"],
                                      ["-0.5", "9.5", "30"]]
        assert page.locator("#chart").get_attribute("data-kind") == "histogram"

        # Another measurement: the chart was of the one before, so it goes.
        _drag(page, _at(box, .55, .55), _at(box, .7, .75))
        _until(page, lambda: len(gateway.sent("measure", tool="ellipse")) > 1 and figures.count() == 0,
               what="the chart of the earlier ellipse gone")
        assert len(gateway.sent("chart")) == 1, "a chart asked without the button"
    finally:
        page.close()


def test_a_sphere_on_a_dynamic_series_is_offered_its_time_activity_curve(measure_page):  # noqa: F811
    gateway = ChartGateway(_ready_with_charts(dynamic=True))
    page = measure_page(gateway)
    try:
        page.locator("#measure-tool").select_option("sphere")
        _click(page, _at(_box(page, 0), .5, .5))
        _measured(page, gateway, "sphere")
        tac = page.locator("#chart-tac")
        _until(page, tac.is_visible, what="the Time-activity curve button")
        assert page.locator("#chart-histogram").is_visible()
        tac.click()
        _until(page, lambda: gateway.sent("chart"), what="the chart message")
        sphere = gateway.sent("measure", tool="sphere")[-1]
        assert gateway.sent("chart") == [{"type": "chart", "kind": "tac", "view": 0, "tool": "sphere",
                                          "points": sphere["points"], "radius_mm": 10}]
        _until(page, lambda: page.locator("#chart figure.chart-figure").count() == 1, what="the curve")
        _until(page, lambda: _loaded_width(page, "SUV") == CHART_SIZE[0], what="the server's picture decoded")
        assert _cells(page, "SUV") == [["time point", "mean (SUV)", "max (SUV)"], ["1", "1.5", "4"],
                                       ["2", "2.25", "5.5"], ["3", "3", "6.125"]]
        assert tac.get_attribute("aria-pressed") == "true"
    finally:
        page.close()


def test_no_chart_is_offered_unannounced_and_a_refused_chart_ends_measuring(measure_page):  # noqa: F811
    gateway = ChartGateway(_ready_with_charts(charts=None, dynamic=True))
    page = measure_page(gateway)
    try:
        page.locator("#measure-tool").select_option("sphere")
        _click(page, _at(_box(page, 0), .5, .5))
        _measured(page, gateway, "sphere")
        page.wait_for_timeout(200)
        assert not page.locator("#chart-controls").is_visible(), "a chart the server did not announce"
    finally:
        page.close()

    gateway = ChartGateway(_ready_with_charts(), refuse_charts=True)
    page = measure_page(gateway)
    try:
        page.locator("#measure-tool").select_option("rectangle")
        box = _box(page, 0)
        _drag(page, _at(box, .3, .3), _at(box, .5, .6))
        _measured(page, gateway, "rectangle")
        page.locator("#chart-histogram").click()
        _until(page, lambda: "refused" in (page.locator("#error").text_content() or ""), what="the refusal")
        _until(page, lambda: page.locator("#measure-refused").is_visible(), what="measuring refused")
        assert not page.locator("#chart-controls").is_visible()
        assert page.locator("#chart figure").count() == 0
    finally:
        page.close()
