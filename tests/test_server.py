"""The gateway served the way ``make run`` serves it: daphne over a real socket."""

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO, ZONES, child_environment, free_port, manage

pytestmark = pytest.mark.server


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _wait_until_serving(url: str, process: subprocess.Popen, deadline: float = 30) -> None:
    started = time.monotonic()
    while time.monotonic() - started < deadline:
        if process.poll() is not None:
            raise AssertionError(f"daphne exited early: {process.stderr.read()}")
        try:
            _get(url)
            return
        except (ConnectionError, urllib.error.URLError):
            time.sleep(0.2)
    raise AssertionError(f"nothing answered at {url} within {deadline}s")


@pytest.fixture(scope="module")
def served_gateway(tmp_path_factory):
    var_dir = tmp_path_factory.mktemp("served-var")
    env = {"GATEWAY_VAR_DIR": str(var_dir)}
    for zone in ZONES:
        migrated = manage("migrate", "--database", zone, "--noinput", env=env)
        assert migrated.returncode == 0, migrated.stderr
    assert manage("collectstatic", "--noinput", env=env).returncode == 0
    port = free_port()
    child_env = child_environment()
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("daphne")), "-b", "127.0.0.1", "-p", str(port),
         "gateway.asgi:application"],
        cwd=REPO, env={**child_env, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(f"{base}/healthz", process)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_healthz_answers_over_asgi(served_gateway):
    status, headers, body = _get(f"{served_gateway}/healthz")
    assert status == 200
    assert json.loads(body)["databases"] == {zone: "ok" for zone in ZONES}
    assert "no-store" in headers["Cache-Control"]


def test_login_page_and_its_stylesheet_are_served(served_gateway):
    status, _headers, body = _get(f"{served_gateway}/accounts/login/")
    assert status == 200
    assert b'name="username"' in body and b'name="password"' in body
    stylesheet = body.split(b'rel="stylesheet" href="')[1].split(b'"')[0].decode()
    css_status, css_headers, _ = _get(f"{served_gateway}{stylesheet}")
    assert css_status == 200
    assert css_headers["Content-Type"].startswith("text/css")


def test_anonymous_home_redirects_to_login(served_gateway):
    request = urllib.request.Request(f"{served_gateway}/")  # noqa: S310

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as refused:
        opener.open(request, timeout=5)
    assert refused.value.code == 302
    assert refused.value.headers["Location"].startswith("/accounts/login/")
