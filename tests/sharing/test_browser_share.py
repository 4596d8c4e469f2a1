"""A share end to end in a real browser: mint, open the link, PIN, view, revoke mid-session.

Proves what only a browser can: the token travels in the URL fragment and is
posted by ``open.js`` (never in any request URL or Referer), the CSP admits the
page's script, and a revoked share closes the consultant's open viewer and clears
every canvas it drew.
"""

from __future__ import annotations

import time

import pytest

from tests.test_browser import CHROMIUM, CHROMIUM_FLAGS, demo_gateway, page_sign_in

pytestmark = pytest.mark.browser
__all__ = ["demo_gateway"]


def test_a_consultant_opens_a_share_link_views_and_is_cut_off_by_revocation(demo_gateway):
    from playwright.sync_api import sync_playwright

    base, study_uid, credentials, _ = demo_gateway
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        doctor = browser.new_context().new_page()
        page_sign_in(doctor, base, "dr.ada", credentials)
        doctor.goto(f"{base}/viewer/{study_uid}/")
        doctor.click("text=Share…")
        doctor.fill("input[name=recipient]", "Dr Browser, Elsewhere UH")
        doctor.click("main button[type=submit]")
        link = doctor.input_value("textarea.share-link").strip()
        pin = doctor.text_content(".share-pin strong").replace(" ", "")
        token = link.split("#", 1)[1]
        assert "/share/open/#" in link and len(pin) == 8

        consultant = browser.new_context().new_page()
        seen: list[str] = []
        consultant.on("request", lambda request: seen.append(
            request.url + " " + (request.headers.get("referer") or "")))
        errors: list[str] = []
        consultant.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        consultant.goto(link)
        consultant.wait_for_url(f"{base}/share/pin/")
        consultant.fill("input[name=pin]", pin)
        consultant.click("main button[type=submit]")
        consultant.wait_for_url(f"{base}/share/")
        consultant.click("ul.shared-studies a")
        consultant.wait_for_selector("canvas[data-view='0'][data-sequence]", timeout=60_000)

        doctor.goto(f"{base}/share/active/")
        doctor.click("text=Revoke")
        doctor.wait_for_url(f"{base}/share/active/")
        revoked = time.monotonic()
        status = ""
        while time.monotonic() - revoked < 5 and "access ended" not in status:
            status = consultant.text_content("#status") or ""
            consultant.wait_for_timeout(50)
        closed_after = time.monotonic() - revoked
        cleared = consultant.evaluate("""() => [...document.querySelectorAll('canvas[data-view]')]
            .map((canvas) => {
              const blank = document.createElement('canvas');
              blank.width = canvas.width; blank.height = canvas.height;
              return canvas.toDataURL() === blank.toDataURL();
            })""")
        browser.close()
    assert "access ended" in status, status
    assert closed_after < 2.0, closed_after
    assert cleared and all(cleared), "the revoked study's frames stay on the consultant's screen"
    assert not [entry for entry in seen if token[:24] in entry], "the token left the fragment"
    assert not [e for e in errors if "Content Security Policy" in e], errors
