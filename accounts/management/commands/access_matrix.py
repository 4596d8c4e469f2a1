"""Write or check docs/access-matrix.md, generated from gateway/policy.py."""

from __future__ import annotations

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from gateway.policy import matrix_markdown


class Command(BaseCommand):
    help = "Print docs/access-matrix.md from the policy; --write replaces the file, --check compares."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--write", action="store_true")
        parser.add_argument("--check", action="store_true")

    def handle(self, *args: object, **options: object) -> None:
        path = settings.BASE_DIR / "docs" / "access-matrix.md"
        text = matrix_markdown()
        if options["write"]:
            path.write_text(text, encoding="utf-8")
            self.stdout.write(f"wrote {path}")
        elif options["check"]:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                raise CommandError(f"{path} differs from gateway/policy.py; run access_matrix --write")
            self.stdout.write("docs/access-matrix.md matches the policy")
        else:
            self.stdout.write(text)
