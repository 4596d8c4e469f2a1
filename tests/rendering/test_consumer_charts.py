"""Charts on the viewer websocket end to end: a real session, the ingested phantom, real render workers.

A doctor asks for the histogram of a sphere on the fused view and gets each
layer's table and a PNG of it, counting the voxels the sphere's statistics
count; a curve of a series that is not dynamic is refused as such; a nurse
is refused (``study.measure``, asked per message) and is announced no chart.
"""

from __future__ import annotations

import base64
import io

import pytest
from channels.db import database_sync_to_async
from PIL import Image

from tests.conftest import ZONES
from tests.rendering.test_consumer import _at_lesion, _frames, _next, _open, _until, phantom_dir, study  # noqa: F401

pytestmark = pytest.mark.django_db(databases=ZONES, transaction=True)


def _answer(kind: str):
    return lambda m: isinstance(m, dict) and (m["type"] == kind
                                              or (m["type"] == "error" and m.get("of") == kind))


async def test_a_doctor_gets_a_histogram_of_each_layer_and_no_curve_of_a_static_series(client, signed_in,
                                                                                        study):  # noqa: F811
    await database_sync_to_async(signed_in)("doctor")
    record, truth = study
    lesion = max(truth["lesions"], key=lambda item: item["radius_mm"])
    communicator, _, _ = await _open(client, record.study_instance_uid)
    ready = await _next(communicator)
    assert ready["vocabulary"]["charts"]["tac"] == ["sphere"]
    x, y = (await _at_lesion(communicator, lesion)).overlay["crosshair"]
    region = {"view": 2, "tool": "sphere", "points": [[x, y]], "radius_mm": lesion["radius_mm"]}
    await communicator.send_json_to({"type": "measure", **region})
    measured = await _until(communicator, _answer("measurement"))
    await communicator.send_json_to({"type": "chart", "kind": "histogram", **region})
    chart = await _until(communicator, _answer("chart"))
    assert chart["type"] == "chart", chart
    assert (chart["view"], chart["kind"], chart["tool"]) == (2, "histogram", "sphere")
    assert chart["points"] == [[x, y]]
    assert [item["unit"] for item in chart["charts"]] == ["HU", "SUV"]
    for item, layer in zip(chart["charts"], measured["result"], strict=True):
        assert item["series_id"] == layer["series_id"]
        assert sum(item["table"]["counts"]) == item["voxels"] == layer["voxels"]
        assert len(item["table"]["edges"]) == len(item["table"]["counts"]) + 1
        assert item["table"]["edges"][-1] >= layer["maximum"]
        with Image.open(io.BytesIO(base64.b64decode(item["image"]))) as picture:
            assert picture.format == "PNG" and picture.size == (item["width"], item["height"])
    await communicator.send_json_to({"type": "chart", "kind": "tac", **region})
    refused = await _until(communicator, _answer("chart"))
    assert (refused["type"], refused["code"]) == ("error", "chart_failed") and "dynamic" in refused["message"]
    await communicator.disconnect()


async def test_a_nurse_is_announced_no_chart_and_refused_one(client, signed_in, study):  # noqa: F811
    await database_sync_to_async(signed_in)("nurse")
    record, _ = study
    communicator, _, _ = await _open(client, record.study_instance_uid)
    ready = await _next(communicator)
    assert ready["vocabulary"]["charts"] == {}
    await _frames(communicator, 4)
    await communicator.send_json_to({"type": "chart", "kind": "histogram", "view": 0, "tool": "ellipse",
                                     "points": [[10, 10], [100, 100]]})
    refused = await _until(communicator, _answer("chart"))
    assert refused["type"] == "error" and refused["code"] == "refused" and refused["of"] == "chart"
    await communicator.disconnect()
