"""Idle (30 min) and absolute (12 h) limits on the server, logout everywhere."""

import pytest
from django.test import Client
from django.urls import reverse

from accounts.models import User
from gateway.audit.models import AuditEvent
from tests.accounts.conftest import sign_in
from tests.conftest import ZONES

pytestmark = pytest.mark.django_db(databases=ZONES)


def test_idle_for_30_minutes_ends_the_session(client, person, clock):
    user = person()
    sign_in(client, user, clock)
    clock.advance(29 * 60)
    assert client.get(reverse("home")).status_code == 200
    clock.advance(29 * 60)
    assert client.get(reverse("home")).status_code == 200  # the last request counted
    clock.advance(30 * 60)
    response = client.get(reverse("home"))
    assert response.status_code == 302 and response.url.startswith(reverse("accounts:login"))
    event = AuditEvent.objects.get(actor=user.username, action="auth.timeout")
    assert '"limit":"idle"' in event.details and '"channel":"http"' in event.details


def test_twelve_hours_end_the_session_however_active(client, person, clock):
    user = person()
    sign_in(client, user, clock)
    for _ in range(12 * 3 - 1):
        clock.advance(20 * 60)
        assert client.get(reverse("home")).status_code == 200
    clock.advance(20 * 60)
    assert client.get(reverse("home")).status_code == 302
    assert '"limit":"absolute"' in AuditEvent.objects.get(action="auth.timeout").details


def test_the_limits_follow_the_settings(client, person, clock, settings):
    settings.SESSION_IDLE_SECONDS = 60
    user = person()
    sign_in(client, user, clock)
    clock.advance(61)
    assert client.get(reverse("home")).status_code == 302


def test_log_out_everywhere_ends_every_session_of_the_user(client, person, clock,
                                                            django_capture_on_commit_callbacks):
    user = person()
    other_device = Client()
    sign_in(client, user, clock)
    clock.advance(30)
    sign_in(other_device, user, clock)
    with django_capture_on_commit_callbacks(execute=True):
        assert client.post(reverse("accounts:logout_everywhere")).status_code == 302
    assert client.get(reverse("home")).status_code == 302
    assert other_device.get(reverse("home")).status_code == 302
    assert AuditEvent.objects.filter(action="auth.logout", details__contains="everywhere").exists()


def test_an_it_admin_logs_a_user_out_everywhere(client, person, clock, django_capture_on_commit_callbacks):
    victim_client = Client()
    victim = person("dr.victim")
    sign_in(victim_client, victim, clock)
    admin = person("it.root", role="it_admin")
    clock.advance(30)
    sign_in(client, admin, clock)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(reverse("admin:accounts_user_changelist"),
                               {"action": "sign_out_everywhere", "_selected_action": [victim.pk]})
    assert response.status_code == 302
    assert victim_client.get(reverse("home")).status_code == 302
    assert client.get(reverse("home")).status_code == 200
    event = AuditEvent.objects.get(action="auth.logout", actor="it.root")
    assert event.acting_for == "dr.victim"
    assert User.objects.get(pk=victim.pk).session_generation == 1
