"""Bookmarks over the viewer socket: a doctor keeps a reading, shows it to a consultant's share,
and the consultant opens it; the consultant keeps none and opens nothing it was not shown."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async

from gateway.sharing.services import Scope
from tests.conftest import ZONES
from tests.sharing.factories import consultant_client, mint
from tests.sharing.test_websocket import _in_process_channel_layer, _open, _text, phantom_dir, study  # noqa: F401

pytestmark = pytest.mark.django_db(databases=ZONES, transaction=True)


async def _until(communicator, wanted):
    for _ in range(200):
        message = await _text(communicator)
        if wanted(message):
            return message
    raise AssertionError("the awaited message never came")


def _of_type(kind: str, test=lambda message: True):
    return lambda message: message.get("type") == kind and test(message)


async def test_a_doctor_shows_a_bookmark_to_a_share_and_the_consultant_opens_it(client, signed_in, study):  # noqa: F811
    record, _ = study
    uid = record.study_instance_uid
    doctor = await database_sync_to_async(signed_in)("doctor")
    reading, connected, _ = await _open(client, uid)
    assert connected
    await _until(reading, _of_type("bookmarks"))
    await reading.send_json_to({"type": "tab", "action": "add", "layout": "1x2"})
    await _until(reading, _of_type("ready", lambda m: len(m["tabs"]) == 2))
    await reading.send_json_to({"type": "bookmark", "action": "save", "name": "for the consult"})
    kept = await _until(reading, _of_type("bookmarks", lambda m: m["bookmarks"]))
    bookmark = kept["bookmarks"][0]["id"]
    minted = await database_sync_to_async(mint)(doctor, record, scope=Scope.STUDY)
    await reading.send_json_to({"type": "bookmark", "action": "share", "bookmark": bookmark,
                                "share": minted.share.public_id, "shared": True})
    shared = await _until(reading, _of_type("bookmarks", lambda m: m["bookmarks"][0]["shared_with"]))
    assert shared["bookmarks"][0]["shared_with"] == [minted.share.public_id]
    await reading.disconnect()

    consultant = await database_sync_to_async(consultant_client)(minted)
    shown, connected, _ = await _open(consultant, uid)
    assert connected
    listed = await _until(shown, _of_type("bookmarks"))
    assert listed["keeps"] is False and [b["id"] for b in listed["bookmarks"]] == [bookmark]
    assert listed["shares"] == []
    await shown.send_json_to({"type": "bookmark", "action": "open", "bookmark": bookmark})
    restored = await _until(shown, _of_type("ready", lambda m: len(m["tabs"]) == 2))
    assert restored["tab"] == 1 and restored["layout"] == "1x2"
    await shown.send_json_to({"type": "bookmark", "action": "save", "name": "mine"})
    refused = await _until(shown, _of_type("error"))
    assert refused["of"] == "bookmark" and "keeps none" in refused["message"]
    await shown.send_json_to({"type": "bookmark", "action": "open", "bookmark": bookmark + 1})
    missing = await _until(shown, _of_type("error"))
    assert missing["of"] == "bookmark" and "no such bookmark" in missing["message"]
    await shown.disconnect()
