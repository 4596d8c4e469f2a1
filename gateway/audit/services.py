"""Appending to the audit chain.

``audit_record`` is the one way every part of the gateway writes an event.
Inside a transaction on the clinical database the event is written to the
outbox in that same transaction and appended to the chain after commit, so
an event exists exactly when the change it records does. Outside a
transaction it is appended at once, and a failure to append propagates: an
access that cannot be audited does not happen.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

from django.db import connections, transaction
from django.utils import timezone

from gateway.audit import chain
from gateway.audit.catalogue import Action, Outcome
from gateway.audit.models import AuditEvent
from gateway.models import AuditOutbox
from gateway.routers import AUDIT, CLINICAL

# One arbitrary, fixed advisory-lock key serialises appends across processes on PostgreSQL.
_POSTGRES_APPEND_LOCK = 0x61756469_74636861
_process_lock = threading.Lock()


class Actor(Protocol):
    """Who acted: a user (its ``role`` is recorded where it has one) or Django's AnonymousUser."""

    @property
    def username(self) -> str: ...


@dataclass(frozen=True)
class AuditEntry:
    """What happened, as canonical strings; the chain fields are added at append."""

    event_id: str
    occurred_at: str
    actor: str
    actor_role: str
    acting_for: str
    action: str
    outcome: str
    patient_pseudonym: str
    study: str
    source_ip: str
    details: str

    def payload(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_payload(cls, payload: str) -> AuditEntry:
        return cls(**json.loads(payload))


def _actor_fields(actor: Actor | str | None, actor_role: str) -> tuple[str, str]:
    if actor is None:
        return "anonymous", actor_role
    if isinstance(actor, str):
        return actor, actor_role
    return actor.username, actor_role or getattr(actor, "role", "")


def audit_record(
    *,
    actor: Actor | str | None,
    action: Action,
    outcome: Outcome,
    actor_role: str = "",
    acting_for: str = "",
    patient_pseudonym: str = "",
    study: str = "",
    source_ip: str | None = None,
    details: Mapping[str, Any] | None = None,
) -> str:
    """Record one audit event; returns its event id.

    ``actor`` is a user (its username and role are taken) or a principal
    name such as ``device:CT01`` or ``share:<id>``; ``acting_for`` names on
    whose authority (the doctor behind a share). ``details`` must not carry
    identifying data beyond the pseudonym.
    """
    name, role = _actor_fields(actor, actor_role)
    entry = AuditEntry(
        event_id=uuid.uuid4().hex,
        occurred_at=chain.timestamp_canonical(timezone.now()),
        actor=name,
        actor_role=role,
        acting_for=acting_for,
        action=Action(action).value,
        outcome=Outcome(outcome).value,
        patient_pseudonym=patient_pseudonym,
        study=study,
        source_ip=source_ip or "",
        details=chain.details_canonical(details),
    )
    if _inside_clinical_transaction():
        AuditOutbox.objects.create(event_id=entry.event_id, payload=entry.payload())
        transaction.on_commit(audit_outbox_drain, using=CLINICAL, robust=True)
    else:
        _append(entry, check_duplicate=False)
    return entry.event_id


def _inside_clinical_transaction() -> bool:
    # A test case wraps each test in its own atomic block (Django marks it
    # ``_from_testcase``); only a transaction opened by gateway code counts.
    connection = connections[CLINICAL]
    return any(not getattr(block, "_from_testcase", False) for block in connection.atomic_blocks)


def audit_outbox_drain(*, limit: int = 1000) -> int:
    """Append events waiting in the outbox to the chain; returns how many were moved."""
    moved = 0
    for pending in AuditOutbox.objects.order_by("id")[:limit]:
        _append(AuditEntry.from_payload(pending.payload), check_duplicate=True)
        AuditOutbox.objects.filter(pk=pending.pk).delete()
        moved += 1
    return moved


def audit_outbox_pending() -> int:
    return AuditOutbox.objects.count()


def _serialise_appends() -> None:
    connection = connections[AUDIT]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_POSTGRES_APPEND_LOCK])
    # SQLite: the audit connection opens every transaction with BEGIN IMMEDIATE,
    # which already takes the database's single write lock.


def _append(entry: AuditEntry, *, check_duplicate: bool) -> None:
    with _process_lock, transaction.atomic(using=AUDIT):
        _serialise_appends()
        events = AuditEvent.objects.using(AUDIT)
        if check_duplicate and events.filter(event_id=entry.event_id).exists():
            return
        head = events.order_by("-sequence").values_list("sequence", "event_hash").first()
        sequence, previous_hash = head if head else (0, chain.GENESIS_HASH)
        fields = {**asdict(entry), "sequence": sequence + 1, "previous_hash": previous_hash}
        event_hash = chain.event_hash(fields)
        seal_kid, seal_key = chain.seal_key()
        events.create(
            **{**fields, "event_id": uuid.UUID(entry.event_id),
               "occurred_at": dt.datetime.strptime(entry.occurred_at, "%Y-%m-%dT%H:%M:%S.%fZ")
               .replace(tzinfo=dt.UTC)},
            event_hash=event_hash,
            seal_kid=seal_kid,
            seal=chain.seal(seal_key, event_hash),
        )
