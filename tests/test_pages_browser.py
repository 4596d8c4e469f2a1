"""Every person's daily path in a real browser, each page checked by axe-core and photographed.

The demo gateway is served by daphne on a loopback port (``tests.test_browser``) and
walked in Debian's chromium by each role — doctor, nurse, administrative staff,
auditor, IT admin and an external consultant — asserting what each page shows. axe-core
(axe-playwright-python) runs on every page reached: no serious or critical WCAG 2.1 A/AA
violation is allowed, and no page may scroll sideways at the laptop (1280 px) or the
tablet (1024 px) width. A screenshot of every page at both widths is written to the test's
output folder (``tmp_path``) for a reviewer. The doctor signs in with the keyboard alone,
and every field shows that it has the focus.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.test_browser import CHROMIUM, CHROMIUM_FLAGS, _wait_for_sequence, demo_gateway, page_sign_in

__all__ = ["demo_gateway"]  # the served demo, a module fixture

pytestmark = pytest.mark.browser

WCAG = {"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]},
        "resultTypes": ["violations"]}
BLOCKING = {"serious", "critical"}


class Walk:
    """One person's pages: each checked with axe-core and photographed."""

    def __init__(self, page, folder: Path, who: str) -> None:
        from axe_playwright_python.sync_playwright import Axe

        self.page, self.folder, self.who, self.axe = page, folder, who, Axe()
        self.problems: list[str] = []
        self.shots = 0

    def check(self, name: str) -> None:
        self.page.wait_for_load_state("networkidle")
        self.problems += [f"{self.who} · {name}: {problem}" for problem in _keyboard_problems(self.page)]
        results = self.axe.run(self.page, options=WCAG).response
        for violation in results["violations"]:
            if violation["impact"] in BLOCKING:
                targets = [node["target"] for node in violation["nodes"]][:3]
                self.problems.append(f"{self.who} · {name}: {violation['id']} ({violation['impact']}) "
                                     f"{targets}")
        for width in (1280, 1024):
            self.page.set_viewport_size({"width": width, "height": 900})
            self.page.screenshot(path=str(self.folder / f"{self.who}-{self.shots:02d}-{name}-{width}.png"),
                                 full_page=True)
            if not self._fits():
                self.problems.append(f"{self.who} · {name}: scrolls sideways at {width} px")
        self.page.set_viewport_size({"width": 1280, "height": 900})
        self.shots += 1

    def _fits(self) -> bool:
        width = self.page.evaluate("document.documentElement.scrollWidth")
        return int(width) <= int(self.page.viewport_size["width"]) + 1


FOCUSABLE = ("a[href], button, input:not([type=hidden]), select, textarea, summary, "
             "[tabindex]:not([tabindex='-1'])")
FOCUSED = """() => { const e = document.activeElement;
  // A date field's own calendar button has the focus inside the field: the browser draws it.
  if (!e || e === document.body || !e.matches(':focus')) return null;
  const s = getComputedStyle(e);
  return {key: e.tagName + ' ' + (e.id || e.name || e.getAttribute('aria-label') || e.textContent.trim()
                                  .slice(0, 40)),
          outline: s.outlineStyle, width: parseFloat(s.outlineWidth) || 0, shadow: s.boxShadow}; }"""


def _controls(page) -> list[str]:
    """The page's visible, enabled controls; a group of radio buttons is one (arrows move in it)."""
    return page.evaluate(f"""() => {{ const radios = new Set();
        return [...document.querySelectorAll("{FOCUSABLE}")].filter(e => {{
          if (e.disabled || !e.checkVisibility({{visibilityProperty: true}})) return false;
          if (e.type !== "radio") return true;
          const first = !radios.has(e.name); radios.add(e.name); return first; }}).map(e =>
          e.tagName + ' ' + (e.id || e.name || e.getAttribute('aria-label') || e.textContent.trim()
                             .slice(0, 40))); }}""")


def _keyboard_problems(page) -> list[str]:
    """Tab through the whole page: every control takes the focus in turn and shows it has it."""
    controls = _controls(page)
    page.evaluate("() => { document.activeElement && document.activeElement.blur(); window.scrollTo(0, 0); }")
    reached: list[str] = []
    problems: list[str] = []
    for _ in range(3 * len(controls) + 10):  # a date field takes a stop per part
        page.keyboard.press("Tab")
        focused = page.evaluate(FOCUSED)
        if focused is None:
            continue
        if reached and focused["key"] == reached[0]:
            break
        reached.append(focused["key"])
        # "auto" is the browser's own two-tone focus ring (the Django admin keeps it).
        shown = (focused["outline"] == "auto" or (focused["outline"] != "none" and focused["width"] >= 2)
                 or focused["shadow"] != "none")
        if not shown:
            problems.append(f"{focused['key']!r} takes the focus without showing it")
    # A control enabled or disabled meanwhile (the viewer's, as frames arrive) is not counted.
    missed = [control for control in controls if control not in reached and control in _controls(page)]
    if missed:
        problems.append(f"the keyboard reaches {len(reached)} of {len(controls)} controls; not {missed[:8]}")
    return problems


def _browser(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)


def _walk(browser, tmp_path: Path, who: str) -> Walk:
    # axe is injected with page.evaluate; the gateway's CSP (script-src 'self') is tested elsewhere.
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    return Walk(context.new_page(), tmp_path, who)


def _focused(page) -> dict[str, str]:
    return page.evaluate("(() => { const e = document.activeElement, s = getComputedStyle(e);"
                         " return {name: e.name || e.textContent.trim(), outline: s.outlineStyle,"
                         " width: s.outlineWidth}; })()")


def _tab_to(page, name: str, presses: int = 12) -> dict[str, str]:
    """Press Tab until the element named ``name`` has the focus; it must show that it has."""
    for _ in range(presses):
        page.keyboard.press("Tab")
        focused = _focused(page)
        if focused["name"] == name:
            assert focused["outline"] != "none" and float(focused["width"].rstrip("px")) >= 2, focused
            return focused
    raise AssertionError(f"{name!r} never took the focus from the keyboard")


def _keyboard_sign_in(page, base: str, username: str, credentials: dict) -> None:
    """Sign in with the keyboard alone, the focus visible at each field."""
    from tests.test_browser import _totp_now

    page.goto(f"{base}/accounts/login/")
    _tab_to(page, "username")
    page.keyboard.type(username)
    _tab_to(page, "password")
    page.keyboard.type(credentials[username])
    page.keyboard.press("Enter")
    page.wait_for_selector("input[name=otp_token]")
    _tab_to(page, "otp_token")
    page.keyboard.type(_totp_now(credentials["totp"][username]))
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/")


def _raw_volume_imported(page, folder: Path) -> None:
    """A small NIfTI through the form: the page says it is at work, then what it imported."""
    import numpy as np
    import SimpleITK as sitk

    volume = folder / "phantom.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.arange(12 * 32 * 32, dtype=np.int16).reshape(12, 32, 32)),
                    str(volume))
    page.set_input_files("input[type=file]", str(volume))
    page.fill("input[name=patient_name]", "Raw^Walk")
    page.fill("input[name=patient_id]", "RAW-WALK-1")
    page.select_option("select[name=modality]", "CT")
    busy = page.locator("#raw-import-busy")
    assert busy.is_hidden()
    # Held once after the page's own handler ran: it must have said it is at work.
    page.evaluate("() => document.querySelector('form.raw-import').addEventListener('submit',"
                  " event => event.preventDefault(), {once: true})")
    page.click("form.raw-import button[type=submit]")
    assert busy.is_visible() and page.locator("form.raw-import button[type=submit]").is_disabled()
    with page.expect_navigation():
        page.evaluate("() => document.querySelector('form.raw-import').submit()")
    assert page.locator("#raw-import-result").count() == 1
    assert "12" in page.inner_text("#raw-import-result")


def _links(page) -> set[str]:
    return {text.strip() for text in page.locator("nav[aria-label='your pages'] a").all_inner_texts()}


def test_each_role_walks_its_daily_path_and_every_page_passes_axe(demo_gateway, tmp_path):
    from playwright.sync_api import sync_playwright

    base, study_uid, credentials, _ = demo_gateway
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = _browser(playwright)
        anonymous = _walk(browser, tmp_path, "anonymous")
        anonymous.page.goto(f"{base}/accounts/login/")
        assert anonymous.page.locator("input[name=username]").count() == 1
        anonymous.check("sign-in")
        problems += anonymous.problems

        doctor = _walk(browser, tmp_path, "doctor")
        _keyboard_sign_in(doctor.page, base, "dr.ada", credentials)
        assert _links(doctor.page) == {"Worklist", "PACS", "Raw import", "Active shares", "Layouts and rules"}
        doctor.check("home")
        doctor.page.goto(f"{base}/imaging/worklist")
        assert "Recent studies" in doctor.page.inner_text("main")
        assert doctor.page.locator("a.open").count() >= 1
        doctor.check("worklist")
        doctor.page.goto(f"{base}/viewer/{study_uid}/")
        _wait_for_sequence(doctor.page.locator("canvas[data-view='0']"), above=0, seconds=60)
        doctor.check("viewer")
        doctor.page.goto(f"{base}/reports/{study_uid}/")
        doctor.check("report")
        doctor.page.goto(f"{base}/share/new/{study_uid}/")
        doctor.check("share-form")
        doctor.page.fill("input[name=recipient]", "Dr Axe, Elsewhere UH")
        doctor.page.click("main button[type=submit]")
        link = doctor.page.input_value("textarea.share-link").strip()
        pin = (doctor.page.text_content(".share-pin strong") or "").replace(" ", "")
        doctor.check("share-minted")
        doctor.page.goto(f"{base}/share/active/")
        assert "Dr Axe, Elsewhere UH" in doctor.page.inner_text("main")
        doctor.check("active-shares")
        doctor.page.goto(f"{base}/imaging/pacs/queue")
        assert "Nothing has been queued." in doctor.page.inner_text("main")
        doctor.check("pacs")
        doctor.page.goto(f"{base}/imaging/raw-import")
        doctor.check("raw-import")
        _raw_volume_imported(doctor.page, tmp_path)
        doctor.check("raw-imported")
        doctor.page.goto(f"{base}/viewer/layouts/")
        assert "Hospital-wide rules and grids" in doctor.page.inner_text("main")
        doctor.check("layouts")
        doctor.page.goto(f"{base}/accounts/security/")
        doctor.check("security")
        problems += doctor.problems

        nurse = _walk(browser, tmp_path, "nurse")
        page_sign_in(nurse.page, base, "nurse.florence", credentials)
        assert _links(nurse.page) == {"Worklist", "PACS", "Layouts and rules"}
        nurse.page.goto(f"{base}/imaging/worklist?name=*")
        assert re.search(r"\d+ patients? found", nurse.page.inner_text("main"))
        nurse.check("worklist")
        problems += nurse.problems

        desk = _walk(browser, tmp_path, "admin-staff")
        page_sign_in(desk.page, base, "desk.grace", credentials)
        assert _links(desk.page) == {"Worklist"}
        desk.page.goto(f"{base}/imaging/worklist?name=*")
        assert desk.page.locator("a.open").count() == 0 and "2.25." not in desk.page.content()
        desk.check("worklist")
        problems += desk.problems

        auditor = _walk(browser, tmp_path, "auditor")
        page_sign_in(auditor.page, base, "audit.alan", credentials)
        assert _links(auditor.page) == {"Audit console"}
        auditor.page.goto(f"{base}/audit/")
        assert auditor.page.locator("table").count() >= 1
        auditor.check("audit-console")
        problems += auditor.problems

        consultant = _walk(browser, tmp_path, "consultant")
        consultant.page.goto(link)
        consultant.page.wait_for_url(f"{base}/share/pin/")
        consultant.check("share-pin")
        consultant.page.fill("input[name=pin]", pin)
        consultant.page.click("main button[type=submit]")
        consultant.page.wait_for_url(f"{base}/share/")
        assert consultant.page.locator("ul.shared-studies a").count() == 1
        consultant.check("share-home")
        consultant.page.click("ul.shared-studies a")
        _wait_for_sequence(consultant.page.locator("canvas[data-view='0']"), above=0, seconds=60)
        consultant.check("viewer")
        problems += consultant.problems

        admin = _walk(browser, tmp_path, "it-admin")
        page_sign_in(admin.page, base, "it.linus", credentials)
        assert _links(admin.page) == {"Raw import", "Active shares", "Hospital layouts", "Administration"}
        admin.check("home")
        admin.page.goto(f"{base}/share/active/")
        admin.check("active-shares")
        admin.page.goto(f"{base}/viewer/layouts/hospital/")
        assert "Hospital-wide hanging rules" in admin.page.inner_text("main")
        admin.check("hospital-layouts")
        for name, path in (("admin", "admin/"), ("admin-users", "admin/accounts/user/"),
                           ("admin-devices", "admin/imaging/deviceendpoint/"),
                           ("admin-throttles", "admin/accounts/loginthrottle/")):
            admin.page.goto(f"{base}/{path}")
            assert admin.page.locator("#content").count() == 1, name
            admin.check(name)
        problems += admin.problems
        browser.close()
    assert problems == [], "\n".join(problems)


def test_a_hungarian_doctor_reads_the_pages_the_viewer_and_its_server_in_hungarian(demo_gateway):
    """The browser asks for Hungarian: the page, the page script's words and the socket's announced
    menu all come in it (each compared with the committed catalogue, not with text written here)."""
    import polib
    from playwright.sync_api import sync_playwright

    from gateway.translations import catalogue_path

    pages, scripts = (polib.pofile(str(catalogue_path("hu", domain))) for domain in ("django", "djangojs"))

    def hungarian(catalogue, msgid: str) -> str:
        entry = catalogue.find(msgid)
        assert entry is not None and entry.msgstr and entry.msgstr != msgid, msgid
        return entry.msgstr

    base, study_uid, credentials, _ = demo_gateway
    with sync_playwright() as playwright:
        browser = _browser(playwright)
        page = browser.new_context(viewport={"width": 1280, "height": 900}, locale="hu-HU").new_page()
        page.goto(f"{base}/accounts/login/")
        assert page.get_attribute("html", "lang") == "hu"
        assert hungarian(pages, "Sign in") in page.inner_text("main")
        page_sign_in(page, base, "dr.ada", credentials)
        page.goto(f"{base}/viewer/{study_uid}/")
        _wait_for_sequence(page.locator("canvas[data-view='0']"), above=0, seconds=60)
        assert hungarian(scripts, "No finding kept yet.") in page.inner_text("body")
        modes = page.locator("#mode-bar button").all_inner_texts()
        assert hungarian(pages, "zoom") in [text.strip() for text in modes], modes
        browser.close()
