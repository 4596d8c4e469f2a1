"""STOW-RS through a served gateway: refusals before the body, streaming, bounds, RSS.

Everything here goes through daphne on a loopback port with a raw socket, so
what is tested is what the server does with the bytes: whether the answer
comes before the body has been sent, and what the server keeps meanwhile.
"""

from __future__ import annotations

import http.client
import json
import secrets
import select
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

from tests.served import ServedGateway, gateway_serve

pytestmark = pytest.mark.server
BOUNDARY = "fusion-served-5c1"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'
SMALL_LIMIT = 4 << 20  # GATEWAY_STOW_MAX_BYTES of the private gateway


def _part(content: bytes, content_type: str = "application/dicom") -> bytes:
    return f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode() + content + b"\r\n"


def _multipart(contents: Iterable[bytes], *, closed: bool = True) -> bytes:
    return b"".join(_part(content) for content in contents) + (f"--{BOUNDARY}--\r\n".encode()
                                                               if closed else b"")


def _phantom_files(phantom: tuple[Path, dict], modality: str) -> list[Path]:
    out, _ = phantom
    return sorted(out.rglob(f"{modality}/*.dcm"))


def _device_token(gateway: ServedGateway) -> str:
    """A fresh device account of the gateway's own, and its STOW-RS token."""
    name = f"device.stow-{secrets.token_hex(3)}"
    created = gateway.manage("create_user", "--username", name, "--role", "device",
                             "--operator", "tests")
    assert created.returncode == 0, created.stderr
    registered = gateway.manage("device_register", name, "--ae-title", name[-10:].upper(),
                                "--operator", "tests")
    assert registered.returncode == 0, registered.stderr
    return registered.stdout.rsplit(":", 1)[1].strip()


def _instances(gateway: ServedGateway) -> int:
    return int(gateway.shell("from imaging.models import Instance; print(Instance.objects.count())"))


def _denials(gateway: ServedGateway) -> list[dict]:
    return json.loads(gateway.shell(
        "import json; from gateway.audit.models import AuditEvent; "
        "print(json.dumps([json.loads(e.details or '{}') for e in AuditEvent.objects.using('audit')"
        ".filter(action='ingest', outcome='denied').order_by('pk')]))"))


def _head(*, length: int | None, token: str | None = None, expect: bool = False,
          content_type: str = CONTENT_TYPE) -> bytes:
    lines = ["POST /dicomweb/studies HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    if token:
        lines.append(f"Authorization: Bearer {token}")
    if expect:
        lines.append("Expect: 100-continue")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _connect(gateway: ServedGateway) -> socket.socket:
    return socket.create_connection(("127.0.0.1", gateway.port), timeout=30)


def _response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    answer = http.client.HTTPResponse(sock)
    answer.begin()
    return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()


def _push(sock: socket.socket, chunks: Iterable[bytes], *, chunked: bool = False,
          keep_pushing: bool = False) -> tuple[int, float | None, bytes]:
    """Send ``chunks`` while watching for an answer; returns (bytes sent, seconds to it, its bytes).

    Stops at the answer unless ``keep_pushing`` (a hostile client: then the
    answer's first bytes are read as they come, and the push goes on until
    the chunks run out or the server drops the connection).
    """
    sent, started, answered, early = 0, time.monotonic(), None, b""
    try:
        for chunk in chunks:
            if answered is None and select.select([sock], [], [], 0)[0]:
                answered = time.monotonic() - started
                if not keep_pushing:
                    return sent, answered, early
                early = sock.recv(65536)
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            sent += len(chunk)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent, answered, early


def _zeros(total: int, size: int = 1 << 16) -> Iterator[bytes]:
    chunk = bytes(size)
    for _ in range(total // size):
        yield chunk


@pytest.fixture(scope="module")
def small_gateway(tmp_path_factory) -> Iterator[ServedGateway]:
    """A gateway of the module's own with a 4 MiB STOW-RS limit (and the default of 2 uploads)."""
    gateway = gateway_serve(tmp_path_factory.mktemp("stow-served"),
                            env={"GATEWAY_STOW_MAX_BYTES": str(SMALL_LIMIT)})
    try:
        yield gateway
    finally:
        gateway.stop()


def test_no_token_and_a_2_gib_length_is_refused_before_the_body(served_demo):
    with _connect(served_demo) as sock:
        started = time.monotonic()
        sock.sendall(_head(length=2 << 30) + bytes(4096))
        sock.settimeout(10)
        status, headers, body = _response(sock)
        elapsed = time.monotonic() - started
    assert status == 401, body
    assert headers["www-authenticate"].startswith("Bearer")
    assert headers["connection"] == "close"
    assert elapsed < 2, f"the 401 took {elapsed:.2f} s"
    assert _denials(served_demo)[-1] == {"door": "stow-rs", "reason": "no valid device token"}


def test_a_declared_length_over_the_limit_is_413_at_once(served_demo):
    token = _device_token(served_demo)
    with _connect(served_demo) as sock:
        started = time.monotonic()
        sock.sendall(_head(length=(1 << 30) + 1, token=token, expect=True) + bytes(4096))
        sock.settimeout(10)
        first = sock.recv(12)
        elapsed = time.monotonic() - started
        assert first == b"HTTP/1.1 413", first  # no 100 Continue: the client need not send
        assert elapsed < 2, f"the 413 took {elapsed:.2f} s"
    assert _denials(served_demo)[-1]["reason"] == "request over GATEWAY_STOW_MAX_BYTES"


def test_a_chunked_body_growing_past_the_limit_is_413_and_nothing_is_stored(small_gateway, phantom):
    token = _device_token(small_gateway)
    ct = [path.read_bytes() for path in _phantom_files(phantom, "CT")[:4]]
    head = _part(ct[0]) + _part(ct[1])

    def body() -> Iterator[bytes]:
        yield head
        yield f"--{BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        yield from _zeros(64 << 20)

    with _connect(small_gateway) as sock:
        sock.sendall(_head(length=None, token=token))
        sent, answered, _ = _push(sock, body(), chunked=True)
        status, _, answer = _response(sock)
    assert status == 413, answer
    assert answered is not None and sent < 32 << 20, f"answered only after {sent} bytes"
    assert _instances(small_gateway) == 0
    assert _denials(small_gateway)[-1]["reason"] == "request over GATEWAY_STOW_MAX_BYTES"


def test_a_multipart_without_its_closing_delimiter_is_400_and_nothing_is_stored(small_gateway,
                                                                                phantom):
    token = _device_token(small_gateway)
    body = _multipart([p.read_bytes() for p in _phantom_files(phantom, "PT")[:2]], closed=False)
    with _connect(small_gateway) as sock:
        sock.sendall(_head(length=len(body), token=token) + body)
        status, _, answer = _response(sock)
    assert status == 400, answer
    assert "closing delimiter" in json.loads(answer)["error"]
    assert _instances(small_gateway) == 0
    assert _denials(small_gateway)[-1]["reason"] == "multipart without closing delimiter"


def test_a_proper_multipart_of_two_phantom_instances_is_stored(small_gateway, phantom):
    token = _device_token(small_gateway)
    before = _instances(small_gateway)
    files = _phantom_files(phantom, "CT")[2:4]  # not sent by the tests above
    body = _multipart([path.read_bytes() for path in files])
    with _connect(small_gateway) as sock:
        sock.sendall(_head(length=len(body), token=token))
        _push(sock, [body[i:i + 65536] for i in range(0, len(body), 65536)])
        status, headers, answer = _response(sock)
    assert status == 200, answer
    assert headers["content-type"] == "application/dicom+json"
    document = json.loads(answer)
    assert len(document["00081199"]["Value"]) == 2 and "00081198" not in document
    assert _instances(small_gateway) == before + 2


def _await_continue(sock: socket.socket) -> bytes:
    received = b""
    while b"\r\n\r\n" not in received:
        data = sock.recv(4096)
        assert data, "the connection closed"
        received += data
    return received


def test_a_third_concurrent_upload_of_one_device_is_429(small_gateway, phantom):
    token = _device_token(small_gateway)
    first, second = _connect(small_gateway), _connect(small_gateway)
    try:
        for sock in (first, second):
            sock.sendall(_head(length=1 << 20, token=token, expect=True))
            assert _await_continue(sock).startswith(b"HTTP/1.1 100 Continue")
            sock.sendall(f"--{BOUNDARY}\r\n".encode())
        with _connect(small_gateway) as third:
            third.sendall(_head(length=1 << 20, token=token, expect=True))
            status, headers, answer = _response(third)
        assert status == 429, answer
        assert int(headers["retry-after"]) > 0
        assert _denials(small_gateway)[-1]["reason"] == "too many concurrent uploads"
    finally:
        first.close()
        second.close()
    body = _multipart([_phantom_files(phantom, "PT")[5].read_bytes()])
    deadline = time.monotonic() + 10
    while True:  # the slots come back when the server sees the two go away
        with _connect(small_gateway) as sock:
            sock.sendall(_head(length=len(body), token=token) + body)
            status, _, answer = _response(sock)
        if status != 429 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status == 200, answer


def test_daphne_memory_stays_flat_while_300_mb_are_pushed_without_a_token(served_demo):
    baseline = served_demo.rss_kib()
    peak = baseline
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, served_demo.rss_kib())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        with _connect(served_demo) as sock:
            sock.sendall(_head(length=300 << 20))
            sent, answered, early = _push(sock, _zeros(300 << 20), keep_pushing=True)
    finally:
        done.set()
        sampler.join()
    assert early.startswith(b"HTTP/1.1 401 "), early[:100]
    assert answered is not None and answered < 2
    assert sent > 32 << 20, f"the server took only {sent} bytes before dropping the client"
    assert (peak - baseline) < 64 << 10, f"daphne grew by {(peak - baseline) >> 10} MiB"


def test_other_requests_with_bodies_still_reach_django_whole(served_demo):
    """Signing in posts two forms: their bodies now stream to Django instead of being buffered."""
    browser = served_demo.doctor()
    assert browser.request("/", follow=True).status == 200
