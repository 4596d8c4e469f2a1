"""A doctor writes, signs and exports a report in Debian's chromium, against daphne on loopback (#15).

The gateway is its own (the report it writes would change the shared demo), seeded with the
phantom PET/CT and served by daphne. In the bundled viewer the doctor keeps two views as key
images ("Key image"), then on the report page types the impression (autosaved), steps a key
image one slice on (the server renders it again from its changed state), signs, and downloads
the PDF through the page's link. At the socket: a signed report refuses an edit, a hostile
``Content-Length`` is refused (413) before its body is read, and a nurse's download is refused.
"""

from __future__ import annotations

import re
import socket
import subprocess
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.served import _CSRF_FIELD as CSRF_FIELD
from tests.served import gateway_serve
from tests.test_browser import CHROMIUM, CHROMIUM_FLAGS

pytestmark = [pytest.mark.server, pytest.mark.browser]

WAIT_S = 120
IMPRESSION = "No hypermetabolic lesion outside the liver; Őz Ödön's follow-up in 3 months."


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    served = gateway_serve(tmp_path_factory.mktemp("served-report"), seed=True, processes=1)
    try:
        yield served
    finally:
        served.stop()


def _keep_views(page, views: tuple[int, ...]) -> None:
    for count, view in enumerate(views, start=1):
        page.locator(f"canvas[data-view='{view}']").click(position={"x": 5, "y": 5})
        page.locator("#report-capture").click()
        expect(page.locator("#report-status")).to_contain_text(f"holds {count} key image",
                                                               timeout=WAIT_S * 1000)


def _key_image_bytes(page, action) -> bytes:
    with page.expect_response(lambda r: "/images/" in r.url and r.url.split("?")[0].endswith(".png"),
                              timeout=WAIT_S * 1000) as answered:
        action()
    response = answered.value
    assert response.status == 200 and response.headers["content-type"] == "image/png"
    return response.body()


def _raw_post(gateway, path: str, cookie: str, csrf: str, declared: int) -> bytes:
    """Headers only, declaring a body far over the limit: the answer must come without it."""
    host, port = gateway.base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall((f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nOrigin: {gateway.base}\r\n"
                     f"Cookie: {cookie}\r\nX-CSRFToken: {csrf}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {declared}\r\n\r\n").encode())
        return raw.recv(65536)


def test_a_doctor_writes_signs_and_exports_a_report_in_a_browser(gateway, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.fail("the browser test needs Debian's chromium (make test installs it)")
    from playwright.sync_api import sync_playwright

    person = gateway.person("doctor")
    signed_in = gateway.sign_in(person)
    report_url = f"{gateway.base}/reports/{gateway.study_uid}/"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 800})
            context.add_cookies([{"name": c.name, "value": c.value, "url": gateway.base}
                                 for c in signed_in.jar])
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{gateway.base}/viewer/{gateway.study_uid}/")
            expect(page.locator("canvas[data-view='2']")).to_have_attribute(
                "data-sequence", re.compile(r"\d"), timeout=WAIT_S * 1000)
            _keep_views(page, (0, 2))

            page.goto(report_url)
            assert page.locator(".key-image").count() == 2
            page.locator("textarea[name=impression]").fill(IMPRESSION)
            expect(page.locator(".autosave")).to_contain_text("Saved ", timeout=WAIT_S * 1000)
            page.reload()
            assert page.locator("textarea[name=impression]").input_value() == IMPRESSION

            first = page.locator(".key-image").first
            before = _key_image_bytes(page, page.reload)
            after = _key_image_bytes(page, lambda: first.locator("button[data-slices='1']").click())
            assert before != after, "the key image did not change with its slice"

            page.locator("form.sign input[type=checkbox]").check()
            page.locator("form.sign button[type=submit]").click()
            page.wait_for_selector("p.status.signed", timeout=WAIT_S * 1000)
            assert "Signed by " + person.username in page.locator("p.status").inner_text()
            assert page.locator("textarea").count() == 0

            with page.expect_download(timeout=WAIT_S * 1000) as started:
                page.get_by_role("link", name="PDF").click()
            pdf = Path(started.value.path()).read_bytes()
            assert pdf.startswith(b"%PDF-")
            assert errors == [], errors
        finally:
            browser.close()
    (tmp_path / "report.pdf").write_bytes(pdf)
    text = subprocess.run(["pdftotext", "-layout", str(tmp_path / "report.pdf"), "-"], check=True,
                          capture_output=True, text=True).stdout
    assert IMPRESSION.split(";")[0] in text and f"Exported by {person.username}" in text

    save = f"/reports/{gateway.study_uid}/v1/save"
    token = CSRF_FIELD.search(signed_in.request(f"/reports/{gateway.study_uid}/").body)
    assert token, "no CSRF token on the report page"
    refused = signed_in.request(save, data={}, headers={"X-CSRFToken": token.group(1).decode()})
    assert refused.status == 409, (refused.status, refused.body[:200])
    answer = _raw_post(gateway, save, signed_in.cookie_header, token.group(1).decode(), declared=50_000_000)
    assert answer.startswith(b"HTTP/1.1 413") and b"limited to" in answer, answer[:300]

    nurse = gateway.sign_in(gateway.person("nurse"))
    assert nurse.request(f"/reports/{gateway.study_uid}/v1.pdf").status == 403
    page_of_nurse = nurse.request(f"/reports/{gateway.study_uid}/")
    assert page_of_nurse.status == 200 and IMPRESSION.split(";")[0].encode() in page_of_nurse.body
