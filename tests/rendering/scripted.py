"""Helpers shared by the client tests that play the gateway through Playwright's websocket routing."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any


def until(page, condition, seconds: float = 10, what: str = "condition") -> None:
    """Poll through the page so Playwright keeps dispatching the scripted socket's callbacks."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        page.wait_for_timeout(50)
    raise AssertionError(f"{what} never happened")


def canvas(page, view: int):
    return page.locator(f"canvas[data-view='{view}']")


@contextlib.contextmanager
def viewer_pages(served_demo) -> Iterator[Callable[[Any], Any]]:
    """``open_page(gateway)``: the real viewer page as a doctor sees it, 1280 x 800, its websocket
    played by ``gateway``, once every view shows its first frame. Page errors go to
    ``gateway.page_errors`` where the gateway keeps them."""
    from playwright.sync_api import sync_playwright

    from tests.test_browser import CHROMIUM, CHROMIUM_FLAGS

    doctor = served_demo.doctor()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1280, "height": 800})
        context.add_cookies([{"name": c.name, "value": c.value, "url": served_demo.base} for c in doctor.jar])

        def open_page(gateway: Any) -> Any:
            page = context.new_page()
            if hasattr(gateway, "page_errors"):
                page.on("pageerror", lambda error: gateway.page_errors.append(str(error)))
            page.route_web_socket("**/ws/viewer/**", gateway)
            page.goto(f"{served_demo.base}/viewer/{served_demo.study_uid}/")
            for view in range(len(gateway.ready["views"])):
                until(page, lambda view=view: canvas(page, view).get_attribute("data-sequence") is not None,
                      what=f"the first frame of view {view}")
            return page

        try:
            yield open_page
        finally:
            browser.close()
