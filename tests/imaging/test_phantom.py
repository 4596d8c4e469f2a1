"""The synthetic PET/CT phantom: valid DICOM, plausible anatomy, exactly measurable lesions."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from django.core.management import CommandError, call_command
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    PositronEmissionTomographyImageStorage,
)

from imaging.phantom import phantom_write

SLICES = 40
SUV_TOLERANCE = 0.02
HU_RANGES = {
    "air": (-1024, -950),
    "lung": (-1000, -700),
    "fat": (-150, -50),
    "muscle": (30, 70),
    "liver": (40, 80),
    "spleen": (25, 65),
    "kidney": (10, 50),
    "myocardium": (20, 70),
    "cortical_bone": (300, 3000),
}
IDENTIFYING = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "PatientAddress", "PatientTelephoneNumbers", "InstitutionName", "InstitutionAddress",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName", "AccessionNumber",
    "StudyID", "StudyDate", "StudyTime", "StationName", "DeviceSerialNumber",
)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("phantom")
    return out, phantom_write(out_dir=out, slices=SLICES, patients=2, seed=7)


def series_files(out: Path, patient: dict, modality: str) -> list[Path]:
    return sorted((out / patient["folder"] / modality).glob("*.dcm"))


def read_series(out: Path, patient: dict, modality: str) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(path) for path in series_files(out, patient, modality)]


def seconds(tm: str) -> float:
    return int(tm[:2]) * 3600 + int(tm[2:4]) * 60 + float(tm[4:])


def suv_per_bqml(ds: pydicom.Dataset) -> float:
    """SUVbw factor from the header alone (DecayCorrection START: decay to SeriesTime)."""
    assert ds.Units == "BQML"
    assert ds.DecayCorrection == "START"
    drug = ds.RadiopharmaceuticalInformationSequence[0]
    uptake = seconds(ds.SeriesTime) - seconds(drug.RadiopharmaceuticalStartTime)
    dose = float(drug.RadionuclideTotalDose) * 2.0 ** (-uptake / float(drug.RadionuclideHalfLife))
    return float(ds.PatientWeight) * 1000.0 / dose


def tree_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(path.relative_to(folder).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def pixel_digest(datasets: list[pydicom.Dataset]) -> str:
    return hashlib.sha256(b"".join(ds.PixelData for ds in datasets)).hexdigest()


# --- files and headers ---------------------------------------------------------


def test_truth_json_is_what_phantom_write_returns(phantom):
    out, truth = phantom
    assert json.loads((out / "truth.json").read_text()) == truth
    assert len(truth["patients"]) == 2


def test_counts_sop_classes_and_file_meta(phantom):
    out, truth = phantom
    expected = {"CT": (SLICES, CTImageStorage), "PT": (SLICES // 2, PositronEmissionTomographyImageStorage)}
    for patient in truth["patients"]:
        for modality, (count, sop_class) in expected.items():
            datasets = read_series(out, patient, modality)
            assert len(datasets) == count
            assert {ds.SOPClassUID for ds in datasets} == {sop_class}
            assert {ds.Modality for ds in datasets} == {modality}
            assert {ds.file_meta.TransferSyntaxUID for ds in datasets} == {ExplicitVRLittleEndian}
            assert all(ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID for ds in datasets)
            assert len({ds.SOPInstanceUID for ds in datasets}) == count
            assert sorted(ds.InstanceNumber for ds in datasets) == list(range(1, count + 1))
            assert all(path.read_bytes()[128:132] == b"DICM" for path in series_files(out, patient, modality))


def test_ct_geometry_and_hu_encoding(phantom):
    out, truth = phantom
    cts = read_series(out, truth["patients"][0], "CT")
    first = cts[0]
    assert (first.Rows, first.Columns) == (512, 512)
    assert [float(v) for v in first.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
    zs = sorted(float(ds.ImagePositionPatient[2]) for ds in cts)
    steps = np.diff(zs)
    assert np.allclose(steps, steps[0]) and 0 < steps[0] <= 2.0
    assert float(first.SliceThickness) <= 2.0
    assert all(float(ds.SliceLocation) == float(ds.ImagePositionPatient[2]) for ds in cts)
    assert (float(first.RescaleSlope), float(first.RescaleIntercept)) == (1.0, -1024.0)
    assert first.PixelRepresentation == 0
    assert max(int(ds.pixel_array.max()) for ds in cts) < 2**first.BitsStored
    assert first.ImageType[:2] == ["ORIGINAL", "PRIMARY"]


def test_pet_covers_the_ct_and_shares_study_and_frame_of_reference(phantom):
    out, truth = phantom
    for patient in truth["patients"]:
        ct, pet = read_series(out, patient, "CT"), read_series(out, patient, "PT")
        assert pet[0].Rows >= 128 and pet[0].Columns >= 128
        for a, b in ((ct[0], pet[0]),):
            assert a.StudyInstanceUID == b.StudyInstanceUID == patient["study_instance_uid"]
            assert a.FrameOfReferenceUID == b.FrameOfReferenceUID == patient["frame_of_reference_uid"]
            assert a.SeriesInstanceUID == patient["ct_series_instance_uid"]
            assert b.SeriesInstanceUID == patient["pet_series_instance_uid"]
            assert a.SeriesInstanceUID != b.SeriesInstanceUID
        assert extent(ct) == pytest.approx(extent(pet))


def extent(series: list[pydicom.Dataset]) -> tuple[float, ...]:
    """Outer boundaries (x, y, z, mm) of an axial series, voxel edges included."""
    first = series[0]
    row_mm, col_mm = (float(v) for v in first.PixelSpacing)
    x0, y0 = float(first.ImagePositionPatient[0]), float(first.ImagePositionPatient[1])
    zs = [float(ds.ImagePositionPatient[2]) for ds in series]
    half = float(first.SliceThickness) / 2
    return (
        x0 - col_mm / 2, x0 + col_mm * (first.Columns - 0.5),
        y0 - row_mm / 2, y0 + row_mm * (first.Rows - 0.5),
        min(zs) - half, max(zs) + half,
    )


def test_pet_header_is_a_quantitative_fdg_study(phantom):
    out, truth = phantom
    patient = truth["patients"][0]
    pet = read_series(out, patient, "PT")
    ds = pet[0]
    assert ds.Units == "BQML"
    assert ds.DecayCorrection == "START"
    assert {"DECY", "ATTN"} <= set(ds.CorrectedImage)
    assert list(ds.SeriesType) == ["WHOLE BODY", "IMAGE"]
    assert ds.NumberOfSlices == len(pet)
    drug = ds.RadiopharmaceuticalInformationSequence[0]
    assert drug.Radiopharmaceutical == "Fludeoxyglucose F^18^"
    assert float(drug.RadionuclideHalfLife) == pytest.approx(6586.2)
    assert 1e8 < float(drug.RadionuclideTotalDose) < 1e9
    nuclide = drug.RadionuclideCodeSequence[0]
    assert (nuclide.CodingSchemeDesignator, nuclide.CodeMeaning) == ("SCT", "^18^Fluorine")
    assert 40 <= float(ds.PatientWeight) <= 150 and 1.4 <= float(ds.PatientSize) <= 2.1
    uptake_min = (seconds(ds.SeriesTime) - seconds(drug.RadiopharmaceuticalStartTime)) / 60
    assert 50 <= uptake_min <= 70
    assert float(drug.RadionuclideTotalDose) == patient["injected_dose_bq"]
    assert float(ds.PatientWeight) == patient["patient_weight_kg"]


def test_pet_pixels_are_int16_with_a_slope_per_slice(phantom):
    out, truth = phantom
    pet = read_series(out, truth["patients"][0], "PT")
    assert {(ds.BitsAllocated, ds.PixelRepresentation) for ds in pet} == {(16, 1)}
    assert {float(ds.RescaleIntercept) for ds in pet} == {0.0}
    assert len({ds.RescaleSlope for ds in pet}) > len(pet) // 2
    for ds in pet:
        assert ds.pixel_array.dtype == np.int16
        assert int(ds.pixel_array.max()) == 32767
        assert int(ds.pixel_array.min()) >= 0
        assert float(ds.DecayFactor) >= 1.0 and int(ds.ActualFrameDuration) > 0


def test_identifying_attributes_present_and_distinct_per_patient(phantom):
    out, truth = phantom
    seen = []
    for patient in truth["patients"]:
        for modality in ("CT", "PT"):
            ds = pydicom.dcmread(series_files(out, patient, modality)[0])
            missing = [keyword for keyword in IDENTIFYING if not str(ds.get(keyword, ""))]
            assert missing == []
            assert ds.OtherPatientIDsSequence[0].PatientID
            identity = patient["identity"]
            assert str(ds.PatientName) == identity["patient_name"]
            assert ds.PatientID == identity["patient_id"]
            assert ds.PatientAddress == identity["address"]
            assert ds.AccessionNumber == identity["accession_number"]
        seen.append((str(ds.PatientName), ds.PatientID, ds.StudyInstanceUID, ds.AccessionNumber))
    first, second = seen
    assert all(a != b for a, b in zip(first, second, strict=True))


def test_folders_and_file_names_carry_no_identity(phantom):
    out, truth = phantom
    names = {part for path in out.rglob("*") for part in path.relative_to(out).parts}
    for patient in truth["patients"]:
        identity = patient["identity"]
        given = [part for part in identity["patient_name"].split("^") if len(part) > 2]
        secrets = {identity["patient_id"], *given}
        assert not any(secret in name for secret in secrets for name in names)


# --- CT anatomy ----------------------------------------------------------------


def ct_hu_at(series: list[pydicom.Dataset], point: list[float]) -> float:
    """Median HU of the 3x3 voxels around a point, on the slice through it."""
    x, y, z = point
    ds = min(series, key=lambda s: abs(float(s.ImagePositionPatient[2]) - z))
    assert abs(float(ds.ImagePositionPatient[2]) - z) <= float(ds.SliceThickness) / 2
    row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
    row = round((y - float(ds.ImagePositionPatient[1])) / row_mm)
    col = round((x - float(ds.ImagePositionPatient[0])) / col_mm)
    hu = ds.pixel_array[row - 1 : row + 2, col - 1 : col + 2] * float(ds.RescaleSlope)
    return float(np.median(hu + float(ds.RescaleIntercept)))


def test_ct_hu_at_organ_sample_points(phantom):
    out, truth = phantom
    for patient in truth["patients"]:
        cts = read_series(out, patient, "CT")
        samples = patient["organ_samples_mm"]
        assert set(HU_RANGES) <= set(samples)
        for organ, point in samples.items():
            hu = ct_hu_at(cts, point)
            assert hu == pytest.approx(truth["tissues"][organ]["hu"], abs=15), organ
            low, high = HU_RANGES.get(organ, (-2000, 4000))
            assert low <= hu <= high, organ


def test_ct_shows_each_lesion(phantom):
    out, truth = phantom
    patient = truth["patients"][0]
    cts = read_series(out, patient, "CT")
    for lesion in patient["lesions"]:
        assert ct_hu_at(cts, lesion["center_mm"]) == pytest.approx(lesion["hu"], abs=15)


# --- PET quantification ------------------------------------------------------------


def sitk_suv(folder: Path) -> tuple[sitk.Image, np.ndarray]:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    reader.SetOutputPixelType(sitk.sitkFloat64)
    image = reader.Execute()
    factor = suv_per_bqml(pydicom.dcmread(reader.GetFileNames()[0], stop_before_pixels=True))
    return image, sitk.GetArrayFromImage(image) * factor


def sitk_ball(image: sitk.Image, center: list[float], radius: float):
    """(index, distance) of every voxel centre within ``radius`` mm of ``center``."""
    middle = image.TransformPhysicalPointToIndex(center)
    reach = [math.ceil(radius / s) + 1 for s in image.GetSpacing()]
    for offset in itertools.product(*(range(-r, r + 1) for r in reach)):
        index = tuple(m + o for m, o in zip(middle, offset, strict=True))
        if all(0 <= i < n for i, n in zip(index, image.GetSize(), strict=True)):
            distance = math.dist(image.TransformIndexToPhysicalPoint(index), center)
            if distance <= radius:
                yield index, distance


def test_lesion_suvmax_read_by_simpleitk_matches_planted(phantom):
    out, truth = phantom
    for patient in truth["patients"]:
        image, suv = sitk_suv(out / patient["folder"] / "PT")
        assert len(patient["lesions"]) >= 4
        for lesion in patient["lesions"]:
            radius = lesion["radius_mm"]
            ball = list(sitk_ball(image, lesion["center_mm"], radius + 8.0))
            measured = max(suv[k, j, i] for (i, j, k), d in ball if d <= radius)
            assert measured == pytest.approx(lesion["suv_max"], rel=SUV_TOLERANCE), lesion
            rim = [suv[k, j, i] for (i, j, k), d in ball if d > radius]
            assert np.mean(rim) < 0.6 * lesion["suv_max"], lesion


def pydicom_suv(out: Path, patient: dict) -> tuple[np.ndarray, list[pydicom.Dataset]]:
    """SUV volume [slice, row, column] sorted by z ascending, each file with its own slope."""
    pet = sorted(read_series(out, patient, "PT"), key=lambda ds: float(ds.ImagePositionPatient[2]))
    bqml = [ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept) for ds in pet]
    return np.stack(bqml) * suv_per_bqml(pet[0]), pet


def test_lesion_suvmax_read_by_pydicom_matches_planted(phantom):
    out, truth = phantom
    for patient in truth["patients"]:
        suv, pet = pydicom_suv(out, patient)
        zs = np.array([float(ds.ImagePositionPatient[2]) for ds in pet])
        row_mm, col_mm = (float(v) for v in pet[0].PixelSpacing)
        x0, y0 = (float(v) for v in pet[0].ImagePositionPatient[:2])
        xs = x0 + col_mm * np.arange(pet[0].Columns)
        ys = y0 + row_mm * np.arange(pet[0].Rows)
        for lesion in patient["lesions"]:
            cx, cy, cz = lesion["center_mm"]
            d2 = (zs[:, None, None] - cz) ** 2 + (ys[None, :, None] - cy) ** 2
            d2 = d2 + (xs[None, None, :] - cx) ** 2
            measured = suv[d2 <= lesion["radius_mm"] ** 2].max()
            assert measured == pytest.approx(lesion["suv_max"], rel=SUV_TOLERANCE), lesion


def test_simpleitk_and_pydicom_agree_voxel_by_voxel(phantom):
    out, truth = phantom
    patient = truth["patients"][0]
    image, by_sitk = sitk_suv(out / patient["folder"] / "PT")
    by_pydicom, pet = pydicom_suv(out, patient)
    assert image.GetOrigin()[2] == pytest.approx(float(pet[0].ImagePositionPatient[2]))
    assert np.allclose(by_sitk, by_pydicom, rtol=1e-6, atol=1e-6)


def test_pet_organ_uptake_is_plausible(phantom):
    out, truth = phantom
    patient = truth["patients"][0]
    image, suv = sitk_suv(out / patient["folder"] / "PT")
    for organ in ("liver", "lung", "muscle"):
        i, j, k = image.TransformPhysicalPointToIndex(patient["organ_samples_mm"][organ])
        measured = suv[k - 1 : k + 2, j - 1 : j + 2, i - 1 : i + 2].mean()
        assert measured == pytest.approx(truth["tissues"][organ]["suv"], rel=0.2), organ


# --- determinism, validation, command ------------------------------------------------


def test_same_seed_gives_identical_files(phantom, tmp_path):
    out, truth = phantom
    again = phantom_write(out_dir=tmp_path, slices=SLICES, patients=2, seed=7)
    assert again == truth
    assert tree_digest(tmp_path) == tree_digest(out)


def test_different_seed_gives_different_uids_identity_and_pixels(phantom, tmp_path):
    out, truth = phantom
    other = phantom_write(out_dir=tmp_path, slices=SLICES, patients=1, seed=8)
    mine, theirs = truth["patients"][0], other["patients"][0]
    for key in ("study_instance_uid", "frame_of_reference_uid", "ct_series_instance_uid"):
        assert mine[key] != theirs[key]
    assert mine["identity"]["patient_id"] != theirs["identity"]["patient_id"]
    for modality in ("CT", "PT"):
        assert pixel_digest(read_series(out, mine, modality)) != pixel_digest(
            read_series(tmp_path, theirs, modality)
        )


def test_too_few_slices_is_refused(tmp_path):
    with pytest.raises(ValueError, match="slices"):
        phantom_write(out_dir=tmp_path, slices=8)


def test_dciodvfy_finds_no_errors(phantom):
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.fail("dciodvfy is not on PATH: apt-get install dicom3tools")
    out, truth = phantom
    patient = truth["patients"][0]
    for modality in ("CT", "PT"):
        path = series_files(out, patient, modality)[0]
        run = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
        report = run.stdout + run.stderr
        assert ("CTImage" if modality == "CT" else "PETImage") in report
        errors = [line for line in report.splitlines() if line.startswith("Error")]
        assert errors == [], report


def test_make_phantom_command_prints_one_line_per_patient(tmp_path):
    stdout = io.StringIO()
    call_command(
        "make_phantom", out=tmp_path, slices=32, patients=2, seed=3, stdout=stdout
    )
    truth = json.loads((tmp_path / "truth.json").read_text())
    lines = stdout.getvalue().splitlines()
    assert len(lines) == 2
    for line, patient in zip(lines, truth["patients"], strict=True):
        assert line.startswith(f"{patient['folder']}: 32 CT + 16 PT files")
        assert patient["ct_series_instance_uid"] in line
        assert patient["pet_series_instance_uid"] in line
        assert len(series_files(tmp_path, patient, "CT")) == 32


def test_make_phantom_command_rejects_bad_arguments(tmp_path):
    with pytest.raises(CommandError, match="slices"):
        call_command("make_phantom", out=tmp_path, slices=4)


@pytest.mark.slow
def test_default_study_size_and_spacing(tmp_path):
    truth = phantom_write(out_dir=tmp_path)
    patient = truth["patients"][0]
    cts = read_series(tmp_path, patient, "CT")
    pet = read_series(tmp_path, patient, "PT")
    assert len(cts) >= 200 and len(pet) == len(cts) // 2
    ct_steps = np.diff(sorted(float(ds.ImagePositionPatient[2]) for ds in cts))
    assert np.allclose(ct_steps, 2.0)
    assert extent(cts) == pytest.approx(extent(pet))
