"""``python manage.py build_volumes [--watch]``: build the volumes of pending series."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandParser

from imaging.volume_builder import volume_builder_run
from imaging.volumes import CLAIM_LEASE_S


class Command(BaseCommand):
    help = ("Build the 3-D volumes of series that ingest left pending, one at a time; several "
            "builders may run at once (each series is claimed first).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--watch", action="store_true",
                            help="keep watching for pending series until terminated")
        parser.add_argument("--interval", type=float, default=1.0,
                            help="seconds between looks while idle (with --watch; default 1)")
        parser.add_argument("--lease", type=float, default=CLAIM_LEASE_S,
                            help="seconds a claim lasts without renewal (default 300)")

    def handle(self, *args: object, **options: object) -> None:
        built = volume_builder_run(watch=bool(options["watch"]),
                                   interval_s=float(options["interval"]),  # type: ignore[arg-type]
                                   lease_s=float(options["lease"]))  # type: ignore[arg-type]
        self.stdout.write(f"built {built} volume(s)")
