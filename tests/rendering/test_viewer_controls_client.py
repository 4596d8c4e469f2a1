"""The viewer's menus, key map, palette, blend, slab and colour bar, against a scripted server.

As in test_viewer_client.py, Playwright's websocket routing plays the gateway:
it announces a vocabulary in ``ready`` (sometimes a deliberately unusual one),
answers each view's first ``resize`` with a frame, and sends whatever frame
overlay a test asks for, so each test sees exactly what the client sends and
draws.
"""

from __future__ import annotations

import copy
import io
import json
import re
from typing import Any

import numpy as np
import pytest
from PIL import Image

from rendering.protocol import Encoding, frame_pack
from tests.rendering.scripted import canvas as _canvas
from tests.rendering.scripted import until as _until
from tests.rendering.test_viewer_client import VOCABULARY, viewer_page  # noqa: F401

pytestmark = pytest.mark.browser

CT = "2.25.20"
PET = "2.25.21"
SERIES = [
    {"uid": CT, "modality": "CT", "description": "CT", "number": 1, "images": 40, "kind": "volume",
     "plane": "axial", "mpr": True, "colour": False, "frame_time_ms": None, "available": True},
    {"uid": PET, "modality": "PT", "description": "PET", "number": 2, "images": 40, "kind": "volume",
     "plane": "axial", "mpr": True, "colour": False, "frame_time_ms": None, "available": True},
]
CT_WINDOW = {"center": 40, "width": 400, "unit": "HU", "modality": "CT", "palette": "grey", "opacity": 1.0}
SUV_WINDOW = {"center": 2.5, "width": 5, "unit": "SUV", "modality": "PT", "palette": "hot_iron",
              "opacity": 0.5}
# Nothing like the server's own: a client that draws these read them from the vocabulary.
ODD_HOT_IRON = ["#000000", "#123456", "#abcdef", "#ff8800", "#ffffff"]


def _ready(*, vocabulary: dict[str, Any] | None = VOCABULARY, layout: str = "1x1",
           views: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    ready = {"type": "ready", "study": {"uid": "2.25.1", "description": "PET/CT"}, "layout": layout,
             "limits": {"max_message_bytes": 8192, "messages_per_second": 120, "message_burst": 240},
             "views": views or [{"kind": "axial", "layers": [CT]}], "series": SERIES}
    if vocabulary is not None:
        ready["vocabulary"] = vocabulary
    return ready


def _fused_ready(vocabulary: dict[str, Any] = VOCABULARY) -> dict[str, Any]:
    """View 0 fuses PET over CT; view 1 shows the CT alone."""
    return _ready(vocabulary=vocabulary, layout="1x2",
                  views=[{"kind": "axial", "layers": [CT, PET]}, {"kind": "axial", "layers": [CT]}])


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), colour, dtype=np.uint8)).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


class ScriptedGateway:
    """Announces ``ready``, records what the page sends, sends frames on request."""

    def __init__(self, ready: dict[str, Any]) -> None:
        self.ready = ready
        self.received: list[dict[str, Any]] = []
        self.sequences: dict[int, int] = {}
        self.socket: Any = None

    def __call__(self, ws: Any) -> None:
        self.socket = ws
        ws.on_message(self.on_message)
        ws.send(json.dumps(self.ready))

    def on_message(self, message: str | bytes) -> None:
        data = json.loads(message)
        self.received.append(data)
        if data["type"] == "resize" and data["view"] not in self.sequences:
            windows = [CT_WINDOW, SUV_WINDOW][:len(self.ready["views"][data["view"]]["layers"])]
            self.frame(data["view"], {"kind": "axial", "slice": [20, 40], "windows": windows})

    def frame(self, view: int, overlay: dict[str, Any], colour: tuple[int, int, int] = (90, 90, 90)) -> None:
        self.sequences[view] = self.sequences.get(view, 0) + 1
        self.socket.send(frame_pack(view=view, sequence=self.sequences[view], quality=1,
                                    encoding=Encoding.JPEG, width=64, height=64, overlay=overlay,
                                    image=_jpeg(colour)))

    def sent(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        return [m for m in self.received
                if m["type"] == kind and all(m.get(k) == v for k, v in fields.items())]


def _open(viewer_page, gateway: ScriptedGateway):  # noqa: F811
    page = viewer_page(gateway)
    for view in range(len(gateway.ready["views"])):
        _until(page, lambda view=view: _canvas(page, view).get_attribute("data-sequence") == "1",
               what=f"the first frame of view {view}")
    return page


def _options(page, select: str) -> list[str]:
    return [value for value in page.locator(f"{select} option").evaluate_all(
        "options => options.map((option) => option.value)") if value]


def _facts(page, view: int = 0) -> str:
    return page.locator(f".view:nth-child({view + 1}) .overlay .facts").text_content() or ""


def _colour_bar(page, view: int):
    return page.locator(f".view:nth-child({view + 1}) .overlay .colour-bar")


def _gradient(bar) -> list[str]:
    image = bar.locator(".colour-ramp").evaluate("ramp => getComputedStyle(ramp).backgroundImage")
    return ["#" + bytes(map(int, rgb)).hex() for rgb in re.findall(r"rgb\((\d+), (\d+), (\d+)\)", image)]


def _press(page, key: str) -> None:
    page.keyboard.press({" ": "Space"}.get(key, key))


def test_menus_and_keys_are_built_from_an_announced_vocabulary(viewer_page):  # noqa: F811
    vocabulary = copy.deepcopy(VOCABULARY)
    settings = vocabulary["settings"]
    settings["palette"]["choices"] = ["grey", "hot_iron"]
    settings["kind"]["choices"] = ["native", "axial", "3d"]
    settings["window_preset"]["choices"] = ["lung", "abdomen"]
    settings["slab_mode"]["choices"] = ["none", "mip"]
    del settings["volume_preset"], vocabulary["inputs"]["reset"]
    vocabulary["layouts"] = ["1x1", "2x2"]
    gateway = ScriptedGateway(_ready(vocabulary=vocabulary))
    page = _open(viewer_page, gateway)
    try:
        assert _options(page, "#palette") == ["grey", "hot_iron"]
        assert _options(page, "#view-kind") == ["native", "axial", "3d"]
        assert _options(page, "#window-preset") == ["lung", "abdomen"]
        assert _options(page, "#slab-mode") == ["none", "mip"]
        assert _options(page, "#volume-preset") == []
        assert not page.locator("#volume-preset").is_visible(), "a menu of nothing is offered"
        assert _options(page, "#layout") == ["1x1", "2x2"]
        keys = page.locator("#key-map .help-row").evaluate_all("rows => rows.map((row) => row.dataset.key)")
        assert {"1", "2", "i", "a", "v", "m", "n"} <= set(keys)
        assert not {"3", "c", "s", "o", "p", "r"} & set(keys), "keys of unannounced names are listed"

        _canvas(page, 0).focus()
        for key in ("c", "s", "3", "p", "r", "1", "m", "m", "m"):
            _press(page, key)
        _until(page, lambda: len(gateway.sent("set", name="slab_mode")) == 3, what="three slab modes")
        assert [m["value"] for m in gateway.sent("set", name="window_preset")] == ["lung"]
        assert gateway.sent("set", name="kind") == [], "a key for an unannounced kind sent something"
        assert not gateway.sent("set", name="volume_preset") and not gateway.sent("input", op="reset")
        assert [m["value"] for m in gateway.sent("set", name="slab_mode")] == ["mip", "none", "mip"]

        page.locator("#layout").select_option("2x2")
        _until(page, lambda: gateway.sent("layout"), what="the layout message")
        assert gateway.sent("layout") == [{"type": "layout", "layout": "2x2"}]
    finally:
        page.close()


def test_a_ready_without_a_vocabulary_falls_back_to_the_old_servers(viewer_page):  # noqa: F811
    gateway = ScriptedGateway(_ready(vocabulary=None))
    page = _open(viewer_page, gateway)
    try:
        assert _options(page, "#view-kind") == ["native", "axial", "coronal", "sagittal", "oblique", "3d"]
        assert _options(page, "#layout") == ["1x1", "1x2", "1x3", "2x2", "petct"]
        _canvas(page, 0).focus()
        _press(page, "m")
        _press(page, "c")
        _until(page, lambda: gateway.sent("set", name="kind"), what="set kind")
        assert [m["value"] for m in gateway.sent("set", name="slab_mode")] == ["mip"]
        assert [m["value"] for m in gateway.sent("set", name="kind")] == ["coronal"]
    finally:
        page.close()


def test_choosing_a_palette_sets_the_coloured_layer_of_the_active_view(viewer_page):  # noqa: F811
    gateway = ScriptedGateway(_fused_ready())
    page = _open(viewer_page, gateway)
    try:
        _canvas(page, 0).focus()
        assert page.locator("#palette").input_value() == "hot_iron", "the PET layer's palette is shown"
        page.locator("#palette").select_option("rainbow")
        _until(page, lambda: gateway.sent("set", name="palette"), what="set palette")
        _canvas(page, 1).focus()
        assert page.locator("#palette").input_value() == "grey"
        page.locator("#palette").select_option("inverted")
        _until(page, lambda: len(gateway.sent("set", name="palette")) == 2, what="a second set palette")
        assert gateway.sent("set", name="palette") == [
            {"type": "set", "view": 0, "name": "palette", "value": "rainbow", "layer": 1},
            {"type": "set", "view": 1, "name": "palette", "value": "inverted", "layer": 0}]
    finally:
        page.close()


def test_the_colour_bar_shows_the_window_the_unit_and_the_announced_palette(viewer_page):  # noqa: F811
    vocabulary = copy.deepcopy(VOCABULARY)
    vocabulary["palettes"]["hot_iron"] = ODD_HOT_IRON
    gateway = ScriptedGateway(_fused_ready(vocabulary))
    page = _open(viewer_page, gateway)
    try:
        fused, ct = _colour_bar(page, 0), _colour_bar(page, 1)
        _until(page, lambda: fused.count() == 1, what="the fused view's colour bar")
        assert fused.locator(".colour-high").text_content() == "5"
        assert fused.locator(".colour-low").text_content() == "0"
        assert fused.locator(".colour-unit").text_content() == "SUV"
        assert _gradient(fused) == ODD_HOT_IRON
        assert ct.count() == 0, "a grey CT has no colour bar"

        gateway.frame(1, {"kind": "axial", "windows": [{**CT_WINDOW, "palette": "rainbow"}]})
        _until(page, lambda: ct.count() == 1, what="the colour bar of a CT in rainbow")
        assert [ct.locator(f".colour-{edge}").text_content() for edge in ("high", "unit", "low")] == [
            "240", "HU", "-160"]
        assert _gradient(ct) == VOCABULARY["palettes"]["rainbow"]

        gateway.frame(1, {"kind": "axial", "windows": [{**SUV_WINDOW, "palette": "grey", "center": 5,
                                                        "width": 10, "unit": "BQML"}]})
        _until(page, lambda: ct.locator(".colour-unit").text_content() == "BQML", what="a grey PET's bar")
        assert ct.locator(".colour-high").text_content() == "10"
        assert _gradient(ct) == VOCABULARY["palettes"]["grey"]
    finally:
        page.close()


def test_the_blend_slider_sets_layer_1_of_a_fused_view_only(viewer_page):  # noqa: F811
    gateway = ScriptedGateway(_fused_ready())
    page = _open(viewer_page, gateway)
    slider = page.locator("#opacity")
    try:
        _canvas(page, 0).focus()
        gateway.frame(0, {"kind": "axial", "windows": [CT_WINDOW, {**SUV_WINDOW, "opacity": 0.7}]})
        _until(page, lambda: slider.input_value() == "0.7", what="the overlay's opacity on the slider")
        assert page.locator("#opacity-value").text_content() == "70%"
        assert slider.is_visible() and slider.is_enabled()

        slider.fill("0.3")
        _until(page, lambda: gateway.sent("set", name="opacity"), what="set opacity")
        assert gateway.sent("set", name="opacity")[-1] == {
            "type": "set", "view": 0, "name": "opacity", "value": 0.3, "layer": 1}

        _canvas(page, 1).focus()
        assert not slider.is_visible() and slider.is_disabled(), "a single-layer view offers a blend"
        _canvas(page, 0).focus()
        assert slider.is_visible() and slider.input_value() == "0.3"
        assert {(m["view"], m["layer"]) for m in gateway.sent("set", name="opacity")} == {(0, 1)}
    finally:
        page.close()


def test_zoom_and_slab_are_on_screen_and_the_slab_controls_send_them(viewer_page):  # noqa: F811
    gateway = ScriptedGateway(_ready())
    page = _open(viewer_page, gateway)
    try:
        gateway.frame(0, {"kind": "axial", "slice": [20, 40], "windows": [CT_WINDOW], "zoom": 1.5,
                          "slab": {"mode": "mip", "thickness_mm": 10.0}})
        _until(page, lambda: "zoom 1.5\N{MULTIPLICATION SIGN}" in _facts(page), what="the zoom factor")
        assert "MIP 10 mm" in _facts(page) and "20 / 40" in _facts(page)
        assert page.locator("#slab-mode").input_value() == "mip"
        assert page.locator("#slab-thickness").input_value() == "10"

        page.locator("#slab-mode").select_option("minip")
        page.locator("#slab-thickness").fill("25")
        page.locator("#slab-thickness").press("Enter")
        page.locator("#window-preset").select_option("lung")
        _until(page, lambda: gateway.sent("set", name="window_preset"), what="set window_preset")
        assert [(m["name"], m["value"]) for m in gateway.sent("set")] == [
            ("slab_mode", "minip"), ("slab_thickness", 25), ("window_preset", "lung")]
        assert page.locator("#window-preset").input_value() == "", "the preset menu returns to its prompt"
    finally:
        page.close()


def _expected(sends: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """The message a row of the key map says its key sends, given the settings so far."""
    if "next_of" not in sends:
        return {**sends, "view": 0}
    choices = sends["next_of"]
    at = choices.index(state[sends["name"]]) if state.get(sends["name"]) in choices else -1
    return {"type": "set", "view": 0, "name": sends["name"], "value": choices[(at + 1) % len(choices)]}


def _sent_since(gateway: ScriptedGateway, before: int, kind: str) -> list[dict[str, Any]]:
    return [m for m in gateway.received[before:] if m["type"] == kind]


def _press_client_only(page, key: str) -> None:
    """Keys that change the page, not the server: cine, reference lines, the key map itself."""
    if key == " ":
        _press(page, key)
        assert page.locator("#cine-play").get_attribute("aria-pressed") == "true"
        _press(page, key)
        assert page.locator("#cine-play").get_attribute("aria-pressed") == "false"
    elif key == "?":
        _press(page, key)
        assert not page.locator("#help").evaluate("help => help.open")
        _press(page, key)
        assert page.locator("#help").evaluate("help => help.open")
    else:
        _press(page, key)


def test_every_key_in_the_on_screen_map_sends_what_the_map_says(viewer_page):  # noqa: F811
    gateway = ScriptedGateway(_ready())
    page = _open(viewer_page, gateway)
    try:
        page.locator("#help summary").click()
        rows = page.locator("#key-map .help-row").evaluate_all(
            "rows => rows.map((row) => [row.dataset.key, row.dataset.sends || null, row.textContent])")
        keys = [key for key, _sends, _text in rows]
        presets = VOCABULARY["settings"]["window_preset"]["choices"]
        assert set(keys) == {"ArrowUp", "ArrowDown", "PageUp", "PageDown", *map(str, range(1, 7)),
                             "i", "a", "c", "s", "o", "v", "m", "n", "[", "]", "p", "r", ",", ".", "x",
                             " ", "?"}
        assert page.locator("#key-map").is_visible()

        canvas = _canvas(page, 0)
        state: dict[str, Any] = {"slab_mode": "none"}
        for key, sends, text in rows:
            assert text.strip(), f"the row of {key!r} says nothing"
            canvas.focus()
            before = len(gateway.received)
            if sends is None:
                _press_client_only(page, key)
                page.wait_for_timeout(150)
                assert not [m for m in gateway.received[before:] if m["type"] in ("set", "layout")], key
                continue
            expected = _expected(json.loads(sends), state)
            if key.isdigit():
                assert expected["value"] == presets[int(key) - 1], f"key {key} is not preset {key}"
            _press(page, key)
            kind = expected["type"]
            _until(page, lambda before=before, kind=kind: _sent_since(gateway, before, kind),
                   what=f"the message of {key!r}")
            got = _sent_since(gateway, before, kind)
            assert got == [expected], (key, got)
            if expected["type"] == "set":
                state[expected["name"]] = expected["value"]
        slab_modes = len(gateway.sent("set", name="slab_mode"))
        page.keyboard.press("Control+m")  # a shortcut with a modifier is not the key map's
        page.wait_for_timeout(150)
        assert len(gateway.sent("set", name="slab_mode")) == slab_modes
    finally:
        page.close()


def test_overlay_text_is_outlined_for_a_white_background(viewer_page):  # noqa: F811
    gateway = ScriptedGateway(_ready(views=[{"kind": "3d", "layers": [PET]}]))
    page = _open(viewer_page, gateway)
    try:
        gateway.frame(0, {"kind": "3d", "windows": [{**SUV_WINDOW, "palette": "inverted"}],
                          "orientation": {"top": "H", "bottom": "F", "left": "R", "right": "L"}},
                      colour=(255, 255, 255))
        _until(page, lambda: _colour_bar(page, 0).count() == 1, what="the 3-D frame")
        for selector in (".facts", ".edge.top", ".colour-high", ".colour-unit"):
            style = page.locator(f".overlay {selector}").evaluate(
                "node => { const s = getComputedStyle(node); return [s.color, s.textShadow]; }")
            assert style[1] != "none" and "rgb(0, 0, 0)" in style[1], (selector, style)
        backing = page.locator(".overlay .facts").evaluate("node => getComputedStyle(node).backgroundColor")
        alpha = float(re.findall(r"[\d.]+", backing)[3]) if backing.startswith("rgba") else 1.0
        assert alpha >= 0.3, backing
    finally:
        page.close()
