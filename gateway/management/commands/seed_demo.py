"""Create one demo account per role and the demo PET/CT study, once.

Every person gets a TOTP authenticator; its ``otpauth://`` URI is printed and
kept, with the passwords, in ``var/demo-credentials.json`` (mode 0600) under
``"totp"``. The device account gets none: devices have no interactive sign-in
and authenticate with their device credential (its password here) at the
ingest endpoints.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import Role, TOTPDevice, User
from accounts.services import totp_device_create, user_create
from gateway.config import private_file_replace, private_file_write
from imaging.phantom import phantom_write

DEMO_PEOPLE = {
    Role.DOCTOR: ("dr.ada", "Ada", "Lovelace"),
    Role.NURSE: ("nurse.florence", "Florence", "Nightingale"),
    Role.ADMIN_STAFF: ("desk.grace", "Grace", "Hopper"),
    Role.DEVICE: ("device.pet-ct-1", "PET/CT", "scanner 1"),
    Role.AUDITOR: ("audit.alan", "Alan", "Turing"),
    Role.IT_ADMIN: ("it.linus", "Linus", "Admin"),
}


DEMO_DEVICE_AE_TITLE = "PETCT1"


class Command(BaseCommand):
    help = "Create demo users (one per role) and the demo PET/CT phantom; safe to run twice."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--phantom-slices", type=int, default=200,
                            help="CT slices of the demo phantom (default 200)")

    def handle(self, *args: object, **options: object) -> None:
        if not settings.DEMO_ALLOWED:
            raise CommandError("demo data is disabled here (GATEWAY_DEMO=0)")
        credentials = self._credentials()
        for role, (username, first_name, last_name) in DEMO_PEOPLE.items():
            if not User.objects.filter(username=username).exists():
                user_create(username=username, password=credentials[username], role=role,
                            first_name=first_name, last_name=last_name, actor="system:seed_demo")
        totp = self._authenticators()
        self._store(credentials, totp)
        self._phantom(int(options["phantom_slices"]))  # type: ignore[call-overload]
        self._announce(credentials, totp)

    def _authenticators(self) -> dict[str, str]:
        uris = {}
        for role, (username, _, _) in DEMO_PEOPLE.items():
            if role == Role.DEVICE:
                continue
            user = User.objects.get(username=username)
            device = TOTPDevice.objects.filter(user=user, confirmed=True).first()
            if device is None:
                device = totp_device_create(user=user, confirmed=True)
            uris[username] = device.config_url()
        return uris

    def _store(self, credentials: dict[str, str], totp: dict[str, str]) -> None:
        path = Path(settings.VAR_DIR) / "demo-credentials.json"
        document = {**credentials, "totp": totp}
        private_file_replace(path, json.dumps(document, indent=2).encode())

    def _credentials(self) -> dict[str, str]:
        path = Path(settings.VAR_DIR) / "demo-credentials.json"
        fresh = {username: secrets.token_urlsafe(12) for username, _, _ in DEMO_PEOPLE.values()}
        private_file_write(path, json.dumps(fresh, indent=2).encode())
        stored = json.loads(path.read_text(encoding="utf-8"))
        stored.pop("totp", None)
        return {**fresh, **stored}

    def _phantom(self, slices: int) -> None:
        out = Path(settings.VAR_DIR) / "demo" / "phantom"
        if not (out / "truth.json").exists():
            self.stdout.write("writing the demo PET/CT phantom (first run only)...")
            phantom_write(out_dir=out, slices=slices)
        self._phantom_import(out)

    def _phantom_import(self, out: Path) -> None:
        """Ingest the phantom once (de-identified, encrypted), and let the demo device send."""
        from django.core.management import call_command

        from imaging.devices import device_endpoint_register
        from imaging.identity.models import StudyIdentity
        from imaging.models import DeviceEndpoint

        truth = json.loads((out / "truth.json").read_text(encoding="utf-8"))
        studies = [patient["study_instance_uid"] for patient in truth["patients"]]
        if StudyIdentity.objects.filter(original_study_instance_uid__in=studies).count() < len(studies):
            self.stdout.write("importing the demo phantom (first run only)...")
            folders = [str(path) for path in sorted(out.iterdir()) if path.is_dir()]
            call_command("import_dicom", *folders, no_progress=True, jobs=1, stdout=self.stdout)
        device = User.objects.get(username=DEMO_PEOPLE[Role.DEVICE][0])
        if not DeviceEndpoint.objects.filter(user=device).exists():
            endpoint, token = device_endpoint_register(user=device, ae_title=DEMO_DEVICE_AE_TITLE,
                                                       actor="system:seed_demo")
            self.stdout.write(f"demo device {device.username}: AE title {endpoint.ae_title}; "
                              f"STOW-RS token (shown once): {token}")

    def _announce(self, credentials: dict[str, str], totp: dict[str, str]) -> None:
        self.stdout.write(self.style.SUCCESS("Demo accounts (passwords kept in var/demo-credentials.json):"))
        for role, (username, _, _) in DEMO_PEOPLE.items():
            self.stdout.write(f"  {role.label:<22} {username:<18} {credentials[username]}")
        self.stdout.write("Second factor: add each URI below to an authenticator app "
                          "(the device account has no interactive sign-in):")
        for username, uri in totp.items():
            self.stdout.write(f"  {username}:")
            self.stdout.write(uri)
