"""Workspaces in Debian's chromium against daphne (#20 items 1, 2 and 4).

A doctor opens the seeded PET/CT and adds tabs until four tabs hold 16 views; links two of them,
scrolls the CT view in one and finds the other at the same slice (pixel-equal frames) while an
unlinked tab stays where it was. The reading is kept as a bookmark, the page reloaded, the bookmark
opened: every view of the tab comes back pixel-equal. A 17th view is refused with a message that
says the limit; a grid with a merged cell draws its first view twice as tall; a view duplicated
into a new tab shows the same series; a view dragged onto another exchanges cells with it; closing a
tab frees its views.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tests.rendering.test_measure_browser_served import (  # noqa: F401 (viewer: a fixture)
    PageSocket,
    _until,
    settled_still,
    view_canvas,
    viewer,
)

pytestmark = [pytest.mark.server, pytest.mark.browser]

CT_VIEW = 0  # the PET/CT layout: CT, PET, CT + PET, PET MIP


def _readies(socket: PageSocket) -> int:
    return sum(1 for message in socket.texts if message.get("type") == "ready")


def _ready_after(page, socket: PageSocket, count: int) -> dict:
    return _until(page, lambda: _readies(socket) > count and socket.last("ready"), "a ready message")


def _canvas(page, view: int):
    return view_canvas(page, view)


def _settled(page, socket: PageSocket, view: int):
    """View ``view``'s still frame since the last ready, on its canvas at the canvas's size, once quiet."""
    return settled_still(page, socket, view, since_ready=True, plane=False, quiet_ms=600)


def _pixels(frame) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(frame.image)).convert("RGB"))


def _select(page, socket: PageSocket, tab: int) -> dict:
    count = _readies(socket)
    page.locator(f"#tabs [role='tab'][data-tab='{tab}']").click()
    ready = _ready_after(page, socket, count)
    assert ready["tab"] == tab
    return ready


def _tab_menu(page) -> None:
    if page.locator("#tab-menu").get_attribute("open") is None:
        page.locator("#tab-menu summary").click()


def _link(page, socket: PageSocket, tab: int) -> None:
    _select(page, socket, tab)
    _tab_menu(page)
    page.locator("#tab-linked").check()
    _until(page, lambda: (tabs := socket.last("tabs")) and tabs["tabs"][tab]["linked"], f"tab {tab} linked")
    page.locator("#tab-menu summary").click()  # closed again, off the views


def _add_tab(page, socket: PageSocket) -> dict:
    count = _readies(socket)
    page.locator("#tab-add").click()
    return _ready_after(page, socket, count)


def _open_tabs_and_scroll_linked(page, socket: PageSocket) -> None:
    ready = _ready_after(page, socket, 0)
    assert ready["layout"] == "petct" and len(ready["tabs"]) == 1 and ready["max_views"] == 16
    for number in (1, 2, 3):
        ready = _add_tab(page, socket)
        assert ready["tab"] == number and len(ready["views"]) == 4 and ready["layout"] == "petct"
    assert page.locator("#tabs [role='tab']").count() == 4
    assert "16" in (page.locator("#view-count").text_content() or "")
    _link(page, socket, 1)
    _link(page, socket, 2)
    start = _settled(page, socket, CT_VIEW)
    _canvas(page, CT_VIEW).focus()
    for _ in range(6):
        page.keyboard.press("ArrowUp")
    _until(page, lambda: (frame := socket.shown.get(CT_VIEW))
           and frame.overlay["slice"] != start.overlay["slice"], "the scrolled slice")
    moved = _settled(page, socket, CT_VIEW)
    _select(page, socket, 1)
    linked = _settled(page, socket, CT_VIEW)
    assert linked.overlay["slice"] == moved.overlay["slice"]
    assert np.array_equal(_pixels(linked), _pixels(moved)), "the linked tab shows another picture"
    _select(page, socket, 3)
    unlinked = _settled(page, socket, CT_VIEW)
    assert unlinked.overlay["slice"] == start.overlay["slice"], "an unlinked tab moved"


def test_sixteen_views_in_tabs_a_linked_scroll_and_a_bookmark_restored_after_reload(served_demo, viewer):  # noqa: F811
    open_page, _ = viewer
    page, socket = open_page(1280, 900)
    _open_tabs_and_scroll_linked(page, socket)

    # A bookmark of the reading, on the linked tab; after a reload it restores every view exactly.
    _select(page, socket, 1)
    plain = _settled(page, socket, CT_VIEW)
    _canvas(page, CT_VIEW).focus()
    page.locator("#quick-bar button[data-toolbox='invert']").click()  # more than the layout's default
    _until(page, lambda: (frame := socket.shown.get(CT_VIEW)) and frame.sequence > plain.sequence, "inverted")
    before = {view: _settled(page, socket, view) for view in range(4)}
    assert not np.array_equal(_pixels(before[CT_VIEW]), _pixels(plain)), "the invert did not show"
    page.locator("#bookmarks summary").click()
    page.locator("#bookmark-name").fill("linked reading")
    page.locator("#bookmark-name").press("Enter")
    _until(page, lambda: (kept := socket.last("bookmarks")) and kept["bookmarks"], "the bookmark kept")
    count = _readies(socket)
    page.reload()
    ready = _ready_after(page, socket, count)
    assert len(ready["tabs"]) == 1, "a new page starts a new reading"
    _until(page, lambda: page.locator("#bookmark-list .bookmark-open").count() == 1, "the bookmark listed")
    count = _readies(socket)
    page.locator("#bookmarks summary").click()
    page.locator("#bookmark-list .bookmark-open").click()
    ready = _ready_after(page, socket, count)
    assert ready["tab"] == 1 and [tab["linked"] for tab in ready["tabs"]] == [False, True, True, False]
    for view, frame in before.items():
        again = _settled(page, socket, view)
        assert (again.width, again.height) == (frame.width, frame.height)
        assert np.array_equal(_pixels(again), _pixels(frame)), f"view {view} differs after the bookmark"

    # A 17th view is refused, saying the limit; nothing changes.
    page.locator("#bookmarks summary").click()
    page.locator("#tab-add").click()
    refused = _until(page, lambda: next((m for m in reversed(socket.texts) if m.get("type") == "error"
                                         and m.get("code") == "too_many_views"), None), "a 17th refused")
    assert refused["of"] == "tab" and "16" in refused["message"]
    _until(page, lambda: "16" in (page.locator("#error").text_content() or ""), "the refusal on the page")
    assert page.locator("#tabs [role='tab']").count() == 4

    # Closing a tab frees its views; a grid with a merged cell; a view duplicated into a new tab.
    count = _readies(socket)
    _tab_menu(page)
    page.locator("#tab-close").click()
    ready = _ready_after(page, socket, count)
    assert len(ready["tabs"]) == 3 and sum(tab["views"] for tab in ready["tabs"]) == 12
    page.locator("#grid-editor summary").click()
    cells = page.locator("#grid-cells button")
    _until(page, lambda: cells.count() == 4, "the grid editor showing the tab's 2 x 2 grid")
    cells.nth(0).click()
    cells.nth(2).click()
    page.locator("#grid-merge").click()
    assert page.locator("#grid-cells button").count() == 3
    page.locator("#grid-name").fill("tall left")
    page.locator("#grid-name").press("Enter")
    kept = _until(page, lambda: (grids := socket.last("grids")) and grids["grids"] and grids, "the grid kept")
    assert kept["grids"][0]["name"] == "tall left" and len(kept["grids"][0]["grid"]["cells"]) == 3
    _until(page, lambda: page.locator("#grid-saved .grid-kept").count() == 1, "the kept grid listed")
    count = _readies(socket)
    page.locator("#grid-apply").click()
    ready = _ready_after(page, socket, count)
    assert ready["grid"] == {"rows": 2, "columns": 2, "cells": [[0, 0, 2, 1], [0, 1, 1, 1], [1, 1, 1, 1]]}
    tall, short = (_canvas(page, view).bounding_box() for view in (0, 1))
    assert tall is not None and short is not None and tall["height"] > 1.8 * short["height"]
    order = ready["views"]
    count = _readies(socket)
    page.locator(".view-handle[data-view='0']").drag_to(_canvas(page, 1))
    ready = _ready_after(page, socket, count)
    assert ready["views"] == [order[1], order[0], order[2]], "a dragged view exchanges cells with its target"
    shown = ready["views"][1]
    _canvas(page, 1).click()
    count = _readies(socket)
    _tab_menu(page)
    page.locator("#view-duplicate").click()
    ready = _ready_after(page, socket, count)
    assert ready["views"] == [shown] and len(ready["tabs"]) == 4
