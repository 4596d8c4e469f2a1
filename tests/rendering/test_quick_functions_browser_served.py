"""Mouse modes and quick functions in Debian's chromium against daphne (#20 item 3).

The doctor opens the seeded phantom study (PET/CT layout), chooses the zoom mode on the mode bar
and drags on the CT view: the frame changes and the server's overlay says it zoomed. A press of
the rotate-90° key gives a frame whose central square is the numpy quarter turn of the central
square before (pixel-compare of the lossless still frames the page itself received). The key map
lists every mode and quick function the server announced, each once.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.rendering.test_measure_browser_served import (  # noqa: F401 (viewer: a fixture)
    PageSocket,
    _on_page,
    _until,
    settled_still,
    view_canvas,
    view_size,
    viewer,
)

pytestmark = [pytest.mark.server, pytest.mark.browser]

CT_VIEW = 0  # the PET/CT layout: CT, PET, CT + PET, PET MIP


def _canvas(page):
    return view_canvas(page, CT_VIEW)


def _size(page) -> dict[str, float]:
    return view_size(page, CT_VIEW)


def _still(page, socket: PageSocket, *, after: int = -1):
    """The CT view's latest still frame at the canvas's size, once it is on the canvas and quiet."""
    return settled_still(page, socket, CT_VIEW, after=after, plane=False, quiet_ms=600)


def _pixels(frame) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(frame.image)).convert("L")).astype(np.int16)


def _central_square(image: np.ndarray) -> np.ndarray:
    rows, columns = image.shape
    side = min(rows, columns)
    top, left = (rows - side) // 2, (columns - side) // 2
    return image[top:top + side, left:left + side]


def test_zoom_mode_drag_rotate_key_and_the_complete_key_map(served_demo, viewer):  # noqa: F811
    open_page, _ = viewer
    frame = None
    for width in (1280, 1281, 1282, 1283):  # a canvas whose width and height differ by an even count
        page, socket = open_page(width, 800)
        frame = _still(page, socket)
        if (frame.width - frame.height) % 2 == 0:
            break
        page.close()
    assert frame is not None and (frame.width - frame.height) % 2 == 0
    ready = socket.last("ready")
    assert ready is not None
    toolbox = ready["vocabulary"]["toolbox"]
    announced = [item["name"] for item in (*toolbox["modes"], *toolbox["quick"])]
    assert {"window", "zoom", "pan", "scroll", "rotate", "crosshair"} <= set(announced)
    assert {"invert", "flip_h", "flip_v", "rotate_cw", "rotate_ccw", "fit", "one_to_one", "reset",
            "link_all"} <= set(announced)

    # The key map: every announced function, once, with its key.
    page.locator("#help summary").click()
    rows = page.locator("#key-map .help-row[data-toolbox]").evaluate_all(
        "rows => rows.map((row) => [row.dataset.toolbox, row.dataset.key, row.textContent])")
    assert sorted(name for name, _key, _text in rows) == sorted(announced)
    keys = {item["name"]: item["key"] for item in (*toolbox["modes"], *toolbox["quick"])}
    assert all(key == keys[name] and text.strip() for name, key, text in rows)
    all_keys = page.locator("#key-map .help-row").evaluate_all("rows => rows.map((row) => row.dataset.key)")
    assert len(all_keys) == len(set(all_keys)), "a key listed twice"
    page.locator("#help summary").click()

    # Zoom mode from the mode bar, then a left drag upwards: the picture zooms in.
    bar = page.locator("#mode-bar")
    bar.locator("button[data-toolbox='zoom']").click()
    assert bar.locator("button[data-toolbox='zoom']").get_attribute("aria-pressed") == "true"
    assert bar.locator("button[data-toolbox='window']").get_attribute("aria-pressed") == "false"
    before = frame
    size = _size(page)
    x, y = _on_page(size, size["pixels"] / 2, size["rows"] * 0.6)
    page.mouse.move(x, y)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(x, y - 8 * step)
    page.mouse.up()
    zoomed = _still(page, socket, after=before.sequence)
    assert zoomed.overlay["zoom"] > before.overlay["zoom"] * 1.5
    assert zoomed.overlay["mm_per_pixel"] < before.overlay["mm_per_pixel"]
    assert not np.array_equal(_pixels(zoomed), _pixels(before))
    assert zoomed.overlay["windows"][0] == before.overlay["windows"][0], "the drag zoomed, not windowed"

    # Fit, then the rotate-90° key: the central square turns a quarter clockwise, exactly.
    _canvas(page).focus()
    page.keyboard.press(keys["fit"])
    fitted = _still(page, socket, after=zoomed.sequence)
    assert fitted.overlay["zoom"] == pytest.approx(1.0)
    page.keyboard.press(keys["rotate_cw"])
    turned = _still(page, socket, after=fitted.sequence)
    assert turned.overlay["mm_per_pixel"] == pytest.approx(fitted.overlay["mm_per_pixel"]), \
        "the phantom's axial field is square: a quarter turn keeps the scale"
    expected = np.rot90(_central_square(_pixels(fitted)), -1)
    shown = _central_square(_pixels(turned))
    difference = np.abs(shown - expected)
    assert difference.max() <= 1 and float((difference > 0).mean()) < 0.01, \
        f"max {difference.max()}, {float((difference > 0).mean()):.4f} of pixels differ"
    assert not np.array_equal(shown, _central_square(_pixels(fitted))), "the picture did not turn"
    assert turned.overlay["orientation"] != fitted.overlay["orientation"]


class AllFrames(PageSocket):
    """Every frame of every view, in order (a movie's interactive frames too)."""

    def __init__(self) -> None:
        super().__init__()
        self.every: list = []

    def _received(self, payload: str | bytes) -> None:
        super()._received(payload)
        if isinstance(payload, bytes):
            from rendering.protocol import frame_unpack

            self.every.append(frame_unpack(payload))


def test_a_movie_of_slices_bounces_in_its_range_and_a_3d_view_turns(served_demo, viewer):  # noqa: F811
    open_page, _ = viewer
    page, _socket = open_page()
    socket = AllFrames()
    socket.attach(page)
    page.reload()
    _still(page, socket)
    _canvas(page).focus()
    page.select_option("#cine-repeat", "bounce")
    page.fill("#cine-first", "10")
    page.locator("#cine-first").press("Enter")
    page.fill("#cine-last", "12")
    page.locator("#cine-last").press("Enter")
    page.fill("#cine-fps", "5")
    page.locator("#cine-fps").press("Enter")
    start = len(socket.every)
    page.click("#cine-play")
    _until(page, lambda: len({tuple(f.overlay.get("slice", ())) for f in socket.every[start:]
                              if f.view == CT_VIEW}) >= 3, "three slices of the movie")
    page.wait_for_timeout(1500)
    page.click("#cine-play")
    shown = [f.overlay["slice"][0] for f in socket.every[start:]
             if f.view == CT_VIEW and "slice" in f.overlay]
    changes = [n for i, n in enumerate(shown) if i == 0 or n != shown[i - 1]]
    assert set(changes) <= {10, 11, 12}, changes
    assert any(a == c != b for a, b, c in zip(changes, changes[1:], changes[2:], strict=False)), \
        f"no bounce in {changes}"

    turning = page.locator("canvas[data-view='3']")
    turning.focus()
    start = len(socket.every)
    page.click("#cine-play")
    _until(page, lambda: len({f.image for f in socket.every[start:] if f.view == 3}) >= 3,
           "three different frames of the turning 3-D view")
    page.click("#cine-play")
