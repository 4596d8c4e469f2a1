"""TOTP: sealed secrets, tolerance, replay on every path, enrolment, one success under concurrency."""

import base64
import threading
from urllib.parse import parse_qs, urlparse

import pytest
from cryptography.exceptions import InvalidTag
from django.db import connections
from django.urls import reverse

from accounts import crypto
from accounts.models import BackupCodeDevice, TOTPDevice
from accounts.services import second_factor_verify, totp_device_create
from tests.accounts.conftest import code_now, otp_step, password_step
from tests.conftest import ZONES

pytestmark = pytest.mark.django_db(databases=ZONES)


def test_the_secret_is_sealed_at_rest_and_bound_to_its_account(person):
    user = person()
    device = TOTPDevice.objects.get(user=user)
    secret = device.secret()
    assert len(secret) == 20
    assert secret not in bytes(device.key_sealed)
    assert base64.b32encode(secret) not in bytes(device.key_sealed)
    with pytest.raises(InvalidTag):
        crypto.secret_open(kid=device.key_kid, sealed=device.key_sealed, user_id=user.pk + 1)


def test_the_otpauth_uri_says_30_seconds_6_digits(person):
    device = TOTPDevice.objects.get(user=person("dr.ada"))
    uri = urlparse(device.config_url())
    query = parse_qs(uri.query)
    assert uri.scheme == "otpauth" and uri.netloc == "totp"
    assert query["period"] == ["30"] and query["digits"] == ["6"] and query["algorithm"] == ["SHA1"]
    assert base64.b32decode(query["secret"][0] + "=" * (-len(query["secret"][0]) % 8)) == device.secret()


@pytest.mark.parametrize(("steps", "accepted"), [(-2, False), (-1, True), (0, True), (1, True), (2, False)])
def test_tolerance_is_one_step_either_side(person, clock, steps, accepted):
    user = person()
    assert (second_factor_verify(user=user, token=code_now(user, clock, steps)) is not None) is accepted


def test_a_code_is_never_accepted_twice_nor_an_older_one_after_it(person, clock):
    user = person()
    now, earlier = code_now(user, clock), code_now(user, clock, -1)
    assert second_factor_verify(user=user, token=now) is not None
    assert second_factor_verify(user=user, token=now) is None
    assert second_factor_verify(user=user, token=earlier) is None
    clock.advance(30)
    assert second_factor_verify(user=user, token=code_now(user, clock)) is not None


def test_the_code_that_confirmed_enrolment_cannot_sign_in(client, person, clock):
    user = person(device=False)
    password_step(client, user.username)
    assert client.get(reverse("accounts:otp")).url == reverse("accounts:enrol")
    page = client.get(reverse("accounts:enrol")).content.decode()
    assert "data:image/svg+xml" in page and "otpauth://totp/" in page
    code = code_now(user, clock)
    confirmed = client.post(reverse("accounts:enrol"), {"otp_token": code})
    assert confirmed.status_code == 200 and confirmed.context["codes"]
    assert TOTPDevice.objects.get(user=user).confirmed
    client.post(reverse("accounts:logout"))
    password_step(client, user.username)
    assert otp_step(client, code).status_code == 200  # replay refused
    assert client.get(reverse("home")).status_code == 403


def test_enrolment_needs_a_correct_code_before_the_device_is_active(client, person, clock):
    user = person(device=False)
    password_step(client, user.username)
    client.get(reverse("accounts:enrol"))
    good = code_now(user, clock)
    response = client.post(reverse("accounts:enrol"), {"otp_token": f"{(int(good) + 7) % 10**6:06d}"})
    assert response.status_code == 200 and "not right" in response.content.decode()
    assert not TOTPDevice.objects.get(user=user).confirmed
    assert not BackupCodeDevice.objects.filter(user=user).exists()
    assert client.get(reverse("home")).status_code == 403


def test_device_accounts_get_no_authenticator(person):
    with pytest.raises(ValueError, match="device"):
        totp_device_create(user=person("scanner", role="device", device=False), confirmed=True)


@pytest.mark.django_db(databases=ZONES, transaction=True)
def test_ten_parallel_submissions_of_one_code_give_exactly_one_success(person, clock):
    user = person()
    code = code_now(user, clock)
    barrier = threading.Barrier(10)
    results, errors = [], []

    def submit():
        try:
            barrier.wait()
            results.append(second_factor_verify(user=user, token=code) is not None)
        except Exception as exc:
            errors.append(exc)
        finally:
            for connection in connections.all():
                connection.close()

    threads = [threading.Thread(target=submit) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(results) == [False] * 9 + [True]
