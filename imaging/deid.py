"""De-identification: DICOM PS3.15 Annex E, Basic Application Level Confidentiality Profile.

The action table is the whole of PS3.15 Table E.1-1 as maintained by Kitware's
``dicom-anonymizer`` (edition 2026c, 655 attributes and repeating groups);
the engine that applies it is ours, because the profile options we need are
not in that package:

* **Retain Longitudinal Temporal Information with Modified Dates** (E.3.6):
  every DA and DT value, at any depth, is shifted by one whole-day offset
  per patient; TM values are kept. Intervals, and so PET decay and SUV, are
  exact.
* **Retain Patient Characteristics**, restricted to ``PatientWeight`` and
  ``PatientSize`` (SUVbw and SUL need them); age and sex are removed.
* **Retain Safe Private** (E.3.10) for a short safe-list — Philips' PET scale
  factors and GE's PET scan start, which SUV needs; the latter is a date-time and
  is shifted like every other date. Every other private attribute is removed.
* **Clean Descriptors** (E.3.5), for the study and series descriptions only:
  a reader picks series by them ("T1 SAG", "CT chest w/o"). They are kept
  after every word of the patient's names, identifiers, accession number,
  birth date and staff names found in the same object is blanked, and every
  date-like or long number is too; every other descriptor follows the table.
* **Clean Structured Content** (E.3.3), for structured reports: the content tree is
  kept (the Basic Profile would empty it, action D) and cleaned item by item — the
  subject context (name, ID, birth date, sex, age, UID of the subject) is removed;
  person names become ``ANONYMOUS``; dates shift; UIDs are replaced like any other;
  a TEXT value of up to 64 characters (a lesion label, a tracking identifier) is
  cleaned like a descriptor, and a longer one — a narrative that may name people
  the header does not — is replaced by a marker. Codes, numbers and coordinates,
  which are what a reader of the measurements needs, are kept.
* UIDs (action U, and every UI value that is not a UID of the standard) are
  replaced by ``2.25.<128-bit keyed hash>``: always the same replacement for
  the same original, so references between objects stay intact, and never
  reversible without the pseudonym key. The caller records the map in the
  identity zone.

The table is applied at every depth of nested sequences. Ambiguous actions
are resolved towards keeping the object valid without keeping a value:
Z/D, X/Z, X/Z/D → zero-length; X/D → removed; X/Z/U* → kept with its UIDs
replaced; D on a sequence → emptied.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache

from dicomanonymizer.dicomfields_selector import dicom_anonymization_database_selector
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID_dictionary

TABLE_EDITION = "dicomfields_2026c"
# DeidentificationMethod is LO (64 characters); the code sequence carries the options.
PROFILE_DESCRIPTION = "Fusion Gateway: PS3.15 Annex E (2026c) Basic Profile + options"
DEIDENTIFICATION_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    ("113108", "Retain Patient Characteristics Option"),
    ("113111", "Retain Safe Private Option"),
    ("113105", "Clean Descriptors Option"),
)
STRUCTURED_CONTENT_CODE = ("113104", "Clean Structured Content Option")
# The birth date and time are removed, not shifted: the option retains event dates only.
NOT_SHIFTED = frozenset({0x00100030, 0x00100032})  # PatientBirthDate, PatientBirthTime
RETAINED_CHARACTERISTICS = frozenset({0x00101030, 0x00101020})  # PatientWeight, PatientSize
# (private creator, group, element low byte) known safe: PS3.15 Table E.3.10-1.
SAFE_PRIVATE = frozenset({
    ("Philips PET Private Group", 0x7053, 0x00),  # SUV Factor
    ("Philips PET Private Group", 0x7053, 0x09),  # Activity Concentration Scale Factor
    ("GEMS_PETD_01", 0x0009, 0x0D),  # Scan DateTime: QIBA's SUV decay time; shifted like every date
})
PRIVATE_DATETIMES = frozenset({("GEMS_PETD_01", 0x0009, 0x0D)})
CLEANED_DESCRIPTORS = frozenset({0x00081030, 0x0008103E})  # StudyDescription, SeriesDescription
CONTENT_SEQUENCE = 0x0040A730
SUBJECT_CONTEXT = frozenset({  # PS3.16 TID 1006-1010: the subject's identity, removed from a content tree
    ("DCM", "121028"), ("DCM", "121029"), ("DCM", "121030"), ("DCM", "121031"), ("DCM", "121032"),
    ("DCM", "121033"),
})
CONTENT_TEXT_KEPT = 64
NARRATIVE_REMOVED = "[text removed at de-identification]"
IDENTIFYING_WORDS_FROM = (
    "PatientName", "PatientID", "OtherPatientIDs", "OtherPatientNames", "PatientBirthName",
    "PatientMotherBirthName", "AccessionNumber", "PatientBirthDate", "ReferringPhysicianName",
    "PerformingPhysicianName", "OperatorsName", "NameOfPhysiciansReadingStudy", "StudyID",
    "InstitutionName", "StationName",
)
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_DATE_OR_NUMBER = re.compile(r"\d{1,4}[./-]\d{1,2}[./-]\d{1,4}|\d{5,}")
_BLANKED = "***"
PIXELS_MAY_IDENTIFY_MODALITIES = frozenset({"US", "SC", "OT", "XC"})
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
_CATEGORY_ACTION = {
    "D_TAGS": "D", "Z_TAGS": "Z", "X_TAGS": "X", "U_TAGS": "U", "Z_D_TAGS": "Z",
    "X_Z_TAGS": "Z", "X_D_TAGS": "X", "X_Z_D_TAGS": "Z", "X_Z_U_STAR_TAGS": "U*",
}
_DUMMY_TEXT = "ANONYMIZED"


@cache
def action_table() -> tuple[dict[int, str], tuple[tuple[int, int, int, int, str], ...]]:
    """(exact tag → action, masked repeating groups) from PS3.15 Table E.1-1."""
    database = dicom_anonymization_database_selector(TABLE_EDITION)
    exact: dict[int, str] = {}
    masked: list[tuple[int, int, int, int, str]] = []
    for category, action in _CATEGORY_ACTION.items():
        for entry in database[category]:
            if len(entry) == 2:
                exact[(entry[0] << 16) | entry[1]] = action
            else:
                group, element, group_mask, element_mask = entry
                masked.append((group, element, group_mask, element_mask, action))
    return exact, tuple(masked)


def _action_for(tag: BaseTag) -> str | None:
    exact, masked = action_table()
    action = exact.get(int(tag))
    if action is not None:
        return action
    for group, element, group_mask, element_mask, masked_action in masked:
        if (tag.group & group_mask) == (group & group_mask) and (
                tag.element & element_mask) == (element & element_mask):
            return masked_action
    return None


def identifying_words(dataset: Dataset) -> frozenset[str]:
    """Lower-case words of the identifying attributes of ``dataset`` (names, IDs, birth date)."""
    words: set[str] = set()
    for keyword in IDENTIFYING_WORDS_FROM:
        value = dataset.get(keyword)
        values = value if isinstance(value, list | tuple | MultiValue) else [value]
        for item in values:
            words.update(word.lower() for word in _WORD.findall(str(item or "")) if len(word) >= 2)
    return frozenset(words)


def descriptor_cleaned(text: str, identifying: frozenset[str]) -> str:
    """``text`` with identifying words, dates and long numbers blanked (Clean Descriptors)."""
    text = _DATE_OR_NUMBER.sub(_BLANKED, text)
    return _WORD.sub(lambda word: _BLANKED if word.group().lower() in identifying else word.group(), text)


def uid_replacement(key: bytes, original: str) -> str:
    """The replacement of ``original``: ``2.25.`` and a 128-bit keyed hash (≤ 44 characters)."""
    digest = hmac.new(key, b"uid\x1f" + original.encode("ascii", "replace"), hashlib.sha256).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def _is_standard_uid(value: str) -> bool:
    return value in UID_dictionary


def date_shift(value: str, days: int) -> str:
    """Shift a DA value (``YYYYMMDD``, or a range/list) by ``days``; unparseable values are emptied."""
    if not value:
        return value
    try:
        day = dt.datetime.strptime(value[:8], "%Y%m%d").date()  # noqa: DTZ007
    except ValueError:
        return ""
    return (day + dt.timedelta(days=days)).strftime("%Y%m%d")


def datetime_shift(value: str, days: int) -> str:
    """Shift a DT value by ``days``, keeping its time part and offset."""
    if not value:
        return value
    shifted = date_shift(value[:8], days)
    return shifted + value[8:] if shifted else ""


@dataclass
class DeidReport:
    uid_map: dict[str, str] = field(default_factory=dict)
    removed_private: int = 0
    pixels_may_identify: bool = False


@dataclass
class Deidentifier:
    """Apply the profile to datasets of one patient.

    Parameters
    ----------
    uid_key : bytes
        Key of the UID replacement hash.
    date_shift_days : int
        This patient's whole-day date offset.
    pseudonym : str
        Written as the new ``PatientID``.
    """

    uid_key: bytes
    date_shift_days: int
    pseudonym: str
    report: DeidReport = field(default_factory=DeidReport)
    identifying: frozenset[str] = frozenset()
    structured: bool = False

    def _uid(self, value: str) -> str:
        value = value.strip().rstrip("\0")
        if not value or _is_standard_uid(value):
            return value
        replacement = self.report.uid_map.get(value)
        if replacement is None:
            replacement = uid_replacement(self.uid_key, value)
            self.report.uid_map[value] = replacement
        return replacement

    def _uid_element(self, element: DataElement) -> None:
        if element.VM > 1:
            element.value = [self._uid(str(v)) for v in element.value]
        elif element.value:
            element.value = self._uid(str(element.value))

    def _temporal(self, element: DataElement) -> None:
        shift: Callable[[str, int], str] = date_shift if element.VR == "DA" else datetime_shift
        if element.VM > 1:
            element.value = [shift(str(v), self.date_shift_days) for v in element.value]
        elif element.value:
            element.value = shift(str(element.value), self.date_shift_days)

    def _dummy(self, element: DataElement) -> None:
        vr = element.VR
        if vr == "SQ":
            element.value = Sequence()
        elif vr == "UI":
            self._uid_element(element)
        elif vr in ("DA", "DT"):
            self._temporal(element)
        elif vr == "TM":
            pass
        elif vr in ("IS", "DS"):
            element.value = "0"
        elif vr in ("US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"):
            element.value = 0
        elif vr in ("OB", "OW", "OF", "OD", "OL", "OV", "UN"):
            element.value = b""
        elif vr == "PN":
            element.value = "ANONYMOUS"
        elif vr == "CS":
            element.value = "ANONYMIZED"
        elif vr == "AS":
            element.value = "000Y"
        else:
            element.value = _DUMMY_TEXT

    @staticmethod
    def _empty(element: DataElement) -> None:
        element.value = Sequence() if element.VR == "SQ" else None

    @staticmethod
    def _private_name(dataset: Dataset, tag: BaseTag) -> tuple[str, int, int] | None:
        if tag.element < 0x1000:
            return None
        creator = dataset.get((tag.group << 16) | (tag.element >> 8))
        return None if creator is None else (str(creator.value).strip(), tag.group, tag.element & 0xFF)

    def _private_kept(self, dataset: Dataset, tag: BaseTag) -> bool:
        """Whether a private element is on the safe-list; a kept date-time is shifted."""
        name = self._private_name(dataset, tag)
        if name not in SAFE_PRIVATE:
            return False
        if name in PRIVATE_DATETIMES:
            element = dataset[tag]
            raw = element.value
            text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else str(raw or "")
            dataset[tag] = DataElement(tag, "DT", datetime_shift(text.strip(" \0"), self.date_shift_days))
        return True

    def _private_creators_needed(self, dataset: Dataset, kept: set[int]) -> set[int]:
        return {(tag >> 16 << 16) | ((tag & 0xFFFF) >> 8) for tag in kept}

    def clean(self, dataset: Dataset, *, top: bool = False) -> None:
        """De-identify ``dataset`` in place, recursing into every sequence item."""
        kept_private: set[int] = set()
        for tag in list(dataset.keys()):
            element = dataset[tag]
            if tag.is_private:
                if not tag.is_private_creator and self._private_kept(dataset, tag):
                    kept_private.add(int(tag))
                continue
            if int(tag) in RETAINED_CHARACTERISTICS:
                continue
            if top and int(tag) in CLEANED_DESCRIPTORS and element.VR == "LO":
                element.value = descriptor_cleaned(str(element.value or ""), self.identifying)[:64]
                continue
            action = _action_for(tag)
            if int(tag) not in NOT_SHIFTED:
                if element.VR in ("DA", "DT") and action != "U":
                    self._temporal(element)
                    continue
                if element.VR == "TM":
                    continue
            if int(tag) == CONTENT_SEQUENCE and self.structured:
                element.value = self._content_cleaned(element.value)
                continue
            if action == "X":
                del dataset[tag]
                continue
            if action == "Z":
                self._empty(element)
                continue
            if action == "D":
                self._dummy(element)
                continue
            if element.VR == "UI":
                self._uid_element(element)
            elif element.VR == "SQ":
                for item in element.value:
                    self.clean(item)
        creators = self._private_creators_needed(dataset, kept_private)
        for tag in [t for t in dataset.keys() if t.is_private]:  # noqa: SIM118 - tags, not elements
            if int(tag) not in kept_private and int(tag) not in creators:
                del dataset[tag]
                self.report.removed_private += 1

    def _content_cleaned(self, items: Sequence) -> Sequence:
        """A content tree's items without the subject's identity, each cleaned (E.3.3)."""
        kept = Sequence()
        for item in items:
            if content_concept(item) in SUBJECT_CONTEXT:
                continue
            if "TextValue" in item:
                text = str(item.TextValue or "")
                item.TextValue = (descriptor_cleaned(text, self.identifying) if len(text) <= CONTENT_TEXT_KEPT
                                  else NARRATIVE_REMOVED)
            self.clean(item)
            kept.append(item)
        return kept

    def apply(self, dataset: Dataset) -> DeidReport:
        """De-identify a whole instance and mark it (PatientIdentityRemoved, method codes)."""
        self.report.pixels_may_identify = pixels_may_identify(dataset)
        self.identifying = identifying_words(dataset)
        self.structured = str(dataset.get("ValueType", "")) == "CONTAINER" and "ContentSequence" in dataset
        self.clean(dataset, top=True)
        dataset.PatientID = self.pseudonym
        dataset.PatientIdentityRemoved = "YES"
        dataset.LongitudinalTemporalInformationModified = "MODIFIED"
        dataset.DeidentificationMethod = PROFILE_DESCRIPTION
        codes = []
        options = DEIDENTIFICATION_CODES + ((STRUCTURED_CONTENT_CODE,) if self.structured else ())
        for value, meaning in options:
            item = Dataset()
            item.CodeValue = value
            item.CodingSchemeDesignator = "DCM"
            item.CodeMeaning = meaning
            codes.append(item)
        dataset.DeidentificationMethodCodeSequence = codes
        if getattr(dataset, "file_meta", None) is not None:
            meta = dataset.file_meta
            for keyword in ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle",
                            "ReceivingApplicationEntityTitle", "PrivateInformation",
                            "PrivateInformationCreatorUID"):
                if keyword in meta:
                    delattr(meta, keyword)
            if "MediaStorageSOPInstanceUID" in meta:
                meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        return self.report


def content_concept(item: Dataset) -> tuple[str, str]:
    """(coding scheme, code value) of an SR content item's concept name."""
    concept = (item.get("ConceptNameCodeSequence") or [Dataset()])[0]
    return str(concept.get("CodingSchemeDesignator", "")), str(concept.get("CodeValue", ""))


def pixels_may_identify(dataset: Dataset) -> bool:
    """True when the pixels themselves may show identity (burned-in text)."""
    burned = str(dataset.get("BurnedInAnnotation", "")).upper()
    modality = str(dataset.get("Modality", "")).upper()
    sop_class = str(dataset.get("SOPClassUID", ""))
    return (burned == "YES" or modality in PIXELS_MAY_IDENTIFY_MODALITIES
            or sop_class.startswith(SECONDARY_CAPTURE_PREFIX))
