"""A doctor in a real browser finds a study that is only in the PACS, retrieves it and reads it.

Everything a hospital would run: the gateway served by daphne on a loopback port, the
``pacs_worker`` process beside it, Debian's Orthanc as the PACS (loaded with dcmtk's
``storescu``), Debian's chromium driven by Playwright.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pydicom
import pytest

from imaging.phantom import phantom_write
from tests.conftest import REPO, ZONES, child_environment, free_port, manage
from tests.peers import ORTHANC_AE, orthanc_start
from tests.test_browser import _wait_for_sequence, signed_in_page
from tests.test_server import _wait_until_serving

pytestmark = pytest.mark.browser


def _text_becomes(page, selector: str, wanted: set[str], seconds: float) -> str:
    """Poll from Python: the page's CSP forbids the eval that wait_for_function would need."""
    deadline = time.monotonic() + seconds
    text = ""
    while time.monotonic() < deadline:
        text = (page.text_content(selector) or "").strip()
        if text in wanted:
            return text
        time.sleep(0.25)
    raise AssertionError(f"{selector} still says {text!r} after {seconds} s")


@pytest.fixture(scope="module")
def pacs_gateway(tmp_path_factory):
    var_dir = tmp_path_factory.mktemp("pacs-browser-var")
    env = {"GATEWAY_VAR_DIR": str(var_dir), "GATEWAY_RENDER_WORKERS": "1"}
    for zone in ZONES:
        assert manage("migrate", "--database", zone, "--noinput", env=env).returncode == 0
    assert manage("collectstatic", "--noinput", env=env).returncode == 0
    seeded = manage("seed_demo", "--phantom-slices", "32", env=env, timeout=600)
    assert seeded.returncode == 0, seeded.stderr
    files = tmp_path_factory.mktemp("pacs-browser-phantom")
    phantom_write(out_dir=files, slices=32, patients=1, seed=23)
    orthanc = orthanc_start(tmp_path_factory.mktemp("pacs-browser-orthanc"),
                            modalities={"gateway": ["FUSIONGW", "127.0.0.1", free_port()]})
    processes: list[subprocess.Popen[str]] = []
    try:
        paths = sorted(files.rglob("*.dcm"))
        orthanc.load(paths)
        added = manage("dicom_destination", "add", "PACS", ORTHANC_AE, "127.0.0.1", str(orthanc.dicom_port),
                       "--retrieve", "c-get", env=env)
        assert added.returncode == 0, added.stderr
        port = free_port()
        child_env = {**child_environment(), **env}
        processes.append(subprocess.Popen(
            [str(Path(sys.executable).with_name("daphne")), "-b", "127.0.0.1", "-p", str(port),
             "gateway.asgi:application"], cwd=REPO, env=child_env, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True))
        processes.append(subprocess.Popen(
            [sys.executable, str(REPO / "manage.py"), "pacs_worker", "--interval", "0.3"], cwd=REPO,
            env=child_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        base = f"http://127.0.0.1:{port}"
        _wait_until_serving(f"{base}/healthz", processes[0])
        credentials = json.loads((var_dir / "demo-credentials.json").read_text())
        yield base, credentials, pydicom.dcmread(paths[0], stop_before_pixels=True), len(paths)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=20)
        orthanc.stop()


def test_a_doctor_retrieves_a_study_only_in_the_pacs_and_reads_it(pacs_gateway, tmp_path):
    from playwright.sync_api import sync_playwright

    base, credentials, header, images = pacs_gateway
    with sync_playwright() as playwright:
        browser, page, console_errors = signed_in_page(playwright, base, "dr.ada", credentials)

        page.goto(f"{base}/imaging/worklist?patient_id={header.PatientID}")
        remote = page.locator(".study.remote")
        assert remote.count() == 1
        assert "in PACS" in remote.inner_text() and f"{images} images" in remote.inner_text()
        page.screenshot(path=str(tmp_path / "worklist-pacs.png"))
        remote.locator("button.retrieve").click()
        page.wait_for_url("**/imaging/pacs/retrievals/*/")
        assert _text_becomes(page, "#state", {"done", "failed"}, seconds=240) == "done"
        assert (page.text_content("#count") or "").strip() == f"{images} of {images}"
        assert page.locator("#series tr").count() == 2
        page.screenshot(path=str(tmp_path / "retrieval-done.png"))
        page.locator("#open").click()
        canvas = page.locator("canvas[data-view='0']")
        canvas.wait_for()
        _wait_for_sequence(canvas, above=0, seconds=90)
        page.screenshot(path=str(tmp_path / "viewer-retrieved.png"))

        page.goto(f"{base}/imaging/worklist?patient_id={header.PatientID}")
        assert page.locator(".study.remote").count() == 0
        assert "here · also in PACS" in page.inner_text(".study")
        browser.close()
    assert not [e for e in console_errors if "Content Security Policy" in e], console_errors
