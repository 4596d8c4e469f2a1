"""The viewer's hanging menu against a scripted server: layouts, the reader's rules, save and delete.

As in test_viewer_client.py, Playwright's websocket routing plays the gateway:
``ready`` announces two saved rules (one that fits this study, one that does
not), and the gateway answers ``hang_save`` and ``hang_delete`` with the new
``hanging_rules`` list, so each test sees exactly what the menu sends.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.rendering.scripted import until
from tests.rendering.test_viewer_client import VOCABULARY, viewer_page  # noqa: F401

pytestmark = pytest.mark.browser

FITS = {"id": 7, "name": "PET/CT coronal first", "applies": True}
DOES_NOT_FIT = {"id": 8, "name": "MR brain", "applies": False}


def _ready(rules: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {"type": "ready", "study": {"uid": "2.25.1", "description": "PET-CT"}, "layout": "1x1",
            "limits": {"max_message_bytes": 8192, "messages_per_second": 120, "message_burst": 240},
            "vocabulary": {**VOCABULARY, "hanging_rules": rules},
            "views": [{"kind": "axial", "layers": ["2.25.2"]}],
            "series": [{"uid": "2.25.2", "modality": "CT", "description": "CT AC", "number": 1, "images": 40,
                        "kind": "volume", "plane": "axial", "mpr": True, "available": True}]}


class ScriptedGateway:
    """Records what the page sends; keeps the reader's rules as the gateway would."""

    def __init__(self, rules: list[dict[str, Any]] | None) -> None:
        self.rules = rules
        self.received: list[dict[str, Any]] = []
        self.socket: Any = None

    def __call__(self, ws: Any) -> None:
        self.socket = ws
        ws.on_message(self.on_message)
        ws.send(json.dumps(_ready(self.rules)))

    def on_message(self, message: str | bytes) -> None:
        data = json.loads(message)
        self.received.append(data)
        if data["type"] == "hang_save" and self.rules is not None:
            self.rules = [*self.rules, {"id": 9, "name": data["name"], "applies": True}]
            self.socket.send(json.dumps({"type": "hanging_rules", "rules": self.rules}))
        elif data["type"] == "hang_delete" and self.rules is not None:
            self.rules = [rule for rule in self.rules if rule["id"] != data["rule"]]
            self.socket.send(json.dumps({"type": "hanging_rules", "rules": self.rules}))

    def sent(self, kind: str) -> list[dict[str, Any]]:
        return [message for message in self.received if message["type"] == kind]


def _menu(page):
    page.click("#hanging summary")
    until(page, lambda: page.locator(".hanging-panel").is_visible(), what="the hanging menu open")
    return page.locator("#hanging")


def _rule_names(page) -> list[str]:
    return page.locator("#hanging-rules .hanging-rule").all_text_contents()


def test_the_menu_lists_layouts_and_rules_and_only_a_fitting_rule_is_sent(viewer_page):  # noqa: F811
    gateway = ScriptedGateway([FITS, DOES_NOT_FIT])
    page = viewer_page(gateway)
    try:
        until(page, lambda: _rule_names(page) == [FITS["name"], DOES_NOT_FIT["name"]],
              what="the rules listed")
        menu = _menu(page)
        layouts = menu.locator(".hanging-layout")
        assert [layouts.nth(i).get_attribute("data-layout") for i in range(layouts.count())] == \
            VOCABULARY["layouts"]
        assert menu.locator(".hanging-layout[data-layout='1x1']").get_attribute("aria-pressed") == "true"
        assert menu.locator(".hanging-rule[data-rule='8']").is_disabled()
        assert not menu.locator(".hanging-rule[data-rule='7']").is_disabled()

        menu.locator(".hanging-rule[data-rule='8']").click(force=True)
        page.wait_for_timeout(300)
        assert gateway.sent("hang") == [], "a rule that does not fit was sent"

        menu.locator(".hanging-rule[data-rule='7']").click()
        until(page, lambda: gateway.sent("hang"), what="hang")
        assert gateway.sent("hang") == [{"type": "hang", "rule": 7}]
        assert not page.locator(".hanging-panel").is_visible(), "the menu closes on a choice"

        _menu(page).locator(".hanging-layout[data-layout='1x3']").click()
        until(page, lambda: gateway.sent("layout"), what="layout")
        assert gateway.sent("layout") == [{"type": "layout", "layout": "1x3"}]
    finally:
        page.close()


def test_save_current_asks_a_name_and_delete_removes_a_rule(viewer_page):  # noqa: F811
    gateway = ScriptedGateway([FITS, DOES_NOT_FIT])
    page = viewer_page(gateway)
    try:
        until(page, lambda: len(_rule_names(page)) == 2, what="the rules listed")
        menu = _menu(page)
        assert not page.locator("#hanging-name").is_visible()
        menu.locator("#hanging-save-start").click()
        name = page.locator("#hanging-name")
        assert name.is_visible() and name.evaluate("(node) => node === document.activeElement")
        name.press("Enter")
        page.wait_for_timeout(200)
        assert gateway.sent("hang_save") == [], "an empty name was sent"
        name.fill("  Three planes  ")
        name.press("Enter")
        until(page, lambda: gateway.sent("hang_save"), what="hang_save")
        assert gateway.sent("hang_save") == [{"type": "hang_save", "name": "Three planes"}]
        until(page, lambda: _rule_names(page) == [FITS["name"], DOES_NOT_FIT["name"], "Three planes"],
              what="the saved rule listed")
        assert not name.is_visible()

        page.locator(".hanging-delete[data-rule='8']").click()
        until(page, lambda: gateway.sent("hang_delete"), what="hang_delete")
        assert gateway.sent("hang_delete") == [{"type": "hang_delete", "rule": 8}]
        until(page, lambda: _rule_names(page) == [FITS["name"], "Three planes"], what="the rule gone")
        assert not page.locator("#hanging-none").is_visible()
    finally:
        page.close()


def test_a_session_without_rules_offers_the_layouts_only(viewer_page):  # noqa: F811
    gateway = ScriptedGateway(None)
    page = viewer_page(gateway)
    try:
        until(page, lambda: page.locator("#hanging-layouts .hanging-layout").count() > 0, what="the layouts")
        _menu(page)
        assert not page.locator("#hanging-own").is_visible()
        assert not page.locator("#hanging-save-start").is_visible()
    finally:
        page.close()
    empty = ScriptedGateway([])
    page = viewer_page(empty)
    try:
        until(page, lambda: page.locator("#hanging-layouts .hanging-layout").count() > 0, what="the layouts")
        _menu(page)
        assert page.locator("#hanging-none").is_visible() and page.locator("#hanging-save-start").is_visible()
    finally:
        page.close()
