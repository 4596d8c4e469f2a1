"""PS3.15 Annex E engine: the whole table, nested sequences, private tags, UIDs, dates."""

from __future__ import annotations

import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from imaging import deid

KEY = b"k" * 32


def _dataset() -> Dataset:
    ds = Dataset()
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "MRN0042"
    ds.PatientBirthDate = "19600412"
    ds.PatientWeight = "72.5"
    ds.PatientAge = "063Y"
    ds.StudyDate = "20240315"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC1"
    ds.InstitutionName = "Riverside"
    ds.StudyInstanceUID = "1.2.3.4.5"
    ds.SOPInstanceUID = "1.2.3.4.6"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.Modality = "CT"
    inner = Dataset()
    inner.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    inner.ReferencedSOPInstanceUID = "1.2.3.4.6"
    inner.PatientName = "Nested^Name"
    deeper = Dataset()
    deeper.OperatorsName = "Deep^Operator"
    deeper.AcquisitionDateTime = "20240315101500.5"
    inner.ReferencedImageSequence = Sequence([deeper])
    ds.SourceImageSequence = Sequence([inner])
    ds.add_new(0x00091010, "LO", "private secret")
    ds.add_new(0x00090010, "LO", "ACME 1.0")
    block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
    block.add_new(0x00, "DS", "0.00042")
    return ds


def test_the_table_is_the_whole_annex_e_table():
    exact, masked = deid.action_table()
    assert len(exact) > 600
    assert exact[0x00100010] == "Z"  # PatientName
    assert exact[0x00080018] == "U"  # SOPInstanceUID
    assert exact[0x00101040] == "X"  # PatientAddress
    assert any(group == 0x6000 for group, *_ in masked)  # overlays


def test_profile_applied_at_every_depth():
    ds = _dataset()
    report = deid.Deidentifier(uid_key=KEY, date_shift_days=-100, pseudonym="p" * 64).apply(ds)
    text = str(ds)
    for secret in ("Doe^Jane", "MRN0042", "Nested^Name", "Deep^Operator", "Riverside", "ACC1",
                   "19600412", "private secret", "1.2.3.4.5", "1.2.3.4.6"):
        assert secret not in text, secret
    assert ds.PatientID == "p" * 64
    assert ds.PatientIdentityRemoved == "YES"
    assert [item.CodeValue for item in ds.DeidentificationMethodCodeSequence][:2] == ["113100", "113107"]
    assert "PatientAge" not in ds and ds.PatientWeight == 72.5
    assert ds.StudyDate == "20231206" and ds.StudyTime == "101500"
    deeper = ds.SourceImageSequence[0].ReferencedImageSequence[0]
    assert deeper.AcquisitionDateTime == "20231206101500.5"
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == ds.SOPInstanceUID
    assert ds.SourceImageSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.2"
    assert ds.PatientBirthDate in ("", None)
    assert report.uid_map["1.2.3.4.6"] == ds.SOPInstanceUID
    assert all(len(uid) <= 64 and uid.startswith("2.25.") for uid in report.uid_map.values())


def test_private_tags_removed_unless_safe_listed():
    ds = _dataset()
    deid.Deidentifier(uid_key=KEY, date_shift_days=-1, pseudonym="p").apply(ds)
    assert 0x00091010 not in ds and 0x00090010 not in ds
    assert ds.private_block(0x7053, "Philips PET Private Group")[0x00].value == 0.00042


def test_uid_replacement_is_consistent_and_keyed():
    assert deid.uid_replacement(KEY, "1.2.3") == deid.uid_replacement(KEY, "1.2.3")
    assert deid.uid_replacement(KEY, "1.2.3") != deid.uid_replacement(b"o" * 32, "1.2.3")
    assert pydicom.uid.UID(deid.uid_replacement(KEY, "1.2.3")).is_valid


def test_pixels_may_identify():
    ds = Dataset()
    ds.Modality = "CT"
    assert not deid.pixels_may_identify(ds)
    ds.BurnedInAnnotation = "YES"
    assert deid.pixels_may_identify(ds)
    for modality in ("US", "SC", "OT", "XC"):
        other = Dataset()
        other.Modality = modality
        assert deid.pixels_may_identify(other)


def test_study_and_series_descriptions_are_kept_with_identifying_words_blanked():
    ds = _dataset()
    ds.StudyDescription = "PET-CT Doe follow-up 12.04.1960 ACC1"
    ds.SeriesDescription = "T1 SAG jane mrn0042 riverside 1234567"
    ds.ProtocolName = "Doe protocol"
    nested = Dataset()
    nested.StudyDescription = "requested for Doe"
    ds.RequestAttributesSequence = Sequence([nested])
    deid.Deidentifier(uid_key=KEY, date_shift_days=-100, pseudonym="p" * 64).apply(ds)
    assert ds.StudyDescription == "PET-CT *** follow-up *** ***"
    assert ds.SeriesDescription == "T1 SAG *** *** *** ***"
    assert "Doe" not in str(ds) and "1960" not in str(ds)
    assert "113105" in [item.CodeValue for item in ds.DeidentificationMethodCodeSequence]


def test_a_descriptor_with_nothing_identifying_is_kept_as_written():
    assert deid.descriptor_cleaned("CT Chest w/o contrast 5mm", frozenset({"doe", "jane"})) == (
        "CT Chest w/o contrast 5mm")

