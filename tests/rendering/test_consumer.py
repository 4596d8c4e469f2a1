"""The viewer websocket end to end: a real session, the ingested phantom, real render workers.

Frames are decoded and checked for content (orientation, W/L, the fusion colour
at a planted lesion, SUV under the cursor); refusals are checked for every kind
of principal; malformed input never closes the socket.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal

import numpy as np
import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from PIL import Image

from gateway.asgi import application
from gateway.audit.models import AuditEvent
from imaging.models import Study
from imaging.phantom import phantom_write
from imaging.services import IngestBatch
from rendering import pool as pool_module
from rendering.protocol import frame_unpack
from tests.conftest import ZONES
from tests.sockets import socket_open
from tests.stores import phantom_study

pytestmark = pytest.mark.django_db(databases=ZONES, transaction=True)

HOST = [(b"host", b"127.0.0.1"), (b"origin", b"http://127.0.0.1")]
TIMEOUT = 30


@pytest.fixture(scope="module")
def phantom_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("viewer-phantom")
    return out, phantom_write(out_dir=out, slices=40, patients=1, seed=3)


@pytest.fixture
def study(phantom_dir, keys_dir, tmp_path, settings):
    out, truth = phantom_dir
    with phantom_study(out, truth, settings, tmp_path / "objects") as ingested:
        yield ingested


def _cookie(client) -> list[tuple[bytes, bytes]]:
    return [(b"cookie", f"gateway-session={client.cookies['gateway-session'].value}".encode())]


async def _open(client, study_uid: str, headers=None):
    communicator = WebsocketCommunicator(application, f"/ws/viewer/{study_uid}/",
                                         headers=headers if headers is not None
                                         else HOST + _cookie(client))
    connected, code = await socket_open(communicator, timeout=TIMEOUT)
    return communicator, connected, code


async def _next(communicator):
    message = await communicator.receive_output(timeout=TIMEOUT)
    if message["type"] == "websocket.close":
        raise AssertionError(f"socket closed: {message}")
    if message.get("bytes") is not None:
        return frame_unpack(message["bytes"])
    return json.loads(message["text"])


async def _frames(communicator, views: int) -> dict:
    """Read until every one of ``views`` views has shown a frame; the latest frame of each."""
    latest: dict = {}
    while len(latest) < views:
        item = await _next(communicator)
        if isinstance(item, dict):
            assert item["type"] != "error", item
            continue
        latest[item.view] = item
        await communicator.send_json_to({"type": "ack", "view": item.view, "seq": item.sequence})
    return latest


async def _until(communicator, predicate):
    while True:
        item = await _next(communicator)
        if not isinstance(item, dict):
            await communicator.send_json_to({"type": "ack", "view": item.view, "seq": item.sequence})
        if predicate(item):
            return item


async def _stills(communicator, views: set[int], at: tuple[int, int]) -> dict:
    """The first still (lossless) frame of each of ``views`` whose crosshair is at ``at``."""
    found: dict = {}
    while set(found) != views:
        item = await _next(communicator)
        if isinstance(item, dict):
            continue
        await communicator.send_json_to({"type": "ack", "view": item.view, "seq": item.sequence})
        crosshair = item.overlay.get("crosshair") or (-99, -99)
        if (item.quality == 1 and item.view in views
                and abs(crosshair[0] - at[0]) <= 1.5 and abs(crosshair[1] - at[1]) <= 1.5):
            found[item.view] = item
    return found



async def test_at_open_the_reader_s_own_rule_comes_before_the_hospital_s(client, signed_in, study):
    from accounts.hanging import hanging_hospital_save, hanging_rule_save
    from accounts.models import User

    doctor = await database_sync_to_async(signed_in)("doctor")
    admin = await database_sync_to_async(User.objects.create_user)(username="it.admin", role="it_admin")
    ct = {"match": {"modalities": ["CT"]}, "views": [{"kind": "coronal", "layers": [{"modality": "CT"}]}]}
    hospital = await database_sync_to_async(hanging_hospital_save)(actor=admin, name="Hospital CT", rule=ct)
    record, _ = study
    communicator, connected, _ = await _open(client, record.study_instance_uid)
    assert connected
    ready = await _next(communicator)
    assert ready["layout"] == "1x1" and [view["kind"] for view in ready["views"]] == ["coronal"]
    assert ready["vocabulary"]["hanging_rules"] == [
        {"id": hospital.id, "name": "Hospital CT", "hospital": True, "applies": True}]
    await communicator.disconnect()

    own = {"match": {"modalities": ["CT", "PT"]},
           "views": [{"kind": "sagittal", "layers": [{"modality": "CT"}]},
                     {"kind": "axial", "layers": [{"modality": "PT"}]}]}
    mine = await database_sync_to_async(hanging_rule_save)(user=doctor, name="Mine", rule=own)
    communicator, connected, _ = await _open(client, record.study_instance_uid)
    assert connected
    ready = await _next(communicator)
    assert ready["layout"] == "1x2" and [view["kind"] for view in ready["views"]] == ["sagittal", "axial"]
    assert [(rule["id"], rule["hospital"]) for rule in ready["vocabulary"]["hanging_rules"]] == [
        (mine.id, False), (hospital.id, True)]
    await communicator.send_json_to({"type": "hang_delete", "rule": hospital.id})
    refused = await _until(communicator, lambda item: isinstance(item, dict) and item["type"] == "error")
    assert refused["code"] == "refused"
    await communicator.disconnect()

def _rgb(frame) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(frame.image)).convert("RGB"))


def _pixel_of(frame, point_mm) -> tuple[int, int]:
    plane = frame.overlay["plane"]
    offset = np.asarray(point_mm) - np.asarray(plane["center_mm"])
    scale = plane["mm_per_pixel"]
    x = offset @ np.asarray(plane["right"]) / scale + frame.width / 2
    y = offset @ np.asarray(plane["down"]) / scale + frame.height / 2
    return round(x), round(y)


async def test_a_doctor_gets_the_pet_ct_hanging_protocol(client, signed_in, study):
    await database_sync_to_async(signed_in)("doctor")
    record, _ = study
    communicator, connected, _ = await _open(client, record.study_instance_uid)
    assert connected
    ready = await _next(communicator)
    assert ready["type"] == "ready" and ready["layout"] == "petct"
    assert [view["kind"] for view in ready["views"]] == ["axial", "axial", "axial", "3d"]
    assert {series["modality"] for series in ready["series"]} == {"CT", "PT"}
    frames = await _frames(communicator, 4)
    assert set(frames) == {0, 1, 2, 3}
    axial = frames[0]
    assert axial.overlay["orientation"] == {"left": "R", "right": "L", "top": "A", "bottom": "P"}
    assert axial.encoding.name in {"JPEG", "PNG"}
    assert _rgb(axial).shape == (axial.height, axial.width, 3)
    await communicator.disconnect()


async def test_window_level_changes_pixel_values(client, signed_in, study):
    await database_sync_to_async(signed_in)("doctor")
    record, _ = study
    communicator, _, _ = await _open(client, record.study_instance_uid)
    await _next(communicator)
    first = (await _until(communicator, lambda f: not isinstance(f, dict) and f.view == 0))
    await communicator.send_json_to({"type": "set", "view": 0, "name": "window_preset",
                                     "value": "lung"})
    lung = await _until(communicator, lambda f: not isinstance(f, dict) and f.view == 0
                        and f.overlay["windows"][0]["width"] == 1500)
    body = _rgb(first).astype(int)[..., 0]
    lung_body = _rgb(lung).astype(int)[..., 0]
    # Soft tissue (about 40 HU) sits mid-grey in the abdomen window and brighter in the lung
    # window (centre -600): the same pixels get lighter, and the frames differ.
    assert not np.array_equal(body, lung_body)
    assert lung_body.mean() > body.mean()
    await communicator.disconnect()


async def test_the_fusion_colour_appears_at_a_planted_lesion(client, signed_in, study):
    await database_sync_to_async(signed_in)("doctor")
    record, truth = study
    lesion = max(truth["lesions"], key=lambda item: item["radius_mm"])
    centre = np.asarray(lesion["center_mm"], dtype=float)
    communicator, _, _ = await _open(client, record.study_instance_uid)
    await _next(communicator)
    fusion = await _until(communicator, lambda f: not isinstance(f, dict) and f.view == 2)
    current_z = fusion.overlay["position"]
    await communicator.send_json_to({"type": "input", "view": 2, "op": "scroll",
                                     "delta": round((centre[2] - current_z) / 2.0)})
    fusion = await _until(communicator, lambda f: not isinstance(f, dict) and f.view == 2
                          and abs(f.overlay["position"] - centre[2]) <= 1.01)
    x, y = _pixel_of(fusion, centre)
    await communicator.send_json_to({"type": "input", "view": 2, "op": "focus", "x": x, "y": y})
    stills = await _stills(communicator, {0, 2}, at=(x, y))
    fusion, ct = stills[2], stills[0]
    fx, fy = (int(v) for v in fusion.overlay["crosshair"])
    reach = int(lesion["radius_mm"] / fusion.overlay["plane"]["mm_per_pixel"])
    window = (slice(fy - reach, fy + reach + 1), slice(fx - reach, fx + reach + 1))
    fused = _rgb(fusion)[window].astype(int)
    grey = _rgb(ct)[window].astype(int)
    coloured = (fused[..., 0] > fused[..., 1] + 40) & (fused[..., 0] > fused[..., 2] + 40)
    assert coloured.sum() >= 5, "no PET colour around the lesion in the fused view"
    assert np.abs(grey[..., 0] - grey[..., 2]).max() < 8, "the CT view must stay grey"
    await communicator.send_json_to({"type": "probe", "view": 1, "x": fx, "y": fy})
    probe = await _until(communicator, lambda item: isinstance(item, dict)
                         and item["type"] == "probe")
    assert probe["unit"] == "SUV"
    assert probe["value"] == pytest.approx(lesion["suv_max"], rel=0.02)
    await communicator.disconnect()


async def test_malformed_messages_get_errors_and_the_viewer_keeps_working(client, signed_in, study):
    await database_sync_to_async(signed_in)("nurse")
    record, _ = study
    communicator, _, _ = await _open(client, record.study_instance_uid)
    await _next(communicator)
    for bad in ["{not json", json.dumps({"type": "download", "series": "x"}),
                json.dumps({"type": "input", "view": 9, "op": "scroll", "delta": 1}),
                json.dumps({"type": "set", "view": 0, "name": "window_preset", "value": "suv_0_5"}),
                "x" * 20000]:
        await communicator.send_to(text_data=bad)
        await _until(communicator, lambda item: isinstance(item, dict) and item["type"] == "error")
    await communicator.send_to(bytes_data=b"\x00\x01binary")
    error = await _until(communicator, lambda item: isinstance(item, dict) and item["type"] == "error")
    assert error["code"] == "not_json"
    await communicator.send_json_to({"type": "input", "view": 0, "op": "scroll", "delta": 1})
    assert (await _until(communicator, lambda f: not isinstance(f, dict) and f.view == 0)).view == 0
    await communicator.disconnect()


async def test_the_socket_speaks_the_reader_s_language_its_workers_errors_too(client, signed_in, study,
                                                                             reader_catalogue):
    language = reader_catalogue("the message is not valid JSON", "probe is defined for 2-D views only")
    await database_sync_to_async(signed_in)("nurse")
    record, _ = study
    cookie = f"gateway-session={client.cookies['gateway-session'].value}; django_language={language}"
    headers = [*HOST, (b"cookie", cookie.encode()), (b"accept-language", b"en-GB,en;q=0.9")]
    communicator, connected, _ = await _open(client, record.study_instance_uid, headers=headers)
    assert connected
    await _next(communicator)
    await communicator.send_to(text_data="{not json")
    error = await _until(communicator, lambda item: isinstance(item, dict) and item["type"] == "error")
    assert error["message"] == "⟦the message is not valid JSON⟧"
    await communicator.send_json_to({"type": "set", "view": 0, "name": "kind", "value": "3d"})
    await communicator.send_json_to({"type": "probe", "view": 0, "x": 10, "y": 10})
    error = await _until(communicator, lambda item: isinstance(item, dict) and item["type"] == "error")
    assert (error["code"], error["message"]) == ("probe_failed", "⟦probe is defined for 2-D views only⟧")
    await communicator.disconnect()


async def test_latest_input_wins_and_unacknowledged_frames_are_bounded(client, signed_in, study):
    await database_sync_to_async(signed_in)("doctor")
    record, _ = study
    communicator, _, _ = await _open(client, record.study_instance_uid)
    await _next(communicator)
    await _frames(communicator, 4)
    await communicator.send_json_to({"type": "layout", "layout": "1x1"})
    await _until(communicator, lambda item: isinstance(item, dict) and item["type"] == "ready")
    first = await _until(communicator, lambda f: not isinstance(f, dict))
    for _ in range(40):
        await communicator.send_json_to({"type": "input", "view": 0, "op": "scroll", "delta": 1})
    received = []
    try:
        while True:
            item = await asyncio.wait_for(_next(communicator), timeout=1.5)
            if not isinstance(item, dict):
                received.append(item)
    except TimeoutError:
        pass
    assert 1 <= len(received) <= 2
    sequences = [frame.sequence for frame in received]
    assert sequences == sorted(sequences) and sequences[0] > first.sequence
    await communicator.send_json_to({"type": "ack", "view": 0, "seq": sequences[-1]})
    latest = await _until(communicator, lambda f: not isinstance(f, dict) and f.sequence == 41)
    assert latest.sequence == 41
    await communicator.disconnect()


async def test_a_render_worker_crash_does_not_end_the_session(client, signed_in, study):
    await database_sync_to_async(signed_in)("doctor")
    record, _ = study
    communicator, _, _ = await _open(client, record.study_instance_uid)
    await _next(communicator)
    await _frames(communicator, 4)
    for pid in pool_module._pool.worker_pids():
        os.kill(pid, signal.SIGKILL)
    await communicator.send_json_to({"type": "input", "view": 0, "op": "scroll", "delta": 2})
    frame = await _until(communicator, lambda f: not isinstance(f, dict) and f.view == 0)
    assert frame.view == 0
    await communicator.disconnect()


async def test_start_and_end_of_the_render_session_are_audited(client, signed_in, study):
    doctor = await database_sync_to_async(signed_in)("doctor")
    record, _ = study
    communicator, _, _ = await _open(client, record.study_instance_uid)
    await _next(communicator)
    await _frames(communicator, 4)
    await communicator.disconnect()
    await asyncio.sleep(0.2)
    events = await database_sync_to_async(lambda: list(
        AuditEvent.objects.filter(actor=doctor.username).values_list("action", "outcome",
                                                                     "study", "details")))()
    actions = [(action, outcome) for action, outcome, _, _ in events]
    assert actions == [("render.start", "success"), ("render.end", "success")]
    assert all(study_uid == record.study_instance_uid for _, _, study_uid, _ in events)
    assert json.loads(events[1][3])["frames"] >= 4


@pytest.mark.parametrize("role", ["admin_staff", "auditor", "it_admin"])
async def test_roles_without_study_view_are_refused_and_audited(client, signed_in, study, role):
    user = await database_sync_to_async(signed_in)(role)
    record, _ = study
    _, connected, code = await _open(client, record.study_instance_uid)
    assert not connected and code == 4404
    denied = await database_sync_to_async(lambda: AuditEvent.objects.filter(
        actor=user.username, action="render.start", outcome="denied").count())()
    assert denied == 1


async def test_an_unknown_study_is_refused_like_a_forbidden_one(client, signed_in, study):
    await database_sync_to_async(signed_in)("doctor")
    _, connected, code = await _open(client, "1.2.3.4.5")
    assert not connected and code == 4404


async def test_a_password_only_session_is_refused(client, signed_in, study):
    await database_sync_to_async(signed_in)("doctor", second_factor=False)
    record, _ = study
    _, connected, code = await _open(client, record.study_instance_uid)
    assert not connected and code == 4401


async def test_no_session_and_foreign_origins_are_refused(client, signed_in, study):
    record, _ = study
    _, connected, code = await _open(client, record.study_instance_uid, headers=HOST)
    assert not connected and code == 4401
    await database_sync_to_async(signed_in)("doctor")
    foreign = [(b"host", b"127.0.0.1"), (b"origin", b"http://evil.example"), *_cookie(client)]
    communicator = WebsocketCommunicator(application, f"/ws/viewer/{record.study_instance_uid}/",
                                         headers=foreign)
    accepted, _ = await communicator.connect(timeout=TIMEOUT)
    assert not accepted, "a foreign origin is refused at the handshake"


async def test_acknowledgements_pass_a_spent_budget_and_the_view_does_not_freeze(
        client, signed_in, study, monkeypatch):
    """With the input budget spent, acks still go through: the view reaches its still frame."""
    from rendering import consumers

    monkeypatch.setattr(consumers, "MESSAGES_PER_SECOND", 0.01)
    monkeypatch.setattr(consumers, "MESSAGE_BURST", 6)
    await database_sync_to_async(signed_in)("doctor")
    record, _ = study
    communicator, _, _ = await _open(client, record.study_instance_uid)
    await _next(communicator)
    for _ in range(7):  # the seventh finds the budget spent
        await communicator.send_json_to({"type": "input", "view": 0, "op": "scroll", "delta": 1})
    seen: list = []

    def still_of_the_last_state(item) -> bool:
        seen.append(item)
        return (not isinstance(item, dict) and item.view == 0 and item.quality == 1
                and item.sequence == 7)

    await _until(communicator, still_of_the_last_state)
    notices = [item for item in seen if isinstance(item, dict) and item.get("code") == "rate_limited"]
    assert len(notices) == 1 and notices[0]["retry_after_ms"] > 0
    await communicator.disconnect()


async def test_inputs_and_acknowledgements_cost_no_hop_to_the_database_thread(client, signed_in, study,
                                                                                monkeypatch):
    import channels.consumer

    await database_sync_to_async(signed_in)("doctor")
    record, _ = study
    communicator, _, _ = await _open(client, record.study_instance_uid)
    await _next(communicator)
    await communicator.send_json_to({"type": "layout", "layout": "1x1"})
    await _until(communicator, lambda item: isinstance(item, dict) and item["type"] == "ready")
    hops = []
    original = channels.consumer.aclose_old_connections

    async def counted() -> None:
        hops.append(1)
        await original()

    monkeypatch.setattr(channels.consumer, "aclose_old_connections", counted)
    for step in range(30):
        await communicator.send_json_to({"type": "input", "view": 0, "op": "scroll",
                                         "delta": 1 if step % 2 else -1})
        frame = await _until(communicator,
                             lambda f: not isinstance(f, dict) and f.view == 0 and f.quality == 0)
        await communicator.send_json_to({"type": "ack", "view": 0, "seq": frame.sequence})
    assert len(hops) == 0, f"{len(hops)} database-thread calls for 60 client messages"
    await communicator.disconnect()


def _prior_of(phantom_out, *, patient_id: str | None = None) -> None:
    """The phantom's CT again as an earlier study of the same patient (or of ``patient_id``)."""
    import pydicom
    from pydicom.uid import generate_uid

    study_uid, series_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    batch = IngestBatch(actor="cli:test", door="import")
    for path in sorted(phantom_out.rglob("CT/*.dcm")):
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.SOPInstanceUID = generate_uid()
        ds.StudyDate = ds.SeriesDate = "20200101"
        if patient_id is not None:
            ds.PatientID, ds.PatientName = patient_id, "Other^Patient"
        buffer = io.BytesIO()
        ds.save_as(buffer)
        batch.ingest(buffer.getvalue())
    batch.close()


async def test_a_prior_opens_beside_the_study_in_the_compare_layout_and_is_audited(
        client, signed_in, study, phantom_dir):
    doctor = await database_sync_to_async(signed_in)("doctor")
    record, _ = study
    await database_sync_to_async(_prior_of)(phantom_dir[0])
    await database_sync_to_async(_prior_of)(phantom_dir[0], patient_id="SOMEONE-ELSE")
    prior_record = await database_sync_to_async(lambda: Study.objects.filter(
        patient=record.patient).exclude(id=record.id).get())()
    prior = prior_record.study_instance_uid
    stranger = await database_sync_to_async(lambda: Study.objects.exclude(
        patient=record.patient).get().study_instance_uid)()
    communicator, _, _ = await _open(client, record.study_instance_uid)
    ready = await _next(communicator)
    assert [s["uid"] for s in ready["related"]] == [prior]
    assert ready["related"][0]["date"] == prior_record.study_date.isoformat() < record.study_date.isoformat()
    assert ready["related"][0]["modalities"] == ["CT"]
    await _frames(communicator, 4)
    await communicator.send_json_to({"type": "open", "study": stranger})
    refused = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "error")
    assert refused["code"] == "refused"
    await communicator.send_json_to({"type": "open", "study": prior})
    again = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "ready")
    assert again["layout"] == "compare" and again["studies"] == [record.study_instance_uid, prior]
    by_uid = {s["uid"]: s for s in again["series"]}
    left, right = (view["layers"][0] for view in again["views"])
    assert by_uid[left]["study"] == record.study_instance_uid and by_uid[left]["modality"] == "CT"
    assert by_uid[right]["study"] == prior and by_uid[right]["modality"] == "CT"
    frames = await _frames(communicator, 2)
    assert frames[1].overlay["windows"][0]["modality"] == "CT"
    await communicator.send_json_to({"type": "thumbnails"})
    pictured: set[str] = set()
    while pictured != {s["uid"] for s in again["series"] if s["available"]}:
        item = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "thumbnail")
        pictured.add(item["series"])
    await communicator.disconnect()
    await asyncio.sleep(0.2)
    events = await database_sync_to_async(lambda: list(AuditEvent.objects.filter(
        actor=doctor.username, action="render.start").values_list("outcome", "study")))()
    assert sorted(events) == sorted([("success", record.study_instance_uid), ("denied", stranger),
                                     ("success", prior)])


async def _at_lesion(communicator, lesion):
    """The fused view (2) moved to the lesion's slice and centre: its still frame there."""
    centre = np.asarray(lesion["center_mm"], dtype=float)
    fusion = await _until(communicator, lambda f: not isinstance(f, dict) and f.view == 2)
    await communicator.send_json_to({"type": "input", "view": 2, "op": "scroll",
                                     "delta": round((centre[2] - fusion.overlay["position"]) / 2.0)})
    fusion = await _until(communicator, lambda f: not isinstance(f, dict) and f.view == 2
                          and abs(f.overlay["position"] - centre[2]) <= 1.01)
    x, y = _pixel_of(fusion, centre)
    await communicator.send_json_to({"type": "input", "view": 2, "op": "focus", "x": x, "y": y})
    return (await _stills(communicator, {2}, at=(x, y)))[2]


async def test_a_doctor_measures_a_lesion_on_the_fused_view_and_gets_hu_and_suv(client, signed_in, study):
    await database_sync_to_async(signed_in)("doctor")
    record, truth = study
    lesion = max(truth["lesions"], key=lambda item: item["radius_mm"])
    communicator, _, _ = await _open(client, record.study_instance_uid)
    fusion = await _at_lesion(communicator, lesion)
    x, y = fusion.overlay["crosshair"]
    await communicator.send_json_to({"type": "measure", "view": 2, "tool": "sphere", "points": [[x, y]],
                                     "radius_mm": lesion["radius_mm"]})
    sphere = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "measurement")
    ct, pet = sphere["result"]
    assert (ct["unit"], pet["unit"]) == ("HU", "SUV")
    assert pet["maximum"] == pytest.approx(lesion["suv_max"], rel=0.01)
    assert pet["volume_ml"] == pytest.approx(4 / 3 * np.pi * lesion["radius_mm"] ** 3 / 1000, rel=0.05)
    reach = lesion["radius_mm"] / 2 / fusion.overlay["plane"]["mm_per_pixel"]
    await communicator.send_json_to({"type": "measure", "view": 2, "tool": "ellipse",
                                     "points": [[x - reach, y - reach], [x + reach, y + reach]]})
    ellipse = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "measurement")
    assert [item["unit"] for item in ellipse["result"]] == ["HU", "SUV"]
    assert ellipse["result"][0]["mean"] == pytest.approx(lesion["hu"], abs=15)
    await communicator.send_json_to({"type": "measure", "view": 2, "tool": "threshold", "points": [[x, y]],
                                     "radius_mm": lesion["radius_mm"] + 8, "fraction": 0.5})
    contour = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "measurement")
    assert contour["result"]["unit"] == "SUV" and contour["result"]["how"].startswith("50%")
    assert contour["result"]["maximum"] == pytest.approx(lesion["suv_max"], rel=0.01)
    assert 0 < contour["result"]["volume_ml"] < pet["volume_ml"]
    await communicator.send_json_to({"type": "measure", "view": 2, "tool": "grow", "points": [[x, y]]})
    grown = await _until(communicator, lambda m: isinstance(m, dict)
                         and m["type"] in ("measurement", "error"))
    assert grown["type"] == "measurement" and grown["tool"] == "grow", grown
    assert grown["result"]["unit"] == "SUV" and grown["result"]["how"].startswith("seed")
    assert grown["result"]["maximum"] == pytest.approx(lesion["suv_max"], rel=0.01)
    assert grown["result"]["threshold"] == pytest.approx(lesion["suv_max"] / 2, rel=0.01)
    assert 0 < grown["result"]["volume_ml"] < pet["volume_ml"]
    await communicator.send_json_to({"type": "measure", "view": 2, "tool": "grow", "points": [[x, y]],
                                     "radius_mm": 900})
    refused = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "error")
    assert refused["code"] == "bad_value"
    await communicator.disconnect()


async def test_a_nurse_sees_but_may_not_measure(client, signed_in, study):
    await database_sync_to_async(signed_in)("nurse")
    record, _ = study
    communicator, _, _ = await _open(client, record.study_instance_uid)
    ready = await _next(communicator)
    assert ready["vocabulary"]["measure_tools"] == []
    await _frames(communicator, 4)
    await communicator.send_json_to({"type": "measure", "view": 0, "tool": "line",
                                     "points": [[10, 10], [100, 100]]})
    refused = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] in ("error",
                                                                                          "measurement"))
    assert refused["type"] == "error" and refused["code"] == "refused" and refused["of"] == "measure"
    await communicator.disconnect()


async def test_a_kept_measurement_is_a_finding_exported_as_xlsx_and_csv_and_deleted(client, signed_in, study):
    import csv

    from django.urls import reverse
    from openpyxl import load_workbook

    doctor = await database_sync_to_async(signed_in)("doctor")
    record, truth = study
    lesion = max(truth["lesions"], key=lambda item: item["radius_mm"])
    communicator, _, _ = await _open(client, record.study_instance_uid)
    fusion = await _at_lesion(communicator, lesion)
    await communicator.send_json_to({"type": "keep", "label": "nothing yet"})
    nothing = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "error")
    assert nothing["code"] == "nothing_to_keep"
    x, y = fusion.overlay["crosshair"]
    await communicator.send_json_to({"type": "measure", "view": 2, "tool": "sphere", "points": [[x, y]],
                                     "radius_mm": lesion["radius_mm"]})
    sphere = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "measurement")
    await communicator.send_json_to({"type": "keep", "label": "=lesion 1"})
    listed = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "findings")
    (finding,) = listed["findings"]
    assert finding["label"] == "'=lesion 1" and finding["result"] == sphere["result"]
    assert finding["by"] == doctor.username and finding["tool"] == "sphere"
    assert finding["study"] == record.study_instance_uid
    assert finding["plane"]["width"] > 0 and len(finding["plane"]["center_mm"]) == 3

    url = reverse("rendering:findings", args=[record.study_instance_uid, "xlsx"])
    response = await database_sync_to_async(client.get)(url)
    assert response.status_code == 200
    sheet = load_workbook(io.BytesIO(response.content)).active
    header = [cell.value for cell in sheet[1]]
    rows = [dict(zip(header, (cell.value for cell in row), strict=True))
            for row in sheet.iter_rows(min_row=2)]
    by_unit = {row["unit"]: row for row in rows}
    assert set(by_unit) == {"HU", "SUV"} and by_unit["SUV"]["label"] == "'=lesion 1"
    assert by_unit["SUV"]["max"] == pytest.approx(lesion["suv_max"], rel=0.01)
    assert by_unit["SUV"]["size unit"] == "ml" and by_unit["SUV"]["SUVpeak"] <= by_unit["SUV"]["max"] + 1e-6
    text = (await database_sync_to_async(client.get)(url.replace(".xlsx", ".csv"))).content.decode()
    assert [row["unit"] for row in csv.DictReader(io.StringIO(text))] == ["HU", "SUV"]

    await communicator.send_json_to({"type": "forget", "finding": finding["id"]})
    emptied = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "findings")
    assert emptied["findings"] == []
    await communicator.disconnect()
    actions = await database_sync_to_async(lambda: list(AuditEvent.objects.filter(
        actor=doctor.username).values_list("action", flat=True)))()
    assert {"finding.keep", "finding.delete", "export"} <= set(actions)


async def test_kept_vois_are_stored_in_the_study_as_sr_and_seg_and_a_nurse_may_not(client, signed_in, study):
    from imaging.models import Finding, Series

    doctor = await database_sync_to_async(signed_in)("doctor")
    record, truth = study
    lesion = max(truth["lesions"], key=lambda item: item["radius_mm"])
    communicator, _, _ = await _open(client, record.study_instance_uid)
    ready = await _next(communicator)
    assert ready["findings_store"] is True
    x, y = (await _at_lesion(communicator, lesion)).overlay["crosshair"]
    for tool, extra, label in (("sphere", {"radius_mm": lesion["radius_mm"]}, "sphere"),
                               ("threshold", {"radius_mm": lesion["radius_mm"] + 8, "fraction": 0.41},
                                "threshold"),
                               ("grow", {"radius_mm": lesion["radius_mm"] + 8}, "grown")):
        await communicator.send_json_to({"type": "measure", "view": 2, "tool": tool, "points": [[x, y]],
                                         **extra})
        measured = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] in ("measurement",
                                                                                              "error"))
        assert measured["type"] == "measurement", measured
        await communicator.send_json_to({"type": "keep", "label": label})
        listed = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "findings")
    sphere = next(f for f in listed["findings"] if f["tool"] == "sphere")
    assert sphere["arguments"]["radius_mm"] == lesion["radius_mm"]  # drawn again with its size
    await communicator.send_json_to({"type": "findings_store"})
    stored = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] in ("findings_stored",
                                                                                        "error"))
    assert stored["type"] == "findings_stored", stored
    assert (stored["findings"], stored["segmentations"]) == (3, 3)
    await communicator.disconnect()
    grown = await database_sync_to_async(lambda: Finding.objects.get(tool="grow").arguments)()
    assert {key: grown[key] for key in ("box_mm", "mode", "value")} == {
        "box_mm": lesion["radius_mm"] + 8, "mode": "range", "value": 0.5}
    written = [stored["sr_series"], stored["seg_series"]]
    modalities = await database_sync_to_async(lambda: sorted(Series.objects.filter(
        series_instance_uid__in=written).values_list("modality", flat=True)))()
    assert modalities == ["SEG", "SR"]
    stores = await database_sync_to_async(lambda: list(AuditEvent.objects.filter(
        actor=doctor.username, action="findings.store").values_list("outcome", flat=True)))()
    assert stores == ["success"]

    nurse = await database_sync_to_async(signed_in)("nurse")
    communicator, _, _ = await _open(client, record.study_instance_uid)
    assert (await _next(communicator))["findings_store"] is False
    await communicator.send_json_to({"type": "findings_store"})
    refused = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] in ("findings_stored",
                                                                                         "error"))
    assert refused["type"] == "error" and refused["code"] == "refused" and refused["of"] == "findings_store"
    await communicator.disconnect()
    denied = await database_sync_to_async(lambda: list(AuditEvent.objects.filter(
        actor=nurse.username, action="findings.store").values_list("outcome", flat=True)))()
    assert denied == ["denied"]


async def test_a_reading_in_suv_lbm_measures_in_it_and_an_entered_weight_is_audited(client, signed_in, study):
    doctor = await database_sync_to_async(signed_in)("doctor")
    record, truth = study
    lesion = max(truth["lesions"], key=lambda item: item["radius_mm"])
    communicator, _, _ = await _open(client, record.study_instance_uid)
    ready = await _next(communicator)
    assert ready["suv"]["method"] == "bw" and {m["name"] for m in ready["suv"]["methods"]} >= {"lbm_james"}
    x, y = (await _at_lesion(communicator, lesion)).overlay["crosshair"]
    await communicator.send_json_to({"type": "suv", "method": "lbm_james"})
    chosen = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] in ("suv", "error"))
    assert chosen["type"] == "suv" and chosen["method"] == "lbm_james", chosen
    await communicator.send_json_to({"type": "measure", "view": 2, "tool": "sphere", "points": [[x, y]],
                                     "radius_mm": lesion["radius_mm"]})
    sphere = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "measurement")
    weight, height_cm = truth["patient_weight_kg"], truth["patient_size_m"] * 100
    man = truth["identity"]["sex"] == "M"  # James (1976)
    lean = (1.10 * weight - 128 * (weight / height_cm) ** 2 if man
            else 1.07 * weight - 148 * (weight / height_cm) ** 2)
    assert sphere["result"][1]["maximum"] == pytest.approx(lesion["suv_max"] * lean / weight, rel=0.01)

    pet = next(s["uid"] for s in ready["series"] if s["modality"] == "PT")
    await communicator.send_json_to({"type": "suv_inputs", "series": pet, "weight_kg": 2 * weight})
    entered = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] in ("suv", "error"))
    assert entered["series"][pet]["entered"] == {"weight_kg": 2 * weight}
    await communicator.disconnect()
    inputs = await database_sync_to_async(lambda: list(AuditEvent.objects.filter(
        actor=doctor.username, action="suv.input").values_list("details", flat=True)))()
    details = [json.loads(d) if isinstance(d, str) else d for d in inputs]
    assert [d["entered"] for d in details] == [["weight_kg"]]

    await database_sync_to_async(signed_in)("nurse")
    communicator, _, _ = await _open(client, record.study_instance_uid)
    await _next(communicator)
    await communicator.send_json_to({"type": "suv_inputs", "series": pet, "weight_kg": 70})
    refused = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] in ("suv", "error"))
    assert refused["type"] == "error" and refused["of"] == "suv_inputs"
    await communicator.disconnect()


async def test_a_kept_finding_is_renamed_audited_and_a_formula_stays_text(client, signed_in, study):
    doctor = await database_sync_to_async(signed_in)("doctor")
    record, truth = study
    lesion = max(truth["lesions"], key=lambda item: item["radius_mm"])
    communicator, _, _ = await _open(client, record.study_instance_uid)
    x, y = (await _at_lesion(communicator, lesion)).overlay["crosshair"]
    await communicator.send_json_to({"type": "measure", "view": 2, "tool": "sphere", "points": [[x, y]],
                                     "radius_mm": 10})
    await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "measurement")
    await communicator.send_json_to({"type": "keep", "label": "lesion"})
    (finding,) = (await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "findings"))[
        "findings"]
    await communicator.send_json_to({"type": "relabel", "finding": finding["id"], "label": "=HYPERLINK(1)"})
    renamed = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "findings")
    assert [f["label"] for f in renamed["findings"]] == ["'=HYPERLINK(1)"]
    await communicator.send_json_to({"type": "relabel", "finding": finding["id"] + 1000, "label": "x"})
    refused = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "error")
    assert refused["code"] == "refused" and refused["of"] == "relabel"
    await communicator.disconnect()
    edits = await database_sync_to_async(lambda: list(AuditEvent.objects.filter(
        actor=doctor.username, action="finding.edit").values_list("outcome", flat=True)))()
    assert edits == ["success"]


async def test_measurements_of_a_report_from_another_system_reach_the_viewer(
        client, signed_in, study, phantom_dir):
    from tests.imaging.test_documents import SUV_MAX, incoming_report

    record, _ = study
    report, _ = incoming_report(sorted(phantom_dir[0].rglob("*.dcm")))
    buffer = io.BytesIO()
    report.save_as(buffer, enforce_file_format=True)
    batch = IngestBatch(actor="cli:test", door="import")
    await database_sync_to_async(batch.ingest)(buffer.getvalue())
    await database_sync_to_async(batch.close)()
    await database_sync_to_async(signed_in)("nurse")
    communicator, _, _ = await _open(client, record.study_instance_uid)
    documents = await _until(communicator, lambda m: isinstance(m, dict) and m["type"] == "documents")
    (document,) = documents["documents"]
    groups = {group["label"]: group for group in document["groups"]}
    assert groups["Hot spot"]["measurements"][0]["value"] == pytest.approx(SUV_MAX)
    assert groups["Hot spot"]["graphic"]["shape"] == "point"
    await communicator.disconnect()


async def test_a_rule_with_a_prior_opens_the_newest_prior_beside_the_study_and_hangs_both(
        client, signed_in, study, phantom_dir):
    from accounts.hanging import hanging_rule_save

    doctor = await database_sync_to_async(signed_in)("doctor")
    record, _ = study
    with_prior = {"match": {"modalities": ["CT"]},
                  "views": [{"kind": "axial", "layers": [{"modality": "CT"}]},
                            {"kind": "axial", "layers": [{"modality": "CT", "prior": True}]}]}
    await database_sync_to_async(hanging_rule_save)(user=doctor, name="CT with prior", rule=with_prior)
    communicator, _, _ = await _open(client, record.study_instance_uid)
    ready = await _next(communicator)
    assert ready["layout"] == "petct" and ready["studies"] == [record.study_instance_uid], "no prior: default"
    await communicator.disconnect()

    await database_sync_to_async(_prior_of)(phantom_dir[0])
    prior = await database_sync_to_async(lambda: Study.objects.filter(
        patient=record.patient).exclude(id=record.id).get().study_instance_uid)()
    communicator, _, _ = await _open(client, record.study_instance_uid)
    ready = await _next(communicator)
    assert ready["layout"] == "1x2" and ready["studies"] == [record.study_instance_uid, prior]
    by_uid = {s["uid"]: s for s in ready["series"]}
    shown = [by_uid[view["layers"][0]]["study"] for view in ready["views"]]
    assert shown == [record.study_instance_uid, prior]
    assert all(by_uid[view["layers"][0]]["modality"] == "CT" for view in ready["views"])
    await _frames(communicator, 2)
    await communicator.disconnect()
    await asyncio.sleep(0.2)
    events = await database_sync_to_async(lambda: list(AuditEvent.objects.filter(
        actor=doctor.username, action="render.start", study=prior).values_list("outcome", flat=True)))()
    assert events == ["success"], "opening the prior for the rule is audited"
