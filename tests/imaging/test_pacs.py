"""In front of a real PACS (Debian's Orthanc on loopback): C-ECHO, C-FIND, C-GET and C-MOVE retrieval
through ingest, results sent back re-identified through a durable queue.

Truth comes from the DICOM files loaded into Orthanc, read here with pydicom, and from
Orthanc's own REST answers; never from the gateway's output.
"""

from __future__ import annotations

import datetime as dt
import http.server
import io
import json
import threading
from collections import Counter
from pathlib import Path

import pydicom
import pytest
from django.core.management import call_command
from django.urls import reverse

from accounts.models import User
from gateway.audit.models import AuditEvent
from imaging import storage
from imaging.findings_dicom import derived_series_store
from imaging.identity.models import RemoteStudy
from imaging.models import Instance, JobState, PacsSend, Retrieval, Series, Study, VolumeState
from imaging.pacs_query import Criteria, pacs_search
from imaging.pacs_retrieve import Progress, retrieval_claim, retrieval_request, retrieval_run, series_arriving
from imaging.pacs_send import reidentified, sends_drain, sends_retry_now
from imaging.phantom import phantom_write
from imaging.report_dicom import encapsulated_pdf
from imaging.report_settings import destination_echo, destination_register
from imaging.services import uid_replacement_of
from tests.conftest import ZONES, free_port
from tests.leaks import clinical_rows, identifying_strings
from tests.peers import ORTHANC_AE, Orthanc, orthanc_start

pytestmark = pytest.mark.django_db(databases=ZONES, transaction=True)

GATEWAY_AE = "FUSIONGW"


@pytest.fixture(scope="module")
def pacs_files(tmp_path_factory) -> tuple[list[Path], dict]:
    out = tmp_path_factory.mktemp("pacs-phantom")
    truth = phantom_write(out_dir=out, slices=40, patients=2, seed=7)
    return sorted(out.rglob("*.dcm")), truth


@pytest.fixture(scope="module")
def scp_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def pacs(tmp_path_factory, pacs_files, scp_port) -> Orthanc:
    orthanc = orthanc_start(tmp_path_factory.mktemp("orthanc"),
                            modalities={"gateway": [GATEWAY_AE, "127.0.0.1", scp_port]})
    orthanc.load(pacs_files[0])
    yield orthanc
    orthanc.stop()


@pytest.fixture(scope="module")
def archive_pacs(tmp_path_factory, scp_port) -> Orthanc:
    """A second, empty Orthanc that results are sent to, so sending never changes what is retrieved."""
    orthanc = orthanc_start(tmp_path_factory.mktemp("archive"),
                            modalities={"gateway": [GATEWAY_AE, "127.0.0.1", scp_port]})
    yield orthanc
    orthanc.stop()


@pytest.fixture
def archive(archive_pacs: Orthanc) -> Orthanc:
    if archive_pacs.process is None or archive_pacs.process.poll() is not None:
        archive_pacs.start()
    destination_register(name="ARCHIVE", ae_title=ORTHANC_AE, host="127.0.0.1", port=archive_pacs.dicom_port,
                         actor="cli:it", send_results=True)
    return archive_pacs


@pytest.fixture
def orthanc(pacs: Orthanc) -> Orthanc:
    if pacs.process is None or pacs.process.poll() is not None:
        pacs.start()
    return pacs


def _headers(paths: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path, stop_before_pixels=True) for path in paths]


def _study_of(paths: list[Path], patient: int) -> list[pydicom.Dataset]:
    headers = _headers(paths)
    studies = sorted({str(ds.StudyInstanceUID) for ds in headers})
    ids = sorted({str(ds.PatientID) for ds in headers})
    return [ds for ds in headers if str(ds.PatientID) == ids[patient] and str(ds.StudyInstanceUID) in studies]


def _doctor(username: str = "dr.pacs") -> User:
    user = User.objects.create_user(username=username, password="correct horse battery staple", role="doctor")
    user.is_verified = lambda: True  # type: ignore[method-assign]
    return user


def _register(orthanc: Orthanc, *, method: str = "c-get") -> None:
    destination_register(name="PACS", ae_title=ORTHANC_AE, host="127.0.0.1", port=orthanc.dicom_port,
                         actor="cli:it", retrieve=method)


def _events(action: str) -> list[AuditEvent]:
    return list(AuditEvent.objects.using("audit").filter(action=action).order_by("sequence"))


def _found(doctor: User, **criteria) -> list[RemoteStudy]:
    answers, problems = pacs_search(principal=doctor, criteria=Criteria(**criteria))
    assert problems == []
    return answers


def test_a_pacs_answers_c_echo_and_a_dead_one_is_named_with_why(store, orthanc):
    _register(orthanc)
    assert destination_echo(name="PACS", actor="cli:it") == ""
    port = free_port()
    destination_register(name="GONE", ae_title="NOBODY", host="127.0.0.1", port=port, actor="cli:it")
    why = destination_echo(name="GONE", actor="cli:it")
    assert f"NOBODY at 127.0.0.1:{port}" in why
    assert [e.outcome for e in _events("pacs.echo")] == ["success", "failure"]


def test_c_find_by_name_and_date_range_answers_from_the_files_and_keeps_them_in_the_identity_zone(
        store, orthanc, pacs_files):
    paths, _ = pacs_files
    _register(orthanc)
    doctor = _doctor()
    first = _study_of(paths, 0)[0]
    family = str(first.PatientName).split("^")[0]
    answers = _found(doctor, name=family.lower())
    assert [a.original_study_instance_uid for a in answers] == [str(first.StudyInstanceUID)]
    answer = answers[0]
    assert answer.patient_id == str(first.PatientID)
    assert answer.study_date == dt.datetime.strptime(first.StudyDate, "%Y%m%d").date()  # noqa: DTZ007
    headers = _study_of(paths, 0)
    assert answer.instance_count == len(headers)
    assert answer.series_count == len({str(ds.SeriesInstanceUID) for ds in headers})
    assert sorted(answer.modalities.split("\\")) == sorted({str(ds.Modality) for ds in headers})

    day = answer.study_date
    assert len(_found(doctor, date_from=day, date_to=day)) == 1
    assert _found(doctor, name=family, date_from=day + dt.timedelta(days=1)) == []
    assert len(_found(doctor, date_from=day - dt.timedelta(days=400))) == 2
    assert {a.patient_id for a in _found(doctor, modality="PT", date_to=day + dt.timedelta(days=400))} == {
        str(ds.PatientID) for ds in _headers(paths)}

    events = _events("pacs.query")
    assert events and all(family not in e.details and family.lower() not in e.details for e in events)
    assert json.loads(events[0].details)["answers"] == 1
    rows = clinical_rows()
    assert family not in rows and str(first.PatientID) not in rows and str(first.StudyInstanceUID) not in rows


def test_a_nurse_may_search_the_pacs_and_an_auditor_may_not(store, orthanc):
    _register(orthanc)
    nurse = User.objects.create_user(username="nurse.p", password="correct horse battery staple",
                                     role="nurse")
    nurse.is_verified = lambda: True  # type: ignore[method-assign]
    assert pacs_search(principal=nurse, criteria=Criteria(patient_id="nobody"))[1] == []
    auditor = User.objects.create_user(username="audit.p", password="correct horse battery staple",
                                       role="auditor")
    auditor.is_verified = lambda: True  # type: ignore[method-assign]
    with pytest.raises(PermissionError):
        pacs_search(principal=auditor, criteria=Criteria(patient_id="nobody"))


def _retrieved(doctor: User, answer: RemoteStudy) -> Retrieval:
    retrieval = retrieval_request(principal=doctor, remote_study_id=answer.pk)
    claimed = retrieval_claim()
    assert claimed is not None and claimed.pk == retrieval.pk
    return retrieval_run(claimed)


def _check_retrieved(retrieval: Retrieval, headers: list[pydicom.Dataset]) -> Study:
    assert retrieval.state == JobState.DONE, retrieval.error
    assert retrieval.received == retrieval.expected == len(headers)
    by_series = Counter(uid_replacement_of(str(ds.SeriesInstanceUID)) for ds in headers)
    assert {entry["uid"]: entry["received"] for entry in retrieval.series} == dict(by_series)
    assert all(entry["complete"] for entry in retrieval.series)
    study = Study.objects.get(study_instance_uid=uid_replacement_of(str(headers[0].StudyInstanceUID)))
    assert Instance.objects.filter(series__study=study).count() == len(headers)
    states = set(Series.objects.filter(study=study).values_list("volume_state", flat=True))
    assert states == {VolumeState.READY}
    assert series_arriving(study_uid=study.study_instance_uid) == {}
    return study


def test_c_get_retrieves_a_study_through_ingest_series_by_series_with_nothing_identifying_outside(
        store, orthanc, pacs_files):
    paths, truth = pacs_files
    _register(orthanc, method="c-get")
    doctor = _doctor()
    headers = _study_of(paths, 0)
    answer = _found(doctor, patient_id=str(headers[0].PatientID))[0]
    retrieval = _retrieved(doctor, answer)
    _check_retrieved(retrieval, headers)
    steps = [json.loads(e.details)["step"] for e in _events("pacs.retrieve")]
    assert steps == ["requested", "done"]

    patient = str(headers[0].PatientID)
    own = [p for p in paths if str(pydicom.dcmread(p, stop_before_pixels=True).PatientID) == patient]
    secrets = identifying_strings(own, truth)
    haystacks = {"rows": clinical_rows()}
    for object_id in storage.storage_objects():
        haystacks[object_id] = storage.object_get(object_id).decode("latin-1")
    hits = sorted({secret for text in haystacks.values() for secret in secrets if secret in text})
    assert hits == []


def test_c_move_retrieves_through_the_gateways_scp(store, orthanc, pacs_files, scp_port):
    from accounts.services import user_create
    from imaging.devices import device_endpoint_register
    from imaging.scp import scp_build

    paths, _ = pacs_files
    _register(orthanc, method="c-move")
    device = user_create(username="pacs.orthanc", password="correct horse battery staple", role="device")
    device_endpoint_register(user=device, ae_title=ORTHANC_AE)
    ae, handlers = scp_build(ae_title=GATEWAY_AE)
    server = ae.start_server(("127.0.0.1", scp_port), block=False, evt_handlers=handlers)
    try:
        doctor = _doctor()
        headers = _study_of(paths, 1)
        answer = _found(doctor, patient_id=str(headers[0].PatientID))[0]
        retrieval = _retrieved(doctor, answer)
    finally:
        server.shutdown()
    _check_retrieved(retrieval, headers)


def test_the_pacs_going_away_mid_retrieval_fails_it_keeping_what_arrived_and_asking_again_resumes(
        store, orthanc, pacs_files, monkeypatch):
    paths, _ = pacs_files
    _register(orthanc, method="c-get")
    doctor = _doctor()
    headers = _study_of(paths, 0)
    answer = _found(doctor, patient_id=str(headers[0].PatientID))[0]
    arrived = Progress.arrived
    killed = threading.Event()

    def arrived_then_kill(self, position, **kwargs):
        arrived(self, position, **kwargs)
        if self.retrieval.received >= 5 and not killed.is_set():
            killed.set()
            orthanc.kill()

    monkeypatch.setattr(Progress, "arrived", arrived_then_kill)
    failed = _retrieved(doctor, answer)
    assert failed.state == JobState.FAILED
    assert 5 <= failed.received < len(headers)
    assert Instance.objects.count() == failed.received
    monkeypatch.setattr(Progress, "arrived", arrived)
    orthanc.start()
    answer = _found(doctor, patient_id=str(headers[0].PatientID))[0]
    _check_retrieved(_retrieved(doctor, answer), headers)


def _result_pdf(study: Study) -> str:
    """An Encapsulated PDF added to ``study`` as every result is (derived_series_store)."""
    source = Instance.objects.filter(series__study=study, series__modality="CT").first()
    ds = pydicom.dcmread(io.BytesIO(storage.object_get(source.object_id)))
    pdf = b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF\n"
    document = encapsulated_pdf(pdf, source=ds, title="Report", author="Doctor^Test",
                                series_instance_uid=pydicom.uid.generate_uid(), series_number=990)
    derived_series_store(study, [document], modality="DOC", description="Report", written=[])
    return str(document.SOPInstanceUID)


def _retrieved_here(orthanc: Orthanc, pacs_files, *, patient: int) -> tuple[list[pydicom.Dataset], Study]:
    """(the files' headers, the Study) of one patient's study, retrieved by C-GET and checked."""
    paths, _ = pacs_files
    _register(orthanc)
    doctor = _doctor()
    headers = _study_of(paths, patient)
    answer = _found(doctor, patient_id=str(headers[0].PatientID))[0]
    return headers, _check_retrieved(_retrieved(doctor, answer), headers)


def test_a_result_goes_back_to_the_pacs_with_the_hospitals_patient_id_and_study_uid(
        store, orthanc, archive, pacs_files):
    headers, study = _retrieved_here(orthanc, pacs_files, patient=0)
    uid = _result_pdf(study)
    assert PacsSend.objects.get().state == JobState.QUEUED
    call_command("pacs_worker", "--once")
    assert PacsSend.objects.get().state == JobState.DONE
    tags = archive.instance_tags(uid)
    assert tags["PatientID"] == str(headers[0].PatientID)
    assert tags["PatientName"] == str(headers[0].PatientName)
    assert tags["StudyInstanceUID"] == str(headers[0].StudyInstanceUID)
    assert tags["AccessionNumber"] == str(headers[0].get("AccessionNumber", ""))
    assert tags["StudyDate"] == str(headers[0].StudyDate)
    stored = pydicom.dcmread(io.BytesIO(storage.object_get(Instance.objects.get(
        sop_instance_uid=uid).object_id)))
    assert str(stored.PatientID) != str(headers[0].PatientID)  # the stored copy stays pseudonymised
    before = (str(stored.SOPInstanceUID), str(stored.StudyInstanceUID), str(stored.PatientID))
    restored = reidentified(stored, study_uid=study.study_instance_uid, pseudonym=study.patient.pseudonym)
    assert str(restored.StudyInstanceUID) == str(headers[0].StudyInstanceUID)
    assert (str(stored.SOPInstanceUID), str(stored.StudyInstanceUID), str(stored.PatientID)) == before
    assert [json.loads(e.details)["objects"] for e in _events("pacs.send")] == [1]


def test_a_pacs_down_keeps_the_result_queued_and_it_is_delivered_after_the_restart(
        store, orthanc, archive, pacs_files):
    headers, study = _retrieved_here(orthanc, pacs_files, patient=1)
    archive.stop()
    uid = _result_pdf(study)
    assert sends_drain() == 0
    waiting = PacsSend.objects.get()
    assert waiting.state == JobState.QUEUED and waiting.attempts == 1 and "127.0.0.1" in waiting.last_error
    assert waiting.next_attempt_at > waiting.queued_at
    assert sends_drain() == 0 and PacsSend.objects.get().attempts == 1  # backing off: not due yet
    archive.start()
    assert sends_retry_now(destination=waiting.destination) == 1
    assert sends_drain() == 1
    assert archive.instance_tags(uid)["PatientID"] == str(headers[0].PatientID)
    assert [e.outcome for e in _events("pacs.send")] == ["failure", "success"]


def test_the_worklist_merges_the_pacs_and_marks_where_each_study_is(client, signed_in, store, orthanc,
                                                                    pacs_files):
    paths, _ = pacs_files
    _register(orthanc)
    doctor = _doctor("dr.merge")
    here = _study_of(paths, 0)
    _check_retrieved(_retrieved(doctor, _found(doctor, patient_id=str(here[0].PatientID))[0]), here)
    signed_in("doctor")
    page = client.get(reverse("imaging:worklist"), {"date_from": "2000-01-01"})
    assert page.status_code == 200
    rows = {row.patient_id: row for row in page.context["rows"]}
    local = rows[str(here[0].PatientID)].studies
    assert [(s.remote_id, s.in_pacs) for s in local] == [(None, True)]
    other = _study_of(paths, 1)
    remote = rows[str(other[0].PatientID)].studies
    assert len(remote) == 1 and remote[0].remote_id and remote[0].instance_count == len(other)
    text = page.content.decode()
    assert "in PACS" in text and "Retrieve and open" in text and "also in PACS" in text

    answer = client.post(reverse("imaging:retrieve"), {"remote": remote[0].remote_id})
    assert answer.status_code == 302
    progress = client.get(answer["Location"] + "?format=json").json()
    assert progress["state"] == "queued" and progress["viewable"] is False
    assert progress["study"] == uid_replacement_of(str(other[0].StudyInstanceUID))


def _prior(paths: list[Path], folder: Path, *, modality: str, days_before: int, count: int) -> list[Path]:
    """``count`` images of patient 0's ``modality`` series re-made as an earlier study of that patient."""
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    written = []
    for path in [p for p, ds in zip(paths, _headers(paths), strict=True)
                 if ds.PatientID == _study_of(paths, 0)[0].PatientID and ds.Modality == modality][:count]:
        ds = pydicom.dcmread(path)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        day = dt.datetime.strptime(ds.StudyDate, "%Y%m%d") - dt.timedelta(days=days_before)  # noqa: DTZ007
        ds.StudyDate = ds.SeriesDate = day.strftime("%Y%m%d")
        ds.AccessionNumber = f"PRIOR{days_before}"
        written.append(folder / f"{modality}{days_before}_{len(written)}.dcm")
        ds.save_as(written[-1])
    return written


def test_opening_a_study_prefetches_its_newest_prior_of_the_same_modality_once(
        store, pacs_files, tmp_path, settings):
    paths, _ = pacs_files
    patient = _study_of(paths, 0)[0].PatientID
    own = [p for p, ds in zip(paths, _headers(paths), strict=True) if ds.PatientID == patient]
    ct_prior = _prior(paths, tmp_path / "priors", modality="CT", days_before=30, count=4)
    pet_prior = _prior(paths, tmp_path / "priors", modality="PT", days_before=10, count=4)
    older_pet = _prior(paths, tmp_path / "priors", modality="PT", days_before=90, count=4)
    orthanc = orthanc_start(tmp_path / "pacs", modalities={"gateway": [GATEWAY_AE, "127.0.0.1", free_port()]})
    try:
        orthanc.load(own + ct_prior + pet_prior + older_pet)
        _register(orthanc)
        settings.IMAGING_PACS_PREFETCH_PRIORS = 1
        doctor = _doctor()
        headers = _study_of(paths, 0)
        current = _found(doctor, patient_id=str(patient), accession=str(headers[0].AccessionNumber))
        _check_retrieved(_retrieved(doctor, current[0]), headers)
        call_command("pacs_worker", "--once")
        call_command("pacs_worker", "--once")
    finally:
        orthanc.stop()
    prefetched = Retrieval.objects.filter(reason="prefetch")
    expected = {uid_replacement_of(str(pydicom.dcmread(pet_prior[0]).StudyInstanceUID))}
    assert {r.study_instance_uid for r in prefetched} == expected
    assert [r.state for r in prefetched] == [JobState.DONE]
    assert Study.objects.filter(study_instance_uid__in=expected).exists()
    assert Study.objects.count() == 2
    assert all(s.priors_checked_at for s in Study.objects.filter(study_instance_uid=uid_replacement_of(
        str(headers[0].StudyInstanceUID))))


def test_a_dicomweb_pacs_is_searched_with_qido_retrieved_with_wado_and_sent_results_with_stow(
        store, pacs_files, tmp_path):
    paths, _ = pacs_files
    headers = _study_of(paths, 0)
    orthanc = orthanc_start(tmp_path / "web", dicomweb=True,
                            modalities={"gateway": [GATEWAY_AE, "127.0.0.1", free_port()]})
    try:
        orthanc.load([p for p, ds in zip(paths, _headers(paths), strict=True)
                      if ds.PatientID == headers[0].PatientID])
        destination_register(name="WEB", ae_title=ORTHANC_AE, host="127.0.0.1", port=orthanc.dicom_port,
                             actor="cli:it", retrieve="wado-rs", send_results=True,
                             dicomweb_url=orthanc.dicomweb_url + "/")
        assert destination_echo(name="WEB", actor="cli:it") == ""
        doctor = _doctor()
        family = str(headers[0].PatientName).split("^")[0]
        answers = _found(doctor, name=family, date_from=dt.datetime.strptime(  # noqa: DTZ007
            headers[0].StudyDate, "%Y%m%d").date())
        assert [a.original_study_instance_uid for a in answers] == [str(headers[0].StudyInstanceUID)]
        assert answers[0].instance_count == len(headers)
        study = _check_retrieved(_retrieved(doctor, answers[0]), headers)
        assert json.loads(_events("ingest")[-1].details)["door"] == "wado-rs"
        uid = _result_pdf(study)
        assert sends_drain() == 1
        tags = orthanc.instance_tags(uid)
        assert tags["PatientID"] == str(headers[0].PatientID)
        assert tags["StudyInstanceUID"] == str(headers[0].StudyInstanceUID)
    finally:
        orthanc.stop()


def test_a_dicomweb_peer_must_retrieve_with_wado_and_a_bad_url_is_refused(store):
    from imaging.report_settings import ReportSettingError

    for url, method in (("http://127.0.0.1:1/dicom-web", "c-get"), ("", "wado-rs"),
                        ("file:///etc/passwd", "wado-rs"), ("http://user:pw@pacs/dicom-web", "wado-rs")):
        with pytest.raises(ReportSettingError):
            destination_register(name="X", ae_title="X", host="127.0.0.1", port=104, actor="cli:it",
                                 retrieve=method, dicomweb_url=url)


class _Hostile(http.server.BaseHTTPRequestHandler):
    """A DICOMweb 'PACS' that answers garbage, or far more than was asked."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.end_headers()
        if "PatientID=garbage" in self.path:
            self.wfile.write(b"<html>not json</html>")
        else:
            self.wfile.write(b"[" + b'{"00100020": {"vr": "LO", "Value": ["X"]}},' * 5000 + b"{}]")

    def log_message(self, *args) -> None:
        pass


def test_a_pacs_that_is_down_or_answers_garbage_is_named_quickly_and_read_within_bounds(store, monkeypatch):
    import time

    from imaging import dicomweb_client

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hostile)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        destination_register(name="WEIRD", ae_title="WEIRD", host="127.0.0.1", port=104, actor="cli:it",
                             retrieve="wado-rs", dicomweb_url=f"http://127.0.0.1:{server.server_port}/dw")
        down = free_port()
        destination_register(name="DOWN", ae_title="DOWN", host="127.0.0.1", port=down, actor="cli:it",
                             retrieve="c-get")
        doctor = _doctor()
        started = time.monotonic()
        answers, problems = pacs_search(principal=doctor, criteria=Criteria(patient_id="garbage"))
        assert time.monotonic() - started < 10
        assert answers == []
        assert any(p.startswith("WEIRD: ") and "not DICOM JSON" in p for p in problems), problems
        assert any(p.startswith("DOWN: ") and f"127.0.0.1:{down}" in p for p in problems), problems
        monkeypatch.setattr(dicomweb_client, "JSON_LIMIT", 10_000)
        _, problems = pacs_search(principal=doctor, criteria=Criteria(patient_id="many"))
        assert any("more than" in p for p in problems if p.startswith("WEIRD: ")), problems
        assert [e.outcome for e in _events("pacs.query")] == ["failure"] * 4
    finally:
        server.shutdown()


def test_a_silent_workers_retrieval_is_taken_over_and_a_withdrawn_peer_cancels_its_sends(store):
    from datetime import timedelta

    from django.utils import timezone

    from imaging.models import DicomDestination
    from imaging.report_settings import destination_withdraw

    source = DicomDestination.objects.create(name="PACS", ae_title="PACS", host="127.0.0.1", port=104,
                                             retrieve="c-get", registered_by="test")
    silent = Retrieval.objects.create(source=source, remote_study=1, study_instance_uid="2.25.1",
                                      pseudonym="p", method="c-get", requested_by="test",
                                      state=JobState.RUNNING,
                                      heartbeat_at=timezone.now() - timedelta(minutes=3))
    busy = Retrieval.objects.create(source=source, remote_study=2, study_instance_uid="2.25.2",
                                    pseudonym="p", method="c-get", requested_by="test",
                                    state=JobState.RUNNING, heartbeat_at=timezone.now())
    claimed = retrieval_claim()
    assert claimed is not None and claimed.pk == silent.pk
    assert retrieval_claim() is None  # the other one's worker is alive; the silent one is claimed
    busy.refresh_from_db()
    assert busy.state == JobState.RUNNING

    archive = DicomDestination.objects.create(name="ARCHIVE", ae_title="A", host="127.0.0.1", port=104,
                                              send_results=True, registered_by="test")
    send = PacsSend.objects.create(destination=archive, sop_instance_uid="2.25.9",
                                   study_instance_uid="2.25.1", next_attempt_at=timezone.now())
    destination_withdraw(name="ARCHIVE", actor="cli:it")
    assert sends_drain() == 0
    send.refresh_from_db()
    assert send.state == JobState.CANCELLED and "withdrawn" in send.last_error
