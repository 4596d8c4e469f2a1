"""A signed report as DICOM in its study, and the C-STORE that delivers it to a PACS.

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

import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import highdicom as hd
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID, EncapsulatedPDFStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.status import GENERAL_STATUS, STORAGE_SERVICE_CLASS_STATUS

MANUFACTURER = "Fusion Gateway"
CHARACTER_SET = "ISO_IR 192"
"""UTF-8: a title or author may hold any character, whatever the source's character set."""
PATIENT_AND_STUDY_TYPE_2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
                            "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")
"""Patient and General Study attributes copied from the source; empty where the source lacks them."""
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
"""Success, and the storage warnings (elements coerced, elements discarded, data set does not
match the SOP Class) under which the SCP has still stored the object."""
STATUS_WORDS = {**GENERAL_STATUS, **STORAGE_SERVICE_CLASS_STATUS}
REJECTED = frozenset({0x01, 0x02})
"""A-ASSOCIATE-RJ results: rejected permanent, rejected transient."""


class SendError(RuntimeError):
    """No association with the peer: nothing was sent."""


@dataclass(frozen=True)
class SendResult:
    """How a C-STORE batch went: instances stored, and (SOP Instance UID, reason) for the rest."""

    sent: int
    failed: tuple[tuple[str, str], ...]


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


def dicom_send(datasets: list[Dataset], *, ae_title: str, host: str, port: int, calling_ae: str = "FUSIONGW",
               timeout_s: float = 30) -> SendResult:
    """C-STORE each dataset to a peer over one association.

    One presentation context is requested per (SOP Class, transfer syntax) pair, the
    transfer syntax being the dataset's own (``file_meta.TransferSyntaxUID``), so
    nothing is transcoded. The association is always ended: released, or aborted when
    the release goes unanswered.

    Parameters
    ----------
    datasets
        Instances with file meta naming their transfer syntax.
    ae_title
        The peer's (called) AE title.
    host, port
        Where the peer listens.
    calling_ae
        This gateway's AE title.
    timeout_s
        Connection, ACSE, DIMSE and network timeout.

    Returns
    -------
    SendResult
        Stored instances counted (success or a storage warning); every other instance
        with its reason: the status in hex and words, or why no status came.

    Raises
    ------
    SendError
        When no association was established: peer unreachable, association rejected
        or aborted, or no presentation context accepted.
    ValueError
        When a dataset has no transfer syntax in its file meta.
    """
    pairs = _context_pairs(datasets)
    entity = AE(ae_title=calling_ae)
    entity.connection_timeout = entity.acse_timeout = timeout_s
    entity.dimse_timeout = entity.network_timeout = timeout_s
    for sop_class, transfer_syntax in pairs:
        entity.add_requested_context(sop_class, transfer_syntax)
    association = entity.associate(host, port, ae_title=ae_title)
    if not association.is_established:
        raise SendError(_no_association_reason(association, ae_title=ae_title, host=host, port=port,
                                               timeout_s=timeout_s))
    try:
        _no_delay(association)
        failed = tuple(_store_each(association, datasets))
    finally:
        _end(association)
    return SendResult(sent=len(datasets) - len(failed), failed=failed)


def _context_pairs(datasets: Iterable[Dataset]) -> list[tuple[UID, UID]]:
    pairs: dict[tuple[UID, UID], None] = {}
    for dataset in datasets:
        pairs[(UID(dataset.SOPClassUID), _transfer_syntax(dataset))] = None
    return list(pairs)


def _transfer_syntax(dataset: Dataset) -> UID:
    transfer_syntax = getattr(dataset.get("file_meta"), "TransferSyntaxUID", None)
    if transfer_syntax is None:
        raise ValueError(f"{dataset.SOPInstanceUID} has no file meta Transfer Syntax UID to send it in")
    return UID(transfer_syntax)


def _no_association_reason(association: Association, *, ae_title: str, host: str, port: int,
                           timeout_s: float) -> str:
    peer = f"{ae_title} at {host}:{port}"
    answer = _association_answer(association)
    if answer is not None and answer.result in REJECTED:
        why = f"{answer.result_str}, {answer.source_str}: {answer.reason_str}"
        return f"{peer} rejected the association ({why})"
    if answer is not None and not association.accepted_contexts:
        offered = ", ".join(sorted({_sop_class_name(cx.abstract_syntax)
                                    for cx in association.rejected_contexts}))
        return f"{peer} accepted none of the presentation contexts offered ({offered})"
    return (f"no association with {peer}: peer unreachable, connection refused, association aborted, "
            f"or no answer within {timeout_s:g} s")


def _association_answer(association: Association) -> A_ASSOCIATE | None:
    if association.acceptor.primitive is not None:
        return association.acceptor.primitive
    # A peer that rejects and closes at once can look to pynetdicom 3.0 like one never connected
    # (it sees the socket closed first); the A-ASSOCIATE-RJ is then left unread in the DUL's queue.
    unread = association.dul.peek_next_pdu()
    return unread if isinstance(unread, A_ASSOCIATE) else None


def _sop_class_name(uid: str | None) -> str:
    return UID(uid).name if uid else "?"


def _no_delay(association: Association) -> None:
    # dcmtk and pynetdicom leave Nagle on: each C-STORE would wait ~45 ms for a delayed ACK.
    connection = association.dul.socket
    if connection is not None and connection.socket is not None:
        connection.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _store_each(association: Association, datasets: list[Dataset]) -> Iterator[tuple[str, str]]:
    accepted = {(cx.abstract_syntax, cx.transfer_syntax[0]) for cx in association.accepted_contexts}
    for position, dataset in enumerate(datasets):
        uid = str(dataset.SOPInstanceUID)
        if not association.is_established:
            yield from _not_sent(datasets[position:])
            return
        if (dataset.SOPClassUID, _transfer_syntax(dataset)) not in accepted:
            sop_class = _sop_class_name(dataset.SOPClassUID)
            yield uid, f"not sent: the peer accepted no context for {sop_class} in this transfer syntax"
            continue
        status = association.send_c_store(dataset).get("Status")
        if status is None:
            # The peer aborted or went silent; pynetdicom may not have marked the association yet.
            yield uid, "no response: association aborted, or no answer within the DIMSE timeout"
            yield from _not_sent(datasets[position + 1:])
            return
        if status not in STORED_STATUSES:
            yield uid, f"0x{status:04X} {STATUS_WORDS.get(status, ('', 'unknown status'))[1]}"


def _not_sent(datasets: list[Dataset]) -> Iterator[tuple[str, str]]:
    for dataset in datasets:
        yield str(dataset.SOPInstanceUID), "not sent: the association ended before it"


def _end(association: Association) -> None:
    if association.is_established:
        association.release()
    if not (association.is_released or association.is_aborted):
        association.abort()
