"""Fixtures of the sharing suite."""

from __future__ import annotations

import json

import pytest

from gateway.audit.models import AuditEvent
from gateway.audit.services import audit_outbox_drain
from tests.sharing.factories import clinical_study, doctor


@pytest.fixture
def committed(keys_dir):
    """Fresh keys; audit events are read through :class:`AuditLog`, which drains the outbox
    (inside a test's transaction the on-commit append has not run yet)."""
    return keys_dir


class AuditLog:
    def __init__(self) -> None:
        last = AuditEvent.objects.order_by("-sequence").first()
        self.start = last.sequence if last else 0

    def events(self) -> list[AuditEvent]:
        audit_outbox_drain()
        return list(AuditEvent.objects.filter(sequence__gt=self.start).order_by("sequence"))

    def actions(self) -> list[str]:
        return [event.action for event in self.events()]

    def details(self, action: str) -> list[dict]:
        return [json.loads(e.details) for e in self.events() if e.action == action]


@pytest.fixture
def audit_log(db) -> AuditLog:
    return AuditLog()


@pytest.fixture
def study():
    """A clinical study (no pixels) of one patient; modules that render override it."""
    return clinical_study()


@pytest.fixture
def issuer():
    """The doctor who mints the shares."""
    return doctor()
