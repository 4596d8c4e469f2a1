"""Minting and forwarding are POST → 303 → GET, shown once, and idempotent per form.

The POST mints and redirects to ``?created=<share>`` on the same route; that
GET shows the link and PIN once (they wait in the session, at most
``SHOWN_SECONDS``); a reload says they were shown and mints nothing; the same
form (its idempotency key) posted twice mints one share, also when the two
POSTs race (the unique constraint settles it).
"""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from django.db import connections
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from gateway.sharing import services, views
from gateway.sharing.models import Share
from gateway.sharing.services import Scope, ShareAlreadyMinted, capability_verify
from tests.conftest import ZONES
from tests.sharing import factories
from tests.sharing.factories import clinical_study, consultant_client, doctor, form_key, shown

pytestmark = [pytest.mark.django_db(databases=ZONES), pytest.mark.usefixtures("committed")]

FIELDS = {"scope": "study", "actions": "view", "hours": 72, "client_cidr": "",
          "recipient": "Dr Second Opinion"}


def _mint_form(client: Client, study) -> tuple[str, dict]:
    url = reverse("sharing:mint", args=[study.study_instance_uid])
    page = client.get(url)
    assert page.status_code == 200
    return url, {**FIELDS, "idempotency_key": form_key(page.content)}


def test_mint_redirects_and_shows_the_link_and_pin_once(client, signed_in, study, audit_log):
    signed_in("doctor")
    url, fields = _mint_form(client, study)
    posted = client.post(url, fields)
    share = Share.objects.get()
    assert posted.status_code == 303 and posted.url == f"{url}?created={share.public_id}"
    first = client.get(posted.url)
    assert first.status_code == 200
    token, pin = shown(first.content)
    assert capability_verify(token, client_ip="127.0.0.1", redeemed=False).share_id == share.public_id
    for _ in range(2):
        reload = client.get(posted.url)
        assert reload.status_code == 200 and shown(reload.content) is None
        html = reload.content.decode()
        assert "Already shown" in html and "revoke the share" in html
        assert pin not in html and token[:24] not in html
    assert Share.objects.count() == 1 and audit_log.actions() == ["share.mint"]
    assert views.SESSION_SHOWN not in client.session


def test_the_same_form_posted_twice_mints_one_share(client, signed_in, study, audit_log):
    signed_in("doctor")
    url, fields = _mint_form(client, study)
    first, second = client.post(url, fields), client.post(url, fields)
    share = Share.objects.get()
    assert first.status_code == second.status_code == 303
    assert first.url == second.url == f"{url}?created={share.public_id}"
    assert shown(client.get(first.url).content) is not None  # shown once, to whichever GET is first
    assert shown(client.get(second.url).content) is None
    assert audit_log.actions() == ["share.mint"]
    url, fields = _mint_form(client, study)  # a new rendering of the form is a new share
    assert client.post(url, fields).status_code == 303 and Share.objects.count() == 2


def test_a_form_without_a_valid_key_mints_nothing_and_is_renewed(client, signed_in, study):
    signed_in("doctor")
    url, fields = _mint_form(client, study)
    for key in (None, "short", "not/base64url!" * 3):
        data = {**fields, "idempotency_key": key} if key else {k: v for k, v in fields.items()
                                                               if k != "idempotency_key"}
        response = client.post(url, data)
        assert response.status_code == 400 and b"expired" in response.content
        renewed = form_key(response.content)
        assert renewed != key and len(renewed) >= 16
    assert not Share.objects.exists()


def test_a_refused_form_keeps_its_unused_key(client, signed_in, study):
    signed_in("doctor")
    url, fields = _mint_form(client, study)
    refused = client.post(url, {**fields, "recipient": ""})
    assert refused.status_code == 400 and form_key(refused.content) == fields["idempotency_key"]
    assert client.post(url, fields).status_code == 303 and Share.objects.count() == 1


def test_what_waits_to_be_shown_expires(client, signed_in, study, monkeypatch):
    signed_in("doctor")
    url, fields = _mint_form(client, study)
    posted = client.post(url, fields)
    later = timezone.now() + dt.timedelta(seconds=views.SHOWN_SECONDS + 1)
    monkeypatch.setattr(views.timezone, "now", lambda: later)
    assert shown(client.get(posted.url).content) is None
    assert views.SESSION_SHOWN not in client.session


def test_a_created_page_shows_only_what_this_route_minted(client, signed_in, study):
    signed_in("doctor")
    url, fields = _mint_form(client, study)
    posted = client.post(url, fields)
    share_id = Share.objects.get().public_id
    other = clinical_study(uid="2.25.1002", description="MR brain (same patient)")
    elsewhere = reverse("sharing:mint", args=[other.study_instance_uid])
    assert shown(client.get(f"{elsewhere}?created={share_id}").content) is None
    assert shown(client.get(f"{url}?created=not-an-id").content) is None
    assert shown(client.get(posted.url).content) is not None


def test_racing_twins_mint_one_share(study, monkeypatch, audit_log):
    """Both pass the look-up before either inserts: the unique constraint decides."""
    issuer = factories.verified(doctor())
    first = factories.mint(issuer, study, idempotency_key="k" * 32)
    monkeypatch.setattr(services, "_minted_before", _miss_once(services._minted_before))
    with pytest.raises(ShareAlreadyMinted) as twin:
        factories.mint(issuer, study, idempotency_key="k" * 32)
    assert twin.value.share_id == first.share.public_id
    assert Share.objects.count() == 1 and audit_log.actions() == ["share.mint"]
    other = factories.verified(doctor("dr.other"))  # keys are per doctor
    assert factories.mint(other, study, idempotency_key="k" * 32).share.issued_by == other


def _miss_once(lookup):
    calls = []

    def patched(**kwargs):
        calls.append(kwargs)
        if len(calls) > 1:
            lookup(**kwargs)

    return patched


@pytest.mark.django_db(databases=ZONES, transaction=True)
def test_concurrent_posts_of_one_form_mint_one_share(study):
    issuer = factories.verified(doctor("dr.twice"))
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def submit() -> None:
        try:
            barrier.wait()
            minted = factories.mint(issuer, study, scope=Scope.STUDY, idempotency_key="t" * 32)
            outcomes.append(minted.share.public_id)
        except ShareAlreadyMinted as earlier:
            outcomes.append(f"again:{earlier.share_id}")
        finally:
            connections.close_all()

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    share = Share.objects.get()
    assert sorted(outcomes) == sorted([share.public_id] + [f"again:{share.public_id}"] * 3)


# --- forwarding -----------------------------------------------------------------------------

def test_forwarding_redirects_shows_once_and_is_idempotent(study, audit_log):
    issuer = doctor()
    holder = consultant_client(factories.mint(issuer, study))
    url = reverse("sharing:forward")
    page = holder.get(url)
    fields = {"study": "", "actions": "view", "hours": 2, "recipient": "Dr Colleague",
              "idempotency_key": form_key(page.content)}
    first, second = holder.post(url, fields), holder.post(url, fields)
    child = Share.objects.get(parent__isnull=False)
    assert first.status_code == second.status_code == 303
    assert first.url == second.url == f"{url}?created={child.public_id}"
    token, pin = shown(holder.get(first.url).content)
    again = holder.get(first.url)
    assert shown(again.content) is None and pin not in again.content.decode()
    assert b"ask the doctor who shared" in again.content
    assert capability_verify(token, client_ip="127.0.0.1", redeemed=False).share_id == child.public_id
    assert audit_log.actions().count("share.mint") == 2  # the root, and one forward
    fields["idempotency_key"] = form_key(holder.get(url).content)
    assert holder.post(url, fields).status_code == 303
    assert Share.objects.filter(parent__isnull=False).count() == 2
