"""Clinical-zone models of the gate itself."""

from __future__ import annotations

from django.db import models


class AuditOutbox(models.Model):
    """An audit event written in the same transaction as the clinical change it records.

    The audit log lives in another database, so the two cannot commit
    atomically. The event waits here, committed with the change, until it
    has been appended to the chain; then the row is removed. A crash between
    the two leaves the row for the next drain, and the event id makes the
    append idempotent.
    """

    event_id = models.UUIDField(unique=True)
    payload = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"pending audit event {self.event_id}"
