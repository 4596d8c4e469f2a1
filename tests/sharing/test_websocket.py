"""A consultant in the real viewer: the ingested phantom, real render workers, a real share.

The viewer websocket accepts a consultant session bound to a share, only for
a study the share grants; it withholds series whose pixels may identify the
patient; revocation closes an open viewer within a second (channel-layer
group), and so does expiry (a timer); every message re-checks the share.
Nothing a consultant is shown names the patient.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from gateway.asgi import application
from gateway.audit.models import AuditEvent
from gateway.sharing import services
from gateway.sharing.models import Share
from gateway.sharing.services import Scope, share_revoke
from imaging.models import Series, Study
from imaging.phantom import phantom_write
from rendering.protocol import frame_unpack
from tests.conftest import ZONES
from tests.sharing.factories import clinical_study, consultant_client, doctor, mint, verified
from tests.sockets import socket_open
from tests.stores import phantom_study

pytestmark = pytest.mark.django_db(databases=ZONES, transaction=True)

HOST = [(b"host", b"127.0.0.1"), (b"origin", b"http://127.0.0.1")]
TIMEOUT = 30


@pytest.fixture(autouse=True)
def _in_process_channel_layer(settings):
    """These tests run consumer and revocation in one process, on the in-memory layer.

    On the Redis layer, tests that each run on their own event loop hang in
    teardown (a loop-bound receive that never finishes cancelling). Revocation
    across processes over Redis is what production uses; the cluster test
    (tests/deploy) exercises that layer between real processes.
    """
    from channels.layers import channel_layers

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("share-phantom")
    return out, phantom_write(out_dir=out, slices=32, patients=1, seed=5)


@pytest.fixture
def study(phantom_dir, keys_dir, tmp_path, settings):
    out, truth = phantom_dir
    with phantom_study(out, truth, settings, tmp_path / "objects") as ingested:
        yield ingested


def _cookie(client: Client) -> list[tuple[bytes, bytes]]:
    return [(b"cookie", f"gateway-session={client.cookies['gateway-session'].value}".encode())]


async def _open(client: Client, study_uid: str, *, remote: str = "127.0.0.1"):
    communicator = WebsocketCommunicator(application, f"/ws/viewer/{study_uid}/",
                                         headers=HOST + _cookie(client))
    communicator.scope["client"] = (remote, 50000)
    connected, code = await socket_open(communicator, timeout=TIMEOUT)
    return communicator, connected, code


async def _text(communicator) -> dict:
    while True:
        message = await communicator.receive_output(timeout=TIMEOUT)
        if message["type"] == "websocket.close":
            raise AssertionError(f"socket closed: {message}")
        if message.get("bytes") is not None:
            frame = frame_unpack(message["bytes"])
            await communicator.send_json_to({"type": "ack", "view": frame.view,
                                             "seq": frame.sequence})
            continue
        return json.loads(message["text"])


async def _closed(communicator, within: float) -> tuple[int, float]:
    """Drain until the server closes; returns (close code, seconds taken)."""
    started = time.monotonic()
    while True:
        message = await communicator.receive_output(timeout=within)
        if message["type"] == "websocket.close":
            return message.get("code"), time.monotonic() - started


async def _still_open(communicator, seconds: float) -> None:
    """Read (and acknowledge) whatever comes for ``seconds``; fail if the server closes."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if await communicator.receive_nothing(timeout=0.1):
            continue  # (a timed-out receive_output would cancel the application)
        message = await communicator.receive_output(timeout=TIMEOUT)
        assert message["type"] != "websocket.close", message
        if message.get("bytes") is not None:
            frame = frame_unpack(message["bytes"])
            await communicator.send_json_to({"type": "ack", "view": frame.view,
                                             "seq": frame.sequence})


def _identity_strings(truth: dict) -> list[str]:
    identity = truth["identity"]
    values = [identity["patient_name"], identity["patient_id"], identity["other_patient_id"],
              identity["birth_date"], identity["address"], identity["telephone"],
              identity["accession_number"]]
    values += [part for part in identity["patient_name"].split("^") if len(part) >= 3]
    return [value for value in values if value and len(value) >= 3]


def _flag_identifying(study: Study) -> str:
    series = Series.objects.filter(study=study, modality="CT").first()
    series.pixels_may_identify = True
    series.save(update_fields=["pixels_may_identify"])
    return series.series_instance_uid


async def test_a_consultant_views_the_shared_study_without_identifying_data(study):
    record, truth = study
    withheld = await database_sync_to_async(_flag_identifying)(record)
    issuer = await database_sync_to_async(doctor)()
    minted = await database_sync_to_async(mint)(issuer, record, scope=Scope.PATIENT)
    consultant = await database_sync_to_async(consultant_client)(minted)
    pages = []
    for url in (reverse("sharing:home"), reverse("sharing:forward"),
                reverse("rendering:viewer", args=[record.study_instance_uid])):
        response = await database_sync_to_async(consultant.get)(url)
        assert response.status_code == 200, url
        pages.append(response.content.decode())
    assert record.study_instance_uid in pages[0]
    communicator, connected, _ = await _open(consultant, record.study_instance_uid)
    assert connected
    ready = await _text(communicator)
    assert ready["type"] == "ready"
    assert withheld not in json.dumps(ready)
    assert {series["modality"] for series in ready["series"]} == {"PT"}
    pages.append(json.dumps(ready))
    await communicator.disconnect()
    for text in pages:
        for value in _identity_strings(truth):
            assert value not in text, f"{value!r} shown to a consultant"
    events = await database_sync_to_async(lambda: list(AuditEvent.objects.filter(
        actor=f"share:{minted.share.public_id}").values_list("action", "acting_for")))()
    assert ("render.start", issuer.username) in events
    assert ("share.use", issuer.username) in events


async def test_a_token_for_patient_a_is_refused_on_patient_b(study):
    record, _ = study
    other = await database_sync_to_async(clinical_study)(patient="patient-b", uid="2.25.9001")
    issuer = await database_sync_to_async(doctor)()
    minted = await database_sync_to_async(mint)(issuer, record, scope=Scope.PATIENT)
    consultant = await database_sync_to_async(consultant_client)(minted)
    _, connected, code = await _open(consultant, other.study_instance_uid)
    assert not connected and code == 4403
    _, connected, code = await _open(consultant, "1.2.3.4.5")
    assert not connected and code == 4403
    reasons = await database_sync_to_async(lambda: [json.loads(d)["reason"] for d in
                                                    AuditEvent.objects.filter(
                                                        action="share.deny").values_list(
                                                        "details", flat=True)])()
    assert reasons.count("resource") == 2


async def test_a_consultant_outside_the_network_is_refused(study):
    record, _ = study
    issuer = await database_sync_to_async(doctor)()
    minted = await database_sync_to_async(mint)(issuer, record, client_cidr="127.0.0.0/8")
    consultant = await database_sync_to_async(consultant_client)(minted)
    _, connected, code = await _open(consultant, record.study_instance_uid, remote="10.9.9.9")
    assert not connected and code == 4403


async def test_revocation_closes_an_open_viewer_within_a_second(study):
    record, _ = study
    issuer = await database_sync_to_async(doctor)()
    minted = await database_sync_to_async(mint)(issuer, record)
    consultant = await database_sync_to_async(consultant_client)(minted)
    communicator, connected, _ = await _open(consultant, record.study_instance_uid)
    assert connected
    assert (await _text(communicator))["type"] == "ready"
    started = time.monotonic()
    await database_sync_to_async(share_revoke)(user=verified(issuer),
                                               share_id=minted.share.public_id, source_ip=None)
    code, _ = await _closed(communicator, within=5)
    assert code == 4403
    assert time.monotonic() - started < 1.0


async def test_the_watchdog_rechecks_the_share_when_the_notice_is_lost(study, monkeypatch, settings):
    """Even if the revocation notice never arrives, the watchdog closes the viewer."""
    record, _ = study
    settings.ACCOUNTS_WEBSOCKET_SESSION_CHECK_SECONDS = 0.2
    monkeypatch.setattr(services, "shares_broadcast_ended", lambda share_ids: None)
    issuer = await database_sync_to_async(doctor)()
    minted = await database_sync_to_async(mint)(issuer, record)
    consultant = await database_sync_to_async(consultant_client)(minted)
    communicator, _, _ = await _open(consultant, record.study_instance_uid)
    assert (await _text(communicator))["type"] == "ready"
    await database_sync_to_async(share_revoke)(user=verified(issuer),
                                               share_id=minted.share.public_id, source_ip=None)
    code, elapsed = await _closed(communicator, within=5)
    assert code == 4403 and elapsed < 1.0


async def test_expiry_mid_session_closes_the_viewer(study):
    record, _ = study
    issuer = await database_sync_to_async(doctor)()
    minted = await database_sync_to_async(mint)(issuer, record)
    soon = timezone.now() + timezone.timedelta(seconds=8)
    await database_sync_to_async(Share.objects.filter(pk=minted.share.pk).update)(expires_at=soon)
    consultant = await database_sync_to_async(consultant_client)(minted)
    communicator, connected, _ = await _open(consultant, record.study_instance_uid)
    assert connected
    code, _ = await _closed(communicator, within=15)
    assert code == 4403
    assert timezone.now() >= soon
    await asyncio.sleep(0)


async def test_viewer_activity_keeps_a_consultant_session_from_idling(study, monkeypatch):
    from accounts import clock as clock_module

    record, _ = study
    issuer = await database_sync_to_async(doctor)()
    minted = await database_sync_to_async(mint)(issuer, record)
    consultant = await database_sync_to_async(consultant_client)(minted)
    communicator, connected, _ = await _open(consultant, record.study_instance_uid)
    assert connected and (await _text(communicator))["type"] == "ready"
    now = clock_module.source()
    for minutes in (20, 40, 60):  # 20 min apart: under the 30 min idle limit each time
        monkeypatch.setattr(clock_module, "source",
                            lambda m=minutes: now + timezone.timedelta(minutes=m))
        await communicator.send_json_to({"type": "input", "view": 0, "op": "scroll", "delta": 1})
        await _still_open(communicator, seconds=0.5)
    monkeypatch.setattr(clock_module, "source", lambda: now + timezone.timedelta(minutes=95))
    await communicator.send_json_to({"type": "input", "view": 0, "op": "scroll", "delta": 1})
    code, _ = await _closed(communicator, within=5)
    assert code == 4403
