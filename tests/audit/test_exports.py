"""Audit exports: CSV, FHIR R4 AuditEvent Bundle, DICOM PS3.15 A.5 XML."""

import base64
import csv
import datetime as dt
import io
import itertools
import json
import uuid

import pytest
from fhir.resources.R4B.bundle import Bundle
from lxml import etree
from pydantic import ValidationError

from gateway.audit import chain
from gateway.audit.catalogue import Action, Outcome
from gateway.audit.exports import (
    ACTION_SYSTEM,
    CSV_COLUMNS,
    DCM_SYSTEM,
    DICOM_AUDIT_SCHEMA,
    EXPORT_FORMATS,
    PSEUDONYM_SYSTEM,
    csv_cell,
    csv_cell_value,
    export_csv,
    export_dicom_xml,
    export_fhir_bundle,
    fhir_bundle,
)
from gateway.audit.models import AuditEvent
from gateway.audit.services import audit_record
from tests.conftest import ZONES

INJECTION = "=cmd|' /C calc'!A0"
MARKUP = 'dr <b>"O\'Brien"</b> & co'
ROLES = ["doctor", "nurse", "admin_staff", "device", "auditor", "it_admin", ""]
IPS = ["", "10.1.2.3", "2001:db8::7"]
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
MESSAGE_ORDER = ["EventIdentification", "ActiveParticipant", "AuditSourceIdentification",
                 "ParticipantObjectIdentification"]


def _study(index: int) -> str:
    return f"2.25.{1000 + index}"


@pytest.fixture
def mixed(keys_dir):
    """Every Action, every Outcome, with and without each optional field, through the chain."""
    outcomes = list(Outcome)
    for index, action in enumerate(Action):
        audit_record(
            actor=INJECTION if index == 3 else MARKUP if index == 5 else f"user{index}",
            actor_role=ROLES[index % len(ROLES)],
            action=action,
            outcome=outcomes[index % len(outcomes)],
            acting_for=f"dr.{index}" if index % 5 == 0 else "",
            patient_pseudonym=f"{index + 1:064x}" if index % 2 == 0 else "",
            study=_study(index) if index % 3 != 0 else "",
            source_ip=IPS[(index // 2) % len(IPS)] or None,
            details={"note": "<&\"'> ünïcode", "index": index} if index % 4 != 1 else None,
        )
    return AuditEvent.objects.order_by("sequence")


def _event(index: int, **overrides) -> AuditEvent:
    """An unsaved event, for volume and edge cases the chain need not seal."""
    actions = list(Action)
    outcomes = list(Outcome)
    fields = {
        "sequence": index + 1, "event_id": uuid.uuid4(),
        "occurred_at": dt.datetime(2025, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=index),
        "actor": f"user{index % 50}", "actor_role": ROLES[index % len(ROLES)],
        "acting_for": "dr.house" if index % 7 == 0 else "",
        "action": actions[index % len(actions)].value,
        "outcome": outcomes[index % len(outcomes)].value,
        "patient_pseudonym": f"{index:064x}", "study": _study(index),
        "source_ip": IPS[index % len(IPS)], "details": json.dumps({"i": index}),
        "previous_hash": f"{index:064x}", "event_hash": f"{index + 1:064x}",
        "seal_kid": "k1", "seal": f"{index * 7:064x}",
    }
    return AuditEvent(**{**fields, **overrides})


def _csv_rows(chunks) -> list[dict[str, str]]:
    reader = csv.reader(io.StringIO("".join(chunks), newline=""))
    header = next(reader)
    assert tuple(header) == CSV_COLUMNS
    return [dict(zip(header, row, strict=True)) for row in reader]


def _schema() -> etree.RelaxNG:
    return etree.RelaxNG(etree.parse(str(DICOM_AUDIT_SCHEMA)))


def _messages(chunks) -> list[etree._Element]:
    root = etree.fromstring(b"".join(chunks))
    assert root.tag == "AuditMessages"
    return list(root)


def _by_action(resources: list[dict], action: Action) -> dict:
    return next(r for r in resources
                if any(c["code"] == action.value for c in r["subtype"]))


# --------------------------------------------------------------------------- CSV


@pytest.mark.django_db(databases=ZONES)
def test_csv_round_trips_every_column_and_each_row_rehashes(mixed):
    rows = _csv_rows(export_csv(mixed))
    events = list(mixed)
    assert len(rows) == len(events) == len(Action)
    for row, event in zip(rows, events, strict=True):
        stored = {column: csv_cell_value(cell) for column, cell in row.items()}
        assert int(stored["sequence"]) == event.sequence
        assert uuid.UUID(stored["event_id"]) == event.event_id
        assert dt.datetime.fromisoformat(stored["occurred_at"]) == event.occurred_at
        assert stored["occurred_at"].endswith("Z")
        for column in CSV_COLUMNS[3:]:
            assert stored[column] == getattr(event, column), column
        # The export carries the hashed forms: anyone can recompute the chain from it.
        assert chain.event_hash(stored) == stored["event_hash"]
    assert [r["previous_hash"] for r in rows[1:]] == [r["event_hash"] for r in rows[:-1]]


@pytest.mark.django_db(databases=ZONES)
def test_csv_neutralises_formula_injection(mixed):
    rows = _csv_rows(export_csv(mixed))
    injected = [row for row in rows if csv_cell_value(row["actor"]) == INJECTION]
    assert len(injected) == 1
    assert injected[0]["actor"] == "'" + INJECTION
    for row in rows:
        for column, cell in row.items():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (column, cell)
            if column.endswith(("hash", "seal")):
                assert cell == csv_cell_value(cell)  # hex is never altered


@pytest.mark.parametrize("value", ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx", "'quoted", "''"])
def test_csv_escape_is_reversible_for_every_trigger(value):
    cell = csv_cell(value)
    assert cell == "'" + value
    assert csv_cell_value(cell) == value


@pytest.mark.parametrize("value", ["", "alice", "device:CT01", "a=b", "0" * 64, "::1"])
def test_csv_leaves_harmless_cells_alone(value):
    assert csv_cell(value) == value


# --------------------------------------------------------------------------- FHIR


@pytest.mark.django_db(databases=ZONES)
def test_fhir_bundle_validates_for_every_action_and_outcome(mixed):
    document = json.loads("".join(export_fhir_bundle(mixed)))
    bundle = Bundle.model_validate(document)
    assert bundle.type == "collection"
    assert len(bundle.entry) == len(Action)
    resources = [entry["resource"] for entry in document["entry"]]
    assert {r["resourceType"] for r in resources} == {"AuditEvent"}
    assert {c["code"] for r in resources for c in r["subtype"] if c["system"] == ACTION_SYSTEM} \
        == {a.value for a in Action}
    assert {r["outcome"] for r in resources} == {o.indicator for o in Outcome}
    for entry, event in zip(document["entry"], mixed, strict=True):
        assert entry["resource"]["id"] == str(event.event_id)
        assert entry["fullUrl"] == event.event_id.urn
        assert entry["resource"]["type"]["code"] == Action(event.action).spec.event_id.code
        assert entry["resource"]["action"] == Action(event.action).spec.crude


@pytest.mark.django_db(databases=ZONES)
def test_the_fhir_validator_is_not_a_rubber_stamp(mixed):
    document = fhir_bundle(mixed)
    Bundle.model_validate(document)
    broken = json.loads(json.dumps(document))
    broken["entry"][0]["resource"]["agent"][0]["requestor"] = "perhaps"
    with pytest.raises(ValidationError):
        Bundle.model_validate(broken)
    broken = json.loads(json.dumps(document))
    broken["entry"][0]["resource"]["recorded"] = "yesterday"
    with pytest.raises(ValidationError):
        Bundle.model_validate(broken)


@pytest.mark.django_db(databases=ZONES)
def test_fhir_maps_codes_agents_and_entities(keys_dir):
    pseudonym = "ab" * 32
    audit_record(actor="alice", actor_role="doctor", action=Action.LOGIN,
                 outcome=Outcome.SUCCESS, source_ip="192.0.2.10")
    audit_record(actor="mallory", action=Action.LOGIN_FAILED, outcome=Outcome.DENIED,
                 source_ip="2001:db8::1")
    audit_record(actor="share:s1", acting_for="dr.who", action=Action.SHARE_USE,
                 outcome=Outcome.SUCCESS, patient_pseudonym=pseudonym, study="1.2.3.4",
                 details={"scope": "study"})
    document = fhir_bundle(AuditEvent.objects.order_by("sequence"))
    Bundle.model_validate(document)
    resources = [entry["resource"] for entry in document["entry"]]

    login = _by_action(resources, Action.LOGIN)
    assert login["type"] == {"system": DCM_SYSTEM, "code": "110114", "display": "User Authentication"}
    assert {"system": DCM_SYSTEM, "code": "110122", "display": "Login"} in login["subtype"]
    assert login["outcome"] == "0" and "outcomeDesc" not in login
    assert login["action"] == "E"
    [alice] = login["agent"]
    assert alice["who"]["identifier"]["value"] == "alice" and alice["requestor"] is True
    assert alice["network"] == {"address": "192.0.2.10", "type": "2"}
    assert alice["role"][0]["coding"][0]["code"] == "doctor"
    assert login["source"]["observer"]["display"] == "Fusion Gateway"
    assert login["source"]["type"][0]["code"] == "4"
    assert [e["role"]["code"] for e in login["entity"]] == ["13"]  # only the chain record

    failed = _by_action(resources, Action.LOGIN_FAILED)
    assert failed["outcome"] == "4"
    assert failed["outcomeDesc"] == "denied: sign-in refused"
    assert failed["agent"][0]["network"]["address"] == "2001:db8::1"
    assert "role" not in failed["agent"][0]

    share = _by_action(resources, Action.SHARE_USE)
    assert share["type"]["code"] == "110103" and share["action"] == "R"
    requestor, authority = share["agent"]
    assert requestor["who"]["identifier"]["value"] == "share:s1" and "network" not in requestor
    assert authority["who"]["identifier"]["value"] == "dr.who" and authority["requestor"] is False
    assert authority["type"]["coding"][0]["code"] == "RESP"
    patient, study, record = share["entity"]
    assert patient["what"]["identifier"] == {"system": PSEUDONYM_SYSTEM, "value": pseudonym}
    assert patient["type"] == {"system": ENTITY_TYPE, "code": "1", "display": "Person"}
    assert patient["role"] == {"system": OBJECT_ROLE, "code": "1", "display": "Patient"}
    assert study["what"]["identifier"]["system"] == "urn:dicom:uid"
    assert study["what"]["identifier"]["value"] == "urn:oid:1.2.3.4"
    assert study["what"]["identifier"]["type"]["coding"][0]["code"] == "110180"
    assert (study["type"]["code"], study["role"]["code"]) == ("2", "3")
    event = AuditEvent.objects.get(event_id=uuid.UUID(share["id"]))
    details = {d["type"]: d["valueString"] for d in record["detail"]}
    assert details == {"sequence": str(event.sequence), "previous_hash": event.previous_hash,
                       "event_hash": event.event_hash, "seal_kid": event.seal_kid,
                       "seal": event.seal, "details": '{"scope":"study"}'}


@pytest.mark.django_db(databases=ZONES)
def test_fhir_claims_no_balp_rest_profile(mixed):
    # BALP's Read/Create/Update/Delete/Query (and Patient*) profiles fix type to
    # audit-event-type#rest, outcome to 0 and require client/server agents; these
    # events carry DICOM event types, so claiming those profiles would be false.
    for entry in fhir_bundle(mixed)["entry"]:
        assert "profile" not in entry["resource"].get("meta", {})


# --------------------------------------------------------------------------- DICOM


@pytest.mark.django_db(databases=ZONES)
def test_dicom_messages_validate_against_the_a51_schema(mixed):
    schema = _schema()
    messages = _messages(export_dicom_xml(mixed))
    assert len(messages) == len(Action)
    for message, event in zip(messages, mixed, strict=True):
        assert schema.validate(etree.ElementTree(message)), schema.error_log
        order = [child.tag for child in message]
        assert order == sorted(order, key=MESSAGE_ORDER.index)
        spec = Action(event.action).spec
        identification = message.find("EventIdentification")
        assert identification.get("EventActionCode") == spec.crude
        assert identification.get("EventOutcomeIndicator") == Outcome(event.outcome).indicator
        assert identification.find("EventID").get("csd-code") == spec.event_id.code
        assert (identification.find("EventOutcomeDescription") is None) == (
            event.outcome == Outcome.SUCCESS)
        participants = message.findall("ActiveParticipant")
        assert participants[0].get("UserID") == event.actor
        assert participants[0].get("UserIsRequestor") == "true"
        assert participants[0].get("NetworkAccessPointID") == (event.source_ip or None)
        assert len(participants) == (2 if event.acting_for else 1)
        objects = {o.get("ParticipantObjectTypeCodeRole"): o
                   for o in message.findall("ParticipantObjectIdentification")}
        assert ("1" in objects) == bool(event.patient_pseudonym)
        assert ("3" in objects) == bool(event.study)
        assert objects["13"].get("ParticipantObjectID") == event.event_id.urn


@pytest.mark.django_db(databases=ZONES)
def test_dicom_maps_login_patient_and_study(keys_dir):
    audit_record(actor="alice", actor_role="doctor", action=Action.LOGIN_FAILED,
                 outcome=Outcome.DENIED, source_ip="192.0.2.10")
    audit_record(actor="bob", action=Action.STUDY_OPEN, outcome=Outcome.SUCCESS,
                 patient_pseudonym="cd" * 32, study="1.2.840.99")
    login, study_open = _messages(export_dicom_xml(AuditEvent.objects.order_by("sequence")))

    identification = login.find("EventIdentification")
    assert dict(identification.find("EventID").attrib) == {
        "csd-code": "110114", "codeSystemName": "DCM", "originalText": "User Authentication"}
    assert [(c.get("csd-code"), c.get("codeSystemName")) for c in identification.findall(
        "EventTypeCode")] == [("110122", "DCM"), ("auth.login-failed", ACTION_SYSTEM)]
    assert identification.get("EventActionCode") == "E"
    assert identification.get("EventOutcomeIndicator") == "4"
    assert identification.findtext("EventOutcomeDescription") == "denied: sign-in refused"
    participant = login.find("ActiveParticipant")
    assert dict(participant.attrib) == {"UserID": "alice", "UserIsRequestor": "true",
                                        "NetworkAccessPointID": "192.0.2.10",
                                        "NetworkAccessPointTypeCode": "2"}
    assert participant.find("RoleIDCode").get("csd-code") == "doctor"
    source = login.find("AuditSourceIdentification")
    assert source.get("AuditSourceID") == "fusion-gateway"
    assert source.find("AuditSourceTypeCode").get("csd-code") == "4"

    patient, study, _record = study_open.findall("ParticipantObjectIdentification")
    assert (patient.get("ParticipantObjectID"), patient.get("ParticipantObjectTypeCode"),
            patient.get("ParticipantObjectTypeCodeRole")) == ("cd" * 32, "1", "1")
    assert dict(patient.find("ParticipantObjectIDTypeCode").attrib) == {
        "csd-code": "2", "codeSystemName": "RFC-3881", "originalText": "Patient Number"}
    assert (study.get("ParticipantObjectID"), study.get("ParticipantObjectTypeCode"),
            study.get("ParticipantObjectTypeCodeRole")) == ("1.2.840.99", "2", "3")
    assert dict(study.find("ParticipantObjectIDTypeCode").attrib) == {
        "csd-code": "110180", "codeSystemName": "DCM", "originalText": "Study Instance UID"}


@pytest.mark.django_db(databases=ZONES)
def test_dicom_escapes_markup_and_carries_details_verbatim(mixed):
    raw = b"".join(export_dicom_xml(mixed))
    assert MARKUP.encode() not in raw  # never written unescaped
    assert b"&lt;b&gt;&quot;O'Brien&quot;&lt;/b&gt; &amp; co" in raw
    messages = _messages([raw])
    actors = [m.find("ActiveParticipant").get("UserID") for m in messages]
    assert MARKUP in actors and INJECTION in actors
    for message, event in zip(messages, mixed, strict=True):
        record = message.findall("ParticipantObjectIdentification")[-1]
        details = {d.get("type"): base64.b64decode(d.get("value")).decode()
                   for d in record.findall("ParticipantObjectDetail")}
        assert details.get("details", "") == event.details
        assert details["event_hash"] == event.event_hash
        assert details["sequence"] == str(event.sequence)


def test_the_schema_enforces_element_order():
    schema = _schema()
    [message] = _messages(export_dicom_xml([_event(0)]))
    assert schema.validate(etree.ElementTree(message)), schema.error_log
    source = message.find("AuditSourceIdentification")
    message.remove(source)
    message.insert(1, source)  # before the ActiveParticipant
    assert not schema.validate(etree.ElementTree(message))


def test_dicom_replaces_characters_xml_cannot_carry():
    [message] = _messages(export_dicom_xml([_event(1, actor="bad\x00name\x1b", study="")]))
    assert message.find("ActiveParticipant").get("UserID") == "bad\ufffdname\ufffd"
    assert _schema().validate(etree.ElementTree(message))


def test_attribute_whitespace_survives_the_round_trip():
    [message] = _messages(export_dicom_xml([_event(2, actor="line1\nline2\tx")]))
    assert message.find("ActiveParticipant").get("UserID") == "line1\nline2\tx"


# --------------------------------------------------------------------------- streaming

VOLUME = 20_000


class _Counting:
    """An event source that counts how far it has been read."""

    def __init__(self, total: int) -> None:
        self.total, self.read = total, 0

    def __iter__(self):
        for index in range(self.total):
            self.read += 1
            yield _event(index)


@pytest.mark.parametrize("name", ["csv", "fhir", "dicom"])
def test_exports_stream_twenty_thousand_events(name):
    source = _Counting(VOLUME)
    chunks = EXPORT_FORMATS[name].exporter(source)
    first = next(chunks)
    assert source.read < VOLUME  # the first chunk leaves before the source is drained
    rest = list(chunks)
    assert source.read == VOLUME
    assert len(rest) + 1 >= 20
    text = (b"" if isinstance(first, bytes) else "").join(itertools.chain([first], rest))
    if name == "csv":
        assert len(_csv_rows([text])) == VOLUME
    elif name == "fhir":
        document = json.loads(text)
        assert len(document["entry"]) == VOLUME
        Bundle.model_validate({**document, "entry": document["entry"][:500]})
    else:
        messages = _messages([text])
        assert len(messages) == VOLUME
        schema = _schema()
        assert all(schema.validate(etree.ElementTree(m)) for m in messages[:500])


@pytest.mark.django_db(databases=ZONES)
def test_a_queryset_is_iterated_not_cached(mixed):
    for fmt in EXPORT_FORMATS.values():
        queryset = AuditEvent.objects.order_by("sequence")
        assert sum(len(chunk) for chunk in fmt.exporter(queryset)) > 0
        assert queryset._result_cache is None


def test_export_formats_name_their_content():
    assert set(EXPORT_FORMATS) == {"fhir", "dicom", "csv"}
    events = [_event(index) for index in range(3)]
    for name, (content_type, extension, exporter) in EXPORT_FORMATS.items():
        chunks = list(exporter(events))
        assert chunks
        kind = bytes if name == "dicom" else str
        assert all(isinstance(chunk, kind) for chunk in chunks)
        assert extension in {"json", "xml", "csv"} and "/" in content_type
    assert EXPORT_FORMATS["fhir"].content_type.startswith("application/fhir+json")


def test_an_empty_log_exports_empty_documents():
    assert _csv_rows(export_csv([])) == []
    document = fhir_bundle([])
    assert "entry" not in document
    assert Bundle.model_validate(document).entry is None
    assert _messages(export_dicom_xml([])) == []
