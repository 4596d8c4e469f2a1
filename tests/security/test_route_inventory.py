"""Every route, for every principal, answers what docs/access-matrix.md says.

Routes come from the URL resolver (and the websocket router); expectations
are parsed from the document, not from the policy, so the three must agree.
A denied request never gets a 200 or reaches the view; an allowed one is
never refused nor sent to sign in.
"""

from __future__ import annotations

import re

import pytest
from django.conf import settings
from django.test import Client
from django.urls import reverse
from django_otp import DEVICE_ID_SESSION_KEY

from accounts.models import User
from accounts.services import totp_device_create
from tests.accounts.conftest import PASSWORD, password_step
from tests.conftest import ZONES
from tests.security.inventory import http_routes
from tests.sharing import factories

pytestmark = pytest.mark.django_db(databases=ZONES)

PRINCIPALS = ["anonymous", "password-only", "doctor", "nurse", "admin_staff", "device", "auditor",
              "it_admin", "consultant"]


def _documented() -> dict[str, dict[str, str]]:
    text = (settings.BASE_DIR / "docs" / "access-matrix.md").read_text(encoding="utf-8")
    section = text.split("## Routes x principals", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    header = next(line for line in section.splitlines() if line.startswith("| route |"))
    columns = [cell.strip() for cell in header.strip("|").split("|")][2:]
    assert columns == PRINCIPALS
    table = {}
    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        table[cells[0].strip("`")] = dict(zip(columns, cells[2:], strict=True))
    return table


DOCUMENTED = _documented()


def _expected(view_name: str, principal: str) -> str:
    row = DOCUMENTED.get(view_name) or DOCUMENTED.get(view_name.rpartition(":")[0] + ":*")
    assert row is not None, f"{view_name} has no row in docs/access-matrix.md"
    return row[principal]


def _client_for(principal: str) -> Client:
    client = Client()
    if principal == "anonymous":
        return client
    if principal == "consultant":  # a session bound to a redeemed share of one study
        study = factories.clinical_study(uid="2.25.77")
        return factories.consultant_client(factories.mint(factories.doctor("dr.sharer"), study))
    if principal == "password-only":
        user = User.objects.create_user(username="half", password=PASSWORD, role="doctor")
        totp_device_create(user=user, confirmed=True)
        assert password_step(client, "half").status_code == 302
        return client
    user = User.objects.create_user(username=f"{principal}-person", password=PASSWORD, role=principal)
    client.force_login(user)
    if principal != "device":
        session = client.session
        session[DEVICE_ID_SESSION_KEY] = totp_device_create(user=user, confirmed=True).persistent_id
        session.save()
    return client


def _observed(response) -> str:
    if response.status_code == 403:
        return "deny"
    if (response.status_code in (301, 302) and response.url.startswith(reverse("accounts:login"))
            and "next=" in response.url):
        return "sign-in"  # (signing out also lands on the sign-in page, without next=)
    return "allow"


# Inside the admin, some models allow no adding, editing or deleting to anyone
# (throttles are unlocked by an action, devices are enrolled by their owner,
# autocomplete needs parameters): the gate lets the IT admin in, the model
# admin then refuses. Still asserted: 403 for everyone.
REFUSED_INSIDE_THE_ADMIN = {
    ("admin:accounts_loginthrottle_add", "get"), ("admin:accounts_loginthrottle_add", "post"),
    ("admin:accounts_loginthrottle_change", "post"),
    ("admin:accounts_loginthrottle_delete", "get"), ("admin:accounts_loginthrottle_delete", "post"),
    ("admin:accounts_totpdevice_add", "get"), ("admin:accounts_totpdevice_add", "post"),
    ("admin:accounts_totpdevice_change", "post"),
    ("admin:autocomplete", "get"),
}

CASES = [(route, principal) for route in http_routes() for principal in PRINCIPALS]


@pytest.mark.parametrize("method", ["get", "post"])
@pytest.mark.parametrize(("route", "principal"), CASES,
                         ids=[f"{route.view_name}-{principal}" for route, principal in CASES])
def test_every_route_answers_as_documented(route, principal, method):
    expected = _expected(route.view_name, principal)
    response = getattr(_client_for(principal), method)(route.url)
    observed = _observed(response)
    if expected == "allow" and (route.view_name, method) in REFUSED_INSIDE_THE_ADMIN:
        assert response.status_code == 403
    elif expected == "allow":
        assert observed == "allow", f"{principal} refused on {route.url} ({response.status_code})"
    else:
        assert response.status_code != 200
        assert observed == expected, f"{principal} on {route.url}: {response.status_code}"


def test_a_new_route_without_an_entry_is_caught():
    assert DOCUMENTED, "no routes parsed from the document"
    assert re.match(r"^[\w:*.]+$", next(iter(DOCUMENTED)))
    with pytest.raises(AssertionError, match="no row"):
        _expected("brand_new_route", "doctor")
