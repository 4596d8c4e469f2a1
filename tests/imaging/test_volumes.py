"""Series -> volume: ordering, spacing checks, rescale, multi-frame (enhanced, NM), geometry."""

from __future__ import annotations

import copy
import random

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, NuclearMedicineImageStorage

from imaging import storage
from imaging.models import Series
from imaging.services import IngestBatch
from imaging.volumes import (
    NotAVolume,
    VolumeRefused,
    load_volume,
    series_display_build,
    suvbw_factor,
    volume_from_datasets,
)
from tests.conftest import ZONES
from tests.imaging.conftest import PHANTOM_SLICES, phantom_files


def _ct(phantom) -> list[Dataset]:
    out, truth = phantom
    folder = out / truth["patients"][0]["folder"] / "CT"
    return [pydicom.dcmread(path) for path in sorted(folder.glob("*.dcm"))]


def test_slices_are_sorted_along_the_normal_and_rescaled(phantom):
    datasets = _ct(phantom)
    shuffled = datasets[:]
    random.Random(3).shuffle(shuffled)
    volume, note = volume_from_datasets(shuffled)
    assert note == "" and volume.voxels.shape == (PHANTOM_SLICES, 512, 512)
    zs = sorted(float(ds.ImagePositionPatient[2]) for ds in datasets)
    assert volume.origin[2] == pytest.approx(zs[0]) and volume.spacing[0] == pytest.approx(2.0)
    lowest = min(datasets, key=lambda ds: float(ds.ImagePositionPatient[2]))
    expected = lowest.pixel_array.astype(np.int32) + int(lowest.RescaleIntercept)
    assert np.array_equal(volume.voxels[0], expected)
    assert volume.display["window_center"] == 40.0 and volume.display["modality"] == "CT"
    assert np.allclose(volume.index_to_patient((1, 0, 0)),
                       [*map(float, lowest.ImagePositionPatient[:2]), zs[1]])


def test_a_missing_slice_is_resampled_and_duplicates_are_refused(phantom):
    datasets = _ct(phantom)
    gappy = datasets[:10] + datasets[11:]
    volume, note = volume_from_datasets(gappy)
    assert "resampled" in note and volume.voxels.shape[0] == PHANTOM_SLICES
    assert volume.spacing[0] == pytest.approx(2.0)
    with pytest.raises(VolumeRefused, match="share one position"):
        volume_from_datasets([*datasets[:5], copy.deepcopy(datasets[2])])
    far = datasets[:5] + datasets[20:25]
    with pytest.raises(VolumeRefused, match="spacing varies"):
        volume_from_datasets(far)


def test_direction_cosines_are_kept():
    ds = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    volume, _ = volume_from_datasets([ds])
    orientation = [float(v) for v in ds.ImageOrientationPatient]
    direction = np.array(volume.direction)
    assert np.allclose(direction[:, 0], orientation[:3]) and np.allclose(direction[:, 1], orientation[3:])
    assert np.allclose(direction[:, 2], np.cross(orientation[:3], orientation[3:]))


def test_enhanced_multiframe_ct_uses_per_frame_functional_groups():
    ds = pydicom.dcmread(get_testdata_file("eCT_Supplemental.dcm"))
    volume, _ = volume_from_datasets([ds])
    frames = int(ds.NumberOfFrames)
    assert volume.voxels.shape[0] == frames
    positions = [[float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
                 for item in ds.PerFrameFunctionalGroupsSequence]
    normal = np.array(volume.direction)[:, 2]
    first = min(positions, key=lambda p: float(np.dot(p, normal)))
    assert np.allclose(volume.origin, first)


def test_multiframe_without_frame_positions_is_a_stack_of_pictures():
    ds = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    with pytest.raises(NotAVolume):
        volume_from_datasets([ds])
    stack, _ = series_display_build(lambda: [ds])
    assert stack.voxels.shape[0] == int(ds.NumberOfFrames)
    assert stack.display["kind"] == "cine"


def test_nm_multiframe_uses_detector_geometry():
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = NuclearMedicineImageStorage
    ds.Modality = "NM"
    ds.NumberOfFrames = 6
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = [4.0, 4.0]
    ds.SpacingBetweenSlices = 4.5
    detector = Dataset()
    detector.ImagePositionPatient = [-32.0, -32.0, 10.0]
    detector.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.DetectorInformationSequence = [detector]
    pixels = np.arange(6 * 16 * 16, dtype=np.uint16).reshape(6, 16, 16)
    ds.PixelData = pixels.tobytes()
    volume, _ = volume_from_datasets([ds])
    assert volume.voxels.shape == (6, 16, 16) and np.array_equal(volume.voxels, pixels)
    assert volume.spacing == (4.5, 4.0, 4.0) and volume.origin == (-32.0, -32.0, 10.0)


def test_suv_factor_needs_a_quantitative_header(phantom):
    out, truth = phantom
    pet = pydicom.dcmread(sorted((out / truth["patients"][0]["folder"] / "PT").glob("*.dcm"))[0])
    assert suvbw_factor(pet) > 0
    pet.Units = "CNTS"
    assert suvbw_factor(pet) is None


def test_the_suv_calculation_shows_every_header_value_it_used_and_what_it_lacked(phantom):
    from imaging.suv import suv_calculation

    out, truth = phantom
    patient = truth["patients"][0]
    pet = pydicom.dcmread(sorted((out / patient["folder"] / "PT").glob("*.dcm"))[0])
    shown = suv_calculation(pet)
    assert shown.missing == () and shown.weight_kg == pytest.approx(patient["patient_weight_kg"])
    assert shown.dose_bq == pytest.approx(patient["injected_dose_bq"])
    assert shown.half_life_s == pytest.approx(patient["half_life_s"])
    assert shown.elapsed_s == pytest.approx(patient["uptake_s"], abs=1)
    decayed = patient["injected_dose_bq"] * 2 ** (-patient["uptake_s"] / patient["half_life_s"])
    assert shown.factor == pytest.approx(patient["patient_weight_kg"] * 1000 / decayed, rel=1e-3)
    del pet.PatientWeight
    pet.DecayCorrection = "NONE"
    lacking = suv_calculation(pet)
    assert lacking.factor is None
    assert "no patient weight" in lacking.missing and any("NONE" in reason for reason in lacking.missing)


@pytest.mark.django_db(databases=ZONES, transaction=True)
def test_volume_is_stored_encrypted_and_loads(store, phantom):
    out, _ = phantom
    batch = IngestBatch(actor="cli:test", door="import")
    for path in phantom_files(out)[:PHANTOM_SLICES]:
        batch.ingest(path.read_bytes())
    batch.close()
    series = Series.objects.get()
    raw = storage.object_path(series.volume_object).read_bytes()
    assert b"spacing" not in raw and b"MONOCHROME2" not in raw
    volume = load_volume(series)
    assert volume.voxels.shape == (PHANTOM_SLICES, 512, 512) and not volume.voxels.flags.writeable
