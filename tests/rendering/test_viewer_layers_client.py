"""The viewer's "Layers of the active view" list, against a scripted server.

As in test_viewer_registration_client.py, Playwright's websocket routing plays the
gateway: it announces ``ready`` with `set fuse`, `visible` and `order`, and view 0
fusing a PET and an MR over a CT. It keeps each view's layers as the session does
(rendering/session.py: a hidden layer drawn with opacity 0, its own opacity kept;
`order` moves a fused layer; `fuse` with a fused series takes it off) and answers
every ``set`` of a layer with a frame whose overlay ``windows`` lists the layers in
draw order, or, when told to, with the ``error`` the session would send. Frames name
no series: which row is which comes from ``ready`` and what the reader changed.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.rendering.scripted import canvas as _canvas
from tests.rendering.scripted import until as _until
from tests.rendering.scripted import viewer_pages
from tests.rendering.test_viewer_measure_client import CT, PET, SERIES, ScriptedGateway, _ready, _text

pytestmark = pytest.mark.browser

MR = "2.25.23"
LAYER_SERIES = [*SERIES, {**SERIES[0], "uid": MR, "modality": "MR", "description": "T1 post contrast",
                          "number": 3, "units": ""}]
WINDOWS = {CT: {"center": 40.0, "width": 400.0, "unit": "HU", "modality": "CT", "palette": "grey"},
           PET: {"center": 2.5, "width": 5.0, "unit": "SUV", "modality": "PT", "palette": "hot_iron"},
           MR: {"center": 300.0, "width": 600.0, "unit": "native", "modality": "MR", "palette": "grey"}}
REFUSED = "the base layer is always shown, first: choose a fused layer (layer 1 or more)"


class LayersGateway(ScriptedGateway):
    """Keeps each view's layers as the session does and draws them into every frame's windows."""

    def __init__(self, ready: dict[str, Any]) -> None:
        ready = copy.deepcopy(ready)
        ready["series"] = LAYER_SERIES
        settings = ready["vocabulary"]["settings"]
        settings["fuse"] = {"identifier": True}
        settings["visible"] = {"flag": True}
        settings["order"] = {"min": 1, "max": 3, "integer": True}
        super().__init__(ready)
        self.page_errors: list[str] = []
        self.refuse_next = False
        self.layers = {index: [{"series": uid, "opacity": 1.0 if at == 0 else 0.5, "hidden": False,
                                "palette": WINDOWS[uid]["palette"]} for at, uid in enumerate(view["layers"])]
                       for index, view in enumerate(ready["views"])}
        for index in self.layers:
            self.overlays[index] = {"kind": "axial", "slice": [20, 40], "windows": self.windows(index)}

    def windows(self, view: int) -> list[dict[str, Any]]:
        return [{**WINDOWS[layer["series"]], "palette": layer["palette"],
                 "opacity": 0.0 if layer["hidden"] else layer["opacity"]} for layer in self.layers[view]]

    def on_message(self, message: str | bytes) -> None:
        super().on_message(message)
        data = self.received[-1]
        if data["type"] != "set" or data["name"] not in {"visible", "order", "fuse", "opacity", "palette"}:
            return
        if self.refuse_next:
            self.refuse_next = False
            self.send({"type": "error", "code": "refused", "of": "set", "view": data["view"],
                       "message": REFUSED})
            return
        layers = self.layers[data["view"]]
        name, value, at = data["name"], data["value"], data.get("layer", 0)
        if name == "fuse":
            layers[1:] = [layer for layer in layers[1:] if layer["series"] != value]
        elif name == "order":
            layers.insert(value, layers.pop(at))
        elif name == "visible":
            layers[at]["hidden"] = not value
        else:
            layers[at][name] = value
        self.frame(data["view"], windows=self.windows(data["view"]))


@pytest.fixture(scope="module")
def layers_page(served_demo):
    with viewer_pages(served_demo) as open_page:
        yield open_page


def _fused_view(**kwargs: Any) -> dict[str, Any]:
    """View 0 fuses the PET and the MR over the CT; view 1 shows the CT alone."""
    return _ready(layout="1x2", views=[{"kind": "axial", "layers": [CT, PET, MR]},
                                       {"kind": "axial", "layers": [CT]}], **kwargs)


def _rows(page):
    return page.locator("#layers-list .layer-item")


def _row(page, layer: int):
    return page.locator(f"#layers-list .layer-item[data-layer='{layer}']")


def _control(page, layer: int, role: str):
    return _row(page, layer).locator(f"[data-role='{role}']")


def _names(page) -> list[str]:
    return [" ".join(name.split()) for name in page.locator("#layers-list .layer-name").all_text_contents()]


def _layer_sets(gateway: LayersGateway) -> list[dict[str, Any]]:
    return [m for m in gateway.sent("set") if m["name"] in {"visible", "order", "fuse", "opacity", "palette"}]


def _set(name: str, value: Any, layer: int) -> dict[str, Any]:
    """A `set` of a layer of view 0, exactly as the page should send it."""
    return {"type": "set", "view": 0, "name": name, "value": value, "layer": layer}


def _asked(page, gateway: LayersGateway, count: int) -> list[dict[str, Any]]:
    _until(page, lambda: len(_layer_sets(gateway)) >= count, what=f"{count} layer setting(s) sent")
    return _layer_sets(gateway)


def test_the_list_names_each_layer_and_hides_for_a_single_layer_view(layers_page):
    gateway = LayersGateway(_fused_view())
    page = layers_page(gateway)
    try:
        _canvas(page, 0).focus()
        _until(page, lambda: page.locator("#layers-section").is_visible(), what="the list")
        assert _text(page, "#layers-title") == "Layers of the active view"
        assert _names(page) == ["Thorax", "PET WB", "T1 post contrast"]
        assert _rows(page).count() == 3
        assert _row(page, 0).locator("input, select, button").count() == 0, "the base has no controls"
        fused = page.locator("#layers-list .layer-item:not(.layer-base)")
        assert fused.count() == 2
        assert [_row(page, layer).get_attribute("data-series") for layer in (1, 2)] == [PET, MR]
        for layer, name in ((1, "PET WB"), (2, "T1 post contrast")):
            assert _control(page, layer, "visible").is_checked()
            assert _control(page, layer, "visible").get_attribute("aria-label") == f"show {name}"
            assert _control(page, layer, "opacity").input_value() == "0.5"
            remove = _control(page, layer, "remove")
            assert remove.get_attribute("aria-label") == f"remove {name} from the view"
        assert _control(page, 1, "palette").input_value() == "hot_iron"
        assert _control(page, 2, "palette").input_value() == "grey"
        assert _control(page, 1, "up").is_disabled() and _control(page, 1, "down").is_enabled()
        assert _control(page, 2, "up").is_enabled() and _control(page, 2, "down").is_disabled()

        _canvas(page, 1).focus()
        _until(page, lambda: page.locator("#layers-section").is_hidden(), what="the list gone for one layer")
        _canvas(page, 0).focus()
        _until(page, lambda: page.locator("#layers-section").is_visible(), what="the list back")
        assert not _layer_sets(gateway) and not gateway.page_errors
    finally:
        page.close()


def test_a_one_layer_view_has_no_list(layers_page):
    gateway = LayersGateway(_ready(views=[{"kind": "axial", "layers": [CT]}]))
    page = layers_page(gateway)
    try:
        page.wait_for_timeout(200)
        assert page.locator("#layers-section").is_hidden()
        assert _rows(page).count() == 0
        assert not gateway.page_errors
    finally:
        page.close()


def test_hiding_a_layer_sends_visible_and_stays_hidden_through_opacity_0_frames(layers_page):
    gateway = LayersGateway(_fused_view())
    page = layers_page(gateway)
    try:
        _canvas(page, 0).focus()
        box = _control(page, 1, "visible")
        box.uncheck()
        assert _asked(page, gateway, 1) == [_set("visible", False, 1)]
        _until(page, lambda: gateway.overlays[0]["windows"][1]["opacity"] == 0.0, what="the hidden frame")
        sequence = gateway.sequences[0]
        _until(page, lambda: _canvas(page, 0).get_attribute("data-sequence") == str(sequence),
               what="the frame shown")
        page.wait_for_timeout(1700)  # past the while an asked change outlives stale frames
        gateway.frame(0)
        _until(page, lambda: _canvas(page, 0).get_attribute("data-sequence") == str(sequence + 1),
               what="a later frame shown")
        assert not box.is_checked(), "a frame with opacity 0 does not show the layer again"
        assert _row(page, 1).get_attribute("data-shown") == "false"
        assert _control(page, 1, "opacity").input_value() == "0.5", "the kept opacity, not 0"

        # Moved while hidden: the server keeps it for when the layer is shown again.
        slider = _control(page, 1, "opacity")
        slider.focus()
        slider.press("ArrowRight")
        sent = _asked(page, gateway, 2)[-1]
        assert sent == {"type": "set", "view": 0, "name": "opacity", "value": 0.55, "layer": 1}
        assert not box.is_checked()

        box.check()
        assert _asked(page, gateway, 3)[-1] == {"type": "set", "view": 0, "name": "visible", "value": True,
                                                 "layer": 1}
        _until(page, lambda: gateway.overlays[0]["windows"][1]["opacity"] == 0.55, what="shown again")
        page.wait_for_timeout(200)
        assert box.is_checked() and _control(page, 1, "opacity").input_value() == "0.55"
        assert not gateway.page_errors
    finally:
        page.close()


def test_the_opacity_slider_and_palette_send_the_layer(layers_page):
    gateway = LayersGateway(_fused_view())
    page = layers_page(gateway)
    try:
        _canvas(page, 0).focus()
        slider = _control(page, 2, "opacity")
        slider.fill("0.8")
        sent = _asked(page, gateway, 1)
        assert sent[-1] == {"type": "set", "view": 0, "name": "opacity", "value": 0.8, "layer": 2}
        assert all(m["layer"] == 2 and m["name"] == "opacity" for m in sent)
        _until(page, lambda: " ".join(_text(page, "#layers-list [data-layer='2'] output").split()) == "80%",
               what="the value shown")
        _control(page, 2, "palette").select_option("rainbow")
        assert _asked(page, gateway, len(sent) + 1)[-1] == {"type": "set", "view": 0, "name": "palette",
                                                             "value": "rainbow", "layer": 2}
        _until(page, lambda: gateway.overlays[0]["windows"][2]["palette"] == "rainbow",
               what="the palette frame")
        page.wait_for_timeout(200)
        assert _control(page, 2, "palette").input_value() == "rainbow"
        assert _control(page, 2, "opacity").input_value() == "0.8"
        assert not gateway.page_errors
    finally:
        page.close()


def test_moving_a_layer_up_sends_order_and_the_rows_follow(layers_page):
    gateway = LayersGateway(_fused_view())
    page = layers_page(gateway)
    try:
        _canvas(page, 0).focus()
        _control(page, 2, "visible").uncheck()
        _asked(page, gateway, 1)
        up = _control(page, 2, "up")
        up.focus()
        page.keyboard.press("Enter")
        assert _asked(page, gateway, 2)[-1] == _set("order", 1, 2)
        _until(page, lambda: _names(page) == ["Thorax", "T1 post contrast", "PET WB"], what="the rows moved")
        assert [_row(page, layer).get_attribute("data-series") for layer in (1, 2)] == [MR, PET]
        assert not _control(page, 1, "visible").is_checked(), "hidden follows the series, not the place"
        assert _control(page, 2, "visible").is_checked()
        assert _control(page, 1, "up").is_disabled()
        focused = page.evaluate("() => [document.activeElement.dataset.role,"
                                " document.activeElement.closest('.layer-item').dataset.series]")
        assert focused == ["down", MR], "the keyboard stays on the moved layer"
        # The frames that follow say the same order.
        _until(page, lambda: gateway.overlays[0]["windows"][1]["modality"] == "MR",
               what="the server moved it")
        page.wait_for_timeout(300)
        assert _names(page) == ["Thorax", "T1 post contrast", "PET WB"]
        assert _control(page, 2, "palette").input_value() == "hot_iron"
        assert not gateway.page_errors
    finally:
        page.close()


def test_remove_sends_fuse_with_that_series(layers_page):
    gateway = LayersGateway(_fused_view())
    page = layers_page(gateway)
    try:
        _canvas(page, 0).focus()
        _control(page, 1, "remove").click()
        assert _asked(page, gateway, 1) == [{"type": "set", "view": 0, "name": "fuse", "value": PET}]
        _until(page, lambda: _names(page) == ["Thorax", "T1 post contrast"], what="the row gone")
        _until(page, lambda: len(gateway.overlays[0]["windows"]) == 2, what="the server took it off")
        page.wait_for_timeout(300)
        assert _names(page) == ["Thorax", "T1 post contrast"]
        _control(page, 1, "remove").click()
        assert _asked(page, gateway, 2)[-1] == {"type": "set", "view": 0, "name": "fuse", "value": MR}
        _until(page, lambda: page.locator("#layers-section").is_hidden(), what="one layer left: no list")
        assert not gateway.page_errors
    finally:
        page.close()


def test_a_refused_change_is_undone_and_the_next_frame_resyncs(layers_page):
    gateway = LayersGateway(_fused_view())
    page = layers_page(gateway)
    try:
        _canvas(page, 0).focus()
        gateway.refuse_next = True
        _control(page, 2, "up").click()
        assert _asked(page, gateway, 1) == [_set("order", 1, 2)]
        _until(page, lambda: REFUSED in _text(page, "#error"), what="the refusal on the status line")
        _until(page, lambda: _names(page) == ["Thorax", "PET WB", "T1 post contrast"], what="the order back")

        gateway.refuse_next = True
        _control(page, 1, "visible").click()  # not uncheck(): the refusal may check it again first
        assert _asked(page, gateway, 2)[-1] == {"type": "set", "view": 0, "name": "visible", "value": False,
                                                 "layer": 1}
        _until(page, lambda: _control(page, 1, "visible").is_checked(), what="the checkbox back")
        gateway.frame(0)
        page.wait_for_timeout(300)
        assert _control(page, 1, "visible").is_checked()
        assert _row(page, 1).get_attribute("data-shown") == "true"
        assert not gateway.page_errors
    finally:
        page.close()
