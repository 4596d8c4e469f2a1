"""``manage.py dicom_destination add NAME AE HOST PORT`` | ``withdraw NAME`` | ``list``."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from imaging.models import DicomDestination
from imaging.report_settings import ReportSettingError, destination_register, destination_withdraw


class Command(BaseCommand):
    help = "Register, withdraw or list the DICOM destinations signed reports may be sent to (audited)."

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        add = actions.add_parser("add")
        add.add_argument("name")
        add.add_argument("ae_title")
        add.add_argument("host")
        add.add_argument("port", type=int)
        withdraw = actions.add_parser("withdraw")
        withdraw.add_argument("name")
        actions.add_parser("list")
        for action in (add, withdraw):
            action.add_argument("--operator", default="", help="who is changing it (audit)")

    def handle(self, *args: object, **options: object) -> None:
        actor = f"cli:{options['operator']}" if options.get("operator") else "cli"
        try:
            if options["action"] == "add":
                destination = destination_register(
                    name=str(options["name"]), ae_title=str(options["ae_title"]), host=str(options["host"]),
                    port=int(options["port"]), actor=actor)  # type: ignore[call-overload]
                self.stdout.write(f"destination {destination} registered")
            elif options["action"] == "withdraw":
                destination_withdraw(name=str(options["name"]), actor=actor)
                self.stdout.write(f"destination {options['name']} withdrawn")
            else:
                for destination in DicomDestination.objects.filter(active=True):
                    self.stdout.write(str(destination))
        except ReportSettingError as error:
            raise CommandError(str(error)) from error
