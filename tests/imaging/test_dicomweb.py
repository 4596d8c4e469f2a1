"""STOW-RS: device bearer tokens, multipart/related, the standard per-instance response."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from accounts.models import User
from gateway.audit.models import AuditEvent
from imaging.devices import device_endpoint_register
from imaging.models import Instance, Series, VolumeState
from imaging.stow import in_flight
from tests.conftest import ZONES
from tests.imaging.conftest import phantom_files

pytestmark = pytest.mark.django_db(databases=ZONES, transaction=True)
BOUNDARY = "fusion-boundary-7d3"


def _multipart(parts: list[tuple[str, bytes]]) -> bytes:
    body = b""
    for content_type, content in parts:
        body += f"--{BOUNDARY}\r\nContent-Type: {content_type}\r\n\r\n".encode() + content + b"\r\n"
    return body + f"--{BOUNDARY}--\r\n".encode()


def _post(client, body: bytes, token: str | None):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    return client.generic("POST", "/dicomweb/studies", body,
                          content_type=f'multipart/related; type="application/dicom"; boundary={BOUNDARY}',
                          **headers)


@pytest.fixture(autouse=True)
def _spool(tmp_path, settings):
    settings.IMAGING_STOW_SPOOL_DIR = tmp_path / "stow"


@pytest.fixture
def device_token(store):
    user = User.objects.create_user(username="device.stow", password="x" * 20, role="device")
    _, token = device_endpoint_register(user=user, ae_title="STOW01")
    return token


def test_stow_stores_and_answers_per_instance(client, device_token, phantom):
    out, _ = phantom
    files = phantom_files(out)[:3]
    body = _multipart([("application/dicom", f.read_bytes()) for f in files]
                      + [("application/dicom", b"not dicom at all" * 20)])
    response = _post(client, body, device_token)
    assert response.status_code == 202
    assert response["Content-Type"] == "application/dicom+json"
    document = response.json()
    stored = document["00081199"]["Value"]
    failed = document["00081198"]["Value"]
    assert len(stored) == 3 and len(failed) == 1
    assert failed[0]["00081197"]["Value"] == [0xC000]
    assert "not-dicom" in failed[0]["00000902"]["Value"][0]
    assert Instance.objects.count() == 3
    # The request built no volume: its series wait for the volume builder.
    assert set(Series.objects.values_list("volume_state", flat=True)) == {VolumeState.PENDING}
    assert set(Series.objects.values_list("volume_object", flat=True)) == {""}
    assert AuditEvent.objects.using("audit").filter(action="ingest", actor="device.stow").count() == 2
    again = _post(client, _multipart([("application/dicom", files[0].read_bytes())]), device_token)
    assert again.status_code == 200 and Instance.objects.count() == 3


def test_stow_refuses_without_a_valid_token(client, device_token, phantom):
    out, _ = phantom
    body = _multipart([("application/dicom", phantom_files(out)[0].read_bytes())])
    for token in (None, "fgw_forged", device_token + "x"):
        response = _post(client, body, token)
        assert response.status_code == 401
        assert response["WWW-Authenticate"].startswith("Bearer")
    assert Instance.objects.count() == 0
    assert AuditEvent.objects.using("audit").filter(action="ingest", outcome="denied").count() == 3


def test_stow_refuses_a_deactivated_device(client, device_token, phantom):
    User.objects.filter(username="device.stow").update(is_active=False)
    out, _ = phantom
    response = _post(client, _multipart([("application/dicom", phantom_files(out)[0].read_bytes())]),
                     device_token)
    assert response.status_code == 401


def test_stow_all_rejected_is_409_and_wrong_type_is_415(client, device_token):
    rtplan = Path(get_testdata_file("rtplan.dcm")).read_bytes()
    response = _post(client, _multipart([("application/dicom", rtplan)]), device_token)
    assert response.status_code == 409
    assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
    wrong = client.post("/dicomweb/studies", {"a": "b"}, HTTP_AUTHORIZATION=f"Bearer {device_token}")
    assert wrong.status_code == 415


def test_a_person_session_cannot_use_stow(client, signed_in, phantom, store):
    signed_in("doctor")
    out, _ = phantom
    response = _post(client, _multipart([("application/dicom", phantom_files(out)[0].read_bytes())]), None)
    assert response.status_code == 401


def test_get_on_stow_is_refused(client):
    assert client.get("/dicomweb/studies").status_code == 405


def _denied_reasons() -> list[str]:
    return [json.loads(event.details)["reason"] for event in AuditEvent.objects.using("audit")
            .filter(action="ingest", outcome="denied").order_by("pk")]


def test_stow_stores_nothing_without_the_closing_delimiter(client, device_token, phantom):
    out, _ = phantom
    body = _multipart([("application/dicom", f.read_bytes()) for f in phantom_files(out)[:2]])
    response = _post(client, body[: body.rindex(f"--{BOUNDARY}--".encode())], device_token)
    assert response.status_code == 400
    assert Instance.objects.count() == 0
    assert _denied_reasons() == ["multipart without closing delimiter"]


def test_stow_limits_the_body_the_parts_and_each_instance(client, device_token, phantom, settings):
    out, _ = phantom
    files = phantom_files(out)[:3]
    body = _multipart([("application/dicom", f.read_bytes()) for f in files])
    settings.IMAGING_STOW_MAX_BYTES = len(body) - 1
    assert _post(client, body, device_token).status_code == 413
    settings.IMAGING_STOW_MAX_BYTES = len(body)
    settings.IMAGING_STOW_MAX_PARTS = 2
    assert _post(client, body, device_token).status_code == 413
    assert Instance.objects.count() == 0
    settings.IMAGING_STOW_MAX_PARTS = 3
    settings.IMAGING_MAX_OBJECT_BYTES = min(f.stat().st_size for f in files) - 1
    response = _post(client, body, device_token)
    assert response.status_code == 409
    assert {item["00000902"]["Value"][0].split(":")[0]
            for item in response.json()["00081198"]["Value"]} == {"oversize"}
    assert _denied_reasons() == ["request over GATEWAY_STOW_MAX_BYTES", "request over GATEWAY_STOW_MAX_PARTS"]
    device = User.objects.get(username="device.stow")
    assert in_flight.count(device.pk) == 0


def test_stow_refuses_a_device_over_its_concurrent_uploads(client, device_token, phantom, settings):
    out, _ = phantom
    device = User.objects.get(username="device.stow")
    settings.IMAGING_STOW_CONCURRENT_PER_DEVICE = 1
    assert in_flight.acquire(device.pk, 1)
    try:
        response = _post(client, _multipart([("application/dicom", phantom_files(out)[0].read_bytes())]),
                         device_token)
    finally:
        in_flight.release(device.pk)
    assert response.status_code == 429 and int(response["Retry-After"]) > 0
    assert _denied_reasons() == ["too many concurrent uploads"]
