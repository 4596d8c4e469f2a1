"""A doctor in a real browser: sign in with TOTP, open the demo study, scroll, see the frame change.

Debian's chromium is driven by Playwright (``executable_path``); the gateway is
served by daphne exactly as ``make run`` serves it, on a loopback port.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
from django_otp.oath import TOTP

from tests.conftest import REPO, ZONES, child_environment, free_port, manage
from tests.test_server import _wait_until_serving

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync"]


def _wait_for_sequence(canvas, *, above: int, seconds: float) -> int:
    """Poll from Python: the page's CSP forbids the eval that wait_for_function would need."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = canvas.get_attribute("data-sequence")
        if value is not None and int(value) > above:
            return int(value)
        time.sleep(0.1)
    raise AssertionError(f"no frame newer than {above} within {seconds} s")


def _totp_now(otpauth_uri: str) -> str:
    secret = urllib.parse.parse_qs(urllib.parse.urlparse(otpauth_uri).query)["secret"][0]
    key = base64.b32decode(secret + "=" * (-len(secret) % 8))
    return f"{TOTP(key, step=30, digits=6).token():06d}"


def page_sign_in(page, base: str, username: str, credentials: dict) -> None:
    """Sign a demo account in on ``page`` with its password and its TOTP code, as a person would."""
    page.goto(f"{base}/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", credentials[username])
    page.click("main button[type=submit]")
    page.wait_for_selector("input[name=otp_token]")
    page.fill("input[name=otp_token]", _totp_now(credentials["totp"][username]))
    page.click("main button[type=submit]")
    page.wait_for_url(f"{base}/")


def signed_in_page(playwright, base: str, username: str, credentials: dict):
    """(browser, page, console errors): chromium at 1280 by 900 px with ``username`` signed in."""
    browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    console_errors: list[str] = []
    page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
    page_sign_in(page, base, username, credentials)
    return browser, page, console_errors


@pytest.fixture(scope="module")
def demo_gateway(tmp_path_factory):
    if not Path(CHROMIUM).exists():
        pytest.fail("the browser test needs Debian's chromium: apt-get install chromium "
                    "(make test installs it)")
    var_dir = tmp_path_factory.mktemp("browser-var")
    env = {"GATEWAY_VAR_DIR": str(var_dir), "GATEWAY_RENDER_WORKERS": "2"}
    for zone in ZONES:
        assert manage("migrate", "--database", zone, "--noinput", env=env).returncode == 0
    assert manage("collectstatic", "--noinput", env=env).returncode == 0
    seeded = manage("seed_demo", "--phantom-slices", "40", env=env, timeout=600)
    assert seeded.returncode == 0, seeded.stderr
    study = manage("shell", "--no-imports", "-c",
                   "from imaging.models import Study; print(Study.objects.get().study_instance_uid)",
                   env=env)
    credentials = json.loads((var_dir / "demo-credentials.json").read_text())
    port = free_port()
    child_env = child_environment()
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("daphne")), "-b", "127.0.0.1", "-p", str(port),
         "gateway.asgi:application"],
        cwd=REPO, env={**child_env, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(f"{base}/healthz", process)
        yield base, study.stdout.strip(), credentials, var_dir
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_a_doctor_signs_in_opens_the_study_and_scrolls(demo_gateway, tmp_path):
    from playwright.sync_api import sync_playwright

    base, study_uid, credentials, _ = demo_gateway
    with sync_playwright() as playwright:
        browser, page, console_errors = signed_in_page(playwright, base, "dr.ada", credentials)

        page.goto(f"{base}/viewer/{study_uid}/")
        first_canvas = page.locator("canvas[data-view='0']")
        first_canvas.wait_for()
        _wait_for_sequence(first_canvas, above=0, seconds=60)
        before = page.evaluate("document.querySelector(\"canvas[data-view='0']\").toDataURL()")
        sequence = int(first_canvas.get_attribute("data-sequence"))
        page.screenshot(path=str(tmp_path / "viewer-before.png"))

        first_canvas.hover()
        for _ in range(8):
            page.mouse.wheel(0, 120)
            time.sleep(0.05)
        _wait_for_sequence(first_canvas, above=sequence, seconds=30)
        page.wait_for_timeout(500)
        after = page.evaluate("document.querySelector(\"canvas[data-view='0']\").toDataURL()")
        page.screenshot(path=str(tmp_path / "viewer-after.png"))
        status = page.text_content("#status")
        browser.close()
    assert after != before, "scrolling did not change the picture"
    assert "error" not in (status or "").lower(), status
    assert not [e for e in console_errors if "Content Security Policy" in e], console_errors
