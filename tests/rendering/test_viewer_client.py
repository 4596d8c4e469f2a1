"""The bundled viewer client in Debian's chromium, against a scripted server.

Playwright's websocket routing stands in for the gateway's socket, so the
test decides exactly which frames arrive and in what order, and what close
code ends the socket; the page itself is the real viewer page served by the
real gateway to a signed-in doctor.
"""

from __future__ import annotations

import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from rendering.protocol import Encoding, frame_pack
from tests.test_browser import CHROMIUM, CHROMIUM_FLAGS

pytestmark = pytest.mark.browser

SIZE = 256


def _encoded(colour: tuple[int, int, int], encoding: Encoding, *, noise: bool = False) -> bytes:
    pixels = np.zeros((SIZE, SIZE, 3), dtype=np.uint8)
    pixels[:] = colour
    if noise:  # an incompressible PNG decodes far slower than a flat JPEG
        pixels = np.random.default_rng(1).integers(0, 256, size=(2048, 2048, 3), dtype=np.uint8)
        pixels[:, :] = (pixels * 0.05 + np.array(colour) * 0.95).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG" if encoding is Encoding.PNG else "JPEG",
                                 quality=95)
    return buffer.getvalue()


def _frame(sequence: int, quality: int, colour: tuple[int, int, int], encoding: Encoding,
           **kwargs) -> bytes:
    image = _encoded(colour, encoding, **kwargs)
    width, height = Image.open(io.BytesIO(image)).size
    return frame_pack(view=0, sequence=sequence, quality=quality, encoding=encoding, width=width,
                      height=height, overlay={"kind": "axial"}, image=image)



def _ramp(*anchors: tuple[int, int, int], stops: int = 17) -> list[str]:
    """A palette as the server announces it: evenly spaced colours, low to high."""
    where = np.linspace(0, 1, stops)
    at = np.linspace(0, 1, len(anchors))
    channels = [np.rint(np.interp(where, at, [anchor[c] for anchor in anchors])).astype(int)
                for c in range(3)]
    return ["#" + bytes(int(v) for v in rgb).hex() for rgb in zip(*channels, strict=True)]


# What the gateway announces in ``ready`` (rendering/protocol.py), written out so the
# scripted gateway does not depend on the server's code.
VOCABULARY = {
    "settings": {
        "kind": {"choices": ["native", "axial", "coronal", "sagittal", "oblique", "3d"]},
        "slab_mode": {"choices": ["none", "mip", "minip", "average"]},
        "slab_thickness": {"min": 0, "max": 500},
        "window_preset": {"choices": ["abdomen", "lung", "bone", "brain", "suv_0_5", "suv_0_10"]},
        "volume_preset": {"choices": ["ct_bone", "ct_soft_tissue", "ct_lung", "pet_mip"]},
        "palette": {"choices": ["grey", "hot_iron", "rainbow", "inverted"]},
        "opacity": {"min": 0, "max": 1},
        "series": {"identifier": True},
    },
    "inputs": {
        "scroll": {"delta": {"min": -2000, "max": 2000, "integer": True}},
        "window": {"dc": {"min": -10000, "max": 10000}, "dw": {"min": -10000, "max": 10000}},
        "zoom": {"factor": {"min": 0.05, "max": 20}},
        "pan": {"dx": {"min": -4, "max": 4}, "dy": {"min": -4, "max": 4}},
        "rotate": {"dazimuth": {"min": -360, "max": 360}, "delevation": {"min": -360, "max": 360}},
        "tilt": {"dtilt": {"min": -180, "max": 180}, "dspin": {"min": -180, "max": 180}},
        "focus": {"x": {"min": 0, "max": 4096, "integer": True},
                  "y": {"min": 0, "max": 4096, "integer": True}},
        "frame": {"index": {"min": 0, "max": 100000, "integer": True}},
        "time": {"index": {"min": 0, "max": 4095, "integer": True}},
        "reset": {},
    },
    "layouts": ["1x1", "1x2", "1x3", "2x2", "petct", "compare"],
    "palettes": {
        "grey": _ramp((0, 0, 0), (255, 255, 255)),
        "hot_iron": _ramp((0, 0, 0), (128, 0, 0), (255, 64, 0), (255, 192, 0), (255, 255, 255)),
        "rainbow": _ramp((0, 0, 0), (0, 0, 255), (0, 255, 255), (0, 255, 0), (255, 255, 0), (255, 0, 0)),
        "inverted": _ramp((255, 255, 255), (0, 0, 0)),
    },
}

READY = json.dumps({"type": "ready", "study": {"uid": "2.25.1"}, "layout": "1x1",
                    "limits": {"max_message_bytes": 8192, "messages_per_second": 120},
                    "vocabulary": VOCABULARY,
                    "views": [{"kind": "axial", "layers": ["2.25.2"]}],
                    "series": [{"uid": "2.25.2", "modality": "CT", "description": ""}]})


@pytest.fixture(scope="module")
def viewer_page(served_demo):
    from playwright.sync_api import sync_playwright

    doctor = served_demo.doctor()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 600, "height": 600})
        context.add_cookies([{"name": c.name, "value": c.value, "url": served_demo.base}
                             for c in doctor.jar])

        def open_page(script):
            page = context.new_page()
            page.route_web_socket("**/ws/viewer/**", script)
            page.goto(f"{served_demo.base}/viewer/{served_demo.study_uid}/")
            page.locator("canvas[data-view='0']").wait_for()
            return page

        yield open_page
        browser.close()


def _centre_colour(page) -> list[int]:
    return page.evaluate("""() => {
        const canvas = document.querySelector("canvas[data-view='0']");
        const pixel = canvas.getContext('2d').getImageData(canvas.width / 2, canvas.height / 2, 1, 1).data;
        return [pixel[0], pixel[1], pixel[2]];
    }""")


def _wait(page, attribute: str, value: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if page.locator("canvas[data-view='0']").get_attribute(attribute) == value:
            return
        time.sleep(0.05)
    raise AssertionError(f"{attribute} never became {value}")


def test_a_slow_older_frame_never_paints_over_a_newer_one(viewer_page):
    acks: list[int] = []

    def script(ws):
        def on_message(message):
            data = json.loads(message)
            if data["type"] == "ack":
                acks.append(data["seq"])
            if data["type"] == "resize" and not acks and not getattr(ws, "sent", False):
                ws.sent = True
                ws.send(_frame(5, 1, (255, 0, 0), Encoding.PNG, noise=True))   # slow to decode
                ws.send(_frame(6, 0, (0, 0, 255), Encoding.JPEG))              # fast, newer
        ws.on_message(on_message)
        ws.send(READY)

    page = viewer_page(script)
    _wait(page, "data-sequence", "6")
    deadline = time.monotonic() + 10
    while 5 not in acks and time.monotonic() < deadline:
        time.sleep(0.05)
    red, _green, blue = _centre_colour(page)
    page.close()
    assert blue > 200 and red < 60, "the older PNG was painted over the newer frame"
    assert {5, 6} <= set(acks), "a dropped frame is still acknowledged"


@pytest.mark.parametrize(("code", "words"), [(4401, "sign in again"), (4403, "access ended"),
                                             (4404, "not available")])
def test_a_close_code_clears_the_views_and_stops_reconnecting(viewer_page, code, words):
    connections: list[object] = []

    def script(ws):
        connections.append(ws)

        def on_message(message):
            data = json.loads(message)
            if data["type"] == "resize" and not getattr(ws, "sent", False):
                ws.sent = True
                ws.send(_frame(1, 1, (0, 255, 0), Encoding.JPEG))
            elif data["type"] == "ack":
                ws.close(code=code, reason="")
        ws.on_message(on_message)
        ws.send(READY)

    page = viewer_page(script)
    deadline = time.monotonic() + 10
    status = ""
    while time.monotonic() < deadline and words not in status:
        status = page.text_content("#status") or ""
        time.sleep(0.05)
    page.wait_for_timeout(1500)
    colour = _centre_colour(page)
    cleared = page.locator("canvas[data-view='0']").get_attribute("data-cleared")
    page.close()
    assert words in status, status
    assert len(connections) == 1, f"the client reconnected after {code}"
    assert cleared == "true" and colour == [0, 0, 0], "the last frame stayed on screen"
