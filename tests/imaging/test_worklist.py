"""Worklist: patient search through the policy, audited by parameters (keyed hashes), not results."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from gateway.audit.models import AuditEvent
from imaging.selectors import search_value_digest
from imaging.services import IngestBatch
from tests.conftest import ZONES
from tests.imaging.conftest import phantom_files

pytestmark = pytest.mark.django_db(databases=ZONES, transaction=True)


@pytest.fixture
def ingested(store, phantom):
    out, truth = phantom
    batch = IngestBatch(actor="cli:test", door="import", build_volumes=False)
    for path in phantom_files(out):
        batch.ingest(path.read_bytes())
    batch.close()
    return truth


def _search_events():
    return list(AuditEvent.objects.using("audit").filter(action="patient.search").order_by("sequence"))


def test_doctor_finds_patient_by_name_and_sees_pseudonymised_studies(client, signed_in, ingested):
    signed_in("doctor")
    who = ingested["patients"][0]["identity"]
    family = who["patient_name"].split("^")[0]
    response = client.get(reverse("imaging:worklist"), {"name": family})
    assert response.status_code == 200
    page = response.content.decode()
    assert who["patient_id"] in page
    assert ingested["patients"][0]["study_instance_uid"] not in page
    rows = response.context["rows"]
    assert rows and rows[0].studies and rows[0].studies[0].modalities == ["CT", "PT"]
    assert rows[0].studies[0].study_instance_uid.startswith("2.25.")
    viewer = reverse("rendering:viewer", args=[rows[0].studies[0].study_instance_uid])
    assert f'href="{viewer}"' in page
    event = _search_events()[-1]
    assert event.outcome == "success" and event.actor == "doctor-user"
    details = json.loads(event.details)
    assert details["criteria"] == {"name": search_value_digest(family)}
    assert family not in event.details and who["patient_id"] not in event.details


def test_search_by_id_and_birth_date(client, signed_in, ingested):
    signed_in("nurse")
    who = ingested["patients"][1]["identity"]
    birth = f"{who['birth_date'][:4]}-{who['birth_date'][4:6]}-{who['birth_date'][6:]}"
    response = client.get(reverse("imaging:worklist"), {"patient_id": who["patient_id"],
                                                        "birth_date": birth})
    assert [row.patient_id for row in response.context["rows"]] == [who["patient_id"]]
    wrong = client.get(reverse("imaging:worklist"), {"patient_id": who["patient_id"],
                                                     "birth_date": "1900-01-01"})
    assert wrong.context["rows"] == []


def test_admin_staff_see_demographics_only(client, signed_in, ingested):
    signed_in("admin_staff")
    who = ingested["patients"][0]["identity"]
    response = client.get(reverse("imaging:worklist"), {"patient_id": who["patient_id"]})
    assert response.status_code == 200
    rows = response.context["rows"]
    assert rows[0].patient_name == who["patient_name"] and rows[0].studies is None
    assert "2.25." not in response.content.decode()


@pytest.mark.parametrize("role", ["auditor", "it_admin"])
def test_roles_without_search_are_refused_and_audited(client, signed_in, ingested, role):
    signed_in(role)
    response = client.get(reverse("imaging:worklist"), {"name": "Doe"})
    assert response.status_code == 403
    assert _search_events()[-1].outcome == "denied"


def test_home_links_to_the_worklist(client, signed_in):
    signed_in("doctor")
    assert reverse("imaging:worklist") in client.get(reverse("home")).content.decode()


def test_a_series_that_cannot_be_shown_says_why_before_anyone_clicks(client, signed_in, ingested):
    from imaging.models import Series, VolumeState

    signed_in("doctor")
    who = ingested["patients"][0]["identity"]
    study_uid = None
    for series in Series.objects.filter(study__patient__studies__isnull=False).distinct():
        study_uid = series.study.study_instance_uid
        break
    Series.objects.filter(study__study_instance_uid=study_uid, modality="PT").update(
        volume_state=VolumeState.REFUSED, volume_reason="the pixel data cannot be decoded")
    page = client.get(reverse("imaging:worklist"), {"patient_id": who["patient_id"]}).content.decode()
    page += client.get(reverse("imaging:worklist"),
                       {"patient_id": ingested["patients"][1]["identity"]["patient_id"]}).content.decode()
    assert "PT" in page and "the pixel data cannot be decoded" in page
    Series.objects.filter(study__study_instance_uid=study_uid).update(volume_state=VolumeState.REFUSED)
    rows = [row for pid in (p["identity"]["patient_id"] for p in ingested["patients"])
            for row in client.get(reverse("imaging:worklist"), {"patient_id": pid}).context["rows"]]
    study = next(s for row in rows for s in row.studies if s.study_instance_uid == study_uid)
    assert not study.viewable and len(study.unavailable) == study.series_count
    page = "".join(client.get(reverse("imaging:worklist"), {"patient_id": p["identity"]["patient_id"]})
                   .content.decode() for p in ingested["patients"])
    assert reverse("rendering:viewer", args=[study_uid]) not in page


def test_without_criteria_the_worklist_lists_the_recent_studies_and_says_so_in_the_audit(
        client, signed_in, ingested):
    signed_in("doctor")
    response = client.get(reverse("imaging:worklist"))
    ids = {p["identity"]["patient_id"] for p in ingested["patients"]}
    assert {row.patient_id for row in response.context["rows"]} == ids
    assert "Recent studies" in response.content.decode()
    event = _search_events()[-1]
    assert json.loads(event.details) == {"criteria": {}, "listing": "recent"}


def test_a_star_lists_every_patient_and_names_are_shown_as_people_read_them(client, signed_in, ingested):
    signed_in("nurse")
    response = client.get(reverse("imaging:worklist"), {"name": "*"})
    names = [p["identity"]["patient_name"] for p in ingested["patients"]]
    assert sorted(row.patient_name for row in response.context["rows"]) == sorted(names)
    page = response.content.decode()
    for name in names:
        family, given = name.split("^")[:2]
        assert f"{family.upper()}, {given}" in page and name not in page


def test_sorting_paging_and_report_status_keep_the_other_filters(client, signed_in, ingested, monkeypatch):
    from imaging import views

    signed_in("doctor")
    ids = sorted(p["identity"]["patient_id"] for p in ingested["patients"])
    by_id = client.get(reverse("imaging:worklist"), {"name": "*", "sort": "id"})
    assert [row.patient_id for row in by_id.context["rows"]] == ids
    monkeypatch.setattr(views, "PAGE_ROWS", 1)
    first = client.get(reverse("imaging:worklist"), {"name": "*", "sort": "id"})
    assert [row.patient_id for row in first.context["rows"]] == ids[:1]
    assert "page=2" in first.content.decode() and "sort=id" in first.content.decode()
    second = client.get(reverse("imaging:worklist"), {"name": "*", "sort": "id", "page": "2"})
    assert [row.patient_id for row in second.context["rows"]] == ids[1:2]
    none = client.get(reverse("imaging:worklist"), {"name": "*", "report": "none"})
    assert none.context["total"] == len(ids)
    assert client.get(reverse("imaging:worklist"), {"name": "*", "report": "signed"}).context["rows"] == []
    assert client.get(reverse("imaging:worklist"), {"report": "bogus"}).context["error"]
