"""The report's rules without the render workers: drafts and their owners, edits, live key images,
signing's finality, and what IT sets (letterhead, destinations), each audited."""

from __future__ import annotations

import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from PIL import Image

from gateway.audit.models import AuditEvent
from imaging.models import DicomDestination, Patient, Report, ReportSigned, ReportStatus, Study
from imaging.report_settings import ReportSettingError, destination_register, letterhead_set
from imaging.reports import (
    MAX_KEY_IMAGES,
    ReportError,
    key_image_add,
    key_image_adjust,
    report_addendum,
    report_document,
    report_draft,
    report_mark_signed,
    report_summaries,
    report_update,
)
from tests.conftest import ZONES

pytestmark = pytest.mark.django_db(databases=ZONES)

STATE = {"view": "axial", "layers": [{"series_id": "1.2.3", "window_center": 40.0, "window_width": 400.0},
                                     {"series_id": "1.2.4", "window_center": 2.5, "window_width": 5.0,
                                      "opacity": 0.5}],
         "focus_mm": [0.0, 0.0, -100.0]}


@pytest.fixture
def study() -> Study:
    patient = Patient.objects.create(pseudonym="p" * 64)
    return Study.objects.create(patient=patient, study_instance_uid="2.25.9", study_description="PET/CT")


def _keep(study: Study, author: str = "dr.a") -> Report:
    report, _ = key_image_add(study_uid=study.study_instance_uid, author=author, state=STATE,
                              caption="CT axial", normal=[0.0, 0.0, 1.0], step_mm=2.5)
    return report


def test_a_draft_belongs_to_its_author_and_the_next_version_follows_a_signed_one(study):
    report = _keep(study)
    assert report.version == 1 and report.status == ReportStatus.DRAFT
    assert report_draft(study_uid=study.study_instance_uid, author="dr.a") == (report, False)
    with pytest.raises(ReportError, match=r"being written by dr\.a"):
        report_draft(study_uid=study.study_instance_uid, author="dr.b")
    with pytest.raises(ReportError, match=r"being written by dr\.a"):
        report_update(report, author="dr.b", changes={"title": "mine"})
    with pytest.raises(ReportError, match="follows a signed report"):
        report_addendum(study_uid=study.study_instance_uid, author="dr.a")
    report = report_update(report, author="dr.a", changes={"sections": {"impression": "Normal."}})
    stale = Report.objects.get(pk=report.pk)
    report_update(report, author="dr.a", changes={"title": "changed after the layout"})
    with pytest.raises(ReportError, match="changed while it was being signed"):
        report_mark_signed(stale, signer="dr.a", signed_at=timezone.now(), series_uid="2.25.10")
    report = Report.objects.get(pk=report.pk)
    report_mark_signed(report, signer="dr.a", signed_at=timezone.now(), series_uid="2.25.10")
    with pytest.raises(ReportSigned):
        report_draft(study_uid=study.study_instance_uid, author="dr.a")
    second = report_addendum(study_uid=study.study_instance_uid, author="dr.b")
    assert (second.version, second.author, second.sections["impression"]) == (2, "dr.b", "Normal.")
    summaries = report_summaries([study.study_instance_uid, "2.25.77"])
    assert summaries["2.25.77"].label == "none"
    assert summaries[study.study_instance_uid].label == "draft (v2)"


def test_a_signed_report_refuses_every_save_even_past_the_service(study):
    report = _keep(study)
    report = report_update(report, author="dr.a", changes={"title": "PET/CT staging"})
    signed = report_mark_signed(report, signer="dr.a", signed_at=timezone.now(), series_uid="2.25.10")
    assert len(signed.content_sha256) == 64 and signed.findings == []
    stale = Report.objects.get(pk=report.pk)
    stale.title = "changed behind the service"
    with pytest.raises(ReportSigned):
        stale.save()
    assert Report.objects.get(pk=report.pk).title == "PET/CT staging"
    with pytest.raises(ReportSigned):
        key_image_adjust(stale, author="dr.a", image_id=stale.key_images[0]["id"], adjust={"slices": 1})


def test_edits_are_checked_and_key_images_keep_their_order_and_captions(study):
    report = _keep(study)
    report = _keep(study)
    first, second = (image["id"] for image in report.key_images)
    report_update(report, author="dr.a", changes={
        "key_images": [{"id": second, "caption": "fused"}, {"id": first}], "grid": [3, 4],
        "include_findings": False})
    stored = Report.objects.get(pk=report.pk)
    assert [(i["id"], i["caption"]) for i in stored.key_images] == [(second, "fused"), (first, "CT axial")]
    assert stored.grid == [3, 4] and stored.include_findings is False
    third = _keep(study).key_images[-1]["id"]  # kept from the viewer while the page was open
    report_update(report, author="dr.a", changes={"key_images": [{"id": first}], "removed": [second]})
    assert [i["id"] for i in Report.objects.get(pk=report.pk).key_images] == [first, third]
    for changes, words in (({"grid": [5, 5]}, "page grid"), ({"colour": "red"}, "unknown fields"),
                           ({"sections": {"history": "x"}}, "sections are"),
                           ({"key_images": [{"id": "000000000000"}]}, "does not hold"),
                           ({"sections": {"impression": "x" * 20_001}}, "longer than"),
                           ({"include_findings": "yes"}, "true or false")):
        with pytest.raises(ReportError, match=words):
            report_update(report, author="dr.a", changes=changes)


def test_a_key_image_moves_along_its_normal_by_whole_slices_and_changes_only_what_is_asked(study):
    report = _keep(study)
    image = report.key_images[0]
    moved = key_image_adjust(report, author="dr.a", image_id=image["id"],
                             adjust={"slices": -4, "window_width": 80, "opacity": 0.9})
    assert moved["state"]["focus_mm"] == [0.0, 0.0, -110.0]
    assert moved["state"]["layers"][0]["window_width"] == 80
    assert moved["state"]["layers"][0]["window_center"] == 40.0
    assert moved["state"]["layers"][1]["opacity"] == 0.9
    for adjust, words in (({"slices": 1e9}, "slices"), ({"window_width": 0}, "window_width"),
                          ({"opacity": True}, "opacity"), ({"rotate": 90}, "adjust names"),
                          ({"zoom": float("nan")}, "zoom")):
        with pytest.raises(ReportError, match=words):
            key_image_adjust(report, author="dr.a", image_id=image["id"], adjust=adjust)


def test_a_report_holds_a_bounded_number_of_key_images(study):
    report = _keep(study)
    Report.objects.filter(pk=report.pk).update(key_images=report.key_images * MAX_KEY_IMAGES)
    with pytest.raises(ReportError, match=f"at most {MAX_KEY_IMAGES}"):
        _keep(study)


def _png(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (40, 20), colour).save(out, format="PNG")
    return out.getvalue()


def test_the_letterhead_it_sets_is_on_the_document_and_audited(study, tmp_path):
    logo = tmp_path / "logo.png"
    logo.write_bytes(_png((0, 80, 160)))
    call_command("report_letterhead", "--hospital", "Szent Kórház", "--department", "Nuclear medicine",
                 "--logo", str(logo), "--fields", "patient,author", "--operator", "it")
    report = _keep(study)
    document = report_document(report, patient="p" * 16, pictures=[b"png"])
    assert document.letterhead.hospital == "Szent Kórház"
    assert document.letterhead.logo_png == logo.read_bytes()
    assert [name for name, _ in document.header_fields] == ["Patient", "Author"]
    event = AuditEvent.objects.using("audit").filter(action="admin.letterhead").latest("sequence")
    assert json.loads(event.details)["hospital"] == "Szent Kórház" and event.actor == "cli:it"
    (tmp_path / "bad.png").write_bytes(b"GIF89a not a png")
    with pytest.raises(CommandError, match="PNG"):
        call_command("report_letterhead", "--logo", str(tmp_path / "bad.png"))
    with pytest.raises(ReportSettingError, match="header fields"):
        letterhead_set(actor="it", header_fields=["birth_date"])


def test_destinations_are_checked_registered_withdrawn_and_audited():
    destination = destination_register(name="PACS", ae_title="ORTHANC", host="10.0.0.5", port=4242,
                                       actor="it")
    assert DicomDestination.objects.get(pk=destination.pk).active
    for ae_title, port, words in (("", 104, "AE title"), ("A" * 17, 104, "AE title"), ("PACS", 0, "port")):
        with pytest.raises(ReportSettingError, match=words):
            destination_register(name="x", ae_title=ae_title, host="h", port=port, actor="it")
    call_command("dicom_destination", "withdraw", "PACS", "--operator", "it")
    assert not DicomDestination.objects.get(pk=destination.pk).active
    with pytest.raises(CommandError, match="no active destination"):
        call_command("dicom_destination", "withdraw", "PACS")
    changes = [json.loads(e.details)["change"] for e in AuditEvent.objects.using("audit")
               .filter(action="admin.destination").order_by("sequence")]
    assert changes == ["registered", "withdrawn"]
