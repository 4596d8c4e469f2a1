"""The auditor console: who may see it, what it filters, and that reading it is audited."""

import csv
import datetime as dt
import io

import pytest
from django.urls import reverse
from django.utils import timezone

from gateway.audit import append_only
from gateway.audit.catalogue import Action, Outcome
from gateway.audit.models import AuditEvent
from gateway.audit.services import audit_record
from imaging.identity.models import PatientIdentity
from tests.conftest import ZONES

pytestmark = pytest.mark.django_db(databases=ZONES)

CONSOLE = reverse("audit:console")
PSEUDONYM_A = "a" * 64
PSEUDONYM_B = "b" * 64
# Two patients whose pseudonyms share their first 8 digits, as the console's 12-character cells show them.
PSEUDONYM_C = "c0ffee00" + "1" * 56
PSEUDONYM_D = "c0ffee00" + "2" * 56


@pytest.fixture
def history(keys_dir, checkpoint_dir):
    audit_record(actor="dr.ada", actor_role="doctor", action=Action.STUDY_OPEN,
                 outcome=Outcome.SUCCESS, patient_pseudonym=PSEUDONYM_A, study="2.25.1",
                 source_ip="10.1.1.1")
    audit_record(actor="nurse.flo", actor_role="nurse", action=Action.STUDY_OPEN,
                 outcome=Outcome.SUCCESS, patient_pseudonym=PSEUDONYM_B, study="2.25.2",
                 source_ip="10.1.1.2")
    audit_record(actor="mallory", action=Action.LOGIN_FAILED, outcome=Outcome.DENIED,
                 source_ip="203.0.113.9")
    return list(AuditEvent.objects.order_by("sequence"))


@pytest.fixture
def neighbours(history):
    """Two more patients, each seen by one doctor, whose pseudonyms differ only after 8 digits."""
    for actor, pseudonym in (("dr.cy", PSEUDONYM_C), ("dr.di", PSEUDONYM_D)):
        audit_record(actor=actor, actor_role="doctor", action=Action.STUDY_OPEN,
                     outcome=Outcome.SUCCESS, patient_pseudonym=pseudonym, study="2.25.3")
    return list(AuditEvent.objects.order_by("sequence"))


def _shown(response) -> list[int]:
    return [event.sequence for event in response.context["page"]]


def _reads(user) -> list[AuditEvent]:
    return list(AuditEvent.objects.filter(actor=user.username, action=Action.AUDIT_READ))


def test_an_auditor_sees_events_newest_first_and_the_read_is_audited(client, signed_in, history):
    auditor = signed_in("auditor")
    response = client.get(CONSOLE)
    assert response.status_code == 200
    shown = _shown(response)
    assert shown == sorted(shown, reverse=True)
    assert {event.sequence for event in history} <= set(shown)
    [read] = _reads(auditor)
    assert read.outcome == "success" and read.actor_role == "auditor"


@pytest.mark.parametrize(("query", "expected_actors"), [
    ({"actor": "dr.ada"}, {"dr.ada"}),
    ({"actor_role": "nurse"}, {"nurse.flo"}),
    ({"patient": PSEUDONYM_B}, {"nurse.flo"}),
    ({"action": "auth.login-failed"}, {"mallory"}),
    ({"outcome": "denied"}, {"mallory"}),
    ({"source_ip": "10.1.1.1"}, {"dr.ada"}),
    ({"study": "2.25.2"}, {"nurse.flo"}),
])
def test_filters_narrow_the_events(client, signed_in, history, query, expected_actors):
    signed_in("auditor")
    response = client.get(CONSOLE, query)
    assert {event.actor for event in response.context["page"]} == expected_actors


def test_the_time_range_is_half_open(client, signed_in, history):
    signed_in("auditor")
    second = history[1].occurred_at
    response = client.get(CONSOLE, {
        "since": timezone.localtime(second).strftime("%Y-%m-%dT%H:%M:%S.%f"),
        "until": timezone.localtime(history[2].occurred_at).strftime("%Y-%m-%dT%H:%M:%S.%f"),
    })
    assert _shown(response) == [history[1].sequence]


@pytest.mark.parametrize(("prefix", "expected_actors"), [
    (PSEUDONYM_C[:9], {"dr.cy"}),
    (PSEUDONYM_D[:12].upper(), {"dr.di"}),
    (PSEUDONYM_C[:8], {"dr.cy", "dr.di"}),
    (PSEUDONYM_C, {"dr.cy"}),
    ("a" * 8, {"dr.ada"}),
])
def test_a_pseudonym_prefix_finds_the_events_of_that_patient(client, signed_in, neighbours, prefix,
                                                             expected_actors):
    auditor = signed_in("auditor")
    response = client.get(CONSOLE, {"patient": prefix})
    assert {event.actor for event in response.context["page"]} == expected_actors
    [read] = _reads(auditor)
    assert f'"patient_pseudonym_prefix":"{prefix.lower()}"' in read.details


@pytest.mark.parametrize("prefix", [PSEUDONYM_C[:7], "c0ffee0g", "c" * 65])
def test_a_pseudonym_prefix_of_fewer_than_8_hex_digits_is_refused_with_the_reason(
        client, signed_in, neighbours, prefix):
    auditor = signed_in("auditor")
    response = client.get(CONSOLE, {"patient": prefix})
    assert response.status_code == 200
    assert response.context["page"] is None
    assert response.context["form"].errors["patient"] == [
        "Enter at least the first 8 hexadecimal digits of the pseudonym "
        "(a whole pseudonym is 64 hexadecimal digits)."]
    assert "Enter at least the first 8 hexadecimal digits of the pseudonym" in response.content.decode()
    assert _reads(auditor) == []


@pytest.mark.parametrize(("actor", "expected_actors"), [
    ("ADA", {"dr.ada"}), ("Flo", {"nurse.flo"}), ("dr.", {"dr.ada", "dr.cy", "dr.di"}),
    ("nobody", set()),
])
def test_the_user_filter_matches_any_part_of_the_name_ignoring_case(client, signed_in, neighbours,
                                                                    actor, expected_actors):
    signed_in("auditor")
    response = client.get(CONSOLE, {"actor": actor})
    assert {event.actor for event in response.context["page"]} == expected_actors


def test_an_empty_result_says_so_and_keeps_the_export_links(client, signed_in, history):
    signed_in("auditor")
    response = client.get(CONSOLE, {"actor": "nobody", "outcome": "denied"})
    html = response.content.decode()
    assert _shown(response) == []
    assert "No events match these filters." in html
    for name in ("csv", "fhir", "dicom"):
        assert f'{reverse("audit:export")}?actor=nobody&amp;outcome=denied&amp;format={name}"' in html
    export = client.get(reverse("audit:export"), {"actor": "nobody", "outcome": "denied", "format": "csv"})
    assert _csv_rows(export) == []


def test_the_pseudonym_cell_links_to_that_patients_events_keeping_the_other_filters(
        client, signed_in, neighbours):
    signed_in("auditor")
    listed = client.get(CONSOLE, {"actor": "dr.", "patient": PSEUDONYM_C[:8], "page": "1"})
    html = listed.content.decode()
    link = f'href="?actor=dr.&amp;patient={PSEUDONYM_D}"'
    assert html.count(link) == 1 and f">{PSEUDONYM_D[:12]}…</a>" in html
    followed = client.get(CONSOLE + link.removeprefix('href="').removesuffix('"').replace("&amp;", "&"))
    assert {(event.actor, event.patient_pseudonym) for event in followed.context["page"]} == {
        ("dr.di", PSEUDONYM_D)}


def test_the_export_honours_the_pseudonym_prefix(client, signed_in, neighbours):
    signed_in("auditor")
    response = client.get(reverse("audit:export"), {"format": "csv", "patient": PSEUDONYM_C[:10]})
    rows = _csv_rows(response)
    assert [(row["actor"], row["patient_pseudonym"]) for row in rows] == [("dr.cy", PSEUDONYM_C)]


def _csv_rows(response) -> list[dict[str, str]]:
    assert response.status_code == 200
    body = b"".join(chunk if isinstance(chunk, bytes) else chunk.encode()
                    for chunk in response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(body)))


def test_an_invalid_filter_is_explained_and_shows_nothing(client, signed_in, history):
    auditor = signed_in("auditor")
    response = client.get(CONSOLE, {"patient": "Doe^Jane", "source_ip": "not-an-ip"})
    assert response.status_code == 200
    assert response.context["page"] is None
    assert "64 hexadecimal digits" in response.content.decode()
    assert _reads(auditor) == []


def test_pages_hold_fifty_events(client, signed_in, keys_dir):
    for index in range(120):
        audit_record(actor=f"u{index}", action=Action.LOGOUT, outcome=Outcome.SUCCESS)
    signed_in("auditor")
    first = client.get(CONSOLE, {"action": "auth.logout"})
    third = client.get(CONSOLE, {"action": "auth.logout", "page": 3})
    assert len(_shown(first)) == 50 and len(_shown(third)) == 20
    assert first.context["page"].paginator.count == 120
    assert set(_shown(first)).isdisjoint(_shown(third))


def test_resolving_a_patient_id_needs_the_individual_grant(client, signed_in, history):
    PatientIdentity.objects.create(pseudonym=PSEUDONYM_A, patient_id="MRN-0042",
                                   issuer_of_patient_id="HOSP", patient_name="Doe^Jane")
    signed_in("auditor", username="plain-auditor")
    response = client.get(CONSOLE, {"patient_id": "MRN-0042"})
    assert "patient_id" not in response.context["form"].fields
    assert len(_shown(response)) > 1


def test_an_auditor_with_the_grant_finds_a_patient_by_id(client, signed_in, history):
    PatientIdentity.objects.create(pseudonym=PSEUDONYM_A, patient_id="MRN-0042",
                                   issuer_of_patient_id="HOSP", patient_name="Doe^Jane")
    auditor = signed_in("auditor", permissions=("audit.resolve_patient_identity",))
    response = client.get(CONSOLE, {"patient_id": "MRN-0042", "issuer": "HOSP"})
    assert {event.actor for event in response.context["page"]} == {"dr.ada"}
    resolve = AuditEvent.objects.get(actor=auditor.username, action=Action.AUDIT_RESOLVE)
    assert PSEUDONYM_A in resolve.details
    for row in AuditEvent.objects.values_list("details", "actor", "patient_pseudonym"):
        assert "MRN-0042" not in " ".join(row)


def test_an_unknown_patient_id_matches_nothing(client, signed_in, history):
    signed_in("auditor", permissions=("audit.resolve_patient_identity",))
    response = client.get(CONSOLE, {"patient_id": "NOBODY"})
    assert _shown(response) == []


@pytest.mark.parametrize("role", ["doctor", "nurse", "admin_staff", "it_admin"])
def test_other_roles_are_refused_and_the_refusal_is_audited(client, signed_in, history, role):
    user = signed_in(role)
    for response in (client.get(CONSOLE), client.get(reverse("audit:export"), {"format": "csv"}),
                     client.post(reverse("audit:verify"))):
        assert response.status_code == 403
    denials = AuditEvent.objects.filter(actor=user.username, outcome=Outcome.DENIED)
    assert sorted(denials.values_list("action", flat=True)) == sorted(
        ["audit.read", "audit.export", "audit.verify"])


def test_an_auditor_without_the_second_factor_is_refused(client, signed_in, history):
    signed_in("auditor", second_factor=False)
    assert client.get(CONSOLE).status_code == 403


def test_anonymous_requests_go_to_sign_in(client, history):
    response = client.get(CONSOLE)
    assert response.status_code == 302 and response.url.startswith(reverse("accounts:login"))


def test_verify_now_updates_the_chain_badge(client, signed_in, history):
    signed_in("auditor")
    assert client.get(CONSOLE).context["chain"].state == "unverified"
    assert client.get(reverse("audit:verify")).status_code == 405
    response = client.post(reverse("audit:verify"), follow=True)
    chain = response.context["chain"]
    assert chain.state == "verified"
    assert chain.through_sequence >= len(history)
    assert f"verified through event {chain.through_sequence}" in response.content.decode()


def test_the_badge_reports_tampering(client, signed_in, history):
    from django.db import connections

    signed_in("auditor")
    connection = connections["audit"]
    with connection.cursor() as cursor:
        for statement in append_only.statements(connection, enable=False):
            cursor.execute(statement)
        cursor.execute("UPDATE audit_auditevent SET actor = 'someone-else' WHERE sequence = 1")
    response = client.post(reverse("audit:verify"), follow=True)
    assert response.context["chain"].state == "failed"
    assert response.context["chain"].first_bad_sequence == 1
    assert "FAILED at event 1" in response.content.decode()


def test_the_console_is_never_cached(client, signed_in, history):
    signed_in("auditor")
    assert "no-store" in client.get(CONSOLE).headers["Cache-Control"]


def test_future_events_are_not_invented(client, signed_in, history):
    signed_in("auditor")
    tomorrow = timezone.localtime(timezone.now() + dt.timedelta(days=1))
    response = client.get(CONSOLE, {"since": tomorrow.strftime("%Y-%m-%dT%H:%M")})
    assert _shown(response) == []


@pytest.mark.parametrize(("chosen", "content_type"), [
    ("csv", "text/csv"), ("fhir", "application/fhir+json"), ("dicom", "application/xml")])
def test_an_auditor_exports_the_filtered_events(client, signed_in, history, chosen, content_type):
    auditor = signed_in("auditor")
    response = client.get(reverse("audit:export"), {"format": chosen, "actor": "dr.ada"})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith(content_type)
    assert response.headers["Content-Disposition"].startswith("attachment;")
    body = b"".join(chunk if isinstance(chunk, bytes) else chunk.encode()
                    for chunk in response.streaming_content).decode()
    assert "dr.ada" in body and "nurse.flo" not in body and "mallory" not in body
    export_event = AuditEvent.objects.get(actor=auditor.username, action=Action.AUDIT_EXPORT)
    assert f'"format":"{chosen}"' in export_event.details
    assert '"events":1' in export_event.details


@pytest.mark.parametrize("query", [{"format": "pdf"}, {}, {"format": "csv", "patient": "x"}])
def test_a_bad_export_request_is_refused_clearly(client, signed_in, history, query):
    auditor = signed_in("auditor")
    response = client.get(reverse("audit:export"), query)
    assert response.status_code == 400
    assert not AuditEvent.objects.filter(actor=auditor.username, action=Action.AUDIT_EXPORT)
