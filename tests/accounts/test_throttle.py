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
        answers[name] = response.content.decode().split("<main", 1)[1].split("<form")[0]
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


def test_the_throttled_answer_says_how_long_to_wait(client, person, clock):
    user = person()
    for _ in range(4):  # 3 free failures, then 2 s
        answer = password_step(client, user.username, "wrong password here").content.decode()
    answer = password_step(client, user.username).content.decode()
    assert "Too many failed attempts: try again in 2 seconds." in answer
    clock.advance(1)
    assert "try again in 1 second." in password_step(client, user.username).content.decode()


def test_a_long_wait_is_given_in_minutes_and_a_lock_says_who_lifts_it(client, person, clock, settings):
    user = person()
    LoginThrottle.objects.create(scope="account", key=user.username, failures=12,
                                 last_failure_at=clock.now)  # 2 * 2^9 s = 1024 s, capped at 900
    assert "try again in 15 minutes." in password_step(client, user.username).content.decode()
    LoginThrottle.objects.filter(key=user.username).update(locked_at=clock.now)
    answer = password_step(client, user.username).content.decode()
    assert "blocked until the IT service desk unlocks it" in answer and "try again in" not in answer


def test_the_second_factor_step_says_how_long_to_wait_too(client, person, clock):
    user = person()
    password_step(client, user.username)
    LoginThrottle.objects.create(scope="address", key="127.0.0.1", failures=5,
                                 last_failure_at=clock.now)  # 8 s
    assert "try again in 8 seconds." in otp_step(client, code_now(user, clock)).content.decode()


def _password_from(client, address: str, username: str, password: str = PASSWORD):
    return client.post(reverse("accounts:login"), {"username": username, "password": password},
                       REMOTE_ADDR=address)


def test_unlocking_an_account_clears_the_addresses_it_was_throttled_from(
        client, person, clock, quick_lockout, django_capture_on_commit_callbacks):
    user = person()
    for address in ("10.0.0.1", "10.0.0.1", "10.0.0.2", "10.0.0.2", "10.0.0.2"):
        _password_from(client, address, user.username, "wrong password here")
    _password_from(client, "10.0.0.3", "somebody.else", "wrong password here")
    assert LoginThrottle.objects.get(scope="account", key=user.username).locked_at is not None
    assert LoginThrottle.objects.get(scope="account", key=user.username).sources == ["10.0.0.1",
                                                                                      "10.0.0.2"]
    with django_capture_on_commit_callbacks(execute=True):
        throttle_unlock(scope="account", key=user.username, actor="it.linus", source_ip="10.1.1.1")
    rows = {(row.scope, row.key): row for row in LoginThrottle.objects.all()}
    for key in (("account", user.username), ("address", "10.0.0.1"), ("address", "10.0.0.2")):
        assert (rows[key].failures, rows[key].locked_at, rows[key].last_failure_at) == (0, None, None)
    assert rows[("address", "10.0.0.3")].failures == 1  # another address keeps its count
    assert rows[("account", "somebody.else")].failures == 1
    event = AuditEvent.objects.get(action="auth.unlock")
    assert event.actor == "it.linus" and event.acting_for == user.username
    assert '"addresses_cleared":["10.0.0.1","10.0.0.2"]' in event.details
    assert _password_from(client, "10.0.0.2", user.username).status_code == 302


def test_the_admins_unlock_clears_the_address_rows_too(client, person, clock, quick_lockout,
                                                        django_capture_on_commit_callbacks):
    from tests.accounts.conftest import sign_in

    user = person("dr.locked")
    for _ in range(5):
        _password_from(client, "10.0.0.7", user.username, "wrong password here")
    assert LoginThrottle.objects.get(scope="address", key="10.0.0.7").locked_at is not None
    admin = person("it.root", role="it_admin")
    sign_in(client, admin, clock)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("admin:accounts_user_changelist"),
                    {"action": "unlock_sign_in", "_selected_action": [user.pk]})
    assert not LoginThrottle.objects.filter(locked_at__isnull=False).exists()
    assert LoginThrottle.objects.get(scope="address", key="10.0.0.7").failures == 0
    assert AuditEvent.objects.filter(action="auth.unlock", actor="it.root",
                                     details__contains="10.0.0.7").count() == 1
