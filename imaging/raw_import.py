"""Raw volumes (NIfTI, NRRD, MetaImage) imported as DICOM through the one ingest service.

A research or post-processing tool hands over a volume as a file, not as
DICOM. :func:`raw_volume_import` reads it with SimpleITK (ITK's readers, the
reference implementation of the three formats; it gives every format in
DICOM's patient coordinates, LPS, converting NIfTI's RAS itself), writes it as
DICOM objects marked derived, and feeds them to :class:`imaging.services.IngestBatch`
like any other door: validation, the identity/clinical split,
de-identification, encryption and the audit event are those of every instance,
and the series' volume is then built by :mod:`imaging.volumes` exactly as for
``import_dicom``.

What is written, and why:

* **CT** as CT Image Storage and **MR** as MR Image Storage, one classic
  single-frame instance per slice (what every DICOM reader and this gateway's
  volume builder read). An MR file says nothing of the acquisition, so its
  required MR attributes say "not known": ScanningSequence ``RM`` (research
  mode), SequenceVariant ``NONE``, and the type 2 parameters empty.
* **Any other modality** (PT, NM, OT) as one Multi-frame Grayscale Word
  Secondary Capture instance with the plane position, orientation and pixel
  measures functional groups (that IOD allows them; ``dciodvfy`` accepts it).
  A PET or NM image IOD would need acquisition facts (units, decay
  correction, radiopharmaceutical) that a raw file does not carry; claiming
  them would be dishonest, so such a series shows its values as given and
  offers no SUV. Secondary captures count as pictures that may carry burned-in
  text (:func:`imaging.deid.pixels_may_identify`), so consultants do not see them.
* Geometry is kept exactly: ImageOrientationPatient from the first two
  direction columns, ImagePositionPatient of slice ``k`` = origin +
  ``k`` x slice spacing x third direction column, PixelSpacing (row, column),
  SliceThickness and SpacingBetweenSlices the slice spacing (a raw file does
  not say how thick a slice was measured). A direction matrix that is not
  orthonormal (a sheared grid) cannot be written as DICOM slices and is refused.
* Values: 8- and 16-bit integers (and floats or wider integers whose values
  all are 16-bit integers) are stored as they are (a secondary capture must be
  unsigned: signed values are offset by 32768 with RescaleIntercept -32768).
  Other values are mapped linearly onto 0..65535 with RescaleSlope and
  RescaleIntercept written as DICOM writes them (DS, 16 characters) and the
  round trip checked on every voxel: the import is refused unless every value
  comes back within 1e-3 of the value range (max - min). With 65535 steps the
  quantisation alone is 7.6e-6 of the range; what the check catches is a
  range too narrow for the offset's 16-character decimal (e.g. 1e12 + [0, 1]).
* Marked derived: ImageType DERIVED\\SECONDARY, a DerivationDescription naming
  the source format and file (removed again at de-identification, as PS3.15
  requires: a file name may name the patient), BurnedInAnnotation NO, UIDs from
  :func:`pydicom.uid.generate_uid`, a new FrameOfReferenceUID unless the form
  names a series of the same study whose frame the volume shares.
* A volume joins an existing study with that study's original identifiers,
  restored from the identity zone by :func:`imaging.pacs_send.reidentified`
  (the code that re-identifies results for the PACS), so ingest maps it to the
  same pseudonym and the same replacement study; the restored UIDs are checked
  to map back before anything is written.

Limits (:func:`imaging.conf.max_object_bytes`, ``GATEWAY_MAX_OBJECT_BYTES``):
the uploaded file, and the volume at 4 bytes a voxel (how the volume builder
holds a rescaled volume in memory), must each fit it. A header naming a
separate data file is refused for uploads (``.nhdr``/``.mhd``, or a ``.nrrd``
or ``.mha`` whose header points elsewhere: it could name any file on the
server); the command (an operator at the server) may import them.
"""

from __future__ import annotations

import datetime as dt
import gzip
import io
import logging
import math
import re
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
from django.core.exceptions import PermissionDenied
from django.db.models import Max
from django.utils import timezone
from django.utils.translation import gettext as _
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    MultiFrameGrayscaleWordSecondaryCaptureImageStorage,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from gateway.policy import Permission, may
from imaging import conf
from imaging.access import StudyNotFound
from imaging.models import Series, Study
from imaging.pacs_send import reidentified
from imaging.services import IngestBatch, Status, uid_replacement_of

log = logging.getLogger(__name__)

DOOR = "raw-import"
MANUFACTURER = "Fusion Gateway"
RELATIVE_TOLERANCE = 1e-3
LEVELS = 65535
MAX_MATRIX = 65535  # Rows and Columns are US
VOLUME_BYTES_PER_VOXEL = 4
ORTHONORMAL_TOLERANCE = 1e-4
HEADER_SCAN_BYTES = 1 << 16
SCANNED_MODALITIES = ("CT", "MR", "PT", "NM", "OT")
IMAGE_TYPE_VALUE_3 = {"CT": ("AXIAL",), "MR": ("OTHER",)}  # CT: a cross-section; MR: required, not known
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_SUPPORTED_PIXELS = {
    sitk.sitkUInt8, sitk.sitkInt8, sitk.sitkUInt16, sitk.sitkInt16, sitk.sitkUInt32, sitk.sitkInt32,
    sitk.sitkUInt64, sitk.sitkInt64, sitk.sitkFloat32, sitk.sitkFloat64,
}


class RawImportRefused(ValueError):
    """The file cannot be imported; ``code`` is machine-readable (audited), the message is for people."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class RawFormat:
    name: str
    suffix: str
    image_io: str
    detached: bool = False
    """The header names a separate data file (``.nhdr``, ``.mhd``): only the command imports these."""


FORMATS = (
    RawFormat("NIfTI", ".nii.gz", "NiftiImageIO"),
    RawFormat("NIfTI", ".nii", "NiftiImageIO"),
    RawFormat("NRRD", ".nrrd", "NrrdImageIO"),
    RawFormat("NRRD", ".nhdr", "NrrdImageIO", detached=True),
    RawFormat("MetaImage", ".mha", "MetaImageIO"),
    RawFormat("MetaImage", ".mhd", "MetaImageIO", detached=True),
)
UPLOAD_SUFFIXES = tuple(f.suffix for f in FORMATS if not f.detached)


def raw_format_of(filename: str, *, detached_allowed: bool = False) -> RawFormat:
    """The format a file name's suffix names; refused when unknown (or detached and not allowed)."""
    lowered = filename.lower()
    for candidate in FORMATS:
        if lowered.endswith(candidate.suffix):
            if candidate.detached and not detached_allowed:
                raise RawImportRefused(
                    "detached-header", _("A %(suffix)s header keeps its voxels in another file; upload one "
                                         "file: %(suffixes)s.")
                    % {"suffix": candidate.suffix, "suffixes": ", ".join(UPLOAD_SUFFIXES)})
            return candidate
    raise RawImportRefused("unsupported-format", _("Not a NIfTI, NRRD or MetaImage file name (%(suffixes)s).")
                           % {"suffixes": ", ".join(UPLOAD_SUFFIXES)})


# --- what the user says about the volume ------------------------------------------------------


@dataclass(frozen=True)
class NewStudy:
    """A new study (and, for a patient ID not seen before, a new patient) named by the importer."""

    patient_name: str
    patient_id: str
    issuer_of_patient_id: str = ""
    birth_date: dt.date | None = None
    sex: str = ""
    study_description: str = ""
    study_date: dt.date | None = None


@dataclass(frozen=True)
class ExistingStudy:
    """An existing study, by its (replacement) UID; optionally the series whose frame of reference
    the volume shares (same scanner position, e.g. a map computed from that series)."""

    study_uid: str
    frame_of_reference_series: str = ""


@dataclass(frozen=True)
class SeriesFacts:
    modality: str
    description: str = ""


@dataclass(frozen=True)
class CommandOperator:
    """Whoever runs ``manage.py import_raw`` at the server: an operator, outside the web policy."""

    name: str

    @property
    def actor(self) -> str:
        return f"cli:{self.name}"


@dataclass(frozen=True)
class RawImportResult:
    study_uid: str
    series_uid: str
    pseudonym: str
    slices: int
    instances: int
    volume_state: str
    volume_reason: str
    format: str
    seconds: float


# --- reading --------------------------------------------------------------------------------


@dataclass
class RawVolume:
    """Voxels ``[k, j, i]`` with SimpleITK's geometry (LPS): ``direction`` columns are the axes."""

    voxels: np.ndarray
    origin: np.ndarray
    spacing: np.ndarray  # (i, j, k)
    direction: np.ndarray  # 3x3, column n = unit vector of index axis n
    pixel_type: str

    def position(self, k: int) -> np.ndarray:
        """ImagePositionPatient of slice ``k`` (the centre of its first voxel)."""
        return self.origin + self.direction[:, 2] * (self.spacing[2] * k)


def _data_inline(path: Path, raw_format: RawFormat) -> None:
    """Refuse a single-file header that points at another file (it could name any file here)."""
    with path.open("rb") as handle:
        head = handle.read(HEADER_SCAN_BYTES)
    if raw_format.name == "MetaImage":
        for line in head.split(b"\n"):
            key, separator, value = line.partition(b"=")
            if separator and key.strip().lower() == b"elementdatafile":
                if value.strip().upper() != b"LOCAL":
                    raise RawImportRefused("detached-header", _("The MetaImage header keeps its voxels in "
                                                                "another file (ElementDataFile: not LOCAL)."))
                return
        raise RawImportRefused("unreadable", _("Not a MetaImage file (no ElementDataFile = LOCAL)."))
    if raw_format.name == "NRRD":
        if not head.startswith(b"NRRD"):
            raise RawImportRefused("unreadable", _("Not a NRRD file (no NRRD magic)."))
        for line in head.split(b"\n")[1:]:
            line = line.rstrip(b"\r")
            if not line:
                return
            key = line.partition(b":")[0].strip().lower()
            if key in (b"data file", b"datafile"):
                raise RawImportRefused("detached-header",
                                       _("The NRRD header keeps its voxels in another file (data file)."))


def _nifti_complete(path: Path, *, compressed: bool) -> None:
    """Refuse a NIfTI file shorter than its header says: ITK's reader fills the missing voxels
    with zeros and says nothing (NRRD's and MetaImage's readers fail on a short file themselves)."""
    try:
        with (gzip.open(path, "rb") if compressed else path.open("rb")) as handle:
            head = handle.read(540)
            if len(head) < 348:
                raise EOFError
            for order in "<>":
                (sizeof,) = struct.unpack_from(order + "i", head, 0)
                if sizeof in (348, 540):
                    break
            else:
                return  # not NIfTI-1 or -2: ITK has already said what it is
            if sizeof == 348:
                dims = struct.unpack_from(order + "8h", head, 40)
                (bitpix,) = struct.unpack_from(order + "h", head, 72)
                (offset,) = struct.unpack_from(order + "f", head, 108)
            else:
                if len(head) < 540:
                    raise EOFError
                (bitpix,) = struct.unpack_from(order + "h", head, 14)
                dims = struct.unpack_from(order + "8q", head, 16)
                (offset,) = struct.unpack_from(order + "q", head, 168)
            count = math.prod(max(int(d), 1) for d in dims[1:1 + max(0, min(int(dims[0]), 7))])
            needed = int(offset) + count * max(int(bitpix), 0) // 8
            if compressed:
                have = len(head)
                while have < needed and (chunk := handle.read(1 << 20)):
                    have += len(chunk)
            else:
                have = path.stat().st_size
    except (EOFError, OSError, zlib.error) as exc:
        raise RawImportRefused("unreadable",
                               _("The NIfTI file is truncated or its compression damaged.")) from exc
    if have < needed:
        raise RawImportRefused("unreadable", _("The NIfTI file is truncated: it holds %(have)d of the "
                                               "%(needed)d bytes its header declares.")
                               % {"have": have, "needed": needed})


def raw_volume_read(*, path: Path, raw_format: RawFormat) -> RawVolume:
    """Read a 3-D scalar volume in LPS, refusing what cannot be written as DICOM slices.

    The header is read first: dimension, components, pixel type and size are
    checked before a single voxel is decompressed, so a small ``.nii.gz``
    declaring a huge volume costs nothing.
    """
    if not raw_format.detached:
        _data_inline(path, raw_format)
    reader = sitk.ImageFileReader()
    reader.SetImageIO(raw_format.image_io)
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        log.info("raw import: %s header unreadable: %s", raw_format.name, exc)
        raise RawImportRefused("unreadable", _("The file cannot be read as %(format)s (damaged, truncated "
                                               "or another format).") % {"format": raw_format.name}) from exc
    if raw_format.name == "NIfTI":
        _nifti_complete(path, compressed=raw_format.suffix.endswith(".gz"))
    size = list(reader.GetSize())
    dimension = reader.GetDimension()
    if dimension == 4 and size[3] == 1:
        reader.SetExtractIndex([0, 0, 0, 0])
        reader.SetExtractSize([*size[:3], 0])
        size = size[:3]
    elif dimension != 3:
        shape = " x ".join(str(s) for s in size)
        raise RawImportRefused("not-3d", _("A %(dimension)d-D image (%(shape)s); only 3-D volumes are "
                                           "imported (a time series: import each time point as its own "
                                           "file).") % {"dimension": dimension, "shape": shape})
    if reader.GetNumberOfComponents() != 1:
        raise RawImportRefused("vector", _("%(count)d values per voxel (a vector, colour or tensor image); "
                                           "only scalar volumes are imported.")
                               % {"count": reader.GetNumberOfComponents()})
    pixel_id = reader.GetPixelID()
    if pixel_id not in _SUPPORTED_PIXELS:
        raise RawImportRefused("pixel-type", _("Unsupported pixel type: %(type)s.")
                               % {"type": sitk.GetPixelIDValueAsString(pixel_id)})
    if size[0] > MAX_MATRIX or size[1] > MAX_MATRIX or min(size) < 1:
        raise RawImportRefused("too-large", _("Slices of %(columns)d x %(rows)d voxels; DICOM allows at most "
                                              "%(most)d x %(most)d.")
                               % {"columns": size[0], "rows": size[1], "most": MAX_MATRIX})
    volume_bytes = math.prod(size) * VOLUME_BYTES_PER_VOXEL
    if volume_bytes > conf.max_object_bytes():
        raise RawImportRefused("too-large", _("%(shape)s voxels take %(bytes)d bytes as a volume; the limit "
                                              "(GATEWAY_MAX_OBJECT_BYTES) is %(limit)d bytes.")
                               % {"shape": " x ".join(map(str, size)), "bytes": volume_bytes,
                                  "limit": conf.max_object_bytes()})
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        log.info("raw import: %s voxels unreadable: %s", raw_format.name, exc)
        raise RawImportRefused("unreadable", _("The voxels of the %(format)s file cannot be read (damaged "
                                               "or truncated).") % {"format": raw_format.name}) from exc
    direction = np.array(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    if not np.allclose(direction.T @ direction, np.eye(3), atol=ORTHONORMAL_TOLERANCE):
        raise RawImportRefused("not-orthonormal", _("The direction cosines are not orthonormal (a sheared or "
                                                    "skewed grid), which DICOM slices cannot express."))
    spacing = np.array(image.GetSpacing(), dtype=np.float64)
    origin = np.array(image.GetOrigin(), dtype=np.float64)
    if not (np.all(np.isfinite(spacing)) and np.all(spacing > 0) and np.all(np.isfinite(origin))):
        raise RawImportRefused("geometry", _("The spacing must be positive and the origin finite."))
    voxels = sitk.GetArrayFromImage(image)
    del image
    return RawVolume(voxels=voxels, origin=origin, spacing=spacing, direction=direction,
                     pixel_type=sitk.GetPixelIDValueAsString(pixel_id))


# --- values ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Encoding:
    """The stored 16-bit values and the rescale that gives the file's values back."""

    stored: np.ndarray  # uint16 or int16, [k, j, i]
    slope: str
    intercept: str
    low: float
    high: float

    @property
    def signed(self) -> bool:
        return self.stored.dtype == np.int16


def _ds(value: float) -> str:
    return format_number_as_ds(float(value))


def _integral(voxels: np.ndarray) -> bool:
    if voxels.dtype.kind in "iu":
        return True
    return all(bool(np.array_equal(plane, np.rint(plane))) for plane in voxels)


def values_encode(voxels: np.ndarray, *, unsigned_only: bool) -> Encoding:
    """16-bit stored values and their rescale; see the module docstring for the policy.

    Raises :class:`RawImportRefused` for values that are not finite or cannot be
    kept within ``RELATIVE_TOLERANCE`` of the value range.
    """
    if voxels.dtype.kind == "f" and not all(bool(np.isfinite(plane).all()) for plane in voxels):
        raise RawImportRefused("not-finite", _("The volume holds NaN or infinite values."))
    low, high = float(voxels.min()), float(voxels.max())
    if _integral(voxels):
        if low >= 0 and high <= LEVELS:
            return Encoding(voxels.astype(np.uint16), "1", "0", low, high)
        if low >= -32768 and high <= 32767:
            if not unsigned_only:
                return Encoding(voxels.astype(np.int16), "1", "0", low, high)
            stored = np.empty(voxels.shape, dtype=np.uint16)
            for k, plane in enumerate(voxels):
                stored[k] = (plane.astype(np.int32) + 32768).astype(np.uint16)
            return Encoding(stored, "1", "-32768", low, high)
    span = high - low
    slope_text = _ds(span / (LEVELS - 1)) if span > 0 else "1"
    intercept_text = _ds(low)
    slope, intercept = float(slope_text), float(intercept_text)
    stored = np.empty(voxels.shape, dtype=np.uint16)
    worst = 0.0
    for k, plane in enumerate(voxels):
        values = plane.astype(np.float64)
        levels = np.clip(np.rint((values - intercept) / slope), 0, LEVELS)
        stored[k] = levels.astype(np.uint16)
        worst = max(worst, float(np.abs(levels * slope + intercept - values).max(initial=0.0)))
    allowed = RELATIVE_TOLERANCE * (span if span > 0 else max(abs(low), 1e-30))
    if worst > allowed:
        raise RawImportRefused("precision", _("The values (%(low).6g to %(high).6g) cannot be kept within "
                                              "%(tolerance)g of their range in 16 bits with a DICOM rescale "
                                              "(worst error %(worst).3g).")
                               % {"low": low, "high": high, "tolerance": RELATIVE_TOLERANCE, "worst": worst})
    return Encoding(stored, slope_text, intercept_text, low, high)


def _window(encoding: Encoding) -> tuple[str, str]:
    """A window over the central 99 % of the values (on a sample of at most about a million voxels)."""
    stored = encoding.stored.reshape(-1)
    sample = stored[::max(1, stored.size // 1_000_000)].astype(np.float64)
    values = sample * float(encoding.slope) + float(encoding.intercept)
    low, high = (float(v) for v in np.percentile(values, [0.5, 99.5]))
    if high <= low:
        low, high = encoding.low, encoding.high
    width = max(high - low, float(encoding.slope), 1e-6)
    return _ds((low + high) / 2), _ds(width)


# --- the study the volume joins --------------------------------------------------------------


def raw_import_study(*, principal: Any, study_uid: str) -> Study:
    """The existing study an import joins, through the policy.

    Raises :class:`imaging.access.StudyNotFound` whether it is missing or the
    principal may not open it (the same error, so a refusal reveals nothing).
    """
    if not study_uid or len(study_uid) > 64 or not _UID.match(study_uid):
        raise StudyNotFound(study_uid[:64])
    if not isinstance(principal, CommandOperator) and not may(principal, Permission.STUDY_VIEW, study_uid):
        raise StudyNotFound(study_uid)
    study = Study.objects.filter(study_instance_uid=study_uid).select_related("patient").first()
    if study is None:
        raise StudyNotFound(study_uid)
    return study


def _header_existing(target: ExistingStudy, study: Study) -> tuple[Dataset, int]:
    """Patient and study modules with the study's original identifiers; (header, next series number)."""
    template = Dataset()
    template.StudyInstanceUID = study.study_instance_uid
    frame_uid = ""
    if target.frame_of_reference_series:
        series = Series.objects.filter(study=study,
                                       series_instance_uid=target.frame_of_reference_series).first()
        if series is None or not series.frame_of_reference_uid:
            raise RawImportRefused("frame-of-reference", _("The series named for the frame of reference is "
                                                           "not in this study or has no frame of reference."))
        frame_uid = series.frame_of_reference_uid
        template.FrameOfReferenceUID = frame_uid
    try:  # note: the restored UIDs are set on elements ``template`` shares with the result
        header = reidentified(template, study_uid=study.study_instance_uid, pseudonym=study.patient.pseudonym)
    except LookupError as exc:
        raise RawImportRefused("identity-missing",
                               _("The identity zone holds no identity for this study.")) from exc
    if uid_replacement_of(str(header.StudyInstanceUID)) != study.study_instance_uid:
        raise RawImportRefused("identity-missing", _("The study's original UID is not recorded."))
    if "FrameOfReferenceUID" in header and (
            uid_replacement_of(str(header.FrameOfReferenceUID)) != frame_uid):
        raise RawImportRefused("identity-missing",
                               _("The frame of reference's original UID is not recorded."))
    header.StudyDescription = study.study_description
    numbers = Series.objects.filter(study=study).aggregate(top=Max("series_number"))["top"]
    return header, max(int(numbers or 0), 0) + 1


def _header_new(target: NewStudy, now: dt.datetime) -> Dataset:
    header = Dataset()
    header.PatientName = target.patient_name
    header.PatientID = target.patient_id
    if target.issuer_of_patient_id:
        header.IssuerOfPatientID = target.issuer_of_patient_id
    header.PatientBirthDate = target.birth_date.strftime("%Y%m%d") if target.birth_date else ""
    header.PatientSex = target.sex
    header.StudyInstanceUID = generate_uid()
    header.StudyDate = (target.study_date or now.date()).strftime("%Y%m%d")
    header.StudyTime = now.strftime("%H%M%S")
    header.StudyDescription = target.study_description
    header.AccessionNumber = ""
    header.StudyID = ""
    header.ReferringPhysicianName = ""
    return header


# --- the DICOM objects -----------------------------------------------------------------------


def _sop_class(modality: str) -> str:
    if modality == "CT":
        return CTImageStorage
    if modality == "MR":
        return MRImageStorage
    return MultiFrameGrayscaleWordSecondaryCaptureImageStorage


def _series_common(ds: Dataset, *, header: Dataset, series: SeriesFacts, series_uid: str, series_number: int,
                   frame_uid: str, now: dt.datetime, source: str) -> None:
    ds.SpecificCharacterSet = "ISO_IR 192"
    for element in header:
        ds[element.tag] = element
    ds.Modality = series.modality
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_number
    ds.SeriesDescription = series.description
    ds.SeriesDate = now.strftime("%Y%m%d")
    ds.SeriesTime = now.strftime("%H%M%S")
    ds.Laterality = ""  # unknown: a raw file does not say
    ds.FrameOfReferenceUID = frame_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = MANUFACTURER
    ds.ImageType = ["DERIVED", "SECONDARY", *IMAGE_TYPE_VALUE_3.get(series.modality, ())]
    ds.DerivationDescription = f"Converted from {source} by Fusion Gateway raw import"[:1024]
    ds.BurnedInAnnotation = "NO"
    ds.ContentDate = ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.ContentTime = ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"


def _pixels(ds: Dataset, encoding: Encoding, rows: int, columns: int) -> None:
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if encoding.signed else 0


def _orientation(volume: RawVolume) -> list[str]:
    return [_ds(v) for v in (*volume.direction[:, 0], *volume.direction[:, 1])]


def _position(volume: RawVolume, k: int) -> list[str]:
    return [_ds(v) for v in volume.position(k)]


def _patient_orientation(volume: RawVolume) -> list[str]:
    """PatientOrientation (row, column directions as L/R, P/A, H/F letters, strongest first)."""
    letters = (("L", "R"), ("P", "A"), ("H", "F"))
    out = []
    for axis in (volume.direction[:, 0], volume.direction[:, 1]):
        order = sorted(range(3), key=lambda n: -abs(axis[n]))
        out.append("".join(letters[n][0 if axis[n] > 0 else 1] for n in order if abs(axis[n]) > 1e-4))
    return out


def _slice_location(volume: RawVolume, k: int) -> str:
    normal = np.cross(volume.direction[:, 0], volume.direction[:, 1])
    return _ds(float(np.dot(volume.position(k), normal)))


def _part10(ds: Dataset) -> bytes:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def raw_volume_instances(*, volume: RawVolume, encoding: Encoding, header: Dataset, series: SeriesFacts,
                         series_number: int, frame_uid: str, source: str,
                         now: dt.datetime) -> Iterator[bytes]:
    """The DICOM instances (Part 10 bytes) of the volume, one at a time.

    Parameters
    ----------
    volume, encoding : the voxels' geometry and their 16-bit stored values.
    header : Dataset
        Patient and study attributes (named by the importer, or restored from the identity zone).
    series : SeriesFacts
        Modality (chooses the SOP class) and description.
    series_number : int
    frame_uid : str
        The FrameOfReferenceUID (new, or an existing series' original one).
    source : str
        What the objects were converted from (format and file name), for DerivationDescription.
    now : datetime
        Series, content and creation date and time.
    """
    series_uid = generate_uid()
    slices, rows, columns = encoding.stored.shape
    sop_class = _sop_class(series.modality)
    center, width = _window(encoding)
    spacing_i, spacing_j, spacing_k = (_ds(v) for v in volume.spacing)
    if sop_class == MultiFrameGrayscaleWordSecondaryCaptureImageStorage:
        ds = Dataset()
        _series_common(ds, header=header, series=series, series_uid=series_uid, series_number=series_number,
                       frame_uid=frame_uid, now=now, source=source)
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = 1
        ds.ConversionType = "WSD"
        ds.PatientOrientation = _patient_orientation(volume)
        _pixels(ds, encoding, rows, columns)
        ds.NumberOfFrames = slices
        ds.RescaleIntercept = encoding.intercept
        ds.RescaleSlope = encoding.slope
        ds.RescaleType = "US"
        ds.PresentationLUTShape = "IDENTITY"
        ds.WindowCenter = center
        ds.WindowWidth = width
        ds.SliceLocationVector = [_slice_location(volume, k) for k in range(slices)]
        ds.FrameIncrementPointer = 0x00182005  # SliceLocationVector
        shared = Dataset()
        measures = Dataset()
        measures.PixelSpacing = [spacing_j, spacing_i]
        measures.SliceThickness = spacing_k
        measures.SpacingBetweenSlices = spacing_k
        shared.PixelMeasuresSequence = [measures]
        plane = Dataset()
        plane.ImageOrientationPatient = _orientation(volume)
        shared.PlaneOrientationSequence = [plane]
        ds.SharedFunctionalGroupsSequence = [shared]
        frames = []
        for k in range(slices):
            frame, where = Dataset(), Dataset()
            where.ImagePositionPatient = _position(volume, k)
            frame.PlanePositionSequence = [where]
            frames.append(frame)
        ds.PerFrameFunctionalGroupsSequence = frames
        organisation = Dataset()
        organisation.DimensionOrganizationUID = generate_uid()
        ds.DimensionOrganizationSequence = [organisation]
        index = Dataset()
        index.DimensionOrganizationUID = organisation.DimensionOrganizationUID
        index.DimensionIndexPointer = 0x00200032  # ImagePositionPatient
        index.FunctionalGroupPointer = 0x0020911D  # PlanePositionSequence
        ds.DimensionIndexSequence = [index]
        ds.DimensionOrganizationType = "3D"
        ds.PixelData = encoding.stored.tobytes()
        yield _part10(ds)
        return
    for k in range(slices):
        ds = Dataset()
        _series_common(ds, header=header, series=series, series_uid=series_uid, series_number=series_number,
                       frame_uid=frame_uid, now=now, source=source)
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.PatientPosition = ""
        ds.PixelSpacing = [spacing_j, spacing_i]
        ds.ImageOrientationPatient = _orientation(volume)
        ds.ImagePositionPatient = _position(volume, k)
        ds.SliceLocation = _slice_location(volume, k)
        ds.SliceThickness = spacing_k
        ds.SpacingBetweenSlices = spacing_k
        _pixels(ds, encoding, rows, columns)
        if series.modality == "CT" or encoding.slope != "1" or encoding.intercept != "0":
            # Type 1 in CT; MR has no Modality LUT module, so only values that need one carry it
            # (a standard extension every reader applies).
            ds.RescaleIntercept = encoding.intercept
            ds.RescaleSlope = encoding.slope
        ds.WindowCenter = center
        ds.WindowWidth = width
        if series.modality == "CT":
            ds.KVP = ""
            ds.AcquisitionNumber = ""
        else:
            ds.ScanningSequence = "RM"
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = ""
            ds.RepetitionTime = ""
            ds.EchoTime = ""
            ds.EchoTrainLength = ""
        ds.PixelData = np.ascontiguousarray(encoding.stored[k]).tobytes()
        yield _part10(ds)


# --- the service -----------------------------------------------------------------------------


def _actor(principal: Any) -> tuple[Any, str]:
    if isinstance(principal, CommandOperator):
        return principal.actor, "operator"
    return principal, str(getattr(principal, "role", ""))


def raw_import_refusal_record(*, principal: Any, refusal: RawImportRefused, source_ip: str = "",
                              raw_format: str = "") -> None:
    """Audit a refused import (the reason code and format only: never the file's name)."""
    actor, role = _actor(principal)
    details = {"door": DOOR, "reason": refusal.code, **({"format": raw_format} if raw_format else {})}
    audit_record(actor=actor, actor_role=role, action=Action.INGEST, outcome=Outcome.FAILURE,
                 source_ip=source_ip or None, details=details)


def raw_import_denial_record(*, principal: Any, study_uid: str, source_ip: str = "") -> None:
    """Audit an import aimed at a study that is missing or not the principal's (one record for both)."""
    actor, role = _actor(principal)
    audit_record(actor=actor, actor_role=role, action=Action.INGEST, outcome=Outcome.DENIED,
                 study=study_uid[:64], source_ip=source_ip or None,
                 details={"door": DOOR, "reason": "study not found"})


def raw_volume_import(*, principal: Any, path: Path, filename: str, study: NewStudy | ExistingStudy,
                      series: SeriesFacts, source_ip: str = "",
                      detached_allowed: bool = False) -> RawImportResult:
    """Import one NIfTI, NRRD or MetaImage volume into a new or an existing study, through ingest.

    Parameters
    ----------
    principal : user or CommandOperator
        A signed-in user holding ``study.import_raw`` (and, to join a study,
        ``study.view`` on it), or the operator running the command.
    path : Path
        The file to read; its suffix need not match (``filename`` chooses the reader).
    filename : str
        The name the file was given (its suffix chooses the format; it is
        written into DerivationDescription and removed again by de-identification).
    study : NewStudy or ExistingStudy
    series : SeriesFacts
    source_ip : str
        For the audit.
    detached_allowed : bool
        Accept ``.nhdr``/``.mhd`` headers whose voxels are in another file (the command only).

    Returns
    -------
    RawImportResult
        The replacement study and series UIDs, the pseudonym and the built volume's state.

    Raises
    ------
    RawImportRefused
        The file cannot be imported (audited as a failed ingest).
    StudyNotFound
        The study to join is missing or not the principal's (audited as denied).
    PermissionDenied
        The principal may not import (the views refuse before this).
    """
    started = time.monotonic()
    if not isinstance(principal, CommandOperator) and not may(principal, Permission.STUDY_IMPORT_RAW):
        raise PermissionDenied("study.import_raw is not granted")
    actor, role = _actor(principal)
    raw_format_name = ""
    try:
        if isinstance(study, ExistingStudy):
            try:
                joined = raw_import_study(principal=principal, study_uid=study.study_uid)
            except StudyNotFound:
                raw_import_denial_record(principal=principal, study_uid=study.study_uid, source_ip=source_ip)
                raise
        if series.modality not in SCANNED_MODALITIES:
            raise RawImportRefused("modality", _("Modality %(modality)s is not one of %(known)s.")
                                   % {"modality": series.modality, "known": ", ".join(SCANNED_MODALITIES)})
        raw_format = raw_format_of(filename, detached_allowed=detached_allowed)
        raw_format_name = raw_format.name
        if path.stat().st_size > conf.max_object_bytes():
            raise RawImportRefused("too-large", _("The file is larger than GATEWAY_MAX_OBJECT_BYTES "
                                                  "(%(limit)d bytes).") % {"limit": conf.max_object_bytes()})
        volume = raw_volume_read(path=path, raw_format=raw_format)
        encoding = values_encode(volume.voxels, unsigned_only=_sop_class(series.modality)
                                 == MultiFrameGrayscaleWordSecondaryCaptureImageStorage)
        volume.voxels = np.empty((0, 0, 0))  # the stored values are all that is needed now
        now = timezone.localtime()
        if isinstance(study, ExistingStudy):
            header, series_number = _header_existing(study, joined)
            frame_uid = str(header.get("FrameOfReferenceUID", "")) or generate_uid()
            if "FrameOfReferenceUID" in header:
                del header.FrameOfReferenceUID
        else:
            header, series_number, frame_uid = _header_new(study, now), 1, generate_uid()
        source = f"{raw_format.name} file {Path(filename).name}"
        batch = IngestBatch(actor=actor, actor_role=role, door=DOOR, source_ip=source_ip, build_volumes=True)
        outcomes = [batch.ingest(data) for data in raw_volume_instances(
            volume=volume, encoding=encoding, header=header, series=series, series_number=series_number,
            frame_uid=frame_uid, source=source, now=now)]
        batch.close()
    except RawImportRefused as refusal:
        raw_import_refusal_record(principal=principal, refusal=refusal, source_ip=source_ip,
                                  raw_format=raw_format_name)
        raise
    rejected = [o for o in outcomes if o.status is Status.REJECTED]
    if rejected:  # the objects are ours: a rejection is a fault here, not the file's
        log.error("raw import: ingest rejected a converted instance: %s", rejected[0].message)
        raise RawImportRefused("ingest", _("Ingest refused a converted image (%(why)s).")
                               % {"why": rejected[0].message})
    stored = Series.objects.get(pk=int(outcomes[0].series_id or 0))
    log.info("raw import by %s: %s, %d slices, %.2f s", actor if isinstance(actor, str) else role,
             raw_format.name, encoding.stored.shape[0], time.monotonic() - started)
    return RawImportResult(
        study_uid=outcomes[0].study_instance_uid, series_uid=stored.series_instance_uid,
        pseudonym=outcomes[0].pseudonym, slices=int(encoding.stored.shape[0]), instances=len(outcomes),
        volume_state=str(stored.volume_state), volume_reason=stored.volume_reason,
        format=raw_format.name, seconds=time.monotonic() - started)

