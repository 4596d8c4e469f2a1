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


def _raw(base: str, head: str, chunks: int = 0, chunk: bytes = b"") -> bytes:
    """Send ``head`` (and then chunked body pieces until the server answers); what came back."""
    import socket

    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(head.encode())
        raw.settimeout(0.05)
        for _ in range(chunks):
            try:
                answer = raw.recv(65536)
                if answer:
                    return answer
            except TimeoutError:
                pass
            try:
                raw.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
        raw.settimeout(10)
        return raw.recv(65536)


def test_a_body_declared_over_the_limit_is_refused_on_its_headers(served_gateway):
    from django.conf import settings

    declared = settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1
    answer = _raw(served_gateway, f"POST /accounts/login/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                  f"Content-Type: application/x-www-form-urlencoded\r\n"
                                  f"Content-Length: {declared}\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert f"limited to {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes".encode() in answer


def test_a_chunked_body_is_refused_once_it_passes_the_limit(served_gateway):
    from django.conf import settings

    piece = b"x" * 65536
    enough = settings.DATA_UPLOAD_MAX_MEMORY_SIZE // len(piece) + 8
    answer = _raw(served_gateway, "POST /accounts/login/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                  "Content-Type: application/x-www-form-urlencoded\r\n"
                                  "Transfer-Encoding: chunked\r\n\r\n", chunks=enough * 4, chunk=piece)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
