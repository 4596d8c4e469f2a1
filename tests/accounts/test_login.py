"""The two-step sign-in: password, then TOTP; rotation, uniform errors, audit."""

import pytest
from django.urls import reverse

from gateway.audit.models import AuditEvent
from tests.accounts.conftest import code_now, otp_step, password_step, sign_in
from tests.conftest import ZONES

pytestmark = pytest.mark.django_db(databases=ZONES)


def _actions(actor):
    return list(AuditEvent.objects.filter(actor=actor).order_by("sequence")
                .values_list("action", "outcome", "details"))


def test_password_then_totp_marks_the_session_verified_and_rotates_the_key_each_step(client, person, clock):
    user = person()
    client.get(reverse("accounts:login"))
    anonymous_key = client.session.session_key
    response = password_step(client, user.username)
    assert response.status_code == 302 and response.url == reverse("accounts:otp")
    password_key = client.session.session_key
    assert password_key and password_key != anonymous_key
    assert client.get(reverse("home")).status_code == 403  # password alone reaches nothing

    response = otp_step(client, code_now(user, clock))
    assert response.status_code == 302 and response.url == reverse("home")
    assert client.session.session_key not in (anonymous_key, password_key)
    assert client.get(reverse("home")).status_code == 200
    events = _actions(user.username)
    assert [(a, o) for a, o, _ in events] == [("auth.login", "success")]
    assert '"factor":"totp"' in events[0][2]


def test_an_old_session_key_is_useless_after_each_step(client, person, clock):
    from django.test import Client

    user = person()
    password_step(client, user.username)
    stale = client.session.session_key
    otp_step(client, code_now(user, clock))
    thief = Client()
    thief.cookies["gateway-session"] = stale
    assert thief.get(reverse("home")).status_code == 302


def test_unknown_account_and_wrong_password_read_the_same(client, person):
    person("known")
    wrong = password_step(client, "known", "not the password at all")
    ghost = password_step(client, "ghost", "not the password at all")
    assert wrong.status_code == ghost.status_code == 200
    strip = lambda r: r.content.decode().replace("ghost", "").replace("known", "")  # noqa: E731
    assert "not right" in strip(wrong)
    assert strip(wrong).split("csrfmiddlewaretoken")[0] == strip(ghost).split("csrfmiddlewaretoken")[0]
    assert AuditEvent.objects.filter(action="auth.login-failed").count() == 2


def test_a_wrong_code_is_refused_and_audited(client, person, clock):
    user = person()
    password_step(client, user.username)
    good = code_now(user, clock)
    bad = f"{(int(good) + 1) % 1_000_000:06d}"
    response = otp_step(client, bad)
    assert response.status_code == 200 and "not right" in response.content.decode()
    assert client.get(reverse("home")).status_code == 403
    assert AuditEvent.objects.filter(actor=user.username, action="auth.otp-failed").count() == 1


def test_device_accounts_have_no_interactive_sign_in(client, person):
    person("ct-scanner", role="device", device=False)
    response = password_step(client, "ct-scanner")
    assert response.status_code == 200 and "not right" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_next_is_kept_across_both_steps_but_never_leaves_the_site(client, person, clock):
    user = person("audit.ann", role="auditor")
    client.get(reverse("accounts:login") + "?next=/audit/")
    password_step(client, user.username, next="/audit/")
    assert otp_step(client, code_now(user, clock)).url == "/audit/"
    client.post(reverse("accounts:logout"))
    clock.advance(30)
    password_step(client, user.username, next="https://evil.example/")
    assert otp_step(client, code_now(user, clock)).url == reverse("home")


def test_logout_ends_the_session_and_is_audited(client, person, clock):
    user = person()
    sign_in(client, user, clock)
    assert client.get(reverse("accounts:logout")).status_code == 405
    assert client.post(reverse("accounts:logout")).status_code == 302
    assert client.get(reverse("home")).status_code == 302
    assert AuditEvent.objects.filter(actor=user.username, action="auth.logout").exists()


def test_a_password_only_session_cannot_enrol_a_second_authenticator(client, person):
    user = person()
    password_step(client, user.username)
    response = client.get(reverse("accounts:enrol"))
    assert response.status_code == 302 and response.url == reverse("accounts:otp")
    assert user.totpdevice_set.count() == 1
