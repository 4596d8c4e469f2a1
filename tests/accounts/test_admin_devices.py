"""The admin's devices section: endpoints listed with their AE titles, disabled, tokens rotated."""

import pytest
from django.urls import NoReverseMatch, reverse

from accounts.models import User
from gateway.audit.models import AuditEvent
from imaging.devices import (
    device_by_ae_title,
    device_by_token,
    device_endpoint_register,
    device_still_allowed,
    token_hash,
)
from imaging.models import DeviceEndpoint
from tests.accounts.conftest import sign_in
from tests.conftest import ZONES

pytestmark = pytest.mark.django_db(databases=ZONES)

CHANGELIST = "admin:imaging_deviceendpoint_changelist"


@pytest.fixture
def scanner():
    """A device account with one endpoint; returns (endpoint, its current token)."""
    device = User.objects.create_user(username="ct.scanner", password="a long device secret 1",
                                      role="device")
    return device_endpoint_register(user=device, ae_title="CT01")


@pytest.fixture
def it_admin(client, person, clock):
    sign_in(client, person("it.root", role="it_admin"), clock)
    return client


def test_the_devices_section_lists_endpoints_with_their_accounts(it_admin, scanner):
    index = it_admin.get(reverse("admin:index")).content.decode()
    assert "Devices" in index and reverse(CHANGELIST) in index
    page = it_admin.get(reverse(CHANGELIST)).content.decode()
    assert "CT01" in page and "ct.scanner" in page
    endpoint, token = scanner
    detail = it_admin.get(reverse("admin:imaging_deviceendpoint_change", args=[endpoint.pk]))
    assert detail.status_code == 200 and token not in detail.content.decode()
    assert endpoint.token_hash not in detail.content.decode()


def test_endpoints_are_registered_by_command_and_never_deleted_here(it_admin, scanner):
    for page in ("add", "delete"):
        with pytest.raises(NoReverseMatch):
            reverse(f"admin:imaging_deviceendpoint_{page}", args=[] if page == "add" else [1])
    assert "delete_selected" not in it_admin.get(reverse(CHANGELIST)).content.decode()


@pytest.mark.parametrize("role", ["doctor", "auditor", "nurse"])
def test_only_it_admins_reach_the_devices_section(client, person, clock, scanner, role):
    sign_in(client, person(f"someone.{role}", role=role), clock)
    assert client.get(reverse(CHANGELIST)).status_code == 403
    endpoint, _ = scanner
    response = client.post(reverse(CHANGELIST), {"action": "disable", "_selected_action": [endpoint.pk]})
    assert response.status_code == 403
    assert DeviceEndpoint.objects.get(pk=endpoint.pk).active


def test_disabling_an_endpoint_refuses_it_at_both_doors_and_is_audited(
        it_admin, scanner, django_capture_on_commit_callbacks):
    endpoint, token = scanner
    device = device_by_ae_title("CT01")
    assert device is not None and device_by_token(token) is not None
    with django_capture_on_commit_callbacks(execute=True):
        response = it_admin.post(reverse(CHANGELIST), {"action": "disable",
                                                       "_selected_action": [endpoint.pk]}, follow=True)
    assert [str(m) for m in response.context["messages"]] == ["Disabled 1 device endpoint."]
    assert not DeviceEndpoint.objects.get(pk=endpoint.pk).active
    assert device_by_ae_title("CT01") is None and device_by_token(token) is None
    assert not device_still_allowed(device=device, ae_title="CT01")
    event = AuditEvent.objects.get(action="admin.device", details__contains="endpoint disabled")
    assert event.actor == "it.root" and '"ae_title":"CT01"' in event.details
    assert "CT01" in it_admin.get(reverse("admin:index")).content.decode()  # recent actions
    with django_capture_on_commit_callbacks(execute=True):
        again = it_admin.post(reverse(CHANGELIST), {"action": "disable",
                                                    "_selected_action": [endpoint.pk]}, follow=True)
    assert [str(m) for m in again.context["messages"]] == ["Disabled 0 device endpoints.",
                                                           "1 was disabled already."]
    assert AuditEvent.objects.filter(details__contains="endpoint disabled").count() == 1


def test_rotating_a_token_asks_first_then_shows_the_new_one_once_and_refuses_the_old(
        it_admin, scanner, django_capture_on_commit_callbacks):
    endpoint, old = scanner
    chosen = {"action": "rotate_token", "_selected_action": [endpoint.pk]}
    with django_capture_on_commit_callbacks(execute=True):
        page = it_admin.post(reverse(CHANGELIST), chosen)
    assert page.templates[0].name == "admin/action_confirmation.html"
    assert "CT01" in page.content.decode()
    assert device_by_token(old) is not None  # nothing happened yet
    assert not AuditEvent.objects.filter(details__contains="token rotated").exists()
    with django_capture_on_commit_callbacks(execute=True):
        result = it_admin.post(reverse(CHANGELIST), {**chosen, "confirm": "yes"})
    assert result.status_code == 200 and "no-store" in result["Cache-Control"]
    html = result.content.decode()
    new = html.split('<code class="device-token">', 1)[1].split("</code>", 1)[0]
    assert new.startswith("fgw_") and new != old
    stored = DeviceEndpoint.objects.get(pk=endpoint.pk)
    assert stored.token_hash == token_hash(new) and stored.active
    assert device_by_token(old) is None
    principal = device_by_token(new)
    assert principal is not None and principal.username == "ct.scanner"
    event = AuditEvent.objects.get(action="admin.device", details__contains="token rotated")
    assert event.actor == "it.root" and new not in event.details
    assert new not in it_admin.get(reverse("admin:imaging_deviceendpoint_change",
                                           args=[endpoint.pk])).content.decode()
