"""Create an account and its authenticator; print the ``otpauth://`` URI on a line of its own."""

from __future__ import annotations

import getpass
import os
import secrets

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import Role
from accounts.services import totp_device_create, user_create


class Command(BaseCommand):
    help = ("Create a user with a role and a TOTP authenticator. Prints the otpauth:// URI "
            "(hand it to the person out of band, e.g. as a QR code); without --password a "
            "random one is generated and printed. Device accounts get no authenticator.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--username", required=True)
        parser.add_argument("--role", required=True, choices=Role.values)
        parser.add_argument("--password", help="at least 12 characters; generated when omitted")
        parser.add_argument("--email", default="")
        parser.add_argument("--operator", default="",
                            help="who runs this, for the audit log (default: the OS user)")

    def handle(self, *args: object, **options: object) -> None:
        username = str(options["username"])
        role = Role(str(options["role"]))
        password = str(options["password"] or "")
        generated = not password
        if generated:
            password = secrets.token_urlsafe(18)
        operator = str(options["operator"] or "") or f"cli:{os.environ.get('USER') or getpass.getuser()}"
        try:
            user = user_create(username=username, password=password, role=role,
                               email=str(options["email"]), actor=operator)
        except ValidationError as error:
            raise CommandError("; ".join(error.messages)) from error
        self.stdout.write(f"created {user.username} ({role.label})")
        if generated:
            self.stdout.write(f"password: {password}")
        if role == Role.DEVICE:
            self.stdout.write("device account: no TOTP; it authenticates with its device credential")
            return
        device = totp_device_create(user=user, confirmed=True)
        self.stdout.write("TOTP authenticator (add to the person's app; shown only now):")
        self.stdout.write(device.config_url())
