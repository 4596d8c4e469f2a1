"""The admin sits behind both factors and the policy; every change is audited."""

import pytest
from django.test import Client, RequestFactory
from django.urls import reverse

from accounts.admin import site
from accounts.models import BackupCodeDevice, LoginThrottle, TOTPDevice, User
from accounts.services import backup_codes_regenerate
from gateway.audit.models import AuditEvent
from tests.accounts.conftest import password_step, sign_in
from tests.conftest import ZONES

pytestmark = pytest.mark.django_db(databases=ZONES)


def test_the_admin_needs_the_second_factor(client, person, clock):
    admin = person("it.root", role="it_admin")
    assert client.get("/admin/").url.startswith(reverse("accounts:login"))
    password_step(client, admin.username)
    assert client.get("/admin/").status_code == 403
    assert client.get(reverse("admin:accounts_user_changelist")).status_code == 403
    request = RequestFactory().get("/admin/")
    request.user = admin
    admin.is_verified = lambda: False
    assert not site.has_permission(request)
    admin.is_verified = lambda: True
    assert site.has_permission(request)


def test_other_roles_are_refused_and_the_refusal_is_audited(client, person, clock):
    doctor = person("dr.nosy")
    sign_in(client, doctor, clock)
    assert client.get("/admin/").status_code == 403
    assert AuditEvent.objects.filter(actor="dr.nosy", action="admin.user", outcome="denied").exists()


def test_an_it_admin_changes_a_role_and_it_is_audited(client, person, clock,
                                                      django_capture_on_commit_callbacks):
    admin = person("it.root", role="it_admin")
    nurse = person("nurse.ann", role="nurse")
    sign_in(client, admin, clock)
    assert client.get("/admin/").status_code == 200
    change = reverse("admin:accounts_user_change", args=[nurse.pk])
    form = client.get(change).context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None}
    data.update(role="doctor", is_active="on", user_permissions=[],
                last_login_0="", last_login_1="", date_joined_0="2026-01-01", date_joined_1="00:00:00")
    data.pop("password", None)
    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(change, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    assert User.objects.get(pk=nurse.pk).role == "doctor"
    event = AuditEvent.objects.get(action="admin.role")
    assert event.actor == "it.root" and '"to":"doctor"' in event.details
    assert AuditEvent.objects.filter(action="admin.user", actor="it.root",
                                     details__contains="changed").exists()


def test_lost_phone_reset_and_unlock_are_admin_actions_and_audited(client, person, clock,
                                                                   django_capture_on_commit_callbacks):
    admin = person("it.root", role="it_admin")
    victim = person("dr.lost")
    backup_codes_regenerate(user=victim, actor=victim)
    LoginThrottle.objects.create(scope="account", key="dr.lost", failures=100, locked_at=clock.now)
    sign_in(client, admin, clock)
    changelist = reverse("admin:accounts_user_changelist")
    with django_capture_on_commit_callbacks(execute=True):
        client.post(changelist, {"action": "reset_second_factor", "_selected_action": [victim.pk],
                                 "confirm": "yes"})
        client.post(changelist, {"action": "unlock_sign_in", "_selected_action": [victim.pk]})
    assert not TOTPDevice.objects.filter(user=victim).exists()
    assert not BackupCodeDevice.objects.filter(user=victim).exists()
    assert LoginThrottle.objects.get(key="dr.lost").locked_at is None
    assert AuditEvent.objects.filter(action="admin.user", details__contains="second-factor-reset").exists()
    assert AuditEvent.objects.filter(action="auth.unlock", actor="it.root").exists()
    # The user re-enrols at the next sign-in.
    client.post(reverse("accounts:logout"))
    password_step(client, "dr.lost")
    assert client.get(reverse("accounts:otp")).url == reverse("accounts:enrol")


def test_the_admin_never_shows_a_totp_secret(client, person, clock):
    admin = person("it.root", role="it_admin")
    sign_in(client, admin, clock)
    device = TOTPDevice.objects.get(user=admin)
    page = client.get(reverse("admin:accounts_totpdevice_change", args=[device.pk])).content.decode()
    assert "key_sealed" not in page and device.config_url().split("secret=")[1][:16] not in page


def _messages(response) -> list[str]:
    """The messages shown on the page the action redirected to (post with ``follow=True``)."""
    return [str(message) for message in response.context["messages"]]


def test_action_messages_are_singular_or_plural(client, person, clock):
    admin = person("it.root", role="it_admin")
    one, two = person("dr.one"), person("dr.two")
    for user in (one, two):
        LoginThrottle.objects.create(scope="account", key=user.username, failures=5)
    sign_in(client, admin, clock)
    users = reverse("admin:accounts_user_changelist")
    response = client.post(users, {"action": "unlock_sign_in", "_selected_action": [one.pk]}, follow=True)
    assert _messages(response) == ["Unlocked 1 account."]
    response = client.post(users, {"action": "sign_out_everywhere", "_selected_action": [one.pk, two.pk]},
                           follow=True)
    assert _messages(response) == ["Ended every session of 2 accounts."]
    throttles = reverse("admin:accounts_loginthrottle_changelist")
    rows = list(LoginThrottle.objects.filter(scope="account").values_list("pk", flat=True))
    response = client.post(throttles, {"action": "unlock", "_selected_action": rows[:1]}, follow=True)
    assert _messages(response) == ["Unlocked 1 entry."]
    response = client.post(throttles, {"action": "unlock", "_selected_action": rows}, follow=True)
    assert _messages(response) == [f"Unlocked {len(rows)} entries."]
    assert "entr(y" not in client.get(throttles).content.decode()


def test_reset_second_factor_acts_only_after_its_confirmation_page(client, person, clock,
                                                                   django_capture_on_commit_callbacks):
    admin = person("it.root", role="it_admin")
    victim = person("dr.lost")
    sign_in(client, admin, clock)
    changelist = reverse("admin:accounts_user_changelist")
    chosen = {"action": "reset_second_factor", "_selected_action": [victim.pk]}
    with django_capture_on_commit_callbacks(execute=True):
        page = client.post(changelist, chosen)
    assert page.status_code == 200
    assert page.templates[0].name == "admin/action_confirmation.html"
    html = page.content.decode()
    assert "dr.lost" in html and 'name="confirm" value="yes"' in html
    assert f'name="_selected_action" value="{victim.pk}"' in html
    assert TOTPDevice.objects.filter(user=victim).exists()
    assert not AuditEvent.objects.filter(details__contains="second-factor-reset").exists()
    with django_capture_on_commit_callbacks(execute=True):
        done = client.post(changelist, {**chosen, "confirm": "yes"}, follow=True)
    assert done.redirect_chain[0][1] == 302 and _messages(done) == ["Reset the second factor of 1 account."]
    assert not TOTPDevice.objects.filter(user=victim).exists()
    event = AuditEvent.objects.get(action="admin.user", details__contains="second-factor-reset")
    assert event.actor == "it.root"


def _recent_actions(client) -> str:
    page = client.get(reverse("admin:index")).content.decode()
    return page.split('id="recent-actions-module"', 1)[1].split("</div>", 1)[0]


def test_recent_actions_show_the_admins_own_actions(client, person, clock,
                                                     django_capture_on_commit_callbacks):
    admin = person("it.root", role="it_admin")
    victim = person("dr.lost")
    bystander = person("dr.bystander")
    LoginThrottle.objects.create(scope="address", key="10.9.9.9", failures=7)
    sign_in(client, admin, clock)
    assert "None available" in _recent_actions(client)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("admin:accounts_user_changelist"),
                    {"action": "reset_second_factor", "_selected_action": [victim.pk], "confirm": "yes"})
        client.post(reverse("admin:accounts_user_changelist"),
                    {"action": "sign_out_everywhere", "_selected_action": [bystander.pk]})
        client.post(reverse("admin:accounts_loginthrottle_changelist"),
                    {"action": "unlock", "_selected_action": [LoginThrottle.objects.get().pk]})
    box = _recent_actions(client)
    assert "None available" not in box
    assert "dr.lost" in box and "dr.bystander" in box and "10.9.9.9" in box
    # The audit events are still written, once each (not doubled by the log entries).
    assert AuditEvent.objects.filter(details__contains="second-factor-reset").count() == 1
    assert AuditEvent.objects.filter(action="auth.unlock", actor="it.root").count() == 1
    # The box lists the admin's own actions, not another admin's.
    other = Client()
    clock.advance(30)
    sign_in(other, person("it.other", role="it_admin"), clock)
    assert "None available" in _recent_actions(other)
