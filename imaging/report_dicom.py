"""A signed report as DICOM in its study (sent by :func:`imaging.dicom_net.dicom_send`).

Two objects are written: the report's PDF as an Encapsulated PDF instance, and a
Key Object Selection (KOS) document that points at the key images (and may point at
the PDF), so a PACS viewer opens the report with the images the reader chose.

The KOS is written with highdicom, the maintained implementation of that IOD and of
the SR content rules it follows (TID 2010, observer context, evidence sequences);
the Encapsulated PDF with pydicom, because highdicom has no encapsulated-document
IOD. Both pass dicom3tools' ``dciodvfy``.

The author is a DICOM person name (``Family^Given``); a name without carets is kept
as given, which ``dciodvfy`` accepts with a "Retired Person Name form" warning. The
Encapsulated PDF IOD has no verifying-observer or content-creator attribute, so the
author is named in the General Study module's Name of Physician(s) Reading Study;
the KOS names the author as its person observer.
"""

from __future__ import annotations

from datetime import UTC, datetime

import highdicom as hd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import EncapsulatedPDFStorage, ExplicitVRLittleEndian, generate_uid

MANUFACTURER = "Fusion Gateway"
CHARACTER_SET = "ISO_IR 192"
"""UTF-8: a title or author may hold any character, whatever the source's character set."""
PATIENT_AND_STUDY_TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                            "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
"""Patient and General Study attributes copied from the source; empty where the source lacks them."""


def encapsulated_pdf(pdf: bytes, *, source: Dataset, title: str, author: str, series_instance_uid: str,
                     series_number: int, instance_number: int = 1) -> Dataset:
    """Wrap a report's PDF as an Encapsulated PDF Storage instance of the source's study.

    Parameters
    ----------
    pdf
        The document as written, unpadded.
    source
        A header of an instance of the study (pixel data not needed): the Patient and
        General Study modules are copied from it; it must have a StudyInstanceUID.
    title
        Document Title.
    author
        The reader who signed the report, as a DICOM person name.
    series_instance_uid, series_number, instance_number
        Where the instance sits in the study.

    Returns
    -------
    Dataset
        A new instance (new SOP Instance UID) with file meta for Explicit VR Little Endian.
    """
    dataset = Dataset()
    dataset.SpecificCharacterSet = CHARACTER_SET
    _copy_patient_and_study(source, dataset)
    dataset.NameOfPhysiciansReadingStudy = author
    dataset.Modality = "DOC"
    dataset.SeriesInstanceUID = series_instance_uid
    dataset.SeriesNumber = series_number
    dataset.Manufacturer = MANUFACTURER
    dataset.ConversionType = "WSD"
    _document(dataset, pdf, title=title, instance_number=instance_number)
    dataset.SOPClassUID = EncapsulatedPDFStorage
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta = _file_meta(dataset)
    return dataset


def _copy_patient_and_study(source: Dataset, dataset: Dataset) -> None:
    dataset.StudyInstanceUID = source.StudyInstanceUID
    for keyword in PATIENT_AND_STUDY_TYPE_2:
        setattr(dataset, keyword, source.get(keyword, ""))


def _document(dataset: Dataset, pdf: bytes, *, title: str, instance_number: int) -> None:
    now = datetime.now(UTC)
    dataset.InstanceNumber = instance_number
    dataset.TimezoneOffsetFromUTC = "+0000"
    dataset.ContentDate = now.strftime("%Y%m%d")
    dataset.ContentTime = now.strftime("%H%M%S.%f")
    dataset.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S.%f")
    dataset.BurnedInAnnotation = "YES"
    dataset.DocumentTitle = title
    dataset.ConceptNameCodeSequence = [hd.sr.CodedConcept.from_code(codes.LN.DiagnosticImagingReport)]
    dataset.MIMETypeOfEncapsulatedDocument = "application/pdf"
    dataset.EncapsulatedDocument = pdf + b"\0" * (len(pdf) % 2)
    dataset.EncapsulatedDocumentLength = len(pdf)


def _file_meta(dataset: Dataset) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def key_object_selection(*, referenced: list[Dataset], description: str, author: str,
                         series_instance_uid: str, series_number: int, instance_number: int = 1) -> Dataset:
    """A Key Object Selection document, "Of Interest", pointing at every referenced instance.

    Parameters
    ----------
    referenced
        Headers of instances of one study (pixel data not needed). Each needs
        StudyInstanceUID, SeriesInstanceUID, SOPClassUID and SOPInstanceUID; one with
        Rows and Columns is referenced as an image, any other (an Encapsulated PDF) as a
        composite object. highdicom takes the Patient and General Study modules from
        the first, which must carry their Type 2 attributes (PatientID, PatientName,
        PatientBirthDate, PatientSex, AccessionNumber, StudyID, StudyDate, StudyTime),
        empty or not.
    description
        Key Object Description.
    author
        The reader who chose the objects (person observer), as a DICOM person name.
    series_instance_uid, series_number, instance_number
        Where the document sits in the study.

    Returns
    -------
    Dataset
        A :class:`highdicom.ko.KeyObjectSelectionDocument` (new SOP Instance UID,
        Explicit VR Little Endian).

    Raises
    ------
    ValueError
        When nothing is referenced or the references span several studies (highdicom
        would otherwise drop the other study's evidence).
    """
    studies = {dataset.StudyInstanceUID for dataset in referenced}
    if len(studies) > 1:
        raise ValueError(f"a key object selection references one study, not {len(studies)}")
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Person,
        observer_identifying_attributes=hd.sr.PersonObserverIdentifyingAttributes(name=author))
    content = hd.ko.KeyObjectSelection(document_title=codes.DCM.OfInterest, referenced_objects=referenced,
                                       observer_person_context=observer, description=description)
    return hd.ko.KeyObjectSelectionDocument(
        evidence=referenced, content=content, series_instance_uid=series_instance_uid,
        series_number=series_number, sop_instance_uid=generate_uid(), instance_number=instance_number,
        manufacturer=MANUFACTURER, specific_character_set=CHARACTER_SET)
