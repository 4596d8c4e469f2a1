"""``manage.py dicom_destination add NAME AE HOST PORT [--retrieve c-get|c-move|wado-rs] [--dicomweb URL]
[--send-results] [--tls]``
| ``withdraw NAME`` | ``echo NAME`` | ``list`` | ``queue`` | ``retry NAME``."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from imaging.models import DicomDestination, JobState, PacsSend
from imaging.pacs_send import sends_retry_now
from imaging.report_settings import (
    ReportSettingError,
    destination_echo,
    destination_register,
    destination_withdraw,
)


class Command(BaseCommand):
    help = ("Register, withdraw, check (C-ECHO) or list the DICOM peers: report destinations and the "
            "hospital's PACS (query/retrieve, results sent back); every change is audited.")

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        add = actions.add_parser("add")
        add.add_argument("name")
        add.add_argument("ae_title")
        add.add_argument("host")
        add.add_argument("port", type=int)
        add.add_argument("--retrieve", choices=["c-get", "c-move", "wado-rs"], default="",
                         help="a PACS: the worklist searches it (C-FIND, or QIDO-RS) and retrieves with this "
                              "method (wado-rs needs --dicomweb)")
        add.add_argument("--dicomweb", default="", metavar="URL",
                         help="the PACS's DICOMweb base URL: QIDO-RS, WADO-RS and STOW-RS instead of DIMSE")
        add.add_argument("--send-results", action="store_true",
                         help="queue results made here (SR, SEG, REG, KOS, PDF) to it, re-identified")
        add.add_argument("--tls", action="store_true",
                         help="associate over TLS (GATEWAY_PACS_TLS_CA verifies)")
        withdraw = actions.add_parser("withdraw")
        withdraw.add_argument("name")
        echo = actions.add_parser("echo")
        echo.add_argument("name")
        retry = actions.add_parser("retry")
        retry.add_argument("name")
        actions.add_parser("list")
        actions.add_parser("queue")
        for action in (add, withdraw, echo):
            action.add_argument("--operator", default="", help="who is acting (audit)")

    def handle(self, *args: object, **options: object) -> None:
        actor = f"cli:{options['operator']}" if options.get("operator") else "cli"
        try:
            getattr(self, f"_{options['action']}")(options, actor)
        except ReportSettingError as error:
            raise CommandError(str(error)) from error

    def _add(self, options: dict[str, object], actor: str) -> None:
        destination = destination_register(
            name=str(options["name"]), ae_title=str(options["ae_title"]), host=str(options["host"]),
            port=int(options["port"]), actor=actor, retrieve=str(options["retrieve"]),  # type: ignore[call-overload]
            send_results=bool(options["send_results"]), tls=bool(options["tls"]),
            dicomweb_url=str(options["dicomweb"]))
        self.stdout.write(f"destination {destination} registered")

    def _withdraw(self, options: dict[str, object], actor: str) -> None:
        destination_withdraw(name=str(options["name"]), actor=actor)
        self.stdout.write(f"destination {options['name']} withdrawn")

    def _echo(self, options: dict[str, object], actor: str) -> None:
        why = destination_echo(name=str(options["name"]), actor=actor)
        if why:
            raise CommandError(f"C-ECHO failed: {why}")
        self.stdout.write(f"{options['name']} answered the C-ECHO")

    def _list(self, options: dict[str, object], actor: str) -> None:
        for destination in DicomDestination.objects.filter(active=True):
            roles = [f"retrieve {destination.retrieve}"] if destination.retrieve else []
            roles += ["results sent back"] if destination.send_results else []
            roles += ["TLS"] if destination.tls else []
            roles += [f"DICOMweb {destination.dicomweb_url}"] if destination.dicomweb_url else []
            self.stdout.write(f"{destination}" + (f" — {', '.join(roles)}" if roles else ""))

    def _queue(self, options: dict[str, object], actor: str) -> None:
        for send in PacsSend.objects.exclude(state=JobState.DONE).select_related("destination"):
            self.stdout.write(f"{send.destination.name}\t{send.modality}\t{send.sop_instance_uid}\t{send.state}"
                              f"\tattempts {send.attempts}\tnext {send.next_attempt_at:%Y-%m-%d %H:%M:%S}"
                              f"\t{send.last_error}")

    def _retry(self, options: dict[str, object], actor: str) -> None:
        destination = DicomDestination.objects.filter(name=str(options["name"])).first()
        if destination is None:
            raise CommandError(f"no destination named {options['name']!r}")
        self.stdout.write(f"{sends_retry_now(destination=destination)} queued send(s) due now")
