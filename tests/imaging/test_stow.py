"""STOW-RS intake without a server: the streaming multipart parser and the ASGI gate's contract.

What the served gateway does with the bytes is ``test_stow_served``; here the
parts come out the same whatever the chunking, and the gate refuses on the
headers without ever asking for the body.
"""

from __future__ import annotations

import random

import pytest

from accounts.models import User
from imaging.devices import device_endpoint_register
from imaging.stow import SCOPE_KEY, StowRefused, StowUpload
from imaging.stow_asgi import StowGate
from tests.conftest import ZONES

BOUNDARY = b"gate-boundary-41"
TRICKY = [
    b"\r\n--gate-boundary-4 not quite\r\n--gate-boundary-41x",
    bytes(range(256)) * 40,
    b"",
    b"--" + BOUNDARY[:-1] + b"\r\n\r\n",
]


def _body(contents: list[bytes], *, closed: bool = True, epilogue: bytes = b"") -> bytes:
    body = b"".join(b"--" + BOUNDARY + b"\r\nContent-Type: application/dicom\r\n\r\n" + c + b"\r\n"
                    for c in contents)
    return body + (b"--" + BOUNDARY + b"--\r\n" + epilogue if closed else b"")


@pytest.fixture
def spool(tmp_path, settings):
    settings.IMAGING_STOW_SPOOL_DIR = tmp_path / "stow"
    return tmp_path / "stow"


def _upload(**limits: int) -> StowUpload:
    return StowUpload(boundary=BOUNDARY, max_bytes=limits.get("max_bytes", 1 << 30),
                      max_parts=limits.get("max_parts", 100))


@pytest.mark.parametrize("chunking", ["whole", "bytewise", "random"])
def test_parts_come_out_whole_whatever_the_chunking(spool, chunking):
    body = _body(TRICKY, epilogue=b"an epilogue is ignored")
    upload = _upload()
    if chunking == "whole":
        pieces = [body]
    elif chunking == "bytewise":
        pieces = [body[i:i + 1] for i in range(len(body))]
    else:
        rng, pieces, at = random.Random(3), [], 0
        while at < len(body):
            step = rng.randint(1, 300)
            pieces.append(body[at:at + step])
            at += step
    for piece in pieces:
        upload.feed(piece)
    upload.finish()
    assert [upload.read(part) for part in upload.parts] == TRICKY
    assert {part.content_type for part in upload.parts} == {"application/dicom"}
    upload.close()
    assert list(spool.iterdir()) == []  # the spool file never had a name


def test_a_body_without_its_closing_delimiter_is_refused(spool):
    upload = _upload()
    upload.feed(_body(TRICKY[:2], closed=False))
    with pytest.raises(StowRefused) as refused:
        upload.finish()
    assert refused.value.refusal.status == 400
    upload.close()


def test_limits_refuse_while_the_body_streams(spool):
    upload = _upload(max_bytes=1000)
    upload.feed(b"--" + BOUNDARY + b"\r\n\r\n")
    with pytest.raises(StowRefused) as refused:
        for _ in range(20):
            upload.feed(b"x" * 100)
    assert refused.value.refusal.status == 413 and upload.received <= 1100
    upload.close()
    upload = _upload(max_parts=2)
    with pytest.raises(StowRefused) as refused:
        upload.feed(_body([b"a", b"b", b"c"]))
    assert refused.value.refusal.status == 413
    upload.close()
    upload = _upload()
    with pytest.raises(StowRefused) as refused:
        upload.feed(b"not a multipart at all\r\n")
    assert refused.value.refusal.status == 400
    upload.close()


def _scope(headers: dict[str, str]) -> dict:
    return {"type": "http", "method": "POST", "path": "/dicomweb/studies", "root_path": "",
            "scheme": "http", "query_string": b"", "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 8000),
            "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]}


async def _through_gate(headers: dict[str, str]) -> dict:
    seen: dict = {}

    async def body_never_read() -> dict:
        raise AssertionError("the gate read the body of a request it refuses")

    async def application(scope, receive, send):
        seen["receipt"] = scope[SCOPE_KEY]
        seen["first"] = await receive()

    await StowGate(application)(_scope(headers), body_never_read, None)
    return seen


@pytest.mark.django_db(databases=ZONES, transaction=True)
@pytest.mark.parametrize(("headers", "status"), [
    ({"Host": "127.0.0.1", "Content-Length": str(2 << 30),
      "Content-Type": f"multipart/related; boundary={BOUNDARY.decode()}"}, 401),
    ({"Host": "127.0.0.1", "Authorization": "Bearer TOKEN", "Content-Length": str(2 << 30),
      "Content-Type": f"multipart/related; boundary={BOUNDARY.decode()}"}, 413),
    ({"Host": "127.0.0.1", "Authorization": "Bearer TOKEN", "Content-Length": "10",
      "Content-Type": "application/dicom"}, 415),
    ({"Host": "127.0.0.1", "Authorization": "Bearer TOKEN",
      "Content-Type": f"multipart/related; boundary={BOUNDARY.decode()}"}, 411),
    ({"Host": "evil.example", "Authorization": "Bearer TOKEN", "Content-Length": "10",
      "Content-Type": f"multipart/related; boundary={BOUNDARY.decode()}"}, 400),
])
async def test_the_gate_refuses_on_the_headers_without_reading_the_body(headers, status, spool):
    from asgiref.sync import sync_to_async

    def register() -> str:
        user = User.objects.create_user(username="device.gate", password="x" * 20, role="device")
        return device_endpoint_register(user=user, ae_title="GATE01")[1]

    token = await sync_to_async(register)()
    headers = {k: v.replace("TOKEN", token) for k, v in headers.items()}
    seen = await _through_gate(headers)
    assert seen["receipt"].refusal.status == status
    assert seen["first"] == {"type": "http.request", "body": b"", "more_body": False}
