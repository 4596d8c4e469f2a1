"""The derive panel's "Reorient" part, against a scripted server (as test_viewer_derive_client.py).

The gateway announces ``ready.derive.reorient`` as ``reorient_vocabulary()`` describes it; the panel
offers exactly those operations, the quarter turns only for a rotation, and sends a ``derive`` of
the active view's series (a tilt its angle). No part when the server announces none. The crop
box part sends ``crop`` for the active view (null to uncrop) and a ``derive`` of ``crop``.
"""

from __future__ import annotations

import math

import pytest

from rendering.engine.reorient import reorient_vocabulary
from tests.rendering.scripted import until as _until
from tests.rendering.test_viewer_derive_client import (  # noqa: F401
    DERIVE,
    DeriveGateway,
    _asked,
    _one_view,
    derive_page,
)
from tests.rendering.test_viewer_measure_client import (
    ANSWERS,
    CT,
    LINE,
    _at,
    _box,
    _canvas,
    _drag,
    _measured,
    _options,
    _ready,
    _text,
)

pytestmark = pytest.mark.browser

REORIENT = reorient_vocabulary()


def test_the_reorient_part_offers_the_announced_operations_and_sends_a_derive(derive_page):  # noqa: F811
    gateway = DeriveGateway(_one_view(), derive={**DERIVE, "reorient": REORIENT})
    page = derive_page(gateway)
    try:
        _until(page, lambda: page.locator("#derive-reorient-part").is_visible(), what="the reorient part")
        assert _options(page, "#derive-reorient") == [spec["name"] for spec in REORIENT]
        page.locator("#derive-reorient").select_option("flip_j")
        assert page.locator("#derive-turns-field").is_hidden()
        page.locator("#derive-reorient").select_option("rotate_z")
        assert page.locator("#derive-turns-field").is_visible()
        assert _options(page, "#derive-turns") == ["1", "2", "3"]
        page.locator("#derive-turns").select_option("2")
        page.locator("#derive-reorient-make").click()
        assert _asked(page, gateway, "derive") == [{"type": "derive", "operation": "rotate_z", "series": [CT],
                                                    "parameters": {"turns": 2}}]
        assert page.locator("#derive-reorient-make").is_disabled(), "a second while the first is unanswered"
        assert not gateway.page_errors
    finally:
        page.close()


def test_a_tilt_sends_its_angle_and_refuses_zero(derive_page):  # noqa: F811
    gateway = DeriveGateway(_one_view(), derive={**DERIVE, "reorient": REORIENT})
    page = derive_page(gateway)
    try:
        _until(page, lambda: page.locator("#derive-reorient-part").is_visible(), what="the reorient part")
        page.locator("#derive-reorient").select_option("tilt_x")
        assert page.locator("#derive-turns-field").is_hidden()
        assert page.locator("#derive-degrees-field").is_visible()
        page.locator("#derive-degrees").fill("0")
        assert page.locator("#derive-reorient-make").is_disabled()
        page.locator("#derive-degrees").fill("-12.5")
        page.locator("#derive-reorient-make").click()
        assert _asked(page, gateway, "derive") == [{"type": "derive", "operation": "tilt_x", "series": [CT],
                                                    "parameters": {"degrees": -12.5}}]
        assert not gateway.page_errors
    finally:
        page.close()


def test_no_reorient_part_when_none_is_announced(derive_page):  # noqa: F811
    gateway = DeriveGateway(_one_view())
    page = derive_page(gateway)
    try:
        _until(page, lambda: page.locator("#derive-section").is_visible(), what="the panel")
        assert page.locator("#derive-reorient-part").is_hidden()
        assert not gateway.page_errors
    finally:
        page.close()


def test_the_crop_box_crops_the_view_uncrops_it_and_makes_a_series(derive_page):  # noqa: F811
    gateway = DeriveGateway(_one_view(), derive={**DERIVE, "reorient": REORIENT,
                                                 "crop": {"operation": "crop", "space": "box"}})
    page = derive_page(gateway)
    try:
        _until(page, lambda: page.locator("#derive-crop-part").is_visible(), what="the crop part")
        assert page.locator("#derive-crop-view").is_disabled(), "no box yet"
        edges = page.locator("#derive-crop-box input[data-edge]")
        for at, value in enumerate(["10", "90", "0", "80", "5", "2"]):
            edges.nth(at).fill(value)
        assert page.locator("#derive-crop-view").is_disabled(), "k_min above k_max"
        edges.nth(5).fill("45.5")
        page.locator("#derive-crop-view").click()
        box = [10, 90, 0, 80, 5, 45.5]
        assert _asked(page, gateway, "crop") == [{"type": "crop", "view": 0, "box": box}]
        page.locator("#derive-uncrop").click()
        assert _asked(page, gateway, "crop", 2)[1] == {"type": "crop", "view": 0, "box": None}
        page.locator("#derive-crop-make").click()
        assert _asked(page, gateway, "derive") == [{"type": "derive", "operation": "crop", "series": [CT],
                                                    "space": "box", "box": box}]
        assert not gateway.page_errors
    finally:
        page.close()


def test_align_to_the_measured_line_turns_about_the_views_normal_by_the_lines_angle(derive_page, monkeypatch):  # noqa: F811
    start, end = [10.0, 30.0, 25.0], [10.0, -20.0, 5.0]  # on a sagittal plane: 50 mm back, 20 mm down
    monkeypatch.setitem(ANSWERS, "line", {**LINE, "start_mm": start, "end_mm": end})
    gateway = DeriveGateway(_ready(views=[{"kind": "sagittal", "layers": [CT]}]),
                            derive={**DERIVE, "reorient": REORIENT})
    page = derive_page(gateway)
    try:
        _until(page, lambda: page.locator("#derive-reorient-part").is_visible(), what="the reorient part")
        page.locator("#derive-reorient-line").click()
        assert "measure a line" in _text(page, "#derive-status")
        _canvas(page, 0).focus()
        page.keyboard.press("l")
        box = _box(page, 0)
        _drag(page, _at(box, .3, .4), _at(box, .7, .6))
        _measured(page, gateway, "line")
        page.locator("#derive-reorient-line").click()
        along, across = end[1] - start[1], end[2] - start[2]
        if along < 0:
            along, across = -along, -across
        degrees = round(math.degrees(math.atan2(across, along)), 1)
        assert page.locator("#derive-reorient").input_value() == "tilt_x"
        assert float(page.locator("#derive-degrees").input_value()) == degrees
        page.locator("#derive-reorient-make").click()
        assert _asked(page, gateway, "derive") == [{"type": "derive", "operation": "tilt_x", "series": [CT],
                                                    "parameters": {"degrees": degrees}}]
        assert not gateway.page_errors
    finally:
        page.close()
