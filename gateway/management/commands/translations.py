"""Keep the translation catalogues complete: re-extract and compile, or check."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway.translations import catalogue_problems, catalogue_write


class Command(BaseCommand):
    help = ("Re-extract every string marked for translation into locale/ and compile the "
            "catalogues (needs gettext); with --check, list what is missing, stale or "
            "untranslated and fail if anything is.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--check", action="store_true",
                            help="change nothing; fail if the catalogues are incomplete or stale")

    def handle(self, *args: Any, **options: Any) -> None:
        if not options["check"]:
            catalogue_write()
        problems = catalogue_problems()
        for problem in problems:
            self.stdout.write(str(problem))
        if problems:
            raise CommandError(f"{len(problems)} catalogue problem(s)")
        self.stdout.write("catalogues complete")
