"""No DICOM bytes, voxel arrays or raw slices leave the gateway, by any route or message.

HTTP: every route in the resolver is requested by a signed-in doctor (the role
that sees the most images), including the viewer page of a real ingested
study; no response is DICOM, octet-stream or multipart, none carries a DICOM
preamble, and none is large enough to hold a slice. Websocket: every client
message type and operation is sent to a live viewer; every server message is
a known JSON message of modest size or a frame whose payload is an encoded
picture (JPEG, PNG, WebP) of exactly the size its header declares.

The one exception to "no image over HTTP" is a report: its key images (PNG
frames rendered from a stored view state, to readers of the study), and its
PDF and page pictures (to doctors only, stamped with who exported them). Each
is a rendered picture like a frame; no report route returns DICOM, and the
report's DICOM copies go only to registered DICOM destinations.
"""

from __future__ import annotations

import base64
import io
import json

import pytest
from channels.db import database_sync_to_async
from django.urls import reverse
from PIL import Image

from rendering.protocol import (
    FRAME_HEADER,
    LAYOUTS,
    OPERATIONS,
    SETTINGS,
    Flag,
    Identifier,
    Text,
    frame_unpack,
)
from tests.conftest import ZONES
from tests.rendering.test_consumer import _next, _open, phantom_dir, study  # noqa: F401
from tests.security.inventory import http_routes

pytestmark = pytest.mark.django_db(databases=ZONES, transaction=True)

FORBIDDEN_TYPES = ("application/dicom", "application/octet-stream", "multipart/related",
                   "image/", "application/x-numpy")
MAX_TEXT_BYTES = 16_384
IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"RIFF")
ARGUMENTS = {"delta": 1, "dc": 5, "dw": 5, "factor": 1.1, "dx": 0.01, "dy": 0.01,
             "dazimuth": 5, "delevation": 5, "dtilt": 5, "dspin": 5, "x": 100, "y": 100, "index": 3}


def _assert_not_pixels(url: str, response) -> None:
    content_type = response.headers.get("Content-Type", "")
    body = b"".join(response.streaming_content) if response.streaming else response.content
    assert not content_type.startswith(FORBIDDEN_TYPES), (url, content_type)
    assert body[128:132] != b"DICM", url
    assert len(body) < 512 * 1024, (url, len(body))


def test_no_http_route_returns_pixels(client, signed_in, study):  # noqa: F811
    signed_in("doctor")
    record, _ = study
    urls = [route.url for route in http_routes() if not route.view_name.startswith("admin:")]
    urls.append(f"/viewer/{record.study_instance_uid}/")
    for url in urls:
        _assert_not_pixels(url, client.get(url))


REPORT_PICTURE_ROUTES = {"rendering:report_image", "rendering:report_pdf", "rendering:report_page"}


def _report_urls(study_uid: str, key_image: str) -> dict[str, str]:
    kwargs = {"study": study_uid, "version": 1}
    return {"rendering:report_image": reverse("rendering:report_image",
                                              kwargs={**kwargs, "image": key_image}),
            "rendering:report_pdf": reverse("rendering:report_pdf", kwargs=kwargs),
            "rendering:report_page": reverse("rendering:report_page",
                                             kwargs={**kwargs, "page": 1, "page_format": "png"})}


def _assert_a_rendered_picture(url: str, response) -> None:
    """A report picture: PNG no larger than a viewport (key image) or an A4 page, or a PDF."""
    body = response.content
    assert body[128:132] != b"DICM" and b"DICM" not in body[:1024], url
    if response["Content-Type"] == "application/pdf":
        assert body.startswith(b"%PDF-"), url
        return
    assert response["Content-Type"] == "image/png" and body.startswith(IMAGE_MAGIC[1]), url
    with Image.open(io.BytesIO(body)) as picture:
        assert max(picture.size) <= 2048 and picture.mode in {"L", "RGB"}, (url, picture.size)


async def test_reports_are_the_one_exception_rendered_pictures_and_downloads_for_doctors_only(
        client, signed_in, study):  # noqa: F811
    from imaging.models import Report

    assert {route.view_name for route in http_routes()} >= REPORT_PICTURE_ROUTES
    await database_sync_to_async(signed_in)("doctor")
    record, _ = study
    communicator, _, _ = await _open(client, record.study_instance_uid)
    await _next(communicator)
    await communicator.send_json_to({"type": "report_capture", "view": 0})
    while (await _next_text(communicator))["type"] != "report_captured":
        pass
    await communicator.disconnect()
    report = await database_sync_to_async(Report.objects.get)(study=record)
    urls = _report_urls(record.study_instance_uid, report.key_images[0]["id"])
    for url in urls.values():
        response = await database_sync_to_async(client.get)(url)
        assert response.status_code == 200, (url, response.status_code)
        _assert_a_rendered_picture(url, response)
    await database_sync_to_async(client.logout)()
    await database_sync_to_async(signed_in)("nurse")
    for name, url in urls.items():
        response = await database_sync_to_async(client.get)(url)
        assert response.status_code in {403, 404}, (name, response.status_code)
        _assert_not_pixels(url, response)


def _every_client_message() -> list[dict]:
    messages: list[dict] = [{"type": "resize", "view": 0, "width": 300, "height": 200},
                            {"type": "probe", "view": 0, "x": 10, "y": 10},
                            {"type": "ack", "view": 0, "seq": 1}, {"type": "thumbnails"}]
    for operation, rules in OPERATIONS.items():
        messages.append({"type": "input", "view": 0, "op": operation,
                         **{name: ARGUMENTS[name] for name in rules}})
    for name, rule in SETTINGS.items():
        if isinstance(rule, Identifier):
            values = ["1.2.3"]  # a well-formed uid of no series here: refused with an error
        elif isinstance(rule, Flag):
            values = [False, True]
        else:
            values = sorted(rule.choices) if isinstance(rule, Text) else [rule.high / 2]
        messages.extend({"type": "set", "view": 0, "name": name, "value": value}
                        for value in values)
    messages.extend({"type": "layout", "layout": layout} for layout in LAYOUTS)
    messages.extend([
        {"type": "measure", "view": 0, "tool": "line", "points": [[0, 0], [500, 500]]},
        {"type": "measure", "view": 0, "tool": "polygon", "points": [[10, 10], [300, 20], [200, 300]]},
        {"type": "measure", "view": 0, "tool": "sphere", "points": [[250, 250]], "radius_mm": 150},
        {"type": "chart", "view": 0, "kind": "histogram", "tool": "sphere", "points": [[250, 250]],
         "radius_mm": 40},
        {"type": "chart", "view": 0, "kind": "histogram", "tool": "polygon",
         "points": [[10, 10], [300, 20], [200, 300]]},
        {"type": "chart", "view": 0, "kind": "tac", "tool": "sphere", "points": [[250, 250]],
         "radius_mm": 40},
        {"type": "keep", "label": "whole field"}, {"type": "forget", "finding": 1},
        {"type": "hang_save", "name": "as on screen"}, {"type": "hang", "rule": 1},
        {"type": "hang_delete", "rule": 1}, {"type": "suv", "method": "lbm_james"},
        {"type": "suv_inputs", "series": "1.2.3", "weight_kg": 70}, {"type": "findings_store"},
        {"type": "report_capture", "view": 0},
        {"type": "reg_run", "fixed": "1.2.3", "moving": "1.2.4"},
        {"type": "derive", "operation": "gaussian", "series": ["1.2.3"], "parameters": {"sigma_mm": 1}},
        {"type": "filter_preview", "view": 0, "filter": "median", "parameters": {"radius_mm": 1}}])
    return messages


async def _next_text(communicator) -> dict:
    while True:
        item = await _next(communicator)
        if isinstance(item, dict):
            return item
        await communicator.send_json_to({"type": "ack", "view": item.view, "seq": item.sequence})


async def _collect(communicator, seconds: float = 1.0) -> list:
    received = []
    while not await communicator.receive_nothing(timeout=seconds, interval=0.02):
        message = await communicator.receive_output()
        received.append(message)
        if message.get("bytes"):
            frame = frame_unpack(message["bytes"])
            await communicator.send_json_to({"type": "ack", "view": frame.view,
                                             "seq": frame.sequence})
    return received


def _assert_frame_is_a_picture(raw: bytes) -> None:
    assert len(raw) > FRAME_HEADER.size
    frame = frame_unpack(raw)
    assert frame.image.startswith(IMAGE_MAGIC), frame.image[:8]
    with Image.open(io.BytesIO(frame.image)) as picture:
        assert picture.size == (frame.width, frame.height)
        assert picture.mode in {"L", "RGB", "RGBA", "P"}


async def test_every_websocket_message_yields_only_pictures_and_small_json(client, signed_in,
                                                                            study):  # noqa: F811
    await database_sync_to_async(signed_in)("doctor")
    record, _ = study
    communicator, connected, _ = await _open(client, record.study_instance_uid)
    assert connected
    received = await _collect(communicator, seconds=3.0)
    for message in _every_client_message():
        await communicator.send_json_to(message)
        received.extend(await _collect(communicator, seconds=0.4))
    received.extend(await _collect(communicator, seconds=3.0))  # answers a worker is still making
    await communicator.disconnect()
    kinds, frames = set(), 0
    for message in received:
        if message["type"] == "websocket.close":
            continue
        if message.get("bytes"):
            _assert_frame_is_a_picture(message["bytes"])
            frames += 1
            continue
        text = message["text"]
        body = json.loads(text)
        if body["type"] == "ready":
            # The vocabulary is the server's own menu (settings, inputs, palettes, toolbox, hanging
            # rules), the same for every study: bounded on its own, the rest of ready as any text.
            vocabulary = json.dumps(body["vocabulary"]).encode()
            assert len(vocabulary) < MAX_TEXT_BYTES, len(vocabulary)
            text = json.dumps({**body, "vocabulary": None})
        # A preview is a picture of the whole view, like a frame (checked as one below).
        assert len(text.encode()) < MAX_TEXT_BYTES or body["type"] == "filter_preview"
        assert body["type"] in {"ready", "error", "probe", "thumbnail", "measurement", "findings",
                                "hanging_rules", "chart", "suv", "findings_stored", "documents",
                                "segmentations", "report_captured", "registrations", "registration",
                                "derived", "filter_preview", "tabs", "bookmarks", "grids"}, body
        if body["type"] == "thumbnail":
            _assert_thumbnail_is_a_picture(body)
        if body["type"] == "filter_preview":
            _assert_preview_is_a_picture(body)
        if body["type"] == "measurement":
            _assert_measurement_is_a_few_numbers(body)
        if body["type"] == "chart":
            _assert_chart_is_counts_and_a_picture(body)
        if body["type"] == "findings":
            for finding in body["findings"]:
                _assert_measurement_is_a_few_numbers(finding)
        if body["type"] == "documents":
            _assert_documents_are_numbers_and_outlines(body)
        if body["type"] == "bookmarks":  # names of kept readings, never the kept state itself
            assert all(set(item) == {"id", "name", "updated_at", "shared_with"} for item in body["bookmarks"])
        kinds.add(body["type"])
    assert frames > 10
    assert {"ready", "probe", "thumbnail", "measurement", "findings", "chart", "filter_preview"} <= kinds


def _assert_documents_are_numbers_and_outlines(body: dict) -> None:
    """An incoming report's groups: a few numbers each and an outline of at most 64 points."""
    for document in body["documents"]:
        for group in document["groups"]:
            assert all(not isinstance(m["value"], list) for m in group["measurements"])
            assert group["graphic"] is None or len(group["graphic"]["points_mm"]) <= 64


def _assert_measurement_is_a_few_numbers(body: dict) -> None:
    """Statistics and at most a 256-point profile per layer: never the voxels of a region."""
    for item in body["result"] if isinstance(body["result"], list) else [body["result"]]:
        for value in item.values():
            if isinstance(value, list):
                for nested in value:
                    assert not isinstance(nested, list) or len(nested[2]) <= 256


def _assert_chart_is_counts_and_a_picture(body: dict) -> None:
    """A histogram is at most 64 counts per layer over its bin edges, and a small picture: no voxels."""
    assert body["kind"] == "histogram"  # the phantom has no dynamic series: no curve comes back
    for chart in body["charts"]:
        assert set(chart["table"]) == {"edges", "counts"}
        counts, edges = chart["table"]["counts"], chart["table"]["edges"]
        assert len(counts) <= 64 and len(edges) == len(counts) + 1
        assert all(isinstance(count, int) for count in counts) and sum(counts) == chart["voxels"]
        image = base64.b64decode(chart["image"])
        assert image.startswith(IMAGE_MAGIC)
        with Image.open(io.BytesIO(image)) as picture:
            assert picture.size == (chart["width"], chart["height"]) and max(picture.size) <= 320


def _assert_preview_is_a_picture(body: dict) -> None:
    """A filter preview is the view drawn once, like a frame: an encoded picture of its size."""
    image = base64.b64decode(body["image"])
    assert image.startswith(IMAGE_MAGIC)
    with Image.open(io.BytesIO(image)) as picture:
        assert picture.size == (body["width"], body["height"]) and max(picture.size) <= 2048


def _assert_thumbnail_is_a_picture(body: dict) -> None:
    image = base64.b64decode(body["image"])
    assert image.startswith(IMAGE_MAGIC)
    with Image.open(io.BytesIO(image)) as picture:
        assert max(picture.size) <= 96 and picture.mode in {"L", "RGB"}
