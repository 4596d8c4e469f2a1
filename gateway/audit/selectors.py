"""Reads of the audit log for the console and exports."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Q, QuerySet

from gateway.audit.catalogue import Action
from gateway.audit.models import AuditEvent


@dataclass(frozen=True)
class EventFilter:
    """What the auditor asked for; an empty value means "any".

    ``actor`` matches any part of the user name, ignoring case. The patient is
    chosen by ``patient_pseudonym_prefix`` (lowercase hex, 8 to 64 digits: the
    console shows pseudonyms shortened) or by ``patient_pseudonyms`` resolved
    from a patient ID; given both, an event of either patient matches.
    """

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    actor: str = ""
    actor_role: str = ""
    patient_pseudonym_prefix: str = ""
    patient_pseudonyms: tuple[str, ...] = field(default_factory=tuple)
    action: str = ""
    outcome: str = ""
    source_ip: str = ""
    study: str = ""
    matches_nothing: bool = False

    def described(self) -> dict[str, Any]:
        """The filter as audit details (no patient ID ever appears here, only pseudonyms or a prefix)."""
        described = {
            "since": self.since.isoformat() if self.since else "",
            "until": self.until.isoformat() if self.until else "",
            "actor": self.actor, "actor_role": self.actor_role,
            "patient_pseudonym_prefix": self.patient_pseudonym_prefix,
            "patient_pseudonyms": list(self.patient_pseudonyms), "action": self.action,
            "outcome": self.outcome, "source_ip": self.source_ip, "study": self.study,
        }
        return {key: value for key, value in described.items() if value}


# Filter field -> query lookup; an empty value means "any". The patient is matched apart (below).
_LOOKUPS = {
    "since": "occurred_at__gte", "until": "occurred_at__lt", "actor": "actor__icontains",
    "actor_role": "actor_role", "action": "action", "outcome": "outcome", "source_ip": "source_ip",
    "study": "study",
}


def events_filter(criteria: EventFilter) -> QuerySet[AuditEvent]:
    events = AuditEvent.objects.all()
    if criteria.matches_nothing:
        return events.none()
    wanted = {lookup: getattr(criteria, name) for name, lookup in _LOOKUPS.items()}
    events = events.filter(**{lookup: value for lookup, value in wanted.items() if value})
    patient = Q()
    if criteria.patient_pseudonym_prefix:
        patient |= Q(patient_pseudonym__startswith=criteria.patient_pseudonym_prefix)
    if criteria.patient_pseudonyms:
        patient |= Q(patient_pseudonym__in=criteria.patient_pseudonyms)
    return events.filter(patient).order_by("-sequence")


@dataclass(frozen=True)
class ChainStatus:
    state: str
    through_sequence: int | None = None
    verified_at: dt.datetime | None = None
    problem: str = ""
    first_bad_sequence: int | None = None


def chain_status_latest() -> ChainStatus:
    """The outcome of the most recent verification run, for the console badge."""
    latest = (AuditEvent.objects.filter(action=Action.AUDIT_VERIFY)
              .order_by("-sequence").first())
    if latest is None:
        return ChainStatus("unverified")
    summary = json.loads(latest.details or "{}")
    if summary.get("ok"):
        return ChainStatus("verified", summary.get("through_sequence"), latest.occurred_at)
    return ChainStatus("failed", summary.get("through_sequence"), latest.occurred_at,
                       summary.get("problem", ""), summary.get("first_bad_sequence"))
