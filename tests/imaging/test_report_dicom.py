"""A signed report as DICOM: an Encapsulated PDF and a Key Object Selection, sent by C-STORE.

The source is a real CT header (pydicom's CT example, read without pixel data, as the
gateway keeps headers). Both objects must pass dicom3tools' ``dciodvfy`` and read back
to what went in; ``dicom_send`` must deliver them byte for byte to dcmtk's
``storescp``, and fail with a message naming the peer when nothing listens.
"""

from __future__ import annotations

import copy
import io
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import highdicom as hd
import pydicom
import pydicom.examples
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, StoragePresentationContexts, evt
from reportlab.pdfgen.canvas import Canvas

from imaging.dicom_net import SendError, SendResult, dicom_send
from imaging.report_dicom import encapsulated_pdf, key_object_selection

AUTHOR = "Müller^Hanna"
PATIENT_AND_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                     "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
PERSON_OBSERVER_NAME = "121008"
STORESCP_AE = "PACSTEST"
STARTUP_S = 10.0


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH: make sysdeps installs dicom3tools and dcmtk")
    return path


def _valid(path: Path) -> None:
    run = subprocess.run([_tool("dciodvfy"), str(path)], capture_output=True, text=True, check=False)
    report = run.stdout + run.stderr
    assert [line for line in report.splitlines() if "Error" in line] == [], report


def _pdf(parity: int) -> bytes:
    """A one-line PDF of the asked length parity (trailing whitespace after %%EOF is allowed)."""
    buffer = io.BytesIO()
    canvas = Canvas(buffer)
    canvas.drawString(72, 720, "Impression: no acute finding.")
    canvas.save()
    pdf = buffer.getvalue()
    return pdf if len(pdf) % 2 == parity else pdf + b"\n"


@pytest.fixture
def ct() -> Dataset:
    return pydicom.dcmread(pydicom.examples.get_path("ct"), stop_before_pixels=True)


def _report(pdf: bytes, ct: Dataset) -> Dataset:
    return encapsulated_pdf(pdf, source=ct, title="CT chest — signed report", author=AUTHOR,
                            series_instance_uid=generate_uid(), series_number=901)


def _key_objects(referenced: list[Dataset]) -> Dataset:
    return key_object_selection(referenced=referenced, description="Key images of the signed report",
                                author=AUTHOR, series_instance_uid=generate_uid(), series_number=902)


def _saved(dataset: Dataset, path: Path) -> Path:
    dataset.save_as(path, enforce_file_format=True)
    return path


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("parity", [0, 1], ids=["even", "odd"])
def test_encapsulated_pdf_validates_and_reads_back_to_the_pdf_and_the_study(ct, tmp_path, parity):
    pdf = _pdf(parity)
    path = _saved(_report(pdf, ct), tmp_path / "report.dcm")
    _valid(path)
    back = pydicom.dcmread(path)
    assert len(back.EncapsulatedDocument) % 2 == 0
    assert back.EncapsulatedDocumentLength == len(pdf)
    assert back.EncapsulatedDocument[:back.EncapsulatedDocumentLength] == pdf
    assert back.EncapsulatedDocument[len(pdf):] == b"\0" * parity
    assert {k: back[k].value for k in PATIENT_AND_STUDY} == {k: ct[k].value for k in PATIENT_AND_STUDY}
    assert back.SOPInstanceUID != ct.SOPInstanceUID
    assert back.NameOfPhysiciansReadingStudy == AUTHOR


def test_key_object_selection_validates_and_references_exactly_the_given_objects(ct, tmp_path):
    report = _report(_pdf(0), ct)
    path = _saved(_key_objects([ct, report]), tmp_path / "kos.dcm")
    _valid(path)
    back = hd.ko.KeyObjectSelectionDocument.from_dataset(pydicom.dcmread(path))
    referenced = [item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
                  for item in back.content.get_references()]
    assert sorted(referenced) == sorted([ct.SOPInstanceUID, report.SOPInstanceUID])
    assert back.StudyInstanceUID == ct.StudyInstanceUID
    observers = [item.PersonName for item in back.ContentSequence
                 if item.ConceptNameCodeSequence[0].CodeValue == PERSON_OBSERVER_NAME]
    assert observers == [AUTHOR]


def test_key_object_selection_refuses_references_across_studies(ct):
    elsewhere = copy.deepcopy(ct)
    elsewhere.StudyInstanceUID = generate_uid()
    elsewhere.SOPInstanceUID = generate_uid()
    with pytest.raises(ValueError, match="one study"):
        _key_objects([ct, elsewhere])


@pytest.fixture
def storescp(tmp_path) -> Iterator[Callable[..., tuple[int, Path]]]:
    """Start dcmtk's storescp on a free loopback port: ``start(*options) -> (port, output directory)``."""
    running: list[subprocess.Popen[bytes]] = []

    def start(*options: str) -> tuple[int, Path]:
        port, directory = _free_port(), tmp_path / f"received-{len(running)}"
        directory.mkdir()
        command = [_tool("storescp"), "-aet", STORESCP_AE, "--output-directory", str(directory), *options]
        process = subprocess.Popen([*command, str(port)], env={**os.environ, "TCP_NODELAY": "1"},
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        running.append(process)
        _wait_listening(process, port)
        return port, directory

    try:
        yield start
    finally:
        for process in running:
            process.terminate()
            process.wait(timeout=10)


def _wait_listening(process: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"storescp exited: {process.communicate()[0].decode(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"storescp did not listen on port {port} within {STARTUP_S} s")


def test_dicom_send_delivers_the_report_and_key_objects_to_storescp(ct, storescp):
    port, received = storescp()
    pdf = _pdf(1)
    report = _report(pdf, ct)
    key_objects = _key_objects([ct, report])
    result = dicom_send([report, key_objects], ae_title=STORESCP_AE, host="127.0.0.1", port=port)
    assert (result.sent, result.failed) == (2, ())
    stored = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, sorted(received.iterdir()))}
    assert set(stored) == {report.SOPInstanceUID, key_objects.SOPInstanceUID}
    delivered = stored[report.SOPInstanceUID]
    assert delivered.EncapsulatedDocument[:delivered.EncapsulatedDocumentLength] == pdf


@pytest.mark.parametrize(("options", "why"), [
    (("--refuse",), "rejected the association"),
    (("+xi",), "accepted none of the presentation contexts offered (Encapsulated PDF Storage)"),
], ids=["refused", "implicit-only"])
def test_dicom_send_raises_when_the_peer_will_not_associate(ct, storescp, options, why):
    port, _ = storescp(*options)
    with pytest.raises(SendError) as raised:
        dicom_send([_report(_pdf(0), ct)], ae_title=STORESCP_AE, host="127.0.0.1", port=port, timeout_s=5)
    assert f"{STORESCP_AE} at 127.0.0.1:{port}" in str(raised.value)
    assert why in str(raised.value)


def test_dicom_send_to_a_closed_port_raises_naming_the_peer(ct):
    port = _free_port()
    started = time.monotonic()
    with pytest.raises(SendError, match=f"PACS at 127.0.0.1:{port}"):
        dicom_send([_report(_pdf(0), ct)], ae_title="PACS", host="127.0.0.1", port=port, timeout_s=2)
    assert time.monotonic() - started < 5


def test_dicom_send_turns_nagle_off(ct, storescp):
    """With Nagle on, each C-STORE waits ~45 ms for a delayed ACK: 20 instances would take ~0.9 s."""
    port, received = storescp()
    reports = [encapsulated_pdf(_pdf(0), source=ct, title="report", author=AUTHOR,
                                series_instance_uid=generate_uid(), series_number=901, instance_number=n)
               for n in range(1, 21)]
    started = time.monotonic()
    result = dicom_send(reports, ae_title=STORESCP_AE, host="127.0.0.1", port=port)
    elapsed = time.monotonic() - started
    assert result.sent == len(reports) == len(list(received.iterdir()))
    assert elapsed < 0.5, f"{len(reports)} instances took {elapsed:.2f} s"


def test_dicom_send_reports_each_instance_lost_to_an_abort(ct, storescp):
    port, _ = storescp("--abort-after")
    report = _report(_pdf(0), ct)
    key_objects = _key_objects([ct, report])
    result = dicom_send([report, key_objects], ae_title=STORESCP_AE, host="127.0.0.1", port=port, timeout_s=5)
    assert result.sent == 0
    assert [uid for uid, _ in result.failed] == [report.SOPInstanceUID, key_objects.SOPInstanceUID]
    assert [reason.split(":")[0] for _, reason in result.failed] == ["no response", "not sent"]


def test_dicom_send_counts_warnings_as_stored_and_reports_refusals(ct):
    report = _report(_pdf(0), ct)
    key_objects = _key_objects([ct, report])
    statuses = {report.SOPInstanceUID: 0xA700, key_objects.SOPInstanceUID: 0xB000}

    def handle_store(event: evt.Event) -> int:
        return statuses[event.request.AffectedSOPInstanceUID]

    peer = AE(ae_title=STORESCP_AE)
    peer.supported_contexts = StoragePresentationContexts
    server = peer.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    try:
        port = server.server_address[1]
        result = dicom_send([report, key_objects], ae_title=STORESCP_AE, host="127.0.0.1", port=port)
    finally:
        server.shutdown()
    assert result == SendResult(sent=1, failed=((report.SOPInstanceUID, "0xA700 Refused: Out of Resources"),))
