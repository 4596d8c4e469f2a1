"""``python manage.py device_register USERNAME --ae-title CT01``: allow a device to send images."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import User
from imaging.devices import device_endpoint_register


class Command(BaseCommand):
    help = ("Allow a device account to call the SCP with an AE title and print its STOW-RS token "
            "(shown once; only its hash is stored).")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")
        parser.add_argument("--ae-title", required=True)
        parser.add_argument("--operator", default="", help="who is registering it (audit)")

    def handle(self, *args: object, **options: object) -> None:
        try:
            user = User.objects.get(username=options["username"])
            endpoint, token = device_endpoint_register(
                user=user, ae_title=str(options["ae_title"]),
                actor=f"cli:{options['operator']}" if options["operator"] else "cli")
        except (User.DoesNotExist, ValueError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(f"device {user.username} may call as AE title {endpoint.ae_title}")
        self.stdout.write(f"STOW-RS token (shown once): {token}")
