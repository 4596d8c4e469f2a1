"""``manage.py report_letterhead --hospital H --department D --footer F --logo logo.png``."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser

from imaging.report_settings import ReportSettingError, letterhead_set
from imaging.reports import HEADER_FIELDS


class Command(BaseCommand):
    help = "Set the letterhead printed on every report page (only the parts given change; audited)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--hospital")
        parser.add_argument("--department")
        parser.add_argument("--footer")
        parser.add_argument("--logo", help="a PNG file; an empty string removes the logo")
        parser.add_argument("--fields", help=f"comma-separated, from {','.join(HEADER_FIELDS)}")
        parser.add_argument("--operator", default="", help="who is changing it (audit)")

    def handle(self, *args: object, **options: object) -> None:
        logo = options["logo"]
        fields = options["fields"]
        try:
            row = letterhead_set(
                actor=f"cli:{options['operator']}" if options["operator"] else "cli",
                hospital=options["hospital"], department=options["department"],  # type: ignore[arg-type]
                footer=options["footer"],  # type: ignore[arg-type]
                logo_png=None if logo is None else (Path(str(logo)).read_bytes() if logo else b""),
                header_fields=None if fields is None else [f.strip() for f in str(fields).split(",")
                                                           if f.strip()])
        except (ReportSettingError, OSError) as error:
            raise CommandError(str(error)) from error
        self.stdout.write(f"letterhead set: {row.hospital} / {row.department}")
