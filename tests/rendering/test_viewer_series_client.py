"""The viewer's series browser, cine, key map and status line, against a scripted server.

As in test_viewer_client.py, Playwright's websocket routing plays the gateway:
it answers ``ready`` with three series (a volume, a cine loop, one that cannot
be shown), sends thumbnails when asked, and a frame for every ``frame`` input,
so each test sees exactly what the client sends.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
import pytest
from PIL import Image

from rendering.protocol import Encoding, frame_pack
from tests.rendering.scripted import until as _until
from tests.rendering.test_viewer_client import VOCABULARY, viewer_page  # noqa: F401

pytestmark = pytest.mark.browser

VOLUME = "2.25.10"
CINE = "2.25.11"
BROKEN = "2.25.12"
REASON = "the series mixes image sizes and cannot be stacked"
CINE_FRAMES = 3

READY = {
    "type": "ready", "study": {"uid": "2.25.1", "description": "Cardiac follow-up"}, "layout": "1x1",
    "limits": {"max_message_bytes": 8192, "messages_per_second": 120, "message_burst": 240},
    "vocabulary": VOCABULARY,
    "views": [{"kind": "axial", "layers": [VOLUME]}],
    "series": [
        {"uid": VOLUME, "modality": "CT", "description": "Chest", "number": 1, "images": 40,
         "kind": "volume", "plane": "axial", "mpr": True, "colour": False, "frame_time_ms": None,
         "available": True},
        {"uid": CINE, "modality": "US", "description": "Echo loop", "number": 2, "images": CINE_FRAMES,
         "kind": "cine", "plane": "image", "mpr": False, "colour": True, "frame_time_ms": 40,
         "available": True},
        {"uid": BROKEN, "modality": "MR", "description": "Localiser", "number": 3,
         "available": False, "reason": REASON},
    ],
}


def _jpeg(colour: tuple[int, int, int], size: int = 64) -> bytes:
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[:] = colour
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


class ScriptedGateway:
    """Records what the page sends and answers like the gateway would."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.socket: Any = None
        self.sequence = 0

    def __call__(self, ws: Any) -> None:
        self.socket = ws
        ws.on_message(self.on_message)
        ws.send(json.dumps(READY))

    def frame(self, slice_: list[int], kind: str = "axial") -> None:
        self.sequence += 1
        image = _jpeg((90, 90, 90))
        self.socket.send(frame_pack(view=0, sequence=self.sequence, quality=1, encoding=Encoding.JPEG,
                                    width=64, height=64, image=image,
                                    overlay={"kind": kind, "slice": slice_, "mm_per_pixel": 1.0}))

    def on_message(self, message: str | bytes) -> None:
        data = json.loads(message)
        self.received.append(data)
        if data["type"] == "thumbnails":
            for uid, colour in ((VOLUME, (255, 255, 255)), (CINE, (200, 40, 40))):
                self.socket.send(json.dumps({"type": "thumbnail", "series": uid, "encoding": "jpeg",
                                             "image": base64.b64encode(_jpeg(colour)).decode()}))
        elif data["type"] == "resize" and self.sequence == 0:
            self.frame([20, 40])
        elif data["type"] == "set" and data["name"] == "series":
            self.frame([1, CINE_FRAMES], kind="native")
        elif data["type"] == "input" and data["op"] == "frame":
            self.frame([data["index"] + 1, CINE_FRAMES], kind="native")

    def sent(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        return [m for m in self.received
                if m["type"] == kind and all(m.get(k) == v for k, v in fields.items())]


def _open(viewer_page, gateway: ScriptedGateway):  # noqa: F811
    page = viewer_page(gateway)
    _until(page, lambda: page.locator("canvas[data-view='0']").get_attribute("data-sequence") == "1",
           what="the first frame")
    return page


def _thumbnail_drawn(page, uid: str) -> bool:
    return page.locator(f".series-item[data-series='{uid}'] canvas").get_attribute("data-drawn") == "true"


def test_the_strip_lists_every_series_and_clicking_one_shows_it_in_the_active_view(viewer_page):  # noqa: F811
    gateway = ScriptedGateway()
    page = _open(viewer_page, gateway)
    try:
        items = page.locator("#series .series-item")
        assert items.count() == 3
        assert [items.nth(i).get_attribute("data-series") for i in range(3)] == [VOLUME, CINE, BROKEN]
        assert REASON in (items.nth(2).text_content() or "")
        assert "3 frames" in (items.nth(1).text_content() or "")
        assert "40 images" in (items.nth(0).text_content() or "")
        assert len(gateway.sent("thumbnails")) == 1
        _until(page, lambda: _thumbnail_drawn(page, VOLUME) and _thumbnail_drawn(page, CINE),
               what="the thumbnails painted")
        assert not _thumbnail_drawn(page, BROKEN)
        assert items.nth(0).get_attribute("aria-pressed") == "true"

        items.nth(2).click(force=True)  # aria-disabled: Playwright would wait for it forever
        page.wait_for_timeout(300)
        assert gateway.sent("set", name="series") == [], "an unavailable series was requested"

        items.nth(1).click()
        _until(page, lambda: gateway.sent("set", name="series"), what="set series")
        assert gateway.sent("set", name="series") == [
            {"type": "set", "view": 0, "name": "series", "value": CINE}]
        assert items.nth(1).get_attribute("aria-pressed") == "true"
        assert items.nth(0).get_attribute("aria-pressed") == "false"
        assert page.locator("#view-kind").input_value() == "native"
        assert page.locator("#view-kind option[value='coronal']").is_disabled()
        _until(page, lambda: "1 / 3" in (page.text_content(".overlay .facts") or ""),
               what="the overlay's n / N")
        assert "US · Echo loop" in (page.text_content(".overlay .facts") or "")
    finally:
        page.close()


def test_play_steps_the_cine_frames_and_wraps_after_the_last(viewer_page):  # noqa: F811
    gateway = ScriptedGateway()
    page = _open(viewer_page, gateway)
    try:
        page.locator(f".series-item[data-series='{CINE}']").click()
        _until(page, lambda: "1 / 3" in (page.text_content(".overlay .facts") or ""), what="cine frame 1")
        assert page.locator("#cine-fps").input_value() == "25", "frame_time_ms 40 is 25 frames/s"
        page.click("#cine-play")
        _until(page, lambda: len(gateway.sent("input", op="frame")) >= 7, what="seven cine ticks")
        page.click("#cine-play")
        indices = [m["index"] for m in gateway.sent("input", op="frame")]
        assert indices[:7] == [1, 2, 0, 1, 2, 0, 1], indices
        assert all(m["view"] == 0 for m in gateway.sent("input", op="frame"))
        stopped_at = len(indices)
        page.wait_for_timeout(400)
        assert len(gateway.sent("input", op="frame")) <= stopped_at + 1, "pause did not stop the cine"
    finally:
        page.close()


def test_the_first_m_is_mip_and_wheel_down_moves_towards_the_feet(viewer_page):  # noqa: F811
    gateway = ScriptedGateway()
    page = _open(viewer_page, gateway)
    canvas = page.locator("canvas[data-view='0']")
    try:
        page.locator("#reverse-wheel").set_checked(False)
        canvas.focus()
        page.keyboard.press("m")
        page.keyboard.press("m")
        _until(page, lambda: len(gateway.sent("set", name="slab_mode")) == 2, what="two slab modes")
        assert [m["value"] for m in gateway.sent("set", name="slab_mode")] == ["mip", "minip"]

        box = canvas.bounding_box()
        centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        page.mouse.move(*centre)
        page.mouse.wheel(0, 100)
        _until(page, lambda: gateway.sent("input", op="scroll"), what="a wheel scroll")
        assert [m["delta"] for m in gateway.sent("input", op="scroll")] == [-1]

        page.locator("#reverse-wheel").set_checked(True)
        page.mouse.move(*centre)
        page.mouse.wheel(0, 100)
        _until(page, lambda: len(gateway.sent("input", op="scroll")) == 2, what="a reversed wheel scroll")
        assert gateway.sent("input", op="scroll")[-1]["delta"] == 1
    finally:
        page.locator("#reverse-wheel").set_checked(False)
        page.close()


def test_errors_leave_the_study_label_and_a_failed_probe_shows_nothing(viewer_page):  # noqa: F811
    gateway = ScriptedGateway()
    page = _open(viewer_page, gateway)
    try:
        label = "Cardiac follow-up · 3 series"
        assert page.text_content("#study-label") == label
        gateway.socket.send(json.dumps({"type": "error", "code": "probe_failed", "view": 0,
                                        "message": "no value under the cursor"}))
        page.wait_for_timeout(300)
        assert (page.text_content("#error") or "") == ""

        gateway.socket.send(json.dumps({"type": "error", "code": "render_failed", "view": 0,
                                        "message": "the frame could not be rendered"}))
        _until(page, lambda: "render_failed" in (page.text_content("#error") or ""), what="the error")
        assert page.text_content("#study-label") == label

        gateway.frame([21, 40])
        _until(page, lambda: (page.text_content("#error") or "") == "",
               what="the error cleared by the next frame")

        canvas = page.locator("canvas[data-view='0']")
        canvas.focus()
        page.keyboard.press("v")
        _until(page, lambda: gateway.sent("set", name="kind", value="3d"), what="kind 3d")
        probes_before = len(gateway.sent("probe"))
        box = canvas.bounding_box()
        for step in range(6):
            page.mouse.move(box["x"] + 20 + step * 15, box["y"] + 40)
            page.wait_for_timeout(120)
        assert len(gateway.sent("probe")) == probes_before, "a 3-D view was probed"
    finally:
        page.close()


def test_the_value_under_a_still_cursor_is_asked_again_when_the_picture_moves_under_it(
        viewer_page):  # noqa: F811
    gateway = ScriptedGateway()
    page = _open(viewer_page, gateway)
    try:
        box = page.locator("canvas[data-view='0']").bounding_box()
        page.mouse.move(box["x"] + 30, box["y"] + 20)
        _until(page, lambda: gateway.sent("probe"), what="a probe on hover")
        page.wait_for_timeout(300)
        hovered = gateway.sent("probe")[-1]
        before = len(gateway.sent("probe"))
        gateway.frame([21, 40])
        _until(page, lambda: len(gateway.sent("probe")) > before, what="a probe after the slice moved")
        again = gateway.sent("probe")[-1]
        assert (again["view"], again["x"], again["y"]) == (0, hovered["x"], hovered["y"])
        settled = len(gateway.sent("probe"))
        gateway.frame([21, 40])
        page.wait_for_timeout(400)
        assert len(gateway.sent("probe")) == settled, "the same picture asked again"
    finally:
        page.close()


def test_a_series_dragged_from_the_strip_onto_a_view_is_shown_there(viewer_page):  # noqa: F811
    gateway = ScriptedGateway()
    page = _open(viewer_page, gateway)
    try:
        page.locator(f".series-item[data-series='{CINE}']").drag_to(page.locator("canvas[data-view='0']"))
        _until(page, lambda: gateway.sent("set", name="series"), what="set series after a drop")
        assert gateway.sent("set", name="series") == [
            {"type": "set", "view": 0, "name": "series", "value": CINE}]
    finally:
        page.close()
