"""The ingest service: validation, the identity/clinical split, idempotence, no leaks."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from django.db import connections
from pydicom.data import get_testdata_file, get_testdata_files

from gateway.audit.models import AuditEvent
from imaging import storage
from imaging.identity.models import PatientDateShift, PatientIdentity, StudyIdentity, UIDMap
from imaging.models import Instance, Patient, Series, Study, VolumeState
from imaging.services import IngestBatch, Reason, Status, instance_ingest, patient_pseudonym
from imaging.volumes import load_volume
from tests.conftest import ZONES
from tests.imaging.conftest import PHANTOM_SLICES, phantom_files
from tests.leaks import clinical_rows, identifying_strings

pytestmark = pytest.mark.django_db(databases=ZONES, transaction=True)


def _ingest_all(paths, door="import"):
    batch = IngestBatch(actor="cli:test", door=door)
    outcomes = [(path, batch.ingest(Path(path).read_bytes())) for path in paths]
    batch.close()
    return outcomes


def test_phantom_is_stored_split_and_audited(store, phantom):
    out, truth = phantom
    outcomes = _ingest_all(phantom_files(out))
    assert {o.status for _, o in outcomes} == {Status.STORED}
    assert Instance.objects.count() == 2 * (PHANTOM_SLICES + PHANTOM_SLICES // 2)
    assert Patient.objects.count() == 2 and Study.objects.count() == 2 and Series.objects.count() == 4
    for patient in truth["patients"]:
        who = patient["identity"]
        identity = PatientIdentity.objects.get(patient_id=who["patient_id"])
        assert identity.pseudonym == patient_pseudonym(issuer=who["issuer_of_patient_id"],
                                                       patient_id=who["patient_id"])
        assert identity.patient_name == who["patient_name"]
        assert identity.patient_address == who["address"]
        study = StudyIdentity.objects.get(original_study_instance_uid=patient["study_instance_uid"])
        assert study.accession_number == who["accession_number"]
        assert study.referring_physician_name == who["referring_physician"]
        assert Study.objects.get(study_instance_uid=study.study_instance_uid).patient.pseudonym \
            == identity.pseudonym
        assert UIDMap.objects.get(original=patient["ct_series_instance_uid"]).replacement == \
            Series.objects.get(study__study_instance_uid=study.study_instance_uid,
                               modality="CT").series_instance_uid
        assert PatientDateShift.objects.get(pseudonym=identity.pseudonym).days < -365
    assert set(Series.objects.values_list("volume_state", flat=True)) == {VolumeState.READY}
    events = AuditEvent.objects.using("audit").filter(action="ingest", outcome="success")
    assert events.count() == 2
    assert {e.patient_pseudonym for e in events} == set(Patient.objects.values_list("pseudonym", flat=True))


def test_stored_object_is_de_identified_and_references_hold(store, phantom):
    out, _ = phantom
    _ingest_all(phantom_files(out)[:3])
    instance = Instance.objects.first()
    ds = pydicom.dcmread(io.BytesIO(storage.object_get(instance.object_id)))
    assert ds.PatientIdentityRemoved == "YES"
    assert ds.DeidentificationMethodCodeSequence[0].CodeValue == "113100"
    assert ds.SOPInstanceUID == instance.sop_instance_uid == ds.file_meta.MediaStorageSOPInstanceUID
    assert ds.StudyInstanceUID == instance.series.study.study_instance_uid
    assert all(len(str(v)) <= 64 for v in (ds.SOPInstanceUID, ds.StudyInstanceUID,
                                            ds.SeriesInstanceUID, ds.FrameOfReferenceUID))
    assert ds.PatientID == instance.series.study.patient.pseudonym


def test_duplicate_sop_instance_is_idempotent(store, phantom):
    out, _ = phantom
    files = phantom_files(out)[:5]
    _ingest_all(files)
    objects = storage.storage_objects()
    again = _ingest_all(files)
    assert {o.status for _, o in again} == {Status.DUPLICATE}
    assert Instance.objects.count() == 5 and storage.storage_objects() == objects


def test_pet_suvmax_at_each_lesion_after_ingest_matches_truth(store, phantom):
    out, truth = phantom
    _ingest_all(phantom_files(out))
    for patient in truth["patients"]:
        study = StudyIdentity.objects.get(original_study_instance_uid=patient["study_instance_uid"])
        series = Series.objects.get(study__study_instance_uid=study.study_instance_uid, modality="PT")
        volume = load_volume(series)
        suv = volume.voxels.astype(np.float64) * volume.suv_factor
        points = volume.index_to_patient(np.indices(volume.voxels.shape).reshape(3, -1).T)
        for lesion in patient["lesions"]:
            distance = np.linalg.norm(points - np.array(lesion["center_mm"]), axis=1)
            measured = suv.ravel()[distance <= lesion["radius_mm"]].max()
            assert measured == pytest.approx(lesion["suv_max"], rel=0.02), lesion


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_rejections_have_clear_reasons_and_store_nothing(store, phantom, tmp_path, settings):
    out, _ = phantom
    good = phantom_files(out)[0].read_bytes()
    no_uid = pydicom.dcmread(phantom_files(out)[1])
    del no_uid.StudyInstanceUID
    buffer = io.BytesIO()
    no_uid.save_as(buffer)
    broken_jpeg = pydicom.dcmread(get_testdata_file("JPEG2000.dcm"))
    broken_jpeg.PixelData = broken_jpeg.PixelData[:200] + b"\0" * 200 + broken_jpeg.PixelData[400:]
    broken = io.BytesIO()
    broken_jpeg.save_as(broken)
    cases = {
        "text": (b"hello, this is not DICOM at all" * 10, Reason.NOT_DICOM),
        "truncated": (good[: len(good) // 2], Reason.TRUNCATED),
        "missing uid": (buffer.getvalue(), Reason.MISSING_UID),
        "undecodable": (broken.getvalue(), Reason.UNDECODABLE),
        "not an image": (Path(get_testdata_file("rtplan.dcm")).read_bytes(), Reason.NOT_IMAGE),
    }
    for label, (data, reason) in cases.items():
        outcome = instance_ingest(data=data)
        assert (outcome.status, outcome.reason) == (Status.REJECTED, reason), (label, outcome)
        assert outcome.detail
    settings.IMAGING_MAX_OBJECT_BYTES = 1000
    assert instance_ingest(data=good).reason == Reason.OVERSIZE
    assert Instance.objects.count() == 0 and storage.storage_objects() == []


def test_compressed_transfer_syntaxes_are_accepted():
    for name in ("JPEG2000.dcm", "MR_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEG-LL.dcm"):
        path = get_testdata_file(name)
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID.is_compressed
        assert ds.pixel_array.size > 0, name


def test_corpus_stored_or_rejected_and_no_identifying_string_reaches_the_clinical_side(
        store, phantom, tmp_path):
    """Phantom + every pydicom/pydicom-data test file: each stored or rejected with a reason;
    then every clinical and audit row and every decrypted stored byte is searched for every
    identifying string of the input (5 characters or more): zero hits."""
    out, truth = phantom
    corpus = [Path(p) for p in get_testdata_files("**/*") if os.path.isfile(p)]
    assert len(corpus) > 150, "pydicom-data is not installed"
    outcomes = _ingest_all([*phantom_files(out), *corpus])
    statuses = {o.status for _, o in outcomes}
    assert Status.STORED in statuses and Status.REJECTED in statuses
    for path, outcome in outcomes:
        assert outcome.status is not Status.REJECTED or (outcome.reason and outcome.detail), path
        assert outcome.reason != Reason.INTERNAL, (path, outcome.detail)
    stored = sum(o.status is Status.STORED for _, o in outcomes)
    assert stored >= 100 + 60

    secrets = identifying_strings([*phantom_files(out), *corpus], truth)
    assert len(secrets) > 100
    haystacks = {"rows": clinical_rows()}
    for object_id in storage.storage_objects():
        haystacks[object_id] = storage.object_get(object_id).decode("latin-1")
    hits = [(where, secret) for where, text in haystacks.items() for secret in secrets if secret in text]
    summary = sorted({secret for _, secret in hits})
    assert summary == [], (len(hits), summary[:80], sorted({w for w, _ in hits})[:5])
    assert Series.objects.filter(pixels_may_identify=True).exists()


def test_identity_database_holds_the_identity(store, phantom):
    out, truth = phantom
    _ingest_all(phantom_files(out)[:2])
    with connections["identity"].cursor() as cursor:
        cursor.execute("SELECT patient_name FROM identity_patientidentity")
        names = {row[0] for row in cursor.fetchall()}
    assert names & {truth["patients"][0]["identity"]["patient_name"],
                    truth["patients"][1]["identity"]["patient_name"]}


def test_the_leak_search_finds_what_a_broken_profile_would_leak(store, phantom, monkeypatch):
    """Guard for the leak test itself: with de-identification switched off it must find hits."""
    from imaging import deid

    out, truth = phantom
    monkeypatch.setattr(deid.Deidentifier, "clean", lambda self, dataset, **_: None)
    paths = phantom_files(out)[:1]
    _ingest_all(paths)
    secrets = identifying_strings(paths, truth)
    stored = "".join(storage.object_get(o).decode("latin-1") for o in storage.storage_objects())
    assert truth["patients"][0]["identity"]["patient_name"] in secrets
    assert any(secret in stored for secret in secrets)
