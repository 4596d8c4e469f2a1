"""Raw import: NIfTI, NRRD and MetaImage volumes as DICOM through ingest, geometry and values kept.

Every expectation about geometry is computed here from SimpleITK's reading of the
source (or, for NIfTI's RAS, from the affine written by hand), never from the
code under test; the built volume is read back through the normal volume path.
"""

from __future__ import annotations

import getpass
import io
import json
import struct
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.urls import reverse

from gateway.audit.models import AuditEvent
from imaging import storage
from imaging.identity.models import PatientIdentity, StudyIdentity
from imaging.models import Instance, Patient, Series, Study, VolumeState
from imaging.raw_import import (
    CommandOperator,
    NewStudy,
    RawImportRefused,
    SeriesFacts,
    raw_format_of,
    raw_volume_import,
    raw_volume_read,
)
from imaging.services import IngestBatch
from imaging.volumes import load_volume
from tests.leaks import clinical_rows

ZONES = ["default", "identity", "audit"]
pytestmark = pytest.mark.django_db(databases=ZONES, transaction=True)

PATIENT = {"patient_name": "Quaglietti^Ottavia", "patient_id": "RAW-7741-QX",
           "issuer_of_patient_id": "HOSP-RAW",
           "birth_date": "1961-04-27", "sex": "F", "study_description": "Parametric maps",
           "study_date": "2025-03-14"}
OPERATOR = CommandOperator("tests")


# --- sources -----------------------------------------------------------------------------------


def _rotation(axis: tuple[float, float, float], angle: float) -> np.ndarray:
    """A proper rotation (det +1) about ``axis``: a direction that is not the identity, nor axis-aligned."""
    u = np.asarray(axis, dtype=np.float64)
    u /= np.linalg.norm(u)
    cross = np.array([[0, -u[2], u[1]], [u[2], 0, -u[0]], [-u[1], u[0], 0]])
    return np.cos(angle) * np.eye(3) + np.sin(angle) * cross + (1 - np.cos(angle)) * np.outer(u, u)


def _values(shape: tuple[int, int, int], *, seed: int = 3) -> np.ndarray:
    """Negative and fractional values with structure (a ramp) and noise, [k, j, i]."""
    k, j, i = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    noise = np.random.default_rng(seed).normal(scale=40.0, size=shape)
    return (-612.375 + 9.7 * i - 4.3 * j + 31.1 * k + noise).astype(np.float32)


def _source(values: np.ndarray, *, spacing=(0.82, 1.37, 2.6), origin=(-41.5, 12.25, 87.0),
            direction: np.ndarray | None = None) -> sitk.Image:
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple((direction if direction is not None
                              else _rotation((0.3, -0.5, 0.8), 0.61)).reshape(-1)))
    return image


def _written(tmp_path: Path, image: sitk.Image, name: str) -> Path:
    path = tmp_path / name
    sitk.WriteImage(image, str(path))
    return path


def _nifti_by_hand(path: Path, values: np.ndarray, affine_ras: np.ndarray) -> None:
    """A NIfTI-1 file written from its specification (sform, RAS), not by SimpleITK."""
    header = bytearray(348)
    struct.pack_into("<i", header, 0, 348)
    nz, ny, nx = values.shape
    struct.pack_into("<8h", header, 40, 3, nx, ny, nz, 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, 16, 32)  # float32
    spacing = np.linalg.norm(affine_ras[:3, :3], axis=0)
    struct.pack_into("<8f", header, 76, 1.0, *spacing, 1.0, 1.0, 1.0, 1.0)
    struct.pack_into("<f", header, 108, 352.0)  # vox_offset
    struct.pack_into("<ff", header, 112, 1.0, 0.0)  # scl_slope, scl_inter
    header[123] = 2  # millimetres
    struct.pack_into("<hh", header, 252, 0, 1)  # qform_code 0, sform_code 1 (scanner)
    for row in range(3):
        struct.pack_into("<4f", header, 280 + 16 * row, *affine_ras[row])
    header[344:348] = b"n+1\0"
    path.write_bytes(bytes(header) + bytes(4) + values.astype("<f4").tobytes())


# --- reading back --------------------------------------------------------------------------------


def _index_of(volume, point) -> tuple[int, int, int]:
    """The built volume's voxel at a patient point, by origin + direction . (spacing x index)."""
    scaled = np.asarray(volume.direction) * np.asarray(volume.spacing[::-1])  # columns i, j, k
    found = np.linalg.solve(scaled, np.asarray(point, dtype=np.float64) - np.asarray(volume.origin))
    index = np.rint(found)
    assert np.allclose(found, index, atol=1e-3), found
    i, j, k = (int(v) for v in index)
    where = np.asarray(volume.origin) + scaled @ np.array([i, j, k], dtype=np.float64)
    np.testing.assert_allclose(where, point, atol=1e-3)
    return i, j, k


def _assert_same_volume(volume, source: sitk.Image, *, tolerance: float) -> None:
    """Every sampled voxel: same patient position, same value (within ``tolerance``)."""
    size = source.GetSize()
    assert tuple(volume.voxels.shape) == (size[2], size[1], size[0])
    samples = [(0, 0, 0), (size[0] - 1, size[1] - 1, size[2] - 1), (size[0] // 2, 3, size[2] - 2),
               (1, size[1] - 2, 1), (size[0] - 3, size[1] // 3, size[2] // 2)]
    for index in samples:
        point = source.TransformIndexToPhysicalPoint(index)
        i, j, k = _index_of(volume, point)
        assert abs(float(volume.voxels[k, j, i]) - float(source[index])) <= tolerance, (index, (i, j, k))
    source_values = sitk.GetArrayFromImage(source).astype(np.float64)
    if np.linalg.det(np.asarray(volume.direction)) > 0:  # same index order: compare every voxel
        assert float(np.abs(np.asarray(volume.voxels, dtype=np.float64) - source_values).max()) <= tolerance


def _step(values: np.ndarray) -> float:
    """Half a 16-bit rescale step over the values' range, plus float32 rounding."""
    return (float(values.max()) - float(values.min())) / 65534 / 2 + 1e-3


def _post(client, path: Path, *, name: str | None = None, **fields):
    data = {"target": "new", "modality": "CT", "series_description": "T1 map", **fields,
            "volume": SimpleUploadedFile(name or path.name, path.read_bytes())}
    return client.post(reverse("imaging:raw_import"), data)


def _stored(series: Series) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(io.BytesIO(storage.object_get(object_id)))
            for object_id in Instance.objects.filter(series=series).values_list("object_id", flat=True)]


def _ingest_events(outcome: str) -> list[dict]:
    return [json.loads(e.details) | {"_actor": e.actor, "_study": e.study}
            for e in AuditEvent.objects.using("audit").filter(action="ingest", outcome=outcome)
            .order_by("sequence")]


# --- the page ------------------------------------------------------------------------------------


def test_a_doctor_imports_a_nifti_and_the_volume_keeps_values_and_geometry(client, signed_in, store,
                                                                            tmp_path):
    signed_in("doctor")
    values = _values((14, 22, 26))
    source = _source(values)
    path = _written(tmp_path, source, "ottavia_quaglietti_t1.nii.gz")
    started = time.monotonic()
    response = _post(client, path, **PATIENT)
    assert response.status_code == 200, response.context["error"] or response.context["form"].errors
    result = response.context["result"]
    assert result is not None and result.volume_state == VolumeState.READY, result
    assert result.format == "NIfTI" and result.slices == 14 and result.instances == 14
    assert time.monotonic() - started < 60
    assert reverse("rendering:viewer", args=[result.study_uid]) in response.content.decode()

    series = Series.objects.get(series_instance_uid=result.series_uid)
    assert series.modality == "CT" and series.study.study_instance_uid == result.study_uid
    reread = sitk.ReadImage(str(path))  # SimpleITK's own reading of the file is the reference
    _assert_same_volume(load_volume(series), reread, tolerance=_step(values))

    stored = _stored(series)
    assert {ds.SOPClassUID for ds in stored} == {pydicom.uid.CTImageStorage}
    first = stored[0]
    assert list(first.ImageType)[:2] == ["DERIVED", "SECONDARY"] and first.BurnedInAnnotation == "NO"
    assert "DerivationDescription" not in first  # named the file: removed at de-identification
    assert first.PatientIdentityRemoved == "YES"
    np.testing.assert_allclose([float(v) for v in first.PixelSpacing], [1.37, 0.82], rtol=1e-6)
    assert float(first.SliceThickness) == pytest.approx(2.6, rel=1e-6)
    event = _ingest_events("success")[-1]
    assert event["door"] == "raw-import" and event["stored"] == 14 and event["_actor"] == "doctor-user"


def test_simpleitk_gives_nifti_ras_as_dicom_lps(store, tmp_path):
    """An affine written by hand in NIfTI's RAS lands in DICOM's LPS: x and y negated."""
    values = _values((6, 9, 11), seed=5)
    ras = np.eye(4)
    ras[:3, :3] = _rotation((-0.2, 0.9, 0.4), 0.83) * np.array([0.9, 1.1, 3.0])
    ras[:3, 3] = [31.5, -17.25, 44.0]
    path = tmp_path / "by-hand.nii"
    _nifti_by_hand(path, values, ras)
    flip = np.diag([-1.0, -1.0, 1.0])

    volume = raw_volume_read(path=path, raw_format=raw_format_of(path.name))
    np.testing.assert_allclose(volume.origin, flip @ ras[:3, 3], atol=1e-4)
    np.testing.assert_allclose(volume.direction * volume.spacing, flip @ ras[:3, :3], atol=1e-4)

    result = raw_volume_import(principal=OPERATOR, path=path, filename=path.name,
                               study=NewStudy(patient_name="Hand^Written", patient_id="RAS-1"),
                               series=SeriesFacts("MR"))
    built = load_volume(Series.objects.get(series_instance_uid=result.series_uid))
    for index in [(0, 0, 0), (10, 8, 5), (4, 2, 3)]:
        lps = flip @ (ras @ np.array([*index, 1.0]))[:3]
        i, j, k = _index_of(built, lps)
        assert float(built.voxels[k, j, i]) == pytest.approx(float(values[index[::-1]]), abs=_step(values))


def test_nrrd_and_metaimage_import_too(client, signed_in, store, tmp_path):
    signed_in("doctor")
    signed = np.random.default_rng(11).integers(-1200, 3000, size=(9, 12, 10)).astype(np.int16)
    nrrd = _written(tmp_path, _source(signed, direction=_rotation((1, 0, 0), np.pi / 2)), "brain.nrrd")
    response = _post(client, nrrd, modality="MR", **PATIENT)
    assert response.status_code == 200, response.context["error"] or response.context["form"].errors
    mr = Series.objects.get(series_instance_uid=response.context["result"].series_uid)
    assert mr.volume_state == VolumeState.READY
    _assert_same_volume(load_volume(mr), sitk.ReadImage(str(nrrd)), tolerance=0)  # integers as they are
    assert {ds.SOPClassUID for ds in _stored(mr)} == {pydicom.uid.MRImageStorage}

    floats = _values((7, 8, 9), seed=13) / 100  # negative and fractional: unsigned 16 bits + rescale
    flipped = np.diag([1.0, -1.0, -1.0])  # a left-handed grid: the volume builder orders it itself
    mha = _written(tmp_path, _source(floats, direction=flipped, spacing=(2.0, 2.0, 3.5)), "map.mha")
    response = _post(client, mha, modality="OT", **PATIENT)
    assert response.status_code == 200, response.context["error"] or response.context["form"].errors
    other = Series.objects.get(series_instance_uid=response.context["result"].series_uid)
    assert other.volume_state == VolumeState.READY, other.volume_reason
    _assert_same_volume(load_volume(other), sitk.ReadImage(str(mha)), tolerance=_step(floats))
    (sc,) = _stored(other)
    assert sc.SOPClassUID == pydicom.uid.MultiFrameGrayscaleWordSecondaryCaptureImageStorage
    assert sc.NumberOfFrames == 7 and sc.PixelRepresentation == 0
    assert Patient.objects.count() == 1 and Study.objects.count() == 2  # one patient, a study per import


@pytest.fixture
def phantom_study(store, phantom):
    """One phantom patient's PET/CT study, ingested as a modality would send it."""
    out, truth = phantom
    batch = IngestBatch(actor="cli:test", door="import", build_volumes=False)
    for path in sorted((out / "patient_01").rglob("*.dcm")):
        batch.ingest(path.read_bytes())
    batch.close()
    study = Study.objects.get()
    return study, truth


def test_a_volume_joins_an_existing_study_with_its_pseudonym_and_frame(client, signed_in, phantom_study,
                                                                       tmp_path):
    study, truth = phantom_study
    ct = study.series.get(modality="CT")
    patients, identities = Patient.objects.count(), (PatientIdentity.objects.count(),
                                                     StudyIdentity.objects.count())
    signed_in("doctor")
    values = _values((5, 16, 16), seed=17)
    path = _written(tmp_path, _source(values), "registered.nii")
    response = _post(client, path, target="existing", study=study.study_instance_uid,
                     frame_of_reference_series=ct.series_instance_uid, modality="PT")
    assert response.status_code == 200, response.context["error"] or response.context["form"].errors
    result = response.context["result"]
    assert result.study_uid == study.study_instance_uid
    assert result.pseudonym == study.patient.pseudonym
    assert (Patient.objects.count(), (PatientIdentity.objects.count(), StudyIdentity.objects.count())) == (
        patients, identities)
    joined = Series.objects.get(series_instance_uid=result.series_uid)
    assert joined.study_id == study.pk and joined.frame_of_reference_uid == ct.frame_of_reference_uid
    assert joined.series_number == max(s.series_number or 0 for s in study.series.exclude(pk=joined.pk)) + 1
    (stored,) = _stored(joined)
    assert stored.PatientID == study.patient.pseudonym  # de-identified like every object
    assert stored.StudyInstanceUID == study.study_instance_uid
    volume_object = storage.object_get(joined.volume_object).decode("latin-1")
    assert truth["patients"][0]["identity"]["patient_id"] not in volume_object


def test_the_command_imports_into_a_new_and_an_existing_study(store, tmp_path):
    values = _values((4, 6, 7), seed=19)
    path = _written(tmp_path, _source(values), "cmd.mha")
    out = io.StringIO()
    call_command("import_raw", str(path), "--patient-id", "CMD-1", "--patient-name", "Cmd^Line",
                 "--birth-date", "1970-01-02", "--modality", "CT", stdout=out)
    assert "imported MetaImage: 4 slices as 4 instance(s)" in out.getvalue()
    study = Study.objects.get()
    call_command("import_raw", str(path), "--study", study.study_instance_uid, "--modality", "MR", stdout=out)
    assert Study.objects.count() == 1 and study.series.count() == 2
    assert {e["_actor"] for e in _ingest_events("success")} == {f"cli:{getpass.getuser()}"}


# --- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ["nurse", "auditor"])
def test_a_nurse_or_auditor_is_refused_and_the_refusal_audited(client, signed_in, store, tmp_path, role):
    signed_in(role)
    path = _written(tmp_path, _source(_values((3, 4, 5))), "x.nii.gz")
    assert client.get(reverse("imaging:raw_import")).status_code == 403
    response = _post(client, path, **PATIENT)
    assert response.status_code == 403
    denied = [e for e in _ingest_events("denied") if e.get("permission") == "study.import_raw"]
    assert len(denied) == 2 and denied[-1]["_actor"] == f"{role}-user"
    assert Instance.objects.count() == 0


def test_a_forged_study_is_the_same_not_found_as_a_forbidden_one(client, signed_in, phantom_study, tmp_path):
    study, _ = phantom_study
    signed_in("it_admin")  # may import, may not open a study
    path = _written(tmp_path, _source(_values((3, 4, 5))), "x.nii.gz")
    forbidden = _post(client, path, target="existing", study=study.study_instance_uid)
    forged = _post(client, path, target="existing", study="2.25.99999999999999")
    assert forbidden.status_code == forged.status_code == 404
    assert forbidden.content == forged.content
    events = _ingest_events("denied")[-2:]
    assert [e["_study"] for e in events] == [study.study_instance_uid, "2.25.99999999999999"]
    assert [{k: v for k, v in e.items() if k != "_study"} for e in events] == [
        {"door": "raw-import", "reason": "study not found", "_actor": "it_admin-user"}] * 2
    assert study.series.count() == 2


def test_it_admin_imports_a_new_study_but_gets_no_viewer_link(client, signed_in, store, tmp_path):
    signed_in("it_admin")
    response = _post(client, _written(tmp_path, _source(_values((3, 4, 5))), "x.nii.gz"), **PATIENT)
    assert response.status_code == 200 and response.context["result"].volume_state == VolumeState.READY
    assert not response.context["opens"] and "/viewer/" not in response.content.decode()


def _mha_header(**fields: str) -> bytes:
    lines = {"ObjectType": "Image", "NDims": "3", "DimSize": "2 2 2", "ElementType": "MET_SHORT",
             "ElementSpacing": "1 1 1", "Offset": "0 0 0", "TransformMatrix": "1 0 0 0 1 0 0 0 1", **fields}
    data_file = lines.pop("ElementDataFile", "LOCAL")
    return ("\n".join(f"{k} = {v}" for k, v in lines.items()) + f"\nElementDataFile = {data_file}\n").encode()


def _truncated(path: Path) -> None:
    values = np.random.default_rng(23).integers(1, 1000, size=(16, 32, 32)).astype(np.int16)
    sitk.WriteImage(sitk.GetImageFromArray(values), str(path), True)
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) * 2 // 3])


@pytest.mark.parametrize(("name", "make", "code"), [
    ("four-d.nii.gz", lambda p: sitk.WriteImage(sitk.Image([4, 4, 3, 2], sitk.sitkFloat32), str(p)),
     "not-3d"),
    ("vector.nrrd", lambda p: sitk.WriteImage(sitk.Image([4, 4, 3], sitk.sitkVectorFloat32, 3), str(p)),
     "vector"),
    ("complex.mha", lambda p: sitk.WriteImage(sitk.Image([4, 4, 3], sitk.sitkComplexFloat32), str(p)),
     "vector"),  # two values per voxel to ITK
    ("sheared.mha", lambda p: p.write_bytes(_mha_header(TransformMatrix="1 0 0 0.4 1 0 0 0 1") + bytes(16)),
     "not-orthonormal"),
    ("elsewhere.mha", lambda p: p.write_bytes(_mha_header(ElementDataFile="/etc/hostname")),
     "detached-header"),
    ("elsewhere.nrrd", lambda p: p.write_bytes(b"NRRD0004\ntype: short\ndimension: 3\nsizes: 2 2 2\n"
                                               b"encoding: raw\ndata file: /etc/hostname\n\n"),
     "detached-header"),
    ("garbage.nii", lambda p: p.write_bytes(b"not a volume at all" * 40), "unreadable"),
    # ITK's NIfTI reader fills a short file with zeros, silently; NRRD's and MetaImage's fail.
    ("truncated.nii", lambda p: _truncated(p), "unreadable"),
    ("truncated.nii.gz", lambda p: _truncated(p), "unreadable"),
    ("truncated.nrrd", lambda p: _truncated(p), "unreadable"),
    ("truncated.mha", lambda p: _truncated(p), "unreadable"),
    # 1e13 + 1/3 needs 17 digits: a 16-character DS offset loses 0.03 of a range of 1.
    ("narrow.nii", lambda p: sitk.WriteImage(sitk.GetImageFromArray(
        1e13 + 1 / 3 + np.linspace(0, 1, 60).reshape(3, 4, 5)), str(p)), "precision"),
    ("nan.mha", lambda p: sitk.WriteImage(sitk.GetImageFromArray(
        np.array([np.nan, 1, 2, 3, 4, 5, 6, 7], dtype=np.float32).reshape(2, 2, 2)), str(p)), "not-finite"),
    ("volume.hdr", lambda p: p.write_bytes(b"x"), "unsupported-format"),
    ("volume.mhd", lambda p: p.write_bytes(b"x"), "detached-header"),
])
def test_what_cannot_be_written_as_dicom_slices_is_refused_and_audited(store, tmp_path, name, make, code):
    path = tmp_path / name
    make(path)
    with pytest.raises(RawImportRefused) as refused:
        raw_volume_import(principal=OPERATOR, path=path, filename=name,
                          study=NewStudy(patient_name="No^Body", patient_id="REF-1"),
                          series=SeriesFacts("OT"))
    assert refused.value.code == code, refused.value.message
    assert Instance.objects.count() == 0 and PatientIdentity.objects.count() == 0
    assert _ingest_events("failure")[-1]["reason"] == code
    assert name not in json.dumps(_ingest_events("failure"))  # the file's name is never audited


def test_a_volume_over_the_object_limit_is_refused_on_its_header(store, tmp_path, settings):
    settings.IMAGING_MAX_OBJECT_BYTES = 64 * 64 * 32 * 4 - 1
    path = tmp_path / "big.nii.gz"
    sitk.WriteImage(sitk.Image([64, 64, 32], sitk.sitkInt16), str(path))  # a few KiB compressed
    with pytest.raises(RawImportRefused) as refused:
        raw_volume_import(principal=OPERATOR, path=path, filename=path.name,
                          study=NewStudy(patient_name="Big^Volume", patient_id="BIG-1"),
                          series=SeriesFacts("CT"))
    assert refused.value.code == "too-large" and "GATEWAY_MAX_OBJECT_BYTES" in refused.value.message


def test_a_refusal_is_shown_on_the_page_and_the_upload_removed(client, signed_in, store, tmp_path, settings):
    settings.IMAGING_RAW_IMPORT_SPOOL_DIR = tmp_path / "spool"
    signed_in("doctor")
    vector = tmp_path / "rgb.nrrd"
    sitk.WriteImage(sitk.Image([4, 4, 3], sitk.sitkVectorUInt8, 3), str(vector))
    response = _post(client, vector, **PATIENT)
    assert response.status_code == 422
    assert "only scalar volumes are imported" in response.content.decode()
    wrong = _post(client, vector, name="rgb.png", **PATIENT)
    assert wrong.status_code == 400 and "Not a NIfTI, NRRD or MetaImage file name" in wrong.content.decode()
    assert list((tmp_path / "spool").iterdir()) == []


def test_the_start_page_links_the_import_only_for_those_who_may(client, signed_in, store):
    signed_in("doctor", username="doc")
    assert reverse("imaging:raw_import") in client.get("/").content.decode()
    client.logout()
    signed_in("nurse", username="nur")
    assert reverse("imaging:raw_import") not in client.get("/").content.decode()


def test_no_identifying_value_leaves_the_identity_zone(client, signed_in, phantom_study, tmp_path):
    study, _ = phantom_study
    signed_in("doctor")
    path = _written(tmp_path, _source(_values((4, 8, 8))), "Quaglietti_Ottavia_RAW-7741-QX.nii.gz")
    for fields in (PATIENT, {"target": "existing", "study": study.study_instance_uid}):
        assert _post(client, path, **fields).status_code == 200
    new_study = StudyIdentity.objects.get(study_description=PATIENT["study_description"])
    secrets = {"Quaglietti", "Ottavia", PATIENT["patient_id"], PATIENT["issuer_of_patient_id"], "19610427",
               PATIENT["birth_date"], path.name, new_study.original_study_instance_uid,
               *StudyIdentity.objects.values_list("original_study_instance_uid", flat=True)}
    haystacks = {"rows": clinical_rows()}
    for object_id in storage.storage_objects():
        haystacks[object_id] = storage.object_get(object_id).decode("latin-1")
    hits = sorted({(where[:12], secret) for where, text in haystacks.items() for secret in secrets
                   if secret in text})
    assert hits == []
    identity = PatientIdentity.objects.get(patient_id=PATIENT["patient_id"])
    assert identity.patient_name == PATIENT["patient_name"]
    assert str(identity.patient_birth_date) == "1961-04-27"
