"""Live reporting: key images kept from the viewer, the PDF made of them, signing, addenda, sending.

The phantom PET/CT goes through the import door; a doctor keeps two measurements and three
views (CT, PET, fusion) as key images from a live viewer. The PDF's text is read with poppler's
``pdftotext`` and its pictures with ``pdfimages``: the fused key image must be, pixel for pixel,
the still frame the viewer showed; the others the frames the workers render from the stored
state. The signed report's DICOM objects must pass ``dciodvfy`` and reach a real ``storescp``.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from channels.db import database_sync_to_async
from django.urls import reverse
from PIL import Image

from gateway.audit.models import AuditEvent
from imaging import storage
from imaging.models import Instance, Report, ReportStatus
from imaging.report_settings import destination_register
from rendering.encoding import Encoding
from rendering.pool import CLINICAL, render_pool_async
from rendering.viewstate import viewstate_from_dict
from tests.conftest import ZONES
from tests.rendering.test_consumer import (  # noqa: F401
    _at_lesion,
    _open,
    _until,
    phantom_dir,
    study,
)

pytestmark = pytest.mark.django_db(databases=ZONES, transaction=True)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH: make sysdeps installs poppler-utils, dcmtk and dicom3tools")
    return path


def _rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


async def _reply(communicator, kind: str) -> dict:
    return await _until(communicator, lambda m: isinstance(m, dict) and m["type"] in {kind, "error"})


async def _keep(communicator, view: int, tool: str, points, label: str, **extra) -> None:
    await communicator.send_json_to({"type": "measure", "view": view, "tool": tool, "points": points,
                                     **extra})
    assert (await _reply(communicator, "measurement"))["type"] == "measurement"
    await communicator.send_json_to({"type": "keep", "label": label})
    assert (await _reply(communicator, "findings"))["type"] == "findings"


async def _reading_kept(client, record, lesion) -> tuple[object, dict]:
    """A doctor's live viewer at the lesion: two findings kept, views 0-2 kept as key images."""
    communicator, _, _ = await _open(client, record.study_instance_uid)
    fusion = await _at_lesion(communicator, lesion)
    x, y = fusion.overlay["crosshair"]
    await _keep(communicator, 2, "sphere", [[x, y]], "Lesion A", radius_mm=lesion["radius_mm"])
    await _keep(communicator, 0, "line", [[x - 40, y], [x + 40, y]], "Line B")
    for view in (0, 1, 2):
        await communicator.send_json_to({"type": "report_capture", "view": view})
        captured = await _reply(communicator, "report_captured")
        assert captured["type"] == "report_captured", captured
        assert captured["key_images"] == view + 1 and captured["version"] == 1
    await communicator.disconnect()
    return fusion, {"x": x, "y": y}


async def _rendered(state: dict) -> np.ndarray:
    pool = await render_pool_async()
    frame = await pool.render(viewstate_from_dict({**state, "quality": "still"}), source=CLINICAL,
                              encoding=Encoding.PNG)
    return _rgb(frame.data)


def _pdf_text(pdf: bytes, tmp_path: Path) -> str:
    (tmp_path / "r.pdf").write_bytes(pdf)
    return subprocess.run([_tool("pdftotext"), "-layout", str(tmp_path / "r.pdf"), "-"], check=True,
                          capture_output=True, text=True).stdout


def _pdf_images(pdf: bytes, tmp_path: Path) -> list[np.ndarray]:
    (tmp_path / "r.pdf").write_bytes(pdf)
    subprocess.run([_tool("pdfimages"), "-png", str(tmp_path / "r.pdf"), str(tmp_path / "img")], check=True)
    return [_rgb(path.read_bytes()) for path in sorted(tmp_path.glob("img-*.png"))]


async def test_a_report_of_three_key_images_and_two_findings_renders_to_pdf_as_the_viewer_showed(
        client, signed_in, study, tmp_path):  # noqa: F811
    await database_sync_to_async(signed_in)("doctor")
    record, truth = study
    lesion = max(truth["lesions"], key=lambda item: item["radius_mm"])
    fusion, _ = await _reading_kept(client, record, lesion)
    uid = record.study_instance_uid
    save = reverse("rendering:report_save", kwargs={"study": uid, "version": 1})
    answer = await database_sync_to_async(client.post)(
        save, json.dumps({"sections": {"impression": "Hypermetabolic lesion <b>&amp; nothing else"}}),
        content_type="application/json")
    assert answer.status_code == 200, answer.content

    response = await database_sync_to_async(client.get)(
        reverse("rendering:report_pdf", kwargs={"study": uid, "version": 1}))
    assert response.status_code == 200 and response["Content-Type"] == "application/pdf"
    pdf = response.content
    text = _pdf_text(pdf, tmp_path)
    for expected in ("Lesion A", "Line B", "Hypermetabolic lesion <b>&amp; nothing else", "Exported by",
                     "doctor-user", "DRAFT"):
        assert expected in text, expected
    identity = truth["identity"]
    for part in identity["patient_name"].split("^")[:2]:
        assert part not in text, "the patient's name is in a pseudonymised report"
    pseudonym = await database_sync_to_async(lambda: record.patient.pseudonym)()
    assert pseudonym[:16] in text

    report = await database_sync_to_async(Report.objects.get)(study=record)
    images = _pdf_images(pdf, tmp_path)
    assert len(images) == 3
    assert np.array_equal(images[2], _rgb(fusion.image)), "the fused key image is not the viewer's still"
    for picture, kept in zip(images[:2], report.key_images[:2], strict=True):
        assert np.array_equal(picture, await _rendered(kept["state"]))
    digest = __import__("hashlib").sha256(pdf).hexdigest()
    event = await database_sync_to_async(
        AuditEvent.objects.using("audit").filter(action="report.export").latest)("sequence")
    assert event.outcome == "success" and json.loads(event.details)["sha256"] == digest


async def test_a_key_image_stays_live_window_and_slice_change_what_is_rendered(
        client, signed_in, study):  # noqa: F811
    await database_sync_to_async(signed_in)("doctor")
    record, truth = study
    lesion = max(truth["lesions"], key=lambda item: item["radius_mm"])
    await _reading_kept(client, record, lesion)
    communicator, _, _ = await _open(client, record.study_instance_uid)
    ready = await _reply(communicator, "ready")
    await communicator.disconnect()
    assert ready["report"]["label"] == "draft (v1)" and ready["report"]["url"].endswith(
        f"/reports/{record.study_instance_uid}/")
    report = await database_sync_to_async(Report.objects.get)(study=record)
    ct = report.key_images[0]
    kwargs = {"study": record.study_instance_uid, "version": 1, "image": ct["id"]}
    before = await database_sync_to_async(client.get)(reverse("rendering:report_image", kwargs=kwargs))
    assert before.status_code == 200 and before["Content-Type"] == "image/png"
    adjust = reverse("rendering:report_adjust", kwargs=kwargs)
    moved = await database_sync_to_async(client.post)(adjust, json.dumps({"slices": 3, "window_width": 80}),
                                                      content_type="application/json")
    assert moved.status_code == 200, moved.content
    after = await database_sync_to_async(client.get)(reverse("rendering:report_image", kwargs=kwargs))
    expected_focus = np.asarray(ct["state"]["focus_mm"]) + 3 * ct["step_mm"] * np.asarray(ct["normal"])
    assert np.allclose(moved.json()["focus_mm"], expected_focus)
    assert moved.json()["window_width"] == 80
    assert not np.array_equal(_rgb(before.content), _rgb(after.content))
    stored = await database_sync_to_async(Report.objects.get)(pk=report.pk)
    assert np.array_equal(_rgb(after.content), await _rendered(stored.key_images[0]["state"]))
    bad = await database_sync_to_async(client.post)(adjust, json.dumps({"window_width": "wide"}),
                                                    content_type="application/json")
    assert bad.status_code == 400 and "window_width" in bad.json()["error"]


def _texts(ds: pydicom.Dataset) -> set[str]:
    """Every TEXT value of a structured report's content tree."""
    found = {str(ds.TextValue)} if "TextValue" in ds else set()
    for item in ds.get("ContentSequence", []):
        found |= _texts(item)
    return found


def _dciodvfy(ds: pydicom.Dataset, path: Path) -> str:
    ds.save_as(path, enforce_file_format=True)
    run = subprocess.run([_tool("dciodvfy"), str(path)], capture_output=True, text=True)
    return run.stdout + run.stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_signing_is_final_adds_pdf_and_kos_to_the_study_and_an_addendum_is_version_two(
        client, signed_in, study, tmp_path, reader_catalogue):  # noqa: F811
    doctor = await database_sync_to_async(signed_in)("doctor")
    record, truth = study
    lesion = max(truth["lesions"], key=lambda item: item["radius_mm"])
    await _reading_kept(client, record, lesion)
    uid = record.study_instance_uid
    language = reader_catalogue("Signed by %(signer)s on %(when)s UTC",
                                "Exported by %(user)s on %(when)s UTC", "Page %(number)s of %(count)s",
                                wrap="HU {}")
    sign = await database_sync_to_async(client.post)(reverse("rendering:report_sign",
                                                             kwargs={"study": uid, "version": 1}),
                                                     HTTP_ACCEPT_LANGUAGE=language)
    assert sign.status_code == 302, sign.content
    report = await database_sync_to_async(Report.objects.get)(study=record, version=1)
    assert report.status == ReportStatus.SIGNED and report.signed_by == doctor.username
    assert {line["label"] for line in report.findings} == {"Lesion A", "Line B"}

    def stored(modality: str) -> list[pydicom.Dataset]:
        return [pydicom.dcmread(io.BytesIO(storage.object_get(instance.object_id)))
                for instance in Instance.objects.filter(series__study=record, series__modality=modality)]

    (document,) = await database_sync_to_async(stored)("DOC")
    (selection,) = await database_sync_to_async(stored)("KO")
    (findings_sr,) = await database_sync_to_async(stored)("SR")
    texts = " | ".join(_texts(findings_sr))
    assert "Lesion A" in texts and "Line B" in texts, "the findings are not in the study's SR"

    for name, ds in (("pdf", document), ("kos", selection)):
        output = _dciodvfy(ds, tmp_path / f"{name}.dcm")
        assert not [line for line in output.splitlines() if "Error" in line], output
    pdf = bytes(document.EncapsulatedDocument)[:int(document.EncapsulatedDocumentLength)]
    record_text = _pdf_text(pdf, tmp_path)
    assert "Signed by doctor-user" in record_text and "Page 1 of" in record_text
    assert "Exported by" not in record_text and "HU " not in record_text, "the copy of record is English"
    export = await database_sync_to_async(client.get)(
        reverse("rendering:report_pdf", kwargs={"study": uid, "version": 1}), HTTP_ACCEPT_LANGUAGE=language)
    exported_text = _pdf_text(export.content, tmp_path)
    for translated in ("HU Signed by doctor-user", "HU Exported by doctor-user", "HU Page 1 of"):
        assert translated in exported_text, "an export is in its reader's language"
    referenced = {str(item.ReferencedSOPInstanceUID)
                  for study_item in selection.CurrentRequestedProcedureEvidenceSequence
                  for series in study_item.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert str(document.SOPInstanceUID) in referenced
    modalities = await database_sync_to_async(lambda: set(Instance.objects.filter(
        sop_instance_uid__in=referenced).values_list("series__modality", flat=True)))()
    assert modalities == {"CT", "PT", "DOC"}

    save = reverse("rendering:report_save", kwargs={"study": uid, "version": 1})
    refused = await database_sync_to_async(client.post)(save, json.dumps({"title": "changed"}),
                                                        content_type="application/json")
    assert refused.status_code == 409
    assert (await database_sync_to_async(Report.objects.get)(pk=report.pk)).title == report.title
    start = reverse("rendering:report_start", kwargs={"study": uid})
    addendum = await database_sync_to_async(client.post)(start, {"addendum": "1"})
    assert addendum.status_code == 302
    second = await database_sync_to_async(Report.objects.get)(study=record, version=2)
    assert second.status == ReportStatus.DRAFT and second.key_images == report.key_images
    assert (await database_sync_to_async(client.post)(
        reverse("rendering:report_save", kwargs={"study": uid, "version": 2}),
        json.dumps({"title": "Addendum"}), content_type="application/json")).status_code == 200

    received = tmp_path / "received"
    received.mkdir()
    port = _free_port()
    peer = subprocess.Popen([_tool("storescp"), "--output-directory", str(received), "-aet", "RIS",
                             str(port)], env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"})
    try:
        deadline = time.monotonic() + 10
        while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
            assert time.monotonic() < deadline, "storescp did not start"
            time.sleep(0.1)
        destination = await database_sync_to_async(destination_register)(
            name="RIS", ae_title="RIS", host="127.0.0.1", port=port, actor="cli:test")
        sent = await database_sync_to_async(client.post)(
            reverse("rendering:report_send", kwargs={"study": uid, "version": 1}),
            {"destination": str(destination.pk)})
        assert sent.status_code == 200, sent.content
    finally:
        peer.terminate()
        peer.wait(10)
    arrived = {str(pydicom.dcmread(path).SOPInstanceUID) for path in received.iterdir()}
    assert arrived == {str(document.SOPInstanceUID), str(selection.SOPInstanceUID)}


async def test_a_nurse_reads_only_signed_reports_and_cannot_download(
        client, signed_in, study):  # noqa: F811
    await database_sync_to_async(signed_in)("doctor", username="author")
    record, truth = study
    lesion = max(truth["lesions"], key=lambda item: item["radius_mm"])
    await _reading_kept(client, record, lesion)
    uid = record.study_instance_uid
    await database_sync_to_async(client.logout)()
    await database_sync_to_async(signed_in)("nurse")
    page = reverse("rendering:report", kwargs={"study": uid})
    draft_only = await database_sync_to_async(client.get)(page)
    assert draft_only.status_code == 200 and b"No signed report yet" in draft_only.content
    for name, kwargs in (("report_pdf", {"version": 1}), ("report_page", {"version": 1, "page": 1,
                                                                            "page_format": "png"})):
        refused = await database_sync_to_async(client.get)(reverse(f"rendering:{name}",
                                                                   kwargs={"study": uid, **kwargs}))
        assert refused.status_code == 403
    denied = await database_sync_to_async(lambda: list(AuditEvent.objects.using("audit").filter(
        action="report.export", outcome="denied").values_list("details", flat=True)))()
    assert len(denied) == 2 and all(uid in json.loads(details)["path"] for details in denied)
