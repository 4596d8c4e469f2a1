"""Recompute the audit chain and check every signed checkpoint."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_outbox_pending, audit_record
from gateway.audit.verification import chain_verify


class Command(BaseCommand):
    help = ("Verify the audit log: hashes, seals, sequence and signed checkpoints. "
            "Exits 1 and names the first bad sequence when the log was tampered with.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--json", action="store_true", help="print the report as JSON")

    def handle(self, *args: Any, **options: Any) -> None:
        report = chain_verify()
        summary = {**report.summary(), "outbox_pending": audit_outbox_pending()}
        audit_record(actor="system:audit_verify", action=Action.AUDIT_VERIFY,
                     outcome=Outcome.SUCCESS if report.ok else Outcome.FAILURE, details=summary)
        if options["json"]:
            self.stdout.write(json.dumps(summary, sort_keys=True))
        elif report.ok:
            self.stdout.write(self.style.SUCCESS(
                f"audit log verified: {report.events} events through sequence "
                f"{report.head_sequence}, {report.checkpoints} signed checkpoints "
                f"(latest {report.latest_checkpoint}), {summary['outbox_pending']} pending"))
        if not report.ok:
            raise CommandError(
                f"audit log FAILED verification at sequence {report.first_bad_sequence}: "
                f"{report.problem}", returncode=1)
