"""Movie (#20 item 6) against a scripted server: loop or bounce, a frame range, the speed bound.

The scripted gateway of test_viewer_series_client answers each ``frame`` input with that frame,
so the page's ``frame`` inputs are the movie as played.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from tests.rendering.scripted import until as _until
from tests.rendering.test_viewer_client import viewer_page  # noqa: F401
from tests.rendering.test_viewer_series_client import CINE, READY, ScriptedGateway, _open

pytestmark = pytest.mark.browser


def _play(page, gateway: ScriptedGateway, ticks: int) -> list[int]:
    before = len(gateway.sent("input", op="frame"))
    page.click("#cine-play")
    _until(page, lambda: len(gateway.sent("input", op="frame")) >= before + ticks, what=f"{ticks} cine ticks")
    page.click("#cine-play")
    return [m["index"] for m in gateway.sent("input", op="frame")][before:before + ticks]


def _cine_series(page) -> None:
    page.locator(f".series-item[data-series='{CINE}']").click()
    _until(page, lambda: "1 / 3" in (page.text_content(".overlay .facts") or ""), what="cine frame 1")


def test_bounce_plays_back_and_forth_and_a_range_limits_the_frames(viewer_page):  # noqa: F811
    gateway = ScriptedGateway()
    page = _open(viewer_page, gateway)
    try:
        _cine_series(page)
        page.select_option("#cine-repeat", "bounce")
        assert _play(page, gateway, 8) == [1, 2, 1, 0, 1, 2, 1, 0]

        page.select_option("#cine-repeat", "loop")
        page.fill("#cine-first", "2")
        page.locator("#cine-first").press("Enter")
        page.fill("#cine-last", "3")
        page.locator("#cine-last").press("Enter")
        played = _play(page, gateway, 6)
        assert set(played) <= {1, 2}, played
        assert played[-4:] in ([1, 2, 1, 2], [2, 1, 2, 1]), played
        assert page.locator("#cine-last").get_attribute("max") == "3"
    finally:
        page.close()


class SlowGateway(ScriptedGateway):
    """A server that takes 10 messages a second."""

    def __call__(self, ws: Any) -> None:
        self.socket = ws
        ws.on_message(self.on_message)
        ready = copy.deepcopy(READY)
        ready["limits"]["messages_per_second"] = 10
        ws.send(json.dumps(ready))


def test_the_speed_stays_under_the_server_s_input_rate(viewer_page):  # noqa: F811
    gateway = SlowGateway()
    page = _open(viewer_page, gateway)
    try:
        _cine_series(page)  # its header asks 25 frames/s
        page.click("#cine-play")
        _until(page, lambda: page.locator("#cine-fps").input_value() == "10", what="the rate bound")
        page.click("#cine-play")
        assert page.locator("#cine-fps").get_attribute("max") == "10"
        page.fill("#cine-fps", "50")
        page.locator("#cine-fps").press("Enter")
        assert page.locator("#cine-fps").input_value() == "10"
    finally:
        page.close()
