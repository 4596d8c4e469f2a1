"""Sign the audit chain head now, or every N seconds."""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections

from gateway.audit.checkpoints import checkpoint_write
from gateway.audit.services import audit_outbox_drain


class Command(BaseCommand):
    help = ("Write a signed checkpoint of the audit chain head (once, or every N seconds "
            "with --every), after moving any events waiting in the outbox into the chain.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--every", type=float, default=0,
                            help="repeat every this many seconds (default: once)")

    def handle(self, *args: Any, **options: Any) -> None:
        interval = options["every"]
        while True:
            self._once()
            if interval <= 0:
                return
            time.sleep(interval)
            close_old_connections()

    def _once(self) -> None:
        drained = audit_outbox_drain()
        checkpoint = checkpoint_write()
        if checkpoint is not None:
            self.stdout.write(f"checkpoint {checkpoint.sequence} {checkpoint.head_hash} "
                              f"-> {checkpoint.path} (drained {drained})")
        self.stdout.flush()
