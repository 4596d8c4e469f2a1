"""Growing delays, then lockout until an IT admin unlocks; per account and per address."""

import pytest
from django.urls import reverse

from accounts import conf
from accounts.models import LoginThrottle
from accounts.services import _delay, throttle_failure, throttle_unlock, throttle_verdict
from gateway.audit.models import AuditEvent
from tests.accounts.conftest import PASSWORD, code_now, otp_step, password_step
from tests.conftest import ZONES

pytestmark = pytest.mark.django_db(databases=ZONES)
SLOW = "Too many failed attempts"


def test_delays_grow_after_the_free_failures_and_are_capped(settings):
    settings.ACCOUNTS_THROTTLE_FREE_FAILURES = 3
    settings.ACCOUNTS_THROTTLE_BASE_SECONDS = 2
    settings.ACCOUNTS_THROTTLE_MAX_SECONDS = 900
    assert [_delay(n) for n in range(1, 9)] == [0, 0, 2, 4, 8, 16, 32, 64]
    assert _delay(99) == 900


def test_the_defaults_are_nists_100_and_growing_delays(settings):
    from gateway.settings import base

    assert base.ACCOUNTS_LOCKOUT_THRESHOLD == 100
    assert conf.lockout_threshold() == settings.ACCOUNTS_LOCKOUT_THRESHOLD == 100
    assert base.ACCOUNTS_THROTTLE_FREE_FAILURES >= 1 and base.ACCOUNTS_THROTTLE_BASE_SECONDS > 0


def test_while_delayed_even_the_right_password_is_not_tried(client, person, clock):
    user = person()
    for _ in range(3):
        assert "not right" in password_step(client, user.username, "wrong password here").content.decode()
    assert SLOW in password_step(client, user.username, "wrong password here").content.decode()
    clock.advance(1)
    assert SLOW in password_step(client, user.username).content.decode()  # 2 s not yet over
    clock.advance(1)
    assert password_step(client, user.username).status_code == 302


def test_an_unknown_account_is_throttled_exactly_like_a_known_one(client, person, clock):
    person("known")
    answers = {}
    for name in ("known", "ghost"):
        for _ in range(4):
            response = password_step(client, name, "wrong password here")
        answers[name] = response.content.decode().split("<form")[0]
        clock.advance(3600)
        LoginThrottle.objects.filter(scope="address").delete()
    assert answers["known"] == answers["ghost"] and SLOW in answers["known"]


def test_the_100th_consecutive_failure_locks_until_an_it_admin_unlocks(person, clock,
                                                                        django_capture_on_commit_callbacks):
    user = person()
    with django_capture_on_commit_callbacks(execute=True):
        for _ in range(99):
            throttle_failure(username=user.username, address="", step="password")
            clock.advance(3600)
        assert throttle_verdict(username=user.username, address="").allowed
        throttle_failure(username=user.username, address="", step="password")
    clock.advance(365 * 86400)
    verdict = throttle_verdict(username=user.username, address="")
    assert not verdict.allowed and verdict.locked
    assert AuditEvent.objects.filter(action="auth.lockout").count() == 1
    with django_capture_on_commit_callbacks(execute=True):
        throttle_unlock(scope="account", key=user.username, actor="it.linus")
    assert throttle_verdict(username=user.username, address="").allowed
    assert AuditEvent.objects.filter(action="auth.unlock", actor="it.linus").count() == 1


@pytest.fixture
def quick_lockout(settings):
    settings.ACCOUNTS_LOCKOUT_THRESHOLD = 5
    settings.ACCOUNTS_THROTTLE_FREE_FAILURES = 100


def test_a_locked_account_refuses_the_right_password_over_http(client, person, quick_lockout):
    user = person()
    for _ in range(5):
        password_step(client, user.username, "wrong password here", REMOTE_ADDR="10.0.0.1")
    response = client.post(reverse("accounts:login"), {"username": user.username, "password": PASSWORD},
                           REMOTE_ADDR="10.0.0.2")
    assert SLOW in response.content.decode()
    assert LoginThrottle.objects.get(scope="account", key=user.username).locked_at is not None


def test_an_address_is_throttled_across_account_names(client, person, quick_lockout):
    user = person()
    for index in range(5):
        password_step(client, f"guess{index}", "wrong password here")
    assert SLOW in password_step(client, user.username).content.decode()
    assert LoginThrottle.objects.get(scope="address", key="127.0.0.1").locked_at is not None


def test_second_factor_failures_count_and_a_right_password_does_not_reset_them(
        client, person, clock, quick_lockout):
    user = person()
    code = code_now(user, clock)
    wrong = f"{(int(code) + 1) % 10**6:06d}"
    for _ in range(3):
        password_step(client, user.username)
        otp_step(client, wrong)
        client.post(reverse("accounts:logout"))
    password_step(client, user.username)
    otp_step(client, "AAAA-BBBB-CCCC-DDDD")  # a wrong backup code counts too
    client.post(reverse("accounts:logout"))
    password_step(client, user.username)
    assert LoginThrottle.objects.get(scope="account", key=user.username).failures == 4
    otp_step(client, wrong)
    assert SLOW in otp_step(client, code).content.decode()
    assert client.get(reverse("home")).status_code == 403


def test_success_with_both_factors_resets_the_count(client, person, clock):
    user = person()
    password_step(client, user.username, "wrong password here")
    password_step(client, user.username)
    otp_step(client, code_now(user, clock))
    assert LoginThrottle.objects.get(scope="account", key=user.username).failures == 0
