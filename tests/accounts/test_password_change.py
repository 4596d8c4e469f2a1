"""A signed-in person changes their own password: asked again, the same rules, others signed out."""

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import LoginThrottle, User
from gateway.audit.models import AuditEvent
from tests.accounts.conftest import PASSWORD, password_step, sign_in
from tests.conftest import ZONES

pytestmark = pytest.mark.django_db(databases=ZONES)

NEW = "quince lantern by the weir"
URL = "accounts:password_change"


def _change(client, current: str = PASSWORD, new: str = NEW, again: str | None = None):
    return client.post(reverse(URL), {"current_password": current, "new_password": new,
                                      "new_password_again": new if again is None else again})


def test_the_security_page_links_to_it_and_it_shows_the_rules(client, person, clock):
    sign_in(client, person(), clock)
    assert reverse(URL) in client.get(reverse("accounts:security")).content.decode()
    page = client.get(reverse(URL)).content.decode()
    assert 'autocomplete="current-password"' in page and "at least 12 characters" in page


def test_a_wrong_current_password_is_refused_counted_and_audited(client, person, clock,
                                                                 django_capture_on_commit_callbacks):
    user = person()
    sign_in(client, user, clock)
    with django_capture_on_commit_callbacks(execute=True):
        response = _change(client, current="not my password at all")
    assert response.status_code == 200
    assert "Your current password is not right." in response.content.decode()
    assert User.objects.get(pk=user.pk).check_password(PASSWORD)
    assert LoginThrottle.objects.get(scope="account", key=user.username).failures == 1
    event = AuditEvent.objects.get(action="admin.user", outcome="denied")
    assert event.actor == user.username and "wrong current password" in event.details


def test_a_weak_new_password_is_refused_with_the_rules_message(client, person, clock):
    user = person()
    sign_in(client, user, clock)
    short = _change(client, new="too short").content.decode()
    assert "This password is too short. It must contain at least 12 characters." in short
    context = _change(client, new="dr.who dr.who dr.who").content.decode()
    assert "built from your user name, your name or the product name" in context
    mismatch = _change(client, again=NEW + "!").content.decode()
    assert "The two new passwords are not the same." in mismatch
    assert User.objects.get(pk=user.pk).check_password(PASSWORD)
    assert not AuditEvent.objects.filter(details__contains="password changed").exists()


def test_a_change_is_audited_ends_the_other_sessions_and_keeps_this_one(
        client, person, clock, django_capture_on_commit_callbacks):
    user = person()
    elsewhere = Client()
    sign_in(elsewhere, user, clock)
    clock.advance(30)
    sign_in(client, user, clock)
    before = client.session.session_key
    assert elsewhere.get(reverse("home")).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        response = _change(client)
    assert response.status_code == 302 and response.url == reverse("accounts:security")
    assert client.session.session_key != before  # rotated
    page = client.get(reverse("accounts:security"))
    assert page.status_code == 200 and "Your password is changed" in page.content.decode()
    assert client.get(reverse("home")).status_code == 200
    gone = elsewhere.get(reverse("home"))
    assert gone.status_code == 302 and gone.url.startswith(reverse("accounts:login"))
    event = AuditEvent.objects.get(action="admin.user", details__contains="password changed by self")
    assert event.actor == user.username and event.outcome == "success"
    assert NEW not in event.details and PASSWORD not in event.details
    assert User.objects.get(pk=user.pk).check_password(NEW)
    fresh = Client()
    assert password_step(fresh, user.username, PASSWORD).status_code == 200  # refused
    assert password_step(fresh, user.username, NEW).status_code == 302


def test_a_throttled_account_cannot_try_current_passwords(client, person, clock):
    user = person()
    sign_in(client, user, clock)
    LoginThrottle.objects.create(scope="account", key=user.username, failures=5,
                                 last_failure_at=clock.now)
    answer = _change(client).content.decode()
    assert "Too many failed attempts: try again in 8 seconds." in answer
    assert User.objects.get(pk=user.pk).check_password(PASSWORD)


def test_the_admins_change_password_link_leads_to_the_audited_page(client, person, clock):
    sign_in(client, person("it.root", role="it_admin"), clock)
    response = client.get(reverse("admin:password_change"))
    assert response.status_code == 302 and response.url == reverse(URL)
    assert client.get(reverse("admin:password_change_done")).url == reverse("accounts:security")
