"""Give a keyring a new active key; older keys stay so existing data still opens."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway import keys
from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from gateway.config import ConfigurationError


class Command(BaseCommand):
    help = "Rotate one keyring kept under var/keys (prints the new key id, never the key)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--purpose", required=True, choices=[p.value for p in keys.KeyPurpose])
        parser.add_argument("--operator", default="system:keys_rotate",
                            help="who is rotating (recorded in the audit log)")

    def handle(self, *args: Any, **options: Any) -> None:
        purpose = keys.KeyPurpose(options["purpose"])
        try:
            fresh = keys.keyring_rotate(purpose)
        except ConfigurationError as exc:
            audit_record(actor=options["operator"], action=Action.ADMIN_KEY,
                         outcome=Outcome.FAILURE, details={"purpose": purpose.value,
                                                           "reason": str(exc)})
            raise CommandError(str(exc)) from exc
        audit_record(actor=options["operator"], action=Action.ADMIN_KEY, outcome=Outcome.SUCCESS,
                     details={"purpose": purpose.value, "new_kid": fresh.kid})
        self.stdout.write(f"{purpose}: new active key {fresh.kid}")
