"""Raw import through a served gateway: the upload is admitted or refused on its headers.

Daphne on a loopback port and a raw socket, so what is tested is what the
server does before the body: a 2 GiB declaration is answered at once (413 for
someone who may import, the sign-in redirect or 403 for anyone else), and a
volume larger than the ordinary 2.5 MB body limit is received for someone who
may import it.
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.served import Browser, ServedGateway, gateway_serve

pytestmark = pytest.mark.server
LIMIT = 8 << 20  # GATEWAY_MAX_OBJECT_BYTES of the private gateway
PATH = "/imaging/raw-import"
_CSRF = re.compile(rb'name="csrfmiddlewaretoken" value="([^"]+)"')


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[ServedGateway]:
    served = gateway_serve(tmp_path_factory.mktemp("raw-import-served"),
                           env={"GATEWAY_MAX_OBJECT_BYTES": str(LIMIT)}, processes=1)
    try:
        yield served
    finally:
        served.stop()


def _head(gateway: ServedGateway, *, length: int, cookie: str = "", expect: bool = True) -> bytes:
    lines = [f"POST {PATH} HTTP/1.1", f"Host: 127.0.0.1:{gateway.port}",
             "Content-Type: multipart/form-data; boundary=x", f"Content-Length: {length}",
             f"Origin: {gateway.base}"]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    if expect:
        lines.append("Expect: 100-continue")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _answer_to_declared(gateway: ServedGateway, cookie: str,
                        length: int = 2 << 30) -> tuple[int, dict[str, str], float]:
    """Declare ``length`` (2 GiB), send 4 KiB of it; the status, headers and seconds until the answer."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        started = time.monotonic()
        sock.sendall(_head(gateway, length=length, cookie=cookie) + bytes(4096))
        sock.settimeout(10)
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        elapsed = time.monotonic() - started
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, elapsed


def _events(gateway: ServedGateway, outcome: str) -> list[dict]:
    return json.loads(gateway.shell(
        "import json; from gateway.audit.models import AuditEvent; "
        "print(json.dumps([dict(json.loads(e.details or '{}'), actor=e.actor) for e in "
        f"AuditEvent.objects.using('audit').filter(action='ingest', outcome='{outcome}').order_by('pk')]))"))


def test_a_doctor_declaring_2_gib_gets_413_before_the_body(gateway):
    doctor = gateway.sign_in(gateway.person("doctor"))
    status, headers, elapsed = _answer_to_declared(gateway, doctor.cookie_header)
    assert status == 413  # not 100 Continue: the client need not send the body
    assert headers["connection"] == "close"
    assert elapsed < 2, f"the 413 took {elapsed:.2f} s"
    refusal = _events(gateway, "failure")[-1]
    assert refusal["door"] == "raw-import" and refusal["declared"] == 2 << 30


def test_anyone_else_is_answered_on_the_headers_and_the_body_never_read(gateway):
    status, headers, elapsed = _answer_to_declared(gateway, "")
    assert status == 302 and headers["location"].startswith("/accounts/login/") and elapsed < 2
    nurse = gateway.sign_in(gateway.person("nurse"))
    status, _, elapsed = _answer_to_declared(gateway, nurse.cookie_header)
    assert status == 403 and elapsed < 2
    denied = json.loads(gateway.shell(
        "import json; from gateway.audit.models import AuditEvent; print(json.dumps(["
        "json.loads(e.details) for e in AuditEvent.objects.using('audit').filter(action='ingest', "
        "outcome='denied')]))"))
    assert denied[-1] == {"permission": "study.import_raw", "path": PATH}


def test_a_second_upload_while_one_is_received_is_told_to_retry_before_its_body(gateway):
    doctor = gateway.sign_in(gateway.person("doctor"))
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as first:
        first.sendall(_head(gateway, length=4 << 20, cookie=doctor.cookie_header, expect=False)
                      + bytes(65536))  # admitted, and still arriving
        time.sleep(0.5)
        status, headers, elapsed = _answer_to_declared(gateway, doctor.cookie_header, 4 << 20)
        assert status == 429 and headers["retry-after"] == "30" and elapsed < 2
    time.sleep(0.5)  # the first, abandoned, is over: the next is admitted (and refused only by size)
    assert _answer_to_declared(gateway, doctor.cookie_header)[0] == 413


def _multipart(fields: dict[str, str], file_name: str, content: bytes) -> tuple[str, bytes]:
    boundary = f"raw-{secrets.token_hex(8)}"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
             for name, value in fields.items()]
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="volume"; filename="{file_name}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n".encode() + content + b"\r\n")
    return f"multipart/form-data; boundary={boundary}", b"".join(parts) + f"--{boundary}--\r\n".encode()


def _upload(gateway: ServedGateway, browser: Browser, path: Path) -> tuple[int, bytes]:
    page = browser.request(PATH, follow=True)
    token = _CSRF.search(page.body)
    assert token, page.status
    content_type, body = _multipart({
        "csrfmiddlewaretoken": token.group(1).decode(), "target": "new", "patient_name": "Served^Volume",
        "patient_id": "SERVED-1", "modality": "MR", "series_description": "served"},
        path.name, path.read_bytes())
    connection = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=120)
    connection.request("POST", PATH, body=body, headers={
        "Content-Type": content_type, "Cookie": browser.cookie_header, "Origin": gateway.base})
    answer = connection.getresponse()
    return answer.status, answer.read()


def test_a_volume_over_the_ordinary_body_limit_is_received_for_a_doctor(gateway, tmp_path):
    from django.conf import settings

    values = np.random.default_rng(29).normal(size=(60, 120, 128)).astype(np.float32)  # 3.7 MB
    path = tmp_path / "served.nii"
    sitk.WriteImage(sitk.GetImageFromArray(values), str(path))
    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE < path.stat().st_size < LIMIT
    status, body = _upload(gateway, gateway.sign_in(gateway.person("doctor")), path)
    assert status == 200, body[-3000:]
    assert b"raw-import-result" in body and b"The volume is built and ready to view." in body
    assert not list((gateway.var_dir / "raw-import").iterdir())  # nothing of the upload left behind
