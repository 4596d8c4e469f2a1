"""A registration as a DICOM Spatial Registration object: written, validated, read back, refused.

The fixed series is a real CT header (pydicom's CT example, without pixel data, as the
gateway keeps headers); the moving one is a copy of it made a PET of its own series and
frame of reference. What goes in is a matrix built here from its angles and offset; what
must come out, after dicom3tools' ``dciodvfy`` and a re-read from the file, is that same
matrix (PS3.3 C.20.2.1.1: the matrix maps the item's frame into the REG's) and its
inverse written out as [R^T | -R^T t] rather than computed by the code under test.
"""

from __future__ import annotations

import copy
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pydicom.examples
import pytest
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, PositronEmissionTomographyImageStorage, generate_uid

from imaging.registration_dicom import (
    DEFORMABLE_SPATIAL_REGISTRATION,
    SPATIAL_REGISTRATION,
    RegistrationDicomError,
    registration_read,
    spatial_registration,
)

TOLERANCE = 1e-6
OFFSET_MM = (12.5, -7.25, 30.0)


def _rotation_x(degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rotation_z(degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _homogeneous(linear: np.ndarray, offset: tuple[float, float, float]) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:3, :3], matrix[:3, 3] = linear, offset
    return matrix


RIGID = _homogeneous(_rotation_z(30) @ _rotation_x(-20), OFFSET_MM)
RIGID_INVERSE = _homogeneous(RIGID[:3, :3].T, tuple(-RIGID[:3, :3].T @ np.array(OFFSET_MM)))
SHEAR = _homogeneous(np.array([[1.1, 0.2, 0.0], [0.0, 0.9, 0.1], [0.05, 0.0, 1.2]]), (3.0, 4.0, -5.0))


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not on PATH: make sysdeps installs dicom3tools")
    return path


def _dciodvfy(path: Path) -> str:
    run = subprocess.run([_tool("dciodvfy"), str(path)], capture_output=True, text=True, check=False)
    report = run.stdout + run.stderr
    assert [line for line in report.splitlines() if "Error" in line] == [], report
    return report


@pytest.fixture
def ct() -> Dataset:
    return pydicom.dcmread(pydicom.examples.get_path("ct"), stop_before_pixels=True)


@pytest.fixture
def pet(ct: Dataset) -> Dataset:
    return _pet_of(ct)


def _pet_of(ct: Dataset) -> Dataset:
    pet = copy.deepcopy(ct)
    pet.SeriesInstanceUID, pet.SOPInstanceUID = generate_uid(), generate_uid()
    pet.FrameOfReferenceUID = generate_uid()
    pet.Modality, pet.SOPClassUID = "PT", PositronEmissionTomographyImageStorage
    return pet


def _another_instance(header: Dataset) -> Dataset:
    other = copy.deepcopy(header)
    other.SOPInstanceUID = generate_uid()
    return other


def _registration(fixed, moving, matrix: np.ndarray, kind: str = "RIGID", **more) -> Dataset:
    return spatial_registration(fixed=fixed, moving=moving, matrix=matrix.ravel().tolist(), kind=kind,
                                description="PET on CT — fusion", author="dr.müller",
                                series_instance_uid=generate_uid(), series_number=950, **more)


def _saved_and_read(dataset: Dataset, path: Path) -> Dataset:
    dataset.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


def _item_of(ds: Dataset, frame: str) -> Dataset:
    (item,) = [item for item in ds.RegistrationSequence if item.FrameOfReferenceUID == frame]
    return item


def _written_matrix(item: Dataset) -> np.ndarray:
    (registration,) = item.MatrixRegistrationSequence
    (matrix,) = registration.MatrixSequence
    return np.array([float(v) for v in matrix.FrameOfReferenceTransformationMatrix]).reshape(4, 4)


def test_a_rigid_registration_validates_and_reads_back_both_ways(ct, pet, tmp_path):
    written = _registration(ct, [pet], RIGID, method=codes.cid7100.VisualAlignment)
    path = tmp_path / "reg.dcm"
    read = _saved_and_read(written, path)
    _dciodvfy(path)
    assert read.SOPClassUID == SPATIAL_REGISTRATION and read.Modality == "REG"
    assert read.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert read.SpecificCharacterSet == "ISO_IR 192" and read.Manufacturer == "Fusion Gateway"
    assert read.FrameOfReferenceUID == ct.FrameOfReferenceUID
    assert (read.PatientID, read.StudyInstanceUID) == (ct.PatientID, ct.StudyInstanceUID)
    assert str(read.ContentCreatorName) == "dr.müller^"
    np.testing.assert_allclose(_written_matrix(_item_of(read, ct.FrameOfReferenceUID)), np.eye(4), atol=0)
    np.testing.assert_allclose(_written_matrix(_item_of(read, pet.FrameOfReferenceUID)), RIGID,
                               atol=TOLERANCE)

    facts = registration_read(read)
    assert facts.frame_of_reference_uid == ct.FrameOfReferenceUID
    assert facts.series_instance_uids == (ct.SeriesInstanceUID,)
    assert facts.sop_instance_uids == (ct.SOPInstanceUID,)
    (moving,) = facts.frames
    assert moving.frame_of_reference_uid == pet.FrameOfReferenceUID and moving.matrix_type == "RIGID"
    assert moving.series_instance_uids == (pet.SeriesInstanceUID,)
    assert moving.sop_instance_uids == (pet.SOPInstanceUID,)
    np.testing.assert_allclose(moving.matrix, RIGID, atol=TOLERANCE)
    np.testing.assert_allclose(facts.transform(source=pet.FrameOfReferenceUID, target=ct.FrameOfReferenceUID),
                               RIGID, atol=TOLERANCE)
    np.testing.assert_allclose(facts.transform(source=ct.FrameOfReferenceUID, target=pet.FrameOfReferenceUID),
                               RIGID_INVERSE, atol=TOLERANCE)


def test_a_point_of_the_moving_frame_lands_where_the_rotation_and_offset_put_it(ct, pet, tmp_path):
    facts = registration_read(_saved_and_read(_registration(ct, pet, RIGID), tmp_path / "reg.dcm"))
    on_x_axis = np.array([10.0, 0.0, 0.0, 1.0])
    # Rotated -20 degrees about x it stays put; then 30 degrees about z.
    expected = (10 * math.cos(math.radians(30)) + OFFSET_MM[0],
                10 * math.sin(math.radians(30)) + OFFSET_MM[1], OFFSET_MM[2])
    mapped = facts.transform(source=pet.FrameOfReferenceUID, target=ct.FrameOfReferenceUID) @ on_x_axis
    np.testing.assert_allclose(mapped[:3], expected, atol=TOLERANCE)


def test_every_header_given_is_referenced_and_another_studys_series_is_named_under_its_study(ct, tmp_path):
    prior = _pet_of(ct)
    prior.StudyInstanceUID = generate_uid()
    fixed = [ct, _another_instance(ct)]
    moving = [prior, _another_instance(prior), _another_instance(prior)]
    path = tmp_path / "reg.dcm"
    read = _saved_and_read(_registration(fixed, moving, RIGID), path)
    _dciodvfy(path)
    (own,) = read.ReferencedSeriesSequence
    assert own.SeriesInstanceUID == ct.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in own.ReferencedInstanceSequence} == {h.SOPInstanceUID
                                                                                      for h in fixed}
    (other,) = read.StudiesContainingOtherReferencedInstancesSequence
    assert other.StudyInstanceUID == prior.StudyInstanceUID
    facts = registration_read(read)
    assert set(facts.sop_instance_uids) == {h.SOPInstanceUID for h in fixed}
    (frame,) = facts.frames
    assert set(frame.sop_instance_uids) == {h.SOPInstanceUID for h in moving}
    assert frame.series_instance_uids == (prior.SeriesInstanceUID,)


def test_an_affine_registration_keeps_its_type_and_matrix(ct, pet, tmp_path):
    path = tmp_path / "reg.dcm"
    read = _saved_and_read(_registration(ct, pet, SHEAR, kind="AFFINE"), path)
    _dciodvfy(path)
    (frame,) = registration_read(read).frames
    assert frame.matrix_type == "AFFINE"
    np.testing.assert_allclose(frame.matrix, SHEAR, atol=TOLERANCE)


def _matrix_item(values, kind: str = "RIGID") -> Dataset:
    item = Dataset()
    item.FrameOfReferenceTransformationMatrixType = kind
    item.FrameOfReferenceTransformationMatrix = [f"{float(v):.10g}" for v in np.ravel(values)]
    return item


def _item(frame: str | None, *matrices: Dataset, images: tuple[Dataset, ...] = ()) -> Dataset:
    item = Dataset()
    if frame is not None:
        item.FrameOfReferenceUID = frame
    if images:
        item.ReferencedImageSequence = [_image_reference(image) for image in images]
    registration = Dataset()
    registration.RegistrationTypeCodeSequence = []
    registration.MatrixSequence = list(matrices)
    item.MatrixRegistrationSequence = [registration]
    return item


def _image_reference(header: Dataset) -> Dataset:
    reference = Dataset()
    reference.ReferencedSOPClassUID = header.SOPClassUID
    reference.ReferencedSOPInstanceUID = header.SOPInstanceUID
    return reference


def _foreign(registered: str, *items: Dataset, sop_class: str = SPATIAL_REGISTRATION) -> Dataset:
    """A REG as another system writes it: the bare Spatial Registration module, nothing of ours."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, generate_uid()
    ds.Modality = "REG"
    ds.FrameOfReferenceUID = registered
    ds.RegistrationSequence = list(items)
    return ds


def test_another_systems_registration_to_the_moving_frame_reads_in_its_direction(ct, pet):
    # That system registered our CT to its PET: the REG's frame is the PET's, its CT item carries
    # CT mm -> PET mm, which is the inverse of our moving -> fixed matrix.
    ds = _foreign(pet.FrameOfReferenceUID,
                  _item(pet.FrameOfReferenceUID, _matrix_item(np.eye(4)), images=(pet,)),
                  _item(ct.FrameOfReferenceUID, _matrix_item(RIGID_INVERSE), images=(ct,)))
    facts = registration_read(ds)
    assert facts.frame_of_reference_uid == pet.FrameOfReferenceUID
    assert facts.sop_instance_uids == (pet.SOPInstanceUID,)
    assert facts.series_instance_uids == ()  # no Common Instance Reference module to name them
    np.testing.assert_allclose(facts.frame(ct.FrameOfReferenceUID).matrix, RIGID_INVERSE, atol=TOLERANCE)
    np.testing.assert_allclose(facts.transform(source=pet.FrameOfReferenceUID, target=ct.FrameOfReferenceUID),
                               RIGID, atol=TOLERANCE)


def test_a_matrix_sequence_applies_its_first_matrix_first(ct, pet):
    # PS3.3 Equation C.20.2-2: A_M_B = M3 . M2 . M1 — move by the offset, then rotate 90 degrees about z.
    shift = _homogeneous(np.eye(3), (5.0, 0.0, 0.0))
    quarter_turn = _homogeneous(np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]]), (0.0, 0.0, 0.0))
    ds = _foreign(ct.FrameOfReferenceUID,
                  _item(pet.FrameOfReferenceUID, _matrix_item(shift), _matrix_item(quarter_turn)))
    (frame,) = registration_read(ds).frames
    assert frame.sop_instance_uids == ()
    origin_of_moving = frame.matrix @ np.array([0.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(origin_of_moving[:3], (0.0, 5.0, 0.0), atol=TOLERANCE)


def test_a_rigid_then_affine_sequence_is_affine(ct, pet):
    ds = _foreign(ct.FrameOfReferenceUID,
                  _item(pet.FrameOfReferenceUID, _matrix_item(RIGID), _matrix_item(SHEAR, "AFFINE")))
    (frame,) = registration_read(ds).frames
    assert frame.matrix_type == "AFFINE"
    np.testing.assert_allclose(frame.matrix, SHEAR @ RIGID, atol=TOLERANCE)


def test_a_deformable_registration_is_refused(ct, pet):
    ds = _foreign(ct.FrameOfReferenceUID, _item(pet.FrameOfReferenceUID, _matrix_item(RIGID)),
                  sop_class=DEFORMABLE_SPATIAL_REGISTRATION)
    with pytest.raises(RegistrationDicomError, match="deformable"):
        registration_read(ds)


def test_another_class_is_refused(ct):
    with pytest.raises(RegistrationDicomError, match="not a Spatial Registration"):
        registration_read(ct)


def _scaled(factor: float) -> np.ndarray:
    return _homogeneous(RIGID[:3, :3] * factor, OFFSET_MM)


def _mirrored() -> np.ndarray:
    return _homogeneous(np.diag([-1.0, 1.0, 1.0]), (0.0, 0.0, 0.0))


def _projective() -> np.ndarray:
    matrix = RIGID.copy()
    matrix[3] = (0.0, 0.001, 0.0, 1.0)
    return matrix


def _flattening() -> np.ndarray:
    return _homogeneous(np.diag([1.0, 1.0, 0.0]), (0.0, 0.0, 0.0))


@pytest.mark.filterwarnings("ignore:Invalid value for VR DS")
@pytest.mark.parametrize(("values", "kind", "message"), [
    (list(RIGID.ravel()[:15]), "RIGID", "16 finite numbers"),
    ([*RIGID.ravel()[:15], float("nan")], "RIGID", "16 finite numbers"),
    ([*RIGID.ravel()[:3], float("inf"), *RIGID.ravel()[4:]], "AFFINE", "16 finite numbers"),
    (list(_flattening().ravel()), "AFFINE", "singular"),
    (list(np.zeros(16)), "AFFINE", "last row"),
    (list(_projective().ravel()), "AFFINE", "last row"),
    (list(_scaled(1.5).ravel()), "RIGID", "not orthonormal"),
    (list(SHEAR.ravel()), "RIGID", "not orthonormal"),
    (list(SHEAR.ravel()), "RIGID_SCALE", "not orthogonal"),
    (list(_mirrored().ravel()), "RIGID", "mirrors"),
    (list(RIGID.ravel()), "PERSPECTIVE", "not one of"),
])
def test_a_malformed_matrix_is_refused_when_read(ct, pet, values, kind, message):
    ds = _foreign(ct.FrameOfReferenceUID, _item(pet.FrameOfReferenceUID, _matrix_item(values, kind)))
    with pytest.raises(RegistrationDicomError, match=message):
        registration_read(ds)


def test_a_matrix_of_text_is_refused(ct, pet):
    item = _matrix_item(RIGID)
    item["FrameOfReferenceTransformationMatrix"].VR = "LO"
    item.FrameOfReferenceTransformationMatrix = ["one", *(["0"] * 15)]
    with pytest.raises(RegistrationDicomError, match="not a number"):
        registration_read(_foreign(ct.FrameOfReferenceUID, _item(pet.FrameOfReferenceUID, item)))


def test_a_rigid_scale_matrix_is_accepted(ct, pet):
    ds = _foreign(ct.FrameOfReferenceUID,
                  _item(pet.FrameOfReferenceUID, _matrix_item(_scaled(2.0), "RIGID_SCALE")))
    (frame,) = registration_read(ds).frames
    assert frame.matrix_type == "RIGID_SCALE"
    np.testing.assert_allclose(frame.matrix, _scaled(2.0), atol=TOLERANCE)


def test_a_registered_to_frame_that_is_not_the_identity_is_refused(ct, pet):
    ds = _foreign(ct.FrameOfReferenceUID, _item(ct.FrameOfReferenceUID, _matrix_item(RIGID)),
                  _item(pet.FrameOfReferenceUID, _matrix_item(RIGID)))
    with pytest.raises(RegistrationDicomError, match="not the identity"):
        registration_read(ds)


def test_one_frame_registered_two_ways_is_refused(ct, pet):
    ds = _foreign(ct.FrameOfReferenceUID, _item(pet.FrameOfReferenceUID, _matrix_item(RIGID)),
                  _item(pet.FrameOfReferenceUID, _matrix_item(np.eye(4))))
    with pytest.raises(RegistrationDicomError, match="two different ways"):
        registration_read(ds)


def test_an_item_without_a_frame_a_reg_without_a_frame_and_an_empty_reg_are_refused(ct, pet):
    with pytest.raises(RegistrationDicomError, match="names no Frame of Reference UID"):
        registration_read(_foreign(ct.FrameOfReferenceUID, _item(None, _matrix_item(RIGID), images=(pet,))))
    no_frame = _foreign(ct.FrameOfReferenceUID, _item(pet.FrameOfReferenceUID, _matrix_item(RIGID)))
    del no_frame.FrameOfReferenceUID
    with pytest.raises(RegistrationDicomError, match="no Frame of Reference UID to register to"):
        registration_read(no_frame)
    with pytest.raises(RegistrationDicomError, match="Registration Sequence is empty"):
        registration_read(_foreign(ct.FrameOfReferenceUID))
    with pytest.raises(RegistrationDicomError, match="at least one matrix"):
        registration_read(_foreign(ct.FrameOfReferenceUID, _item(pet.FrameOfReferenceUID)))


def test_a_frame_the_registration_does_not_register_is_refused(ct, pet):
    facts = registration_read(_foreign(ct.FrameOfReferenceUID, _item(pet.FrameOfReferenceUID,
                                                                     _matrix_item(RIGID))))
    with pytest.raises(RegistrationDicomError, match="does not register frame"):
        facts.transform(source=generate_uid(), target=ct.FrameOfReferenceUID)


def test_writing_refuses_a_bad_matrix_one_frame_and_two_patients(ct, pet):
    with pytest.raises(RegistrationDicomError, match="not orthonormal"):
        _registration(ct, pet, SHEAR, kind="RIGID")
    with pytest.raises(RegistrationDicomError, match="singular"):
        _registration(ct, pet, _flattening(), kind="AFFINE")
    with pytest.raises(RegistrationDicomError, match="share a frame of reference"):
        _registration(ct, _another_instance(ct), RIGID)
    stranger = _pet_of(ct)
    stranger.PatientID = "someone-else"
    with pytest.raises(RegistrationDicomError, match="different patients"):
        _registration(ct, stranger, RIGID)
    no_frame = _pet_of(ct)
    del no_frame.FrameOfReferenceUID
    with pytest.raises(RegistrationDicomError, match="moving header has no Frame of Reference UID"):
        _registration(ct, no_frame, RIGID)
