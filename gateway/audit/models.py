"""Audit events: one append-only, hash-chained, keyed-sealed row per access.

A row is never updated or deleted: database triggers refuse it, the
application role has no such privilege in production, and verification
detects it anyway (chain hash, per-event seal, signed checkpoints).
"""

from __future__ import annotations

from django.db import models

from gateway.audit.catalogue import Action, Outcome


class AuditEvent(models.Model):
    sequence = models.BigIntegerField(primary_key=True)
    event_id = models.UUIDField(unique=True)
    occurred_at = models.DateTimeField(db_index=True)
    actor = models.CharField(max_length=150, db_index=True)
    actor_role = models.CharField(max_length=32, blank=True, db_index=True)
    acting_for = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=32, choices=[(a.value, a.value) for a in Action],
                              db_index=True)
    outcome = models.CharField(max_length=16, choices=[(o.value, o.value) for o in Outcome],
                               db_index=True)
    patient_pseudonym = models.CharField(max_length=64, blank=True, db_index=True)
    study = models.CharField(max_length=64, blank=True, db_index=True)
    source_ip = models.CharField(max_length=45, blank=True, db_index=True)
    details = models.TextField(blank=True)
    previous_hash = models.CharField(max_length=64)
    event_hash = models.CharField(max_length=64)
    seal_kid = models.CharField(max_length=64)
    seal = models.CharField(max_length=64)

    class Meta:
        ordering = ["sequence"]
        default_permissions = ()
        permissions = [
            ("resolve_patient_identity", "Look up audit events by patient ID (identity zone)"),
        ]

    def __str__(self) -> str:
        return f"#{self.sequence} {self.action} {self.outcome} by {self.actor}"
