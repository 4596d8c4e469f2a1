"""A registration between two series as a DICOM Spatial Registration (REG), written and read.

Direction, per PS3.3 C.20.2: the REG's own Frame of Reference UID is the Registered
RCS; each Registration Sequence item registers its images' frame (the Source RCS) to
it, and the item's Frame of Reference Transformation Matrix ``A_M_B`` "describes how
to transform a point (Bx,By,Bz) with respect to RCS B into (Ax,Ay,Az) with respect to
RCS A" (C.20.2.1.1), A being the Registered RCS. So a REG written here takes the fixed
series' frame as its own, its fixed item holds the identity and its moving item holds
the render engine's matrix (moving patient mm -> fixed patient mm) unchanged. When a
Matrix Sequence holds several matrices, the first item is applied first
(``A_M_B = M3 @ M2 @ M1``, Equation C.20.2-2).

Registrations are kept per frame of reference: one frame registered two ways, or a
registered-to frame's own item that is not the identity, is refused rather than
guessed at. Two series of one frame (a PET that moved between the scans of a PET/CT)
are registered per series: C.20.2 has each item register "the images referenced in that
Item", its Frame of Reference UID Type 1C, so the moving item names the shared frame and
lists every image of the moving series in its Referenced Image Sequence, which alone
says what the matrix moves; the fixed item is the identity. Read back, such an item (the
registered-to frame, not the identity, naming images of known series) is a series-level
registration (``RegistrationFacts.within``), never a matrix for the whole frame.
highdicom has no Spatial Registration IOD, so this is written with pydicom; it passes
dicom3tools' ``dciodvfy``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import generate_uid
from pydicom.valuerep import format_number_as_ds

from imaging.report_dicom import CHARACTER_SET, MANUFACTURER, _copy_patient_and_study, _file_meta

SPATIAL_REGISTRATION = "1.2.840.10008.5.1.4.1.1.66.1"
DEFORMABLE_SPATIAL_REGISTRATION = "1.2.840.10008.5.1.4.1.1.66.3"
MATRIX_TYPES = ("RIGID", "RIGID_SCALE", "AFFINE")
CONTENT_LABEL = "REGISTRATION"
ORTHONORMAL_TOLERANCE = 1e-4
"""Loose enough for a rotation written by another system with six decimals."""
IDENTITY_TOLERANCE = 1e-6
SINGULAR_CONDITION = 1e10
"""A linear part worse conditioned than this has lost a dimension as far as mm go."""

MatrixType = Literal["RIGID", "RIGID_SCALE", "AFFINE"]
Headers = Dataset | Sequence[Dataset]


class RegistrationDicomError(ValueError):
    """A registration that cannot be written, or a REG object that is not honoured."""


@dataclass(frozen=True, eq=False)
class FrameRegistration:
    """How one frame of reference is registered to the REG's registered-to frame.

    ``matrix`` is 4x4 (read-only): this frame's patient mm -> the registered-to frame's
    mm. ``matrix_type`` is the loosest type of the matrices it was composed from.
    """

    frame_of_reference_uid: str
    matrix: np.ndarray
    matrix_type: str
    series_instance_uids: tuple[str, ...]
    sop_instance_uids: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class RegistrationFacts:
    """What a REG says: its registered-to frame, what lies in it, and every other frame's matrix."""

    sop_instance_uid: str
    frame_of_reference_uid: str
    """The registered-to frame (the REG's own Frame of Reference UID)."""
    series_instance_uids: tuple[str, ...]
    """Series the REG references in the registered-to frame."""
    sop_instance_uids: tuple[str, ...]
    frames: tuple[FrameRegistration, ...] = field(default=())
    """Every other frame of reference the REG registers, in the order it names them."""
    within: tuple[FrameRegistration, ...] = field(default=())
    """Series of the registered-to frame itself moved by a matrix (series-level registrations:
    the item's referenced images, of ``series_instance_uids``, only)."""

    def frame(self, frame_of_reference_uid: str) -> FrameRegistration:
        """The registration of one other frame; refused when the REG does not register it."""
        for registered in self.frames:
            if registered.frame_of_reference_uid == frame_of_reference_uid:
                return registered
        raise RegistrationDicomError(f"the registration does not register frame {frame_of_reference_uid}")

    def transform(self, *, source: str, target: str) -> np.ndarray:
        """4x4: ``source`` frame's patient mm -> ``target`` frame's, through the registered-to frame."""
        return np.linalg.inv(self._to_registered(target)) @ self._to_registered(source)

    def _to_registered(self, frame_of_reference_uid: str) -> np.ndarray:
        if frame_of_reference_uid == self.frame_of_reference_uid:
            return np.eye(4)
        return self.frame(frame_of_reference_uid).matrix


def spatial_registration(*, fixed: Headers, moving: Headers, matrix: Sequence[float], kind: MatrixType,
                         description: str, author: str, series_instance_uid: str, series_number: int,
                         instance_number: int = 1, method: Code | None = None) -> Dataset:
    """A Spatial Registration Storage instance registering ``moving`` to ``fixed``.

    Parameters
    ----------
    fixed, moving
        Headers (pixel data not needed) of one or more instances of each series, every
        one of a series in the same frame of reference. The Patient and General Study
        modules are copied from the first fixed header; its frame becomes the REG's.
    matrix
        16 numbers, row-major: moving patient mm -> fixed patient mm.
    kind
        The matrix's Frame of Reference Transformation Matrix Type.
    description
        Content Description and Series Description.
    author
        The user who made the registration; written as a one-component person name.
    series_instance_uid, series_number, instance_number
        Where the instance sits in the study.
    method
        How the matrix was found, from CID 7100 (``codes.cid7100.VisualAlignment``,
        ``ImageContentBasedAlignment``...); None leaves the moving item's Registration
        Type Code Sequence empty (Type 2) rather than claim a method.

    Returns
    -------
    Dataset
        A new instance (new SOP Instance UID) with file meta for Explicit VR Little Endian.

    Raises
    ------
    RegistrationDicomError
        When the matrix is not a valid ``kind`` matrix, a header lacks a frame of
        reference, the two are of one series, or they belong to different patients. Two series
        of one frame are allowed: the moving item's referenced images say what moves.
    """
    fixed_headers, moving_headers = _headers(fixed, "fixed"), _headers(moving, "moving")
    fixed_frame, moving_frame = _frame(fixed_headers, "fixed"), _frame(moving_headers, "moving")
    fixed_series = {str(header.get("SeriesInstanceUID", "")) for header in fixed_headers}
    if fixed_frame == moving_frame and fixed_series & {str(h.get("SeriesInstanceUID", ""))
                                                       for h in moving_headers}:
        raise RegistrationDicomError("the fixed and moving headers share a frame of reference and a "
                                     "series: a series is not registered onto itself")
    _same_patient(fixed_headers[0], moving_headers[0])
    transform = _checked(matrix, kind, "the registration matrix")
    dataset = Dataset()
    dataset.SpecificCharacterSet = CHARACTER_SET
    _copy_patient_and_study(fixed_headers[0], dataset)
    _series(dataset, description=description, series_instance_uid=series_instance_uid,
            series_number=series_number)
    dataset.FrameOfReferenceUID = fixed_frame
    dataset.PositionReferenceIndicator = fixed_headers[0].get("PositionReferenceIndicator", "")
    _content(dataset, description=description, author=author, instance_number=instance_number)
    identity = codes.cid7100.FrameOfReferenceIdentity
    dataset.RegistrationSequence = [
        _registration_item(fixed_frame, fixed_headers, np.eye(4), "RIGID", identity),
        _registration_item(moving_frame, moving_headers, transform, kind, method)]
    _common_instance_reference(dataset, fixed_headers + moving_headers)
    dataset.SOPClassUID = SPATIAL_REGISTRATION
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta = _file_meta(dataset)
    return dataset


def _headers(headers: Headers, role: str) -> list[Dataset]:
    listed = [headers] if isinstance(headers, Dataset) else list(headers)
    if not listed:
        raise RegistrationDicomError(f"no {role} header was given")
    return listed


def _frame(headers: list[Dataset], role: str) -> str:
    frames = {str(header.get("FrameOfReferenceUID", "") or "") for header in headers}
    if "" in frames:
        raise RegistrationDicomError(f"a {role} header has no Frame of Reference UID")
    if len(frames) > 1:
        raise RegistrationDicomError(f"the {role} headers span {len(frames)} frames of reference")
    return frames.pop()


def _same_patient(fixed: Dataset, moving: Dataset) -> None:
    if str(fixed.get("PatientID", "")) != str(moving.get("PatientID", "")):
        raise RegistrationDicomError("the fixed and moving series belong to different patients")


def _series(dataset: Dataset, *, description: str, series_instance_uid: str, series_number: int) -> None:
    dataset.Modality = "REG"
    dataset.SeriesInstanceUID = series_instance_uid
    dataset.SeriesNumber = series_number
    dataset.SeriesDescription = description[:64]
    dataset.Laterality = ""  # Type 2C that dciodvfy cannot evaluate; a registration has no side
    dataset.Manufacturer = MANUFACTURER


def _content(dataset: Dataset, *, description: str, author: str, instance_number: int) -> None:
    now = datetime.now(UTC)
    dataset.InstanceNumber = instance_number
    dataset.TimezoneOffsetFromUTC = "+0000"
    dataset.ContentDate = now.strftime("%Y%m%d")
    dataset.ContentTime = now.strftime("%H%M%S.%f")
    dataset.ContentLabel = CONTENT_LABEL
    dataset.ContentDescription = description[:64]
    dataset.ContentCreatorName = f"{author[:63]}^"  # a user name is one component (PS3.5 6.2)


def _registration_item(frame: str, headers: list[Dataset], transform: np.ndarray, kind: str,
                       method: Code | None) -> Dataset:
    item = Dataset()
    item.FrameOfReferenceUID = frame
    item.ReferencedImageSequence = [_instance_reference(header) for header in _unique(headers)]
    matrix = Dataset()
    matrix.FrameOfReferenceTransformationMatrix = [format_number_as_ds(float(v)) for v in transform.ravel()]
    matrix.FrameOfReferenceTransformationMatrixType = kind
    registration = Dataset()
    registration.RegistrationTypeCodeSequence = [_code(method)] if method is not None else []
    registration.MatrixSequence = [matrix]
    item.MatrixRegistrationSequence = [registration]
    return item


def _code(code: Code) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme_designator
    item.CodeMeaning = code.meaning
    return item


def _instance_reference(header: Dataset) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = header.SOPClassUID
    item.ReferencedSOPInstanceUID = header.SOPInstanceUID
    return item


def _common_instance_reference(dataset: Dataset, headers: list[Dataset]) -> None:
    """PS3.3 C.12.2: this study's series directly, other studies' under their study."""
    by_study: dict[str, dict[str, list[Dataset]]] = {}
    for header in headers:
        series = by_study.setdefault(str(header.StudyInstanceUID), {})
        series.setdefault(str(header.SeriesInstanceUID), []).append(header)
    own = by_study.pop(str(dataset.StudyInstanceUID), {})
    if own:
        dataset.ReferencedSeriesSequence = list(_series_references(own))
    if by_study:
        dataset.StudiesContainingOtherReferencedInstancesSequence = [
            _study_reference(study, series) for study, series in by_study.items()]


def _study_reference(study: str, series: dict[str, list[Dataset]]) -> Dataset:
    item = Dataset()
    item.StudyInstanceUID = study
    item.ReferencedSeriesSequence = list(_series_references(series))
    return item


def _series_references(series: dict[str, list[Dataset]]) -> Iterator[Dataset]:
    for uid, headers in series.items():
        item = Dataset()
        item.SeriesInstanceUID = uid
        item.ReferencedInstanceSequence = [_instance_reference(header) for header in _unique(headers)]
        yield item


def _unique(headers: list[Dataset]) -> list[Dataset]:
    return list({str(header.SOPInstanceUID): header for header in headers}.values())


def _checked(values: Iterable[object], kind: str, what: str) -> np.ndarray:
    """``values`` as a 4x4 matrix of type ``kind``, or a RegistrationDicomError saying why not."""
    if kind not in MATRIX_TYPES:
        raise RegistrationDicomError(f"{what} has type {kind!r}, not one of {', '.join(MATRIX_TYPES)}")
    try:
        numbers = np.array([float(v) for v in values], dtype=np.float64)  # type: ignore[arg-type]
    except (TypeError, ValueError) as error:
        raise RegistrationDicomError(f"{what} holds a value that is not a number") from error
    if numbers.shape != (16,) or not np.all(np.isfinite(numbers)):
        raise RegistrationDicomError(f"{what} must be 16 finite numbers, not {numbers.size} "
                                     f"({'all' if np.all(np.isfinite(numbers)) else 'not all'} finite)")
    matrix = numbers.reshape(4, 4)
    if not np.allclose(matrix[3], (0, 0, 0, 1), atol=IDENTITY_TOLERANCE):
        raise RegistrationDicomError(f"{what}'s last row is {matrix[3].tolist()}, not (0, 0, 0, 1)")
    linear = matrix[:3, :3]
    if np.linalg.cond(linear) > SINGULAR_CONDITION:
        raise RegistrationDicomError(f"{what} is singular: it maps space onto a plane, line or point")
    _check_type(linear, kind, what)
    return matrix


def _check_type(linear: np.ndarray, kind: str, what: str) -> None:
    gram = linear.T @ linear
    if kind == "RIGID" and not np.allclose(gram, np.eye(3), atol=ORTHONORMAL_TOLERANCE):
        raise RegistrationDicomError(f"{what} is marked RIGID but its rotation part is not orthonormal "
                                     "(it scales or shears)")
    if kind == "RIGID" and np.linalg.det(linear) < 0:
        raise RegistrationDicomError(f"{what} is marked RIGID but mirrors space (determinant < 0)")
    scales = np.sqrt(np.diag(gram))
    if kind == "RIGID_SCALE" and not np.allclose(gram / np.outer(scales, scales), np.eye(3),
                                                 atol=ORTHONORMAL_TOLERANCE):
        raise RegistrationDicomError(f"{what} is marked RIGID_SCALE but its axes are not orthogonal "
                                     "(it shears)")


def registration_read(ds: Dataset) -> RegistrationFacts:
    """What a Spatial Registration object registers, each frame's matrix into the registered-to frame.

    Parameters
    ----------
    ds
        A Spatial Registration Storage instance, from this gateway or another system.

    Returns
    -------
    RegistrationFacts
        The REG's registered-to frame with the series and instances it references there
        (series-level registrations within it apart, ``within``),
        and for each other frame its 4x4 matrix (that frame's patient mm -> registered-to
        frame's mm), its type and the series and instances it references. Series come
        from the Common Instance Reference module; an instance named there in no series
        is left out of ``series_instance_uids``.

    Raises
    ------
    RegistrationDicomError
        For a deformable registration or another class, a REG without a frame of
        reference, an item that names no frame, a matrix that is not 16 finite numbers
        with last row (0, 0, 0, 1), a singular matrix, a matrix whose type it breaks
        (RIGID not orthonormal, RIGID_SCALE shearing), a registered-to frame's own item
        that is not the identity, or one frame registered two ways.
    """
    sop_class = str(ds.get("SOPClassUID", ""))
    if sop_class == DEFORMABLE_SPATIAL_REGISTRATION:
        raise RegistrationDicomError("deformable spatial registrations are not supported: only matrices are")
    if sop_class != SPATIAL_REGISTRATION:
        raise RegistrationDicomError(f"SOP class {sop_class or 'missing'} is not a Spatial Registration")
    registered = str(ds.get("FrameOfReferenceUID", "") or "")
    if not registered:
        raise RegistrationDicomError("the registration has no Frame of Reference UID to register to")
    series_of = _series_of_instances(ds)
    frames: dict[str, FrameRegistration] = {}
    within: list[FrameRegistration] = []
    for number, item in enumerate(ds.get("RegistrationSequence") or [], start=1):
        read = _item_read(item, number, series_of)
        if (read.frame_of_reference_uid == registered and read.series_instance_uids
                and not np.allclose(read.matrix, np.eye(4), atol=IDENTITY_TOLERANCE)):
            within.append(read)
            continue
        frames[read.frame_of_reference_uid] = _merged(frames.get(read.frame_of_reference_uid), read)
    if not frames and not within:
        raise RegistrationDicomError("the registration's Registration Sequence is empty")
    own = frames.pop(registered, None)
    if own is not None and not np.allclose(own.matrix, np.eye(4), atol=IDENTITY_TOLERANCE):
        raise RegistrationDicomError("the registered-to frame's own item is not the identity")
    return RegistrationFacts(
        sop_instance_uid=str(ds.get("SOPInstanceUID", "")), frame_of_reference_uid=registered,
        series_instance_uids=own.series_instance_uids if own else (),
        sop_instance_uids=own.sop_instance_uids if own else (), frames=tuple(frames.values()),
        within=tuple(within))


def _series_of_instances(ds: Dataset) -> dict[str, str]:
    studies = [ds, *(ds.get("StudiesContainingOtherReferencedInstancesSequence") or [])]
    return {str(instance.ReferencedSOPInstanceUID): str(series.SeriesInstanceUID)
            for study in studies for series in study.get("ReferencedSeriesSequence") or []
            for instance in series.get("ReferencedInstanceSequence") or []
            if "ReferencedSOPInstanceUID" in instance and "SeriesInstanceUID" in series}


def _item_read(item: Dataset, number: int, series_of: dict[str, str]) -> FrameRegistration:
    frame = str(item.get("FrameOfReferenceUID", "") or "")
    if not frame:
        raise RegistrationDicomError(f"registration item {number} names no Frame of Reference UID")
    matrices = [entry for registration in item.get("MatrixRegistrationSequence") or []
                for entry in registration.get("MatrixSequence") or []]
    if len(item.get("MatrixRegistrationSequence") or []) != 1 or not matrices:
        raise RegistrationDicomError(f"registration item {number} must hold one matrix registration "
                                     "with at least one matrix")
    composed, loosest = np.eye(4), 0
    for step, entry in enumerate(matrices, start=1):
        kind = str(entry.get("FrameOfReferenceTransformationMatrixType", "") or "")
        values = entry.get("FrameOfReferenceTransformationMatrix")
        matrix = _checked(values if values is not None else [], kind, f"item {number}'s matrix {step}")
        composed = matrix @ composed
        loosest = max(loosest, MATRIX_TYPES.index(kind))
    instances = tuple(str(reference.ReferencedSOPInstanceUID)
                      for reference in item.get("ReferencedImageSequence") or []
                      if "ReferencedSOPInstanceUID" in reference)
    series = tuple(dict.fromkeys(series_of[uid] for uid in instances if uid in series_of))
    composed.setflags(write=False)
    return FrameRegistration(frame, composed, MATRIX_TYPES[loosest], series, instances)


def _merged(known: FrameRegistration | None, read: FrameRegistration) -> FrameRegistration:
    if known is None:
        return read
    if not np.allclose(known.matrix, read.matrix, atol=IDENTITY_TOLERANCE):
        raise RegistrationDicomError(f"frame {read.frame_of_reference_uid} is registered two different ways")
    return FrameRegistration(
        read.frame_of_reference_uid, known.matrix, known.matrix_type,
        tuple(dict.fromkeys(known.series_instance_uids + read.series_instance_uids)),
        tuple(dict.fromkeys(known.sop_instance_uids + read.sop_instance_uids)))
