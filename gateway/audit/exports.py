"""Exporting the audit log: CSV, FHIR R4 AuditEvent Bundle, DICOM PS3.15 A.5 XML.

Every exporter takes any iterable of ``AuditEvent`` (a queryset is read with
``.iterator()`` so it is never cached whole) and yields chunks of about
``CHUNK_SIZE`` characters/bytes, ready for a ``StreamingHttpResponse``:

    fmt = EXPORT_FORMATS["fhir"]
    response = StreamingHttpResponse(fmt.exporter(events), content_type=fmt.content_type)

The mapping of each field onto the standards is documented in
``docs/audit-exports.md``; the per-action codes come from ``catalogue``.
Nothing here reaches beyond the audit zone: the patient appears only as its
pseudonym, the study only as its de-identified UID.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
import re
import uuid
import xml.etree.ElementTree as ET  # builds XML only; nothing here parses it
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from django.db.models import QuerySet
from django.utils import timezone

from gateway.audit import chain
from gateway.audit.catalogue import Action, Code, Outcome
from gateway.audit.models import AuditEvent

CHUNK_SIZE = 64 * 1024
_QUERYSET_BATCH = 2000

# --------------------------------------------------------------------------- common


def _events(events: Iterable[AuditEvent]) -> Iterator[AuditEvent]:
    if isinstance(events, QuerySet):
        return events.iterator(chunk_size=_QUERYSET_BATCH)
    return iter(events)


def _event_uuid(event: AuditEvent) -> uuid.UUID:
    value = event.event_id
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _timestamp(event: AuditEvent) -> str:
    """The canonical UTC form the chain hashes: ``2024-05-01T09:30:00.123456Z``."""
    moment = event.occurred_at
    if isinstance(moment, str):
        moment = dt.datetime.fromisoformat(moment)
    if timezone.is_naive(moment):
        moment = moment.replace(tzinfo=dt.UTC)
    return chain.timestamp_canonical(moment)


def _chunked(pieces: Iterable[str], size: int = CHUNK_SIZE) -> Iterator[str]:
    buffer: list[str] = []
    length = 0
    for piece in pieces:
        buffer.append(piece)
        length += len(piece)
        if length >= size:
            yield "".join(buffer)
            buffer, length = [], 0
    if buffer:
        yield "".join(buffer)


def _chunked_bytes(pieces: Iterable[bytes], size: int = CHUNK_SIZE) -> Iterator[bytes]:
    buffer: list[bytes] = []
    length = 0
    for piece in pieces:
        buffer.append(piece)
        length += len(piece)
        if length >= size:
            yield b"".join(buffer)
            buffer, length = [], 0
    if buffer:
        yield b"".join(buffer)


def _outcome_description(event: AuditEvent) -> str:
    return f"{Outcome(event.outcome).value}: {Action(event.action).spec.description}"


# --------------------------------------------------------------------------- CSV

CSV_COLUMNS = (
    "sequence", "event_id", "occurred_at", "actor", "actor_role", "acting_for", "action",
    "outcome", "patient_pseudonym", "study", "source_ip", "details", "previous_hash",
    "event_hash", "seal_kid", "seal",
)
# A spreadsheet evaluates a cell that starts with one of these as a formula.
_FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")
_CSV_ESCAPE = "'"


def csv_cell(value: str) -> str:
    """Neutralise formula injection: prefix ``'`` to a cell starting with = + - @ TAB CR.

    A cell that itself starts with ``'`` is prefixed too, so the rule is
    reversible: ``csv_cell_value`` strips exactly one leading ``'``.
    """
    if value.startswith((*_FORMULA_TRIGGERS, _CSV_ESCAPE)):
        return _CSV_ESCAPE + value
    return value


def csv_cell_value(cell: str) -> str:
    """The stored value of an exported cell (the inverse of ``csv_cell``)."""
    return cell[1:] if cell.startswith(_CSV_ESCAPE) else cell


def _csv_row(event: AuditEvent) -> list[str]:
    values = {
        "sequence": str(event.sequence),
        "event_id": _event_uuid(event).hex,
        "occurred_at": _timestamp(event),
        "actor": event.actor, "actor_role": event.actor_role, "acting_for": event.acting_for,
        "action": event.action, "outcome": event.outcome,
        "patient_pseudonym": event.patient_pseudonym, "study": event.study,
        "source_ip": event.source_ip, "details": event.details,
        "previous_hash": event.previous_hash, "event_hash": event.event_hash,
        "seal_kid": event.seal_kid, "seal": event.seal,
    }
    return [csv_cell("" if values[column] is None else str(values[column])) for column in CSV_COLUMNS]


def export_csv(events: Iterable[AuditEvent]) -> Iterator[str]:
    """RFC 4180 CSV (CRLF rows), a header then one row per event, every column.

    ``event_id`` and ``occurred_at`` are in the canonical form the chain
    hashes, so after ``csv_cell_value`` each row's ``event_hash`` can be
    recomputed with ``chain.event_hash`` and compared.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    for event in _events(events):
        writer.writerow(_csv_row(event))
        if buffer.tell() >= CHUNK_SIZE:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()


# --------------------------------------------------------------------------- FHIR

DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
ACTION_SYSTEM = "urn:fusion-gateway:audit-action"
ROLE_SYSTEM = "urn:fusion-gateway:role"
PRINCIPAL_SYSTEM = "urn:fusion-gateway:principal"
PSEUDONYM_SYSTEM = "urn:fusion-gateway:pseudonym"
DICOM_UID_SYSTEM = "urn:dicom:uid"
CHAIN_DETAIL_TYPES = ("sequence", "previous_hash", "event_hash", "seal_kid", "seal")

_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
_OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
_SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
_PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
_RFC3986 = "urn:ietf:rfc:3986"
_GATEWAY = "Fusion Gateway"
_GATEWAY_ID = "fusion-gateway"


def _coding(system: str, code: str, display: str) -> dict[str, str]:
    return {"system": system, "code": code, "display": display}


def _dcm_coding(code: Code) -> dict[str, str]:
    return _coding(DCM_SYSTEM, code.code, code.display)


def _fhir_agents(event: AuditEvent) -> list[dict[str, Any]]:
    actor: dict[str, Any] = {
        "who": {"identifier": {"system": PRINCIPAL_SYSTEM, "value": event.actor}},
        "name": event.actor,
        "requestor": True,
    }
    if event.actor_role:
        actor["role"] = [{"coding": [_coding(ROLE_SYSTEM, event.actor_role, event.actor_role)]}]
    if event.source_ip:
        actor["network"] = {"address": event.source_ip, "type": "2"}  # 2 = IP address
    agents = [actor]
    if event.acting_for:
        agents.append({
            "type": {"coding": [_coding(_PARTICIPATION, "RESP", "responsible party")]},
            "who": {"identifier": {"system": PRINCIPAL_SYSTEM, "value": event.acting_for}},
            "name": event.acting_for,
            "requestor": False,
        })
    return agents


def _fhir_entities(event: AuditEvent, event_uuid: uuid.UUID) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    if event.patient_pseudonym:
        entities.append({
            "what": {"type": "Patient",
                     "identifier": {"system": PSEUDONYM_SYSTEM, "value": event.patient_pseudonym}},
            "type": _coding(_ENTITY_TYPE, "1", "Person"),
            "role": _coding(_OBJECT_ROLE, "1", "Patient"),
        })
    if event.study:
        entities.append({
            "what": {"type": "ImagingStudy", "identifier": {
                "type": {"coding": [_coding(DCM_SYSTEM, "110180", "Study Instance UID")]},
                "system": DICOM_UID_SYSTEM, "value": f"urn:oid:{event.study}"}},
            "type": _coding(_ENTITY_TYPE, "2", "System Object"),
            "role": _coding(_OBJECT_ROLE, "3", "Report"),
        })
    chain_facts = {
        "sequence": str(event.sequence), "previous_hash": event.previous_hash,
        "event_hash": event.event_hash, "seal_kid": event.seal_kid, "seal": event.seal,
    }
    detail = [{"type": name, "valueString": chain_facts[name]}
              for name in CHAIN_DETAIL_TYPES if chain_facts[name]]
    if event.details:
        detail.append({"type": "details", "valueString": event.details})
    record: dict[str, Any] = {
        "what": {"identifier": {"system": _RFC3986, "value": event_uuid.urn}},
        "type": _coding(_ENTITY_TYPE, "2", "System Object"),
        "role": _coding(_OBJECT_ROLE, "13", "Security Resource"),
        "name": "audit chain record",
    }
    if detail:
        record["detail"] = detail
    entities.append(record)
    return entities


def fhir_audit_event(event: AuditEvent) -> dict[str, Any]:
    """One event as a FHIR R4 AuditEvent resource (a plain dict)."""
    action = Action(event.action)
    spec = action.spec
    outcome = Outcome(event.outcome)
    event_uuid = _event_uuid(event)
    subtype = [_dcm_coding(spec.event_type)] if spec.event_type else []
    subtype.append(_coding(ACTION_SYSTEM, action.value, spec.description))
    resource: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(event_uuid),
        "type": _dcm_coding(spec.event_id),
        "subtype": subtype,
        "action": spec.crude,
        "recorded": _timestamp(event),
        "outcome": outcome.indicator,
    }
    if outcome is not Outcome.SUCCESS:
        resource["outcomeDesc"] = _outcome_description(event)
    resource["agent"] = _fhir_agents(event)
    resource["source"] = {
        "site": _GATEWAY_ID,
        "observer": {"display": _GATEWAY},
        "type": [_coding(_SOURCE_TYPE, "4", "Application Server")],
    }
    resource["entity"] = _fhir_entities(event, event_uuid)
    return resource


def _fhir_pieces(events: Iterable[AuditEvent], timestamp: str) -> Iterator[str]:
    yield '{"resourceType":"Bundle","type":"collection","timestamp":' + json.dumps(timestamp)
    separator = ',"entry":['  # FHIR forbids an empty array: no events, no "entry"
    for event in _events(events):
        resource = fhir_audit_event(event)
        entry = {"fullUrl": f"urn:uuid:{resource['id']}", "resource": resource}
        yield separator + json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
        separator = ","
    yield "}" if separator.startswith(",\"") else "]}"


def export_fhir_bundle(events: Iterable[AuditEvent], *,
                       now: dt.datetime | None = None) -> Iterator[str]:
    """One FHIR R4 ``Bundle`` (type ``collection``) of AuditEvents, as JSON text chunks."""
    timestamp = chain.timestamp_canonical(now or timezone.now())
    return _chunked(_fhir_pieces(events, timestamp))


def fhir_bundle(events: Iterable[AuditEvent], *, now: dt.datetime | None = None) -> dict[str, Any]:
    """The same Bundle as a dict, for small sets (it holds every resource in memory)."""
    return json.loads("".join(export_fhir_bundle(events, now=now)))


# --------------------------------------------------------------------------- DICOM

DICOM_AUDIT_SCHEMA = Path(__file__).resolve().parent / "schemas" / "dicom-audit-message.rng"
DICOM_ROOT = "AuditMessages"
# Characters XML 1.0 cannot carry at all, even escaped.
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _xml_text(value: str) -> str:
    return _XML_INVALID.sub("\ufffd", value)


def _coded(parent: ET.Element, tag: str, code: str, system: str, meaning: str) -> ET.Element:
    return ET.SubElement(parent, tag, {
        "csd-code": _xml_text(code), "codeSystemName": system, "originalText": _xml_text(meaning),
    })


def _base64(value: str) -> str:
    return base64.b64encode(value.encode("utf-8")).decode("ascii")


def dicom_audit_message(event: AuditEvent) -> ET.Element:
    """One event as a PS3.15 A.5 ``<AuditMessage>`` element."""
    action = Action(event.action)
    spec = action.spec
    outcome = Outcome(event.outcome)
    event_uuid = _event_uuid(event)
    message = ET.Element("AuditMessage")

    identification = ET.SubElement(message, "EventIdentification", {
        "EventActionCode": spec.crude,
        "EventDateTime": _timestamp(event),
        "EventOutcomeIndicator": outcome.indicator,
    })
    _coded(identification, "EventID", spec.event_id.code, spec.event_id.system,
           spec.event_id.display)
    if spec.event_type:
        _coded(identification, "EventTypeCode", spec.event_type.code, spec.event_type.system,
               spec.event_type.display)
    _coded(identification, "EventTypeCode", action.value, ACTION_SYSTEM, spec.description)
    if outcome is not Outcome.SUCCESS:
        ET.SubElement(identification, "EventOutcomeDescription").text = _xml_text(
            _outcome_description(event))

    requestor = {"UserID": _xml_text(event.actor), "UserIsRequestor": "true"}
    if event.source_ip:
        requestor |= {"NetworkAccessPointID": _xml_text(event.source_ip),
                      "NetworkAccessPointTypeCode": "2"}  # 2 = IP address
    participant = ET.SubElement(message, "ActiveParticipant", requestor)
    if event.actor_role:
        _coded(participant, "RoleIDCode", event.actor_role, ROLE_SYSTEM, event.actor_role)
    if event.acting_for:
        authority = ET.SubElement(message, "ActiveParticipant", {
            "UserID": _xml_text(event.acting_for), "UserIsRequestor": "false"})
        # HL7 v3 ParticipationType (OID 2.16.840.1.113883.5.90) RESP
        _coded(authority, "RoleIDCode", "RESP", "2.16.840.1.113883.5.90", "responsible party")

    source = ET.SubElement(message, "AuditSourceIdentification", {"AuditSourceID": _GATEWAY_ID})
    ET.SubElement(source, "AuditSourceTypeCode", {"csd-code": "4"})  # application server

    if event.patient_pseudonym:
        patient = ET.SubElement(message, "ParticipantObjectIdentification", {
            "ParticipantObjectID": _xml_text(event.patient_pseudonym),
            "ParticipantObjectTypeCode": "1", "ParticipantObjectTypeCodeRole": "1"})
        _coded(patient, "ParticipantObjectIDTypeCode", "2", "RFC-3881", "Patient Number")
    if event.study:
        study = ET.SubElement(message, "ParticipantObjectIdentification", {
            "ParticipantObjectID": _xml_text(event.study),
            "ParticipantObjectTypeCode": "2", "ParticipantObjectTypeCodeRole": "3"})
        _coded(study, "ParticipantObjectIDTypeCode", "110180", "DCM", "Study Instance UID")

    record = ET.SubElement(message, "ParticipantObjectIdentification", {
        "ParticipantObjectID": event_uuid.urn,
        "ParticipantObjectTypeCode": "2", "ParticipantObjectTypeCodeRole": "13"})
    _coded(record, "ParticipantObjectIDTypeCode", "12", "RFC-3881", "URI")
    facts = {
        "sequence": str(event.sequence), "previous_hash": event.previous_hash,
        "event_hash": event.event_hash, "seal_kid": event.seal_kid, "seal": event.seal,
        "details": event.details,
    }
    for name in (*CHAIN_DETAIL_TYPES, "details"):
        if facts[name]:
            ET.SubElement(record, "ParticipantObjectDetail",
                          {"type": name, "value": _base64(facts[name])})
    return message


def _dicom_pieces(events: Iterable[AuditEvent]) -> Iterator[bytes]:
    yield b'<?xml version="1.0" encoding="UTF-8"?>\n<' + DICOM_ROOT.encode() + b">\n"
    for event in _events(events):
        yield ET.tostring(dicom_audit_message(event), encoding="utf-8") + b"\n"
    yield b"</" + DICOM_ROOT.encode() + b">\n"


def export_dicom_xml(events: Iterable[AuditEvent]) -> Iterator[bytes]:
    """UTF-8 XML: ``<AuditMessages>`` wrapping one PS3.15 A.5 ``<AuditMessage>`` per event.

    The wrapper is ours (the standard defines single messages); each child
    validates on its own against ``DICOM_AUDIT_SCHEMA``.
    """
    return _chunked_bytes(_dicom_pieces(events))


# --------------------------------------------------------------------------- formats


class ExportFormat(NamedTuple):
    content_type: str
    extension: str
    exporter: Callable[[Iterable[AuditEvent]], Iterator[str] | Iterator[bytes]]


EXPORT_FORMATS: dict[str, ExportFormat] = {
    "fhir": ExportFormat("application/fhir+json; fhirVersion=4.0", "json", export_fhir_bundle),
    "dicom": ExportFormat("application/xml; charset=utf-8", "xml", export_dicom_xml),
    "csv": ExportFormat("text/csv; charset=utf-8; header=present", "csv", export_csv),
}
