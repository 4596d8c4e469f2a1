"""create_user and seed_demo hand out authenticators as otpauth:// URIs."""

import json

import pytest
from django.core.management import CommandError, call_command

from accounts.models import TOTPDevice, User
from gateway.audit.models import AuditEvent
from tests.conftest import ZONES

pytestmark = pytest.mark.django_db(databases=ZONES)


def test_create_user_prints_the_uri_on_its_own_line(capsys, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True):
        call_command("create_user", username="dr.new", role="doctor", password="plum orchard at dusk",
                     email="new@hospital.example", operator="it.linus")
    lines = capsys.readouterr().out.splitlines()
    uris = [line for line in lines if line.startswith("otpauth://")]
    assert len(uris) == 1 and uris[0] == uris[0].strip()
    user = User.objects.get(username="dr.new")
    assert user.email == "new@hospital.example" and user.check_password("plum orchard at dusk")
    device = TOTPDevice.objects.get(user=user)
    assert device.confirmed and uris[0] == device.config_url()
    assert AuditEvent.objects.filter(action="admin.user", actor="it.linus").exists()


def test_create_user_generates_a_password_and_refuses_weak_ones(capsys):
    call_command("create_user", username="nurse.gen", role="nurse")
    out = capsys.readouterr().out
    password = next(line for line in out.splitlines() if line.startswith("password: "))[10:]
    assert User.objects.get(username="nurse.gen").check_password(password)
    with pytest.raises(CommandError, match="too short"):
        call_command("create_user", username="weak", role="nurse", password="short")
    with pytest.raises(CommandError):
        call_command("create_user", username="x", role="surgeon")


def test_device_accounts_get_no_authenticator(capsys):
    call_command("create_user", username="ct-2", role="device")
    assert "otpauth://" not in capsys.readouterr().out
    assert not TOTPDevice.objects.exists()


def test_seed_demo_gives_every_person_an_authenticator(settings, tmp_path, capsys):
    settings.VAR_DIR = tmp_path
    call_command("seed_demo", phantom_slices=32)
    first = capsys.readouterr().out
    call_command("seed_demo", phantom_slices=32)
    second = capsys.readouterr().out
    stored = json.loads((tmp_path / "demo-credentials.json").read_text())
    people = User.objects.exclude(role="device")
    assert set(stored["totp"]) == set(people.values_list("username", flat=True))
    for user in people:
        uri = TOTPDevice.objects.get(user=user, confirmed=True).config_url()
        assert stored["totp"][user.username] == uri
        assert uri in first.splitlines() and uri in second.splitlines()
    assert not TOTPDevice.objects.filter(user__role="device").exists()
