"""``manage.py store report`` | ``evict [--budget BYTES] [--dry-run] [--operator NAME]``
| ``collect [--older-than SECONDS] [--dry-run]``: the local store of studies retrieved from the PACS."""

from __future__ import annotations

import argparse
from datetime import datetime

from django.core.management.base import BaseCommand, CommandError, CommandParser

from imaging import conf
from imaging.store_budget import store_collect, store_evict, store_report

MB = 1_000_000
# An ingest writes its object before it commits the row naming it: younger objects are never orphans.
MIN_ORPHAN_AGE_S = 60


def _mb(size: int) -> str:
    return f"{size / MB:.1f} MB"


def _opened(at: datetime | None) -> str:
    return f"{at:%Y-%m-%d %H:%M}" if at is not None else "never"


def _count(text: str) -> int:
    """A whole number of bytes or seconds, 0 or more (argparse type)."""
    try:
        value = int(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from error
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} must be 0 or more")
    return value


class Command(BaseCommand):
    help = ("The local store of studies retrieved from the PACS, a cache kept under a budget: report its "
            "size per study, evict the least recently opened retrieved studies (audited), collect orphans.")

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        actions.add_parser("report")
        evict = actions.add_parser("evict")
        evict.add_argument("--budget", type=_count, default=None,
                           help="bytes the store must be kept under (default GATEWAY_STORE_BUDGET_BYTES; "
                                "0: unbounded)")
        evict.add_argument("--dry-run", action="store_true", help="say what would be evicted; change nothing")
        evict.add_argument("--operator", default="", help="who is acting (audit)")
        collect = actions.add_parser("collect")
        collect.add_argument("--older-than", type=_count, default=86400,
                             help=f"only objects older than this many seconds (at least {MIN_ORPHAN_AGE_S}; "
                                  "default a day)")
        collect.add_argument("--dry-run", action="store_true", help="count the orphans; delete nothing")

    def handle(self, *args: object, **options: object) -> None:
        getattr(self, f"_{options['action']}")(options)

    def _report(self, options: dict[str, object]) -> None:
        report = store_report()
        self.stdout.write("study\tsize\tretrieved\tlast opened\tevictable")
        for usage in report.studies:
            self.stdout.write(f"{usage.study_instance_uid}\t{_mb(usage.bytes)}\t"
                              f"{'yes' if usage.retrieved else 'no'}\t{_opened(usage.last_opened_at)}\t"
                              f"{'yes' if usage.evictable else 'no: ' + usage.kept_because}")
        budget = _mb(report.budget_bytes) if report.budget_bytes else "unbounded"
        self.stdout.write(f"{report.study_count} studies; total {_mb(report.total_bytes)} "
                          f"({report.total_bytes} bytes), of which {_mb(report.other_bytes)} no study's; "
                          f"budget {budget}; studies opened within {report.keep_opened_s} s are kept")

    def _evict(self, options: dict[str, object]) -> None:
        budget = options["budget"]
        budget_bytes = conf.store_budget_bytes() if budget is None else int(str(budget))
        if budget_bytes < 0:
            raise CommandError(f"the budget must be 0 (unbounded) or more, not {budget_bytes}")
        if budget_bytes == 0:
            self.stdout.write("no budget (GATEWAY_STORE_BUDGET_BYTES is 0 and no --budget): nothing evicted")
            return
        dry_run = bool(options["dry_run"])
        actor = f"cli:{options['operator']}" if options.get("operator") else "cli"
        evicted = store_evict(budget_bytes=budget_bytes, dry_run=dry_run, actor=actor)
        verb = "would evict" if dry_run else "evicted"
        for usage in evicted:
            self.stdout.write(f"{verb} {usage.study_instance_uid}\t{_mb(usage.bytes)}\t"
                              f"last opened {_opened(usage.last_opened_at)}")
        after = store_report()
        freed = sum(usage.bytes for usage in evicted)
        self.stdout.write(f"{verb} {len(evicted)} studies, {_mb(freed)}; store now {_mb(after.total_bytes)} "
                          f"({after.total_bytes} bytes), budget {_mb(budget_bytes)}")
        if after.total_bytes - (freed if dry_run else 0) > budget_bytes:
            self.stdout.write("still over budget: every other study is kept (see manage.py store report)")

    def _collect(self, options: dict[str, object]) -> None:
        older_than = int(str(options["older_than"]))
        if older_than < MIN_ORPHAN_AGE_S:
            raise CommandError(f"--older-than must be at least {MIN_ORPHAN_AGE_S} s: a younger object may "
                               "belong to an ingest that has not committed yet")
        dry_run = bool(options["dry_run"])
        count = store_collect(older_than_s=older_than, dry_run=dry_run)
        self.stdout.write(f"{'would remove' if dry_run else 'removed'} {count} orphan object(s) "
                          f"older than {older_than} s")

