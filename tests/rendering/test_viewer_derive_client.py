"""The viewer's "Filters and arithmetic" panel, against a scripted server.

As in test_viewer_registration_client.py, Playwright's websocket routing plays the
gateway: it announces ``ready`` with ``derive`` (three filters as
``filters_vocabulary()`` describes them, and the arithmetic operations), a CT
and a PET series, answers every ``resize`` with a frame and records what the
page sends. ``filter_preview`` and ``derived`` answers are sent by each test
when it wants them, so each step checks exactly what the panel sends and
shows; the client computes no filter.
"""

from __future__ import annotations

import base64
import copy
import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.rendering.scripted import canvas as _canvas
from tests.rendering.scripted import until as _until
from tests.rendering.scripted import viewer_pages
from tests.rendering.test_viewer_measure_client import (
    CT,
    PET,
    SERIES,
    ScriptedGateway,
    _options,
    _ready,
    _text,
)

pytestmark = pytest.mark.browser

CT_LOW_DOSE = "2.25.22"
THREE_SERIES = [*SERIES, {**SERIES[0], "uid": CT_LOW_DOSE, "description": "Low dose", "number": 3}]
DERIVED = "drv:7"
DESCRIPTION = "Derived: median (radius_mm 2.5) of Thorax"
REFUSED = "PET WB is in another frame of reference: register it onto the first series first"
# As rendering.engine.filters.filters_vocabulary() describes them; curvature_flow offered in 2-D
# only here, so the dimension menu is seen to follow the filter.
FILTERS = [
    {"name": "gaussian", "domain": "spatial", "description": "Gaussian smoothing (recursive, ITK).",
     "dims": [2, 3], "params": [{"name": "sigma_mm", "unit": "mm", "default": 1.0, "minimum": 0.05,
                                 "maximum": 50.0, "integer": False,
                                 "description": "Standard deviation of the Gaussian."}]},
    {"name": "median", "domain": "spatial", "description": "Median of a box neighbourhood.",
     "dims": [2, 3], "params": [{"name": "radius_mm", "unit": "mm", "default": 1.0, "minimum": 0.0,
                                 "maximum": 10.0, "integer": False, "description": "Half-width."}]},
    {"name": "curvature_flow", "domain": "spatial", "description": "Curvature flow smoothing.",
     "dims": [2], "params": [
         {"name": "time_step", "unit": "x stable step", "default": 0.5, "minimum": 0.01, "maximum": 1.0,
          "integer": False, "description": "Fraction of the stable step."},
         {"name": "iterations", "unit": "", "default": 5, "minimum": 1, "maximum": 100, "integer": True,
          "description": "Iterations."}]},
]
DERIVE = {"filters": FILTERS, "arithmetic": ["difference", "ratio", "weighted_sum"]}


def _png(colour: tuple[int, int, int]) -> str:
    """A solid-colour picture of a 64 x 64 view, base64 as ``filter_preview`` carries it."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), colour, dtype=np.uint8)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


RED = _png((255, 0, 0))


def _preview_answer(view: int = 0, filter_name: str = "median", image: str = RED) -> dict[str, Any]:
    return {"type": "filter_preview", "view": view, "filter": filter_name, "encoding": "png",
            "width": 64, "height": 64, "image": image}


def _derived(identifier: int, state: str, **fields: Any) -> dict[str, Any]:
    """A ``derived`` message as rendering.derived_reading sends it."""
    return {"type": "derived", "id": identifier, "state": state, "series": f"drv:{identifier}",
            "operation": "median", "description": DESCRIPTION, "reason": "", **fields}


class DeriveGateway(ScriptedGateway):
    """The measure tests' gateway, announcing ``derive`` (or not: a reader who may not report)."""

    def __init__(self, ready: dict[str, Any], *, derive: dict[str, Any] | None = DERIVE) -> None:
        ready = copy.deepcopy(ready)
        ready["derive"] = copy.deepcopy(derive)
        super().__init__(ready)
        self.page_errors: list[str] = []

    def ready_again(self, series: list[dict[str, Any]]) -> None:
        """The ``ready`` the gateway sends once a derived series is made: the list includes it."""
        self.ready = {**copy.deepcopy(self.ready), "series": series}
        self.send(self.ready)


@pytest.fixture(scope="module")
def derive_page(served_demo):
    with viewer_pages(served_demo) as open_page:
        yield open_page


def _one_view(series: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    ready = _ready(views=[{"kind": "axial", "layers": [CT]}])
    if series is not None:
        ready["series"] = series
    return ready


def _status(page) -> str:
    return " ".join(_text(page, "#derive-status").split())


def _params(page) -> list[dict[str, str]]:
    return page.locator("#derive-params input").evaluate_all(
        """inputs => inputs.map((input) => ({name: input.dataset.param, min: input.min, max: input.max,
            step: input.step, value: input.value, label: input.closest('label').textContent.trim()}))""")


def _preview(page, view: int = 0):
    return page.locator(f".view:nth-child({view + 1}) .filter-preview img")


def _asked(page, gateway: DeriveGateway, kind: str, count: int = 1) -> list[dict[str, Any]]:
    _until(page, lambda: len(gateway.sent(kind)) >= count, what=f"{kind} sent")
    return gateway.sent(kind)


def _quiet(page, gateway: DeriveGateway) -> None:
    """Wait until the page has stopped resizing its views and shows their latest frames."""
    for _ in range(30):
        before = len(gateway.received)
        page.wait_for_timeout(300)
        if len(gateway.received) == before and all(
                _canvas(page, view).get_attribute("data-sequence") == str(sequence)
                for view, sequence in gateway.sequences.items()):
            return
    raise AssertionError("the views never settled")


def _result(page, identifier: int):
    return page.locator(f"#derive-results .derive-result[data-derived='{identifier}']")


def test_the_panel_is_built_from_the_announced_filters_and_operations(derive_page):
    gateway = DeriveGateway(_one_view())
    page = derive_page(gateway)
    try:
        _until(page, lambda: page.locator("#derive-section").is_visible(), what="the panel")
        assert _options(page, "#derive-filter") == ["gaussian", "median", "curvature_flow"]
        titles = page.locator("#derive-filter option").evaluate_all("options => options.map((o) => o.title)")
        assert titles == [spec["description"] for spec in FILTERS]
        assert _params(page) == [{"name": "sigma_mm", "min": "0.05", "max": "50", "step": "any", "value": "1",
                                  "label": "sigma (mm)"}]
        assert _options(page, "#derive-dims") == ["2", "3"]
        assert page.locator("#derive-dims").input_value() == "3"
        assert _text(page, "#derive-base") == "CT · Thorax", "the active view's base series"

        page.locator("#derive-filter").select_option("curvature_flow")
        assert _params(page) == [
            {"name": "time_step", "min": "0.01", "max": "1", "step": "any", "value": "0.5",
             "label": "time step (x stable step)"},
            {"name": "iterations", "min": "1", "max": "100", "step": "1", "value": "5",
             "label": "iterations"}]
        assert _options(page, "#derive-dims") == ["2"]
        # A value out of its range is not sent: the panel says why.
        page.locator("#derive-params input[data-param='iterations']").fill("2.5")
        assert page.locator("#derive-preview").is_disabled()
        assert page.locator("#derive-filter-make").is_disabled()
        assert _status(page) == "iterations: a whole number from 1 to 100"
        page.locator("#derive-params input[data-param='iterations']").fill("7")
        assert page.locator("#derive-preview").is_enabled() and _status(page) == ""

        assert _options(page, "#derive-operation") == ["difference", "ratio", "weighted_sum"]
        terms = page.locator("#derive-terms .derive-term")
        assert [terms.nth(i).is_visible() for i in range(4)] == [True, True, False, False]
        assert _options(page, "#derive-terms .derive-term:nth-child(1) select") == [CT, PET]
        assert page.locator("#derive-terms .derive-term:nth-child(1) select").input_value() == CT
        assert page.locator("#derive-terms .derive-term:nth-child(2) select").input_value() == PET
        page.locator("#derive-operation").select_option("weighted_sum")
        assert [terms.nth(i).is_visible() for i in range(4)] == [True, True, True, True]
        assert _options(page, "#derive-terms .derive-term:nth-child(3) select") == ["", CT, PET]
        assert not gateway.sent("derive") and not gateway.sent("filter_preview") and not gateway.page_errors
    finally:
        page.close()


def test_a_reader_who_may_not_report_gets_no_panel(derive_page):
    gateway = DeriveGateway(_one_view(), derive=None)
    page = derive_page(gateway)
    try:
        page.wait_for_timeout(200)
        assert page.locator("#derive-section").is_hidden()
        assert not gateway.page_errors
    finally:
        page.close()


def test_a_preview_is_shown_over_its_view_until_the_next_frame(derive_page):
    gateway = DeriveGateway(_one_view())
    page = derive_page(gateway)
    try:
        _quiet(page, gateway)
        page.locator("#derive-filter").select_option("median")
        page.locator("#derive-params input[data-param='radius_mm']").fill("2.5")
        page.locator("#derive-preview").click()
        sent = _asked(page, gateway, "filter_preview")
        assert sent == [{"type": "filter_preview", "view": 0, "filter": "median",
                         "parameters": {"radius_mm": 2.5}}]
        assert isinstance(sent[0]["parameters"]["radius_mm"], float)

        gateway.send(_preview_answer())
        preview = _preview(page)
        _until(page, lambda: preview.count() == 1 and preview.is_visible(), what="the preview over view 1")
        assert preview.get_attribute("src") == f"data:image/png;base64,{RED}"
        _until(page, lambda: preview.evaluate("img => img.complete && img.naturalWidth") == 64,
               what="the preview decoded")
        assert preview.evaluate("""img => { const c = document.createElement('canvas');
            c.width = c.height = 8; const g = c.getContext('2d'); g.drawImage(img, 0, 0, 8, 8);
            return Array.from(g.getImageData(4, 4, 1, 1).data.slice(0, 3)); }""") == [255, 0, 0]
        box = _canvas(page, 0).bounding_box()
        shown = preview.bounding_box()
        assert box and shown, "the canvas and the preview on screen"
        assert abs(box["width"] - shown["width"]) < 1 and abs(box["height"] - shown["height"]) < 1
        caption = _text(page, ".view:nth-child(1) .filter-preview")
        assert "preview: median" in caption and "resolution" not in caption
        assert page.locator("#derive-hide").is_enabled()

        # The view's next frame is the view as it is: the preview goes.
        gateway.frame(0)
        _until(page, lambda: _preview(page).count() == 0, what="the preview gone with the next frame")
        assert _canvas(page, 0).get_attribute("data-sequence") == str(gateway.sequences[0])
        assert page.locator("#derive-hide").is_disabled()

        # Or the reader hides it.
        page.locator("#derive-preview").click()
        _asked(page, gateway, "filter_preview", 2)
        gateway.send({**_preview_answer(), "reduced": 2})  # filtered at half resolution
        _until(page, lambda: _preview(page).count() == 1, what="the second preview")
        assert "preview: median (at half resolution)" in _text(page, ".view:nth-child(1) .filter-preview")
        page.locator("#derive-hide").click()
        assert _preview(page).count() == 0
        # Every parameter of a filter is sent, as numbers.
        page.locator("#derive-filter").select_option("curvature_flow")
        page.locator("#derive-preview").click()
        third = _asked(page, gateway, "filter_preview", 3)[-1]
        assert third == {"type": "filter_preview", "view": 0, "filter": "curvature_flow",
                         "parameters": {"time_step": 0.5, "iterations": 5}}
        assert not gateway.page_errors
    finally:
        page.close()


def test_live_preview_keeps_at_most_one_request_in_flight(derive_page):
    gateway = DeriveGateway(_one_view())
    page = derive_page(gateway)
    try:
        sigma = page.locator("#derive-params input[data-param='sigma_mm']")
        page.locator("#derive-live").check()
        _asked(page, gateway, "filter_preview")  # checking it previews what is set
        sigma.fill("2")
        sigma.fill("3")
        sigma.fill("4")
        page.wait_for_timeout(700)
        assert len(gateway.sent("filter_preview")) == 1, "a second preview while the first is unanswered"

        gateway.send(_preview_answer(filter_name="gaussian"))
        sent = _asked(page, gateway, "filter_preview", 2)
        assert sent[-1] == {"type": "filter_preview", "view": 0, "filter": "gaussian",
                            "parameters": {"sigma_mm": 4}}, "the latest values, once the answer is in"
        sigma.fill("5")
        sigma.fill("6")
        page.wait_for_timeout(700)
        assert len(gateway.sent("filter_preview")) == 2

        # An error answers the preview too: the next one goes, and the panel says it.
        gateway.send({"type": "error", "code": "refused", "of": "filter_preview", "view": 0,
                      "message": "the view is not on the series' own slice plane"})
        sent = _asked(page, gateway, "filter_preview", 3)
        assert sent[-1]["parameters"] == {"sigma_mm": 6}
        assert _status(page) == "preview: refused: the view is not on the series' own slice plane"
        assert page.locator("#derive-status").evaluate("line => line.classList.contains('failed')")
        assert _text(page, "#error") == "", "shown in the panel, not on the status line"
        page.wait_for_timeout(500)
        assert len(gateway.sent("filter_preview")) == 3
        # The answer to it clears the refusal; unchecked, a change sends nothing.
        gateway.send(_preview_answer(filter_name="gaussian"))
        _until(page, lambda: _status(page) == "" and _preview(page).count() == 1, what="the preview shown")
        page.locator("#derive-live").uncheck()
        sigma.fill("7")
        page.wait_for_timeout(500)
        assert len(gateway.sent("filter_preview")) == 3
        assert not gateway.page_errors
    finally:
        page.close()


def test_make_series_follows_the_job_and_shows_the_series_made(derive_page):
    gateway = DeriveGateway(_one_view())
    page = derive_page(gateway)
    try:
        page.locator("#derive-filter").select_option("median")
        page.locator("#derive-params input[data-param='radius_mm']").fill("2.5")
        page.locator("#derive-dims").select_option("2")
        page.locator("#derive-filter-make").click()
        assert _asked(page, gateway, "derive") == [{"type": "derive", "operation": "median", "series": [CT],
                                                    "parameters": {"radius_mm": 2.5}, "dims": 2}]
        assert page.locator("#derive-filter-make").is_disabled(), "a second while the first is unanswered"

        gateway.send(_derived(7, "running"))
        _until(page, lambda: _result(page, 7).count() == 1, what="the job listed")
        assert " ".join(_text(page, "#derive-results [data-derived='7'] .derive-result-text").split()) == \
            f"making {DESCRIPTION}…"
        bar = _result(page, 7).locator("progress")
        assert bar.is_visible() and bar.evaluate("bar => bar.position") == -1, "indeterminate"
        assert page.locator("#derive-filter-make").is_enabled()

        gateway.send(_derived(7, "done"))
        _until(page, lambda: _result(page, 7).get_attribute("data-state") == "done", what="the job done")
        assert _text(page, "#derive-results [data-derived='7'] .derive-result-text") == f"made: {DESCRIPTION}"
        show = _result(page, 7).locator("button.derive-show")
        assert show.is_disabled(), "not listed yet"
        assert _result(page, 7).locator("progress").count() == 0

        # The `ready` that lists it: the panel keeps the reader's choices.
        made = {**SERIES[0], "uid": DERIVED, "modality": "CT", "description": DESCRIPTION, "number": 0}
        gateway.ready_again([*SERIES, made])
        _until(page, lambda: show.is_enabled(), what="the series listed")
        assert page.locator("#derive-filter").input_value() == "median"
        assert page.locator("#derive-params input[data-param='radius_mm']").input_value() == "2.5"
        assert page.locator("#derive-dims").input_value() == "2"
        assert _options(page, "#derive-terms .derive-term:nth-child(2) select") == [CT, PET, DERIVED]
        _until(page, lambda: _canvas(page, 0).get_attribute("data-sequence") is not None,
               what="the views again")
        show.click()
        assert _asked(page, gateway, "set") == [
            {"type": "set", "view": 0, "name": "series", "value": DERIVED}]

        # A job that fails says why.
        page.locator("#derive-filter-make").click()
        _asked(page, gateway, "derive", 2)
        gateway.send(_derived(8, "failed", reason="the worker could not make it"))
        _until(page, lambda: _result(page, 8).count() == 1, what="the failure listed")
        assert _text(page, "#derive-results [data-derived='8'] .derive-result-text") == \
            "failed: the worker could not make it"
        assert _result(page, 7).get_attribute("data-state") == "done"
        assert not gateway.page_errors
    finally:
        page.close()


def test_arithmetic_sends_its_series_and_weights(derive_page):
    gateway = DeriveGateway(_one_view(THREE_SERIES))
    page = derive_page(gateway)
    try:
        _until(page, lambda: page.locator("#derive-section").is_visible(), what="the panel")
        page.locator("#derive-terms .derive-term:nth-child(2) input").fill("0.5")
        page.locator("#derive-arithmetic-make").click()
        assert _asked(page, gateway, "derive") == [
            {"type": "derive", "operation": "difference", "series": [CT, PET], "weights": [1, 0.5],
             "space": "reference"}]

        # A refusal shows in the panel, and the panel may ask again.
        gateway.send({"type": "error", "code": "refused", "of": "derive", "message": REFUSED})
        _until(page, lambda: _status(page) == f"refused: {REFUSED}", what="the refusal in the panel")
        assert page.locator("#derive-status").evaluate("line => line.classList.contains('failed')")
        assert _text(page, "#error") == ""
        assert page.locator("#derive-arithmetic-make").is_enabled()

        page.locator("#derive-operation").select_option("weighted_sum")
        page.locator("#derive-terms .derive-term:nth-child(3) select").select_option(CT)
        assert page.locator("#derive-arithmetic-make").is_disabled(), "the same series twice"
        assert _status(page) == "choose different series"
        page.locator("#derive-terms .derive-term:nth-child(3) select").select_option(CT_LOW_DOSE)
        page.locator("#derive-terms .derive-term:nth-child(3) input").fill("-2")
        page.locator("#derive-space").select_option("union")
        page.locator("#derive-arithmetic-make").click()
        assert _asked(page, gateway, "derive", 2)[-1] == {
            "type": "derive", "operation": "weighted_sum", "series": [CT, PET, CT_LOW_DOSE],
            "weights": [1, 0.5, -2], "space": "union"}
        assert not gateway.page_errors
    finally:
        page.close()
