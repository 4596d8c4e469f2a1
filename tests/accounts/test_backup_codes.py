"""Backup codes: ten, 80 bits each, stored only as keyed hashes, single use, regenerable."""

import pytest
from django.urls import reverse

from accounts.models import BackupCode, backup_code_normalise
from accounts.services import backup_codes_regenerate, second_factor_verify
from gateway.audit.models import AuditEvent
from tests.accounts.conftest import otp_step, password_step, sign_in
from tests.conftest import ZONES

pytestmark = pytest.mark.django_db(databases=ZONES)


def test_ten_codes_of_80_bits_stored_only_as_hashes(person):
    user = person()
    codes = backup_codes_regenerate(user=user, actor=user)
    assert len(codes) == len(set(codes)) == 10
    for code in codes:
        assert len(backup_code_normalise(code)) * 5 >= 64  # base32: 5 bits a character
    stored = list(BackupCode.objects.values_list("digest", flat=True))
    assert len(stored) == 10
    for code in codes:
        assert all(backup_code_normalise(code) not in digest and code not in digest for digest in stored)


def test_a_backup_code_signs_in_once(client, person, clock):
    user = person()
    code = backup_codes_regenerate(user=user, actor=user)[0]
    password_step(client, user.username)
    assert otp_step(client, code.lower().replace("-", " ")).status_code == 302
    assert client.get(reverse("home")).status_code == 200
    event = AuditEvent.objects.filter(actor=user.username, action="auth.login").last()
    assert '"factor":"backup-code"' in event.details and '"backup_codes_left":9' in event.details
    client.post(reverse("accounts:logout"))
    password_step(client, user.username)
    assert otp_step(client, code).status_code == 200
    assert client.get(reverse("home")).status_code == 403


def test_regenerating_burns_the_old_set(person):
    user = person()
    old = backup_codes_regenerate(user=user, actor=user)
    new = backup_codes_regenerate(user=user, actor=user)
    assert second_factor_verify(user=user, token=old[0]) is None
    assert second_factor_verify(user=user, token=new[0]) is not None
    assert BackupCode.objects.count() == 10


def test_the_security_page_regenerates_and_shows_the_codes_once(client, person, clock,
                                                               django_capture_on_commit_callbacks):
    user = person("nurse.joy", role="nurse")
    sign_in(client, user, clock)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("accounts:backup_codes"))
    assert response.status_code == 200 and len(response.context["codes"]) == 10
    assert response.context["codes"][0] not in client.get(reverse("accounts:security")).content.decode()
    assert AuditEvent.objects.filter(actor=user.username, action="admin.user",
                                     details__contains="backup-codes-regenerated").exists()
