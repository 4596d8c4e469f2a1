"""The per-C-STORE device check, on the suite's database (SQLite, or PostgreSQL in that pass)."""

from __future__ import annotations

import pytest

from accounts.models import User
from imaging.devices import device_by_ae_title, device_endpoint_register, device_still_allowed
from imaging.models import DeviceEndpoint
from tests.conftest import ZONES

pytestmark = pytest.mark.django_db(databases=ZONES)


def _other_device_takes(ae_title: str) -> None:
    other = User.objects.create_user(username="device.other", password="x" * 20, role="device")
    device_endpoint_register(user=other, ae_title=ae_title)


DISABLE = {
    "account deactivated": lambda user, ae: User.objects.filter(pk=user.pk).update(is_active=False),
    "role changed": lambda user, ae: User.objects.filter(pk=user.pk).update(role="doctor"),
    "endpoint deactivated": lambda user, ae: DeviceEndpoint.objects.filter(ae_title=ae).update(
        active=False),
    "AE title changed": lambda user, ae: DeviceEndpoint.objects.filter(ae_title=ae).update(
        ae_title="CT02"),
    "AE title removed": lambda user, ae: DeviceEndpoint.objects.filter(ae_title=ae).delete(),
    "AE title given to another device": lambda user, ae: _other_device_takes(ae),
}


@pytest.mark.parametrize("how", DISABLE)
def test_device_still_allowed_follows_the_rows_and_keeps_the_principal(how):
    user = User.objects.create_user(username="device.ct01", password="x" * 20, role="device")
    device_endpoint_register(user=user, ae_title="CT01")
    device = device_by_ae_title("CT01")
    assert device is not None and device_still_allowed(device=device, ae_title="CT01 ")
    DISABLE[how](user, "CT01")
    assert not device_still_allowed(device=device, ae_title="CT01")
    assert (device.role, device.is_active) == ("device", True)  # still audited as it was
