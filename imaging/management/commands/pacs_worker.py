"""``python manage.py pacs_worker [--once]``: run PACS retrievals and send results back to the PACS."""

from __future__ import annotations

import time

from django.core.management.base import BaseCommand, CommandParser
from django.db import close_old_connections

from imaging.pacs_retrieve import priors_prefetch_due, retrieval_claim, retrieval_run
from imaging.pacs_send import sends_drain


def pacs_work_once() -> int:
    """Priors to prefetch, one retrieval (if one is queued) and the sends that are due; returns how
    much was done."""
    done = priors_prefetch_due()
    retrieval = retrieval_claim()
    if retrieval is not None:
        retrieval_run(retrieval)
        done += 1
    done += sends_drain()
    close_old_connections()
    return done


class Command(BaseCommand):
    help = ("Retrieve the studies doctors asked for from the PACS (queued retrievals) and deliver the "
            "results queued for it; several workers may run (each job is claimed first).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--once", action="store_true", help="do what is due now, then stop")
        parser.add_argument("--interval", type=float, default=1.0, help="seconds between looks while idle")

    def handle(self, *args: object, **options: object) -> None:
        if options["once"]:
            self.stdout.write(f"{pacs_work_once()} job(s) done")
            return
        interval = float(options["interval"])  # type: ignore[arg-type]
        while True:
            if not pacs_work_once():
                time.sleep(interval)
