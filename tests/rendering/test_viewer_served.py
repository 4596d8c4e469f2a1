"""The viewer websocket as a browser meets it: daphne on a loopback port, a real client.

Handshakes, Origin, close codes, rate limits and message limits are the
server's own behaviour at the socket; ``WebsocketCommunicator`` skips it (a
close before accept reached it as a code while browsers saw HTTP 403).
"""

from __future__ import annotations

import json
import time

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from rendering.protocol import frame_unpack
from tests.served import closed_code, is_frame, viewer_ready, viewer_socket, viewer_until

pytestmark = pytest.mark.server


@pytest.fixture(scope="module")
def doctor(served_demo):
    return served_demo.doctor()


# --- Origin: scheme, host and port ---------------------------------------------------------

@pytest.mark.parametrize("origin", ["http://127.0.0.1:{other}", "https://127.0.0.1:{port}",
                                    "http://localhost:{port}", "http://127.0.0.1",
                                    "http://evil.example:{port}", "null"])
def test_a_signed_in_cookie_from_another_origin_is_refused_at_the_handshake(served_demo, doctor,
                                                                            origin):
    port = served_demo.port
    foreign = origin.format(port=port, other=port + 1)
    with pytest.raises(InvalidStatus) as refused:
        viewer_socket(served_demo, doctor, origin=foreign)
    assert refused.value.response.status_code == 403


def test_the_gateway_s_own_origin_is_accepted(served_demo, doctor):
    with viewer_socket(served_demo, doctor) as ws:
        ready = viewer_ready(ws)
        assert ready["study"]["uid"] == served_demo.study_uid
        viewer_until(ws, is_frame)


# --- close codes reach the client -----------------------------------------------------------

def test_no_session_is_closed_with_4401(served_demo):
    with viewer_socket(served_demo, None) as ws:
        assert closed_code(ws) == 4401


def test_a_password_only_session_is_closed_with_4401(served_demo):
    from tests.served import Browser

    person = served_demo.person("doctor")
    browser = Browser(served_demo.base)
    first = browser.form("/accounts/login/", {"username": person.username,
                                              "password": person.password})
    assert first.status == 302
    with viewer_socket(served_demo, browser) as ws:
        assert closed_code(ws) == 4401


def test_a_study_the_role_may_not_view_is_closed_with_4404(served_demo):
    desk = served_demo.sign_in(served_demo.person("admin_staff"))
    with viewer_socket(served_demo, desk) as ws:
        assert closed_code(ws) == 4404
    with viewer_socket(served_demo, served_demo.doctor(), study="1.2.3.4.5") as ws:
        assert closed_code(ws) == 4404


def test_a_path_no_route_names_is_closed_with_4404(served_demo, doctor):
    with viewer_socket(served_demo, doctor, path="/ws/nothing-here/") as ws:
        assert closed_code(ws) == 4404


def test_log_out_everywhere_closes_an_open_viewer_within_a_second(served_demo):
    browser = served_demo.doctor()
    with viewer_socket(served_demo, browser) as ws:
        viewer_ready(ws)
        viewer_until(ws, is_frame)
        done = browser.form("/accounts/security/", {},
                            action="/accounts/security/logout-everywhere/")
        assert done.status in (302, 303), done.status
        posted = time.monotonic()
        assert closed_code(ws, seconds=5) == 4401
        assert time.monotonic() - posted < 1.0


# --- rate limits, acknowledgements and coalescing -------------------------------------------

def test_a_burst_is_coalesced_and_the_last_state_arrives_promptly(served_demo, doctor):
    with viewer_socket(served_demo, doctor) as ws:
        viewer_ready(ws)
        viewer_until(ws, lambda m: is_frame(m) and m.view == 0 and m.quality == 1)
        sent_at = time.monotonic()
        for _ in range(500):
            ws.send(json.dumps({"type": "input", "view": 0, "op": "window", "dc": 1, "dw": 0}))
        burst_ms = (time.monotonic() - sent_at) * 1000
        last, seen = viewer_until(ws, lambda m: is_frame(m) and m.view == 0 and m.quality == 1,
                            seconds=10)
        waited = time.monotonic() - sent_at
    notices = [m for m in seen if isinstance(m, dict) and m.get("code") == "rate_limited"]
    assert len(notices) <= 1, "the client is told once, not once per dropped message"
    assert all(m["retry_after_ms"] >= 0 for m in notices)
    assert waited < 2.0 + burst_ms / 1000, f"the still came {waited:.2f} s after the burst"
    frames = [m for m in seen if is_frame(m) and m.view == 0]
    assert len(frames) < 50, "a burst is coalesced into a few frames, not a queue of stale ones"
    assert last.sequence == max(f.sequence for f in frames)


def test_acknowledgements_are_never_rate_limited_and_views_never_freeze(served_demo, doctor):
    """PET/CT layout, one scroll per wheel event at ~144/s, an ack for every frame."""
    latest: dict[int, int] = {}
    limited = 0
    with viewer_socket(served_demo, doctor) as ws:
        views = len(viewer_ready(ws)["views"])
        end = time.monotonic() + 3
        while time.monotonic() < end:
            ws.send(json.dumps({"type": "input", "view": 0, "op": "scroll", "delta": 1}))
            deadline = time.monotonic() + 1 / 144
            while True:
                try:
                    raw = ws.recv(timeout=max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    break
                if isinstance(raw, bytes):
                    frame = frame_unpack(raw)
                    latest[frame.view] = frame.sequence
                    ws.send(json.dumps({"type": "ack", "view": frame.view, "seq": frame.sequence}))
                elif json.loads(raw).get("code") == "rate_limited":
                    limited += 1
        stills, _ = viewer_until(ws, lambda m: is_frame(m) and m.view == 0 and m.quality == 1,
                           seconds=10)
    assert stills.sequence >= latest.get(0, 0), "the last state is shown at still quality"
    assert limited <= 3
    assert len(latest) == views or 0 in latest


def test_an_unknown_type_is_not_echoed_back_in_full(served_demo, doctor):
    with viewer_socket(served_demo, doctor) as ws:
        viewer_ready(ws)
        ws.send(json.dumps({"type": "x" * 7000}))
        error, _ = viewer_until(ws, lambda m: isinstance(m, dict) and m.get("type") == "error")
        ws.send(json.dumps({"type": "ack", "view": 0, "seq": 1, **{f"k{i}" * 50: 1 for i in range(40)}}))
        second, _ = viewer_until(ws, lambda m: isinstance(m, dict) and m.get("type") == "error")
    assert error["code"] == "unknown_type" and len(error["message"]) < 120
    assert second["code"] == "unknown_field" and len(second["message"]) < 300


def test_a_message_over_the_protocol_limit_is_refused_and_the_socket_stays(served_demo, doctor):
    with viewer_socket(served_demo, doctor) as ws:
        ready = viewer_ready(ws)
        ws.send(json.dumps({"type": "probe", "pad": "x" * ready["limits"]["max_message_bytes"]}))
        error, _ = viewer_until(ws, lambda m: isinstance(m, dict) and m.get("type") == "error")
        assert error["code"] == "too_large"
        ws.send(json.dumps({"type": "input", "view": 0, "op": "scroll", "delta": 1}))
        viewer_until(ws, is_frame)


def test_a_message_over_daphne_s_one_mebibyte_drops_the_connection_not_the_server(served_demo,
                                                                                 doctor):
    """daphne (autobahn) fails the connection without a close frame: a browser reports 1006."""
    with viewer_socket(served_demo, doctor) as ws:
        viewer_ready(ws)
        ws.send("x" * (1024 * 1024 + 1))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=10)
        assert closed.value.rcvd is None
    with viewer_socket(served_demo, doctor) as ws:
        viewer_ready(ws)
        viewer_until(ws, is_frame)


# --- series browser over the socket ----------------------------------------------------------

def test_thumbnails_series_switch_and_frame_reach_a_real_client(served_demo, doctor):
    import base64
    import io

    from PIL import Image

    with viewer_socket(served_demo, doctor) as ws:
        ready = viewer_ready(ws)
        series = {s["uid"]: s for s in ready["series"]}
        assert {s["modality"] for s in series.values()} >= {"CT", "PT"}
        assert all(s["available"] and s["kind"] == "volume" and s["plane"] == "axial"
                   for s in series.values())
        ws.send(json.dumps({"type": "thumbnails"}))
        thumbnails = {}
        while len(thumbnails) < len(series):
            message, _ = viewer_until(ws, lambda m: isinstance(m, dict) and m.get("type") == "thumbnail")
            with Image.open(io.BytesIO(base64.b64decode(message["image"]))) as picture:
                assert max(picture.size) == 96 and picture.getextrema() != ((0, 0),) * len(picture.mode)
            thumbnails[message["series"]] = True
        assert set(thumbnails) == set(series)
        pet = next(uid for uid, s in series.items() if s["modality"] == "PT")
        ws.send(json.dumps({"type": "set", "view": 0, "name": "series", "value": pet}))
        frame, _ = viewer_until(ws, lambda m: is_frame(m) and m.view == 0
                                and m.overlay["windows"][0]["modality"] == "PT")
        ws.send(json.dumps({"type": "input", "view": 0, "op": "frame", "index": 0}))
        first, _ = viewer_until(ws, lambda m: is_frame(m) and m.view == 0 and m.overlay["slice"][0] == 1)
        assert first.overlay["slice"][1] == frame.overlay["slice"][1]
        ws.send(json.dumps({"type": "set", "view": 0, "name": "series", "value": "9.9.9"}))
        refused, _ = viewer_until(ws, lambda m: isinstance(m, dict) and m.get("type") == "error")
        assert refused["code"] == "refused"


def test_ready_names_the_vocabulary_and_a_study_that_is_no_prior_is_refused_on_a_live_socket(served_demo,
                                                                                          doctor):
    with viewer_socket(served_demo, doctor) as ws:
        ready = viewer_ready(ws)
        assert ready["related"] == [] and ready["studies"] == [ready["study"]["uid"]]
        by_modality = {s["modality"]: s for s in ready["series"]}
        assert by_modality["CT"]["suv_calculation"] is None
        suv = by_modality["PT"]["suv_calculation"]
        assert suv["method"] == "SUVbw" and suv["factor"] > 0 and suv["missing"] == []
        assert suv["weight_kg"] > 0 and suv["decay_correction"] == "START"
        palettes = ready["vocabulary"]["settings"]["palette"]["choices"]
        assert set(ready["vocabulary"]["palettes"]) == set(palettes)
        ws.send(json.dumps({"type": "open", "study": "1.2.3.4"}))
        refused, _ = viewer_until(ws, lambda m: isinstance(m, dict) and m.get("type") == "error")
        assert refused["code"] == "refused"
        ws.send(json.dumps({"type": "set", "view": 1, "name": "palette", "value": palettes[-1]}))
        frame, _ = viewer_until(ws, lambda m: is_frame(m) and m.view == 1
                                and m.overlay["windows"][0]["palette"] == palettes[-1])
        assert frame.overlay["zoom"] == 1.0


# --- hanging rules: saved over the socket, kept with the account, hung at the next open ---------

def _message(ws, kind: str) -> dict:
    return viewer_until(ws, lambda m: isinstance(m, dict) and m.get("type") == kind)[0]


def _refusal(ws, of: str) -> dict:
    error = _message(ws, "error")
    assert (error["code"], error.get("of")) == ("refused", of), error
    return error


def test_a_saved_hanging_rule_hangs_the_study_at_the_next_open_and_can_be_deleted(served_demo):
    person = served_demo.person("doctor")  # a reader of their own: the shared doctor keeps the default
    reader = served_demo.sign_in(person)
    with viewer_socket(served_demo, reader) as ws:
        ready = viewer_ready(ws)
        assert ready["layout"] == "petct" and ready["vocabulary"]["hanging_rules"] == []
        ws.send(json.dumps({"type": "layout", "layout": "1x3"}))
        assert _message(ws, "ready")["layout"] == "1x3"
        ws.send(json.dumps({"type": "set", "view": 1, "name": "palette", "value": "hot_iron"}))
        ws.send(json.dumps({"type": "hang_save", "name": "   "}))
        assert "name" in _refusal(ws, "hang_save")["message"]
        ws.send(json.dumps({"type": "hang_save", "name": "Three planes, hot coronal"}))
        rules = _message(ws, "hanging_rules")["rules"]
        assert [(rule["name"], rule["applies"]) for rule in rules] == [("Three planes, hot coronal", True)]
    saved = rules[0]["id"]

    served_demo.shell(
        "from accounts.hanging import hanging_rule_save\nfrom accounts.models import User\n"
        f"hanging_rule_save(user=User.objects.get(username={person.username!r}), name='MR brain', rule="
        "{'match': {'modalities': ['MR']}, 'views': [{'kind': 'axial', 'layers': [{'modality': 'MR'}]}]})")
    with viewer_socket(served_demo, reader) as ws:
        ready = viewer_ready(ws)
        assert ready["layout"] == "1x3"
        assert [view["kind"] for view in ready["views"]] == ["axial", "coronal", "sagittal"]
        listed = ready["vocabulary"]["hanging_rules"]
        assert [(rule["id"], rule["name"], rule["applies"]) for rule in listed] == [
            (saved, "Three planes, hot coronal", True), (listed[1]["id"], "MR brain", False)]
        viewer_until(ws, lambda m: is_frame(m) and m.view == 1
                     and m.overlay["windows"][0]["palette"] == "hot_iron")
        ws.send(json.dumps({"type": "hang", "rule": listed[1]["id"]}))
        assert "no MR series" in _refusal(ws, "hang")["message"]
        ws.send(json.dumps({"type": "layout", "layout": "petct"}))
        assert _message(ws, "ready")["layout"] == "petct"
        ws.send(json.dumps({"type": "hang", "rule": saved}))
        assert _message(ws, "ready")["layout"] == "1x3"
        ws.send(json.dumps({"type": "hang_delete", "rule": saved}))
        assert [rule["name"] for rule in _message(ws, "hanging_rules")["rules"]] == ["MR brain"]
        ws.send(json.dumps({"type": "hang", "rule": saved}))
        _refusal(ws, "hang")

    other = served_demo.doctor()
    with viewer_socket(served_demo, other) as ws:
        ready = viewer_ready(ws)
        assert ready["layout"] == "petct" and ready["vocabulary"]["hanging_rules"] == []
        ws.send(json.dumps({"type": "hang_delete", "rule": listed[1]["id"]}))
        _refusal(ws, "hang_delete")
    with viewer_socket(served_demo, reader) as ws:
        ready = viewer_ready(ws)
        assert ready["layout"] == "petct", "the rule left is for MR: the default hangs"
        assert [rule["name"] for rule in ready["vocabulary"]["hanging_rules"]] == ["MR brain"]


def test_a_consultant_share_has_no_hanging_rules_to_save_or_delete(served_demo):
    from tests.sharing.test_served import consultant, mint

    _, token, pin = mint(served_demo, served_demo.doctor())
    with viewer_socket(served_demo, consultant(served_demo, token, pin)) as ws:
        ready = viewer_ready(ws)
        assert ready["layout"] == "petct" and ready["vocabulary"]["hanging_rules"] is None
        ws.send(json.dumps({"type": "hang_save", "name": "mine"}))
        assert "user account" in _refusal(ws, "hang_save")["message"]
        ws.send(json.dumps({"type": "hang_delete", "rule": 1}))
        _refusal(ws, "hang_delete")
        ws.send(json.dumps({"type": "hang", "rule": 1}))
        _refusal(ws, "hang")
        ws.send(json.dumps({"type": "input", "view": 0, "op": "scroll", "delta": 1}))
        viewer_until(ws, is_frame)


def _shows_only(ready: dict, view: dict, modality: str) -> bool:
    modalities = {s["uid"]: s["modality"] for s in ready["series"]}
    return [modalities[uid] for uid in view["layers"]] == [modality]


def _findings_store_answer(ws, kept: list[dict]) -> None:
    """The shared demo holds findings only when an earlier test kept some: either answer is checked."""
    answers = ("error", "findings_stored")
    answer = viewer_until(ws, lambda m: isinstance(m, dict) and m.get("type") in answers)[0]
    if not kept:
        assert (answer["type"], answer["code"], answer["of"]) == ("error", "store_failed", "findings_store")
        assert "no kept findings" in answer["message"]
        return
    assert answer["type"] == "findings_stored", answer
    assert answer["sr_series"] and answer["findings"] == len(kept), answer


def test_the_reading_messages_answer_a_real_client_and_a_nurse_is_refused_what_changes_records(served_demo):
    """suv, suv_inputs, relabel and findings_store over daphne: answers, refusals and malformed bodies."""
    doctor = served_demo.sign_in(served_demo.person("doctor"))
    with viewer_socket(served_demo, doctor) as ws:
        ready = viewer_ready(ws)
        assert ready["findings_store"] is True and ready["suv"]["method"] == "bw"
        kept = _message(ws, "findings")["findings"]
        assert _message(ws, "documents")["documents"] == []  # the gateway's own reports are the findings
        ws.send(json.dumps({"type": "suv", "method": "bsa"}))
        chosen = _message(ws, "suv")
        assert chosen["method"] == "bsa" and all(s["factor"] for s in chosen["series"].values())
        ws.send(json.dumps({"type": "suv", "method": "bsa", "extra": 1}))
        assert _message(ws, "error")["code"] == "unknown_field"
        ws.send(json.dumps({"type": "findings_store"}))
        _findings_store_answer(ws, kept)
        ws.send(json.dumps({"type": "relabel", "finding": 999999, "label": "x"}))
        _refusal(ws, "relabel")
        ct_view = next(i for i, view in enumerate(ready["views"]) if _shows_only(ready, view, "CT"))
        ws.send(json.dumps({"type": "set", "view": ct_view, "layer": 0, "name": "window_preset",
                            "value": "suv_0_10"}))
        assert _refusal(ws, "set")["view"] == ct_view
        ws.send(json.dumps({"type": "input", "view": 0, "op": "scroll", "delta": 1}))
        viewer_until(ws, is_frame)

    nurse = served_demo.sign_in(served_demo.person("nurse"))
    with viewer_socket(served_demo, nurse) as ws:
        ready = viewer_ready(ws)
        assert ready["findings_store"] is False
        pet = next(s["uid"] for s in ready["series"] if s["modality"] == "PT")
        ws.send(json.dumps({"type": "suv_inputs", "series": pet, "weight_kg": 70}))
        _refusal(ws, "suv_inputs")
        ws.send(json.dumps({"type": "findings_store"}))
        _refusal(ws, "findings_store")


def test_segmentation_messages_answer_a_real_client_and_a_nurse_may_only_look(served_demo):
    """seg_new, seg_edit, seg_undo and seg_open over daphne; malformed bodies and a nurse's edits refused."""
    doctor = served_demo.sign_in(served_demo.person("doctor"))
    with viewer_socket(served_demo, doctor) as ws:
        ready = viewer_ready(ws)
        assert _message(ws, "segmentations")["may_edit"] is True
        pet_view = next(i for i, view in enumerate(ready["views"])
                        if view["kind"] != "3d" and _shows_only(ready, view, "PT"))
        viewer_until(ws, lambda m: is_frame(m) and m.view == pet_view)
        ws.send(json.dumps({"type": "seg_new", "view": pet_view, "label": "served"}))
        created = _message(ws, "segmentation")["segmentation"]
        assert (created["revision"], created["editable"]) == (0, True)
        brush = {"type": "seg_edit", "view": pet_view, "tool": "brush", "segment": 1, "points": [[100, 100]],
                 "radius_mm": 8, "planar": True}
        ws.send(json.dumps(brush))
        edited = _message(ws, "segmentation")["segmentation"]
        assert edited["revision"] == 1 and edited["statistics"]["segments"]["1"]["voxels"] > 0
        ws.send(json.dumps({**brush, "voxels": [1, 2, 3]}))
        assert _message(ws, "error")["code"] == "unknown_field"
        ws.send(json.dumps({**brush, "segment": 40}))
        assert _message(ws, "error")["code"] == "bad_value"
        ws.send(json.dumps({"type": "seg_undo"}))
        undone = _message(ws, "segmentation")["segmentation"]
        assert (undone["revision"], undone["statistics"]["segments"], undone["can_redo"]) == (0, {}, True)

    nurse = served_demo.sign_in(served_demo.person("nurse"))
    with viewer_socket(served_demo, nurse) as ws:
        ready = viewer_ready(ws)
        listed = _message(ws, "segmentations")
        assert listed["may_edit"] is False and created["id"] in [s["id"] for s in listed["segmentations"]]
        ws.send(json.dumps({"type": "seg_open", "segmentation": created["id"]}))
        assert _message(ws, "segmentation")["segmentation"]["editable"] is False
        ws.send(json.dumps({**brush, "view": 0}))
        _refusal(ws, "seg_edit")
        ws.send(json.dumps({"type": "seg_new", "view": 0, "label": "mine"}))
        _refusal(ws, "seg_new")
