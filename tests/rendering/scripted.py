"""Helpers shared by the client tests that play the gateway through Playwright's websocket routing."""

from __future__ import annotations

import time


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
