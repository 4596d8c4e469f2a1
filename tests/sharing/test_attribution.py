"""Every refusal of an identified share names its issuing doctor; a claim names no one.

A share is identified when its token verifies under the share's root key, or,
once that key is gone (revoked, burned), when the token is byte for byte the
one issued. Then the ``share.deny`` event has ``actor = share:<id>`` and
``acting_for = <issuing doctor>``, like every other event of a consultant. A
token that only *names* a real share (forged, or signed under another key) is
recorded as ``anonymous`` with ``claimed_share``: it must not make the audit
speak for a doctor.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts import clock
from gateway.sharing import services
from gateway.sharing.caveats import Delegate
from gateway.sharing.models import Share, ShareState
from gateway.sharing.services import ShareRefused, capability_verify, share_deny_record
from gateway.sharing.tokens import token_mint, token_parse
from tests.conftest import ZONES
from tests.sharing import factories
from tests.sharing.factories import clinical_study, consultant_client, doctor, mint, redeem

pytestmark = [pytest.mark.django_db(databases=ZONES), pytest.mark.usefixtures("committed")]


def denial(audit_log):
    """The last ``share.deny`` event and its details."""
    event = [e for e in audit_log.events() if e.action == "share.deny"][-1]
    return event, json.loads(event.details)


def assert_names_the_doctor(audit_log, share_id: str, issuer, reason: str) -> None:
    event, details = denial(audit_log)
    assert details["reason"] == reason
    assert event.actor == f"share:{share_id}" and event.actor_role == "consultant"
    assert event.acting_for == issuer.username
    assert "claimed_share" not in details


def assert_names_no_one(audit_log, claimed: str, reason: str) -> None:
    event, details = denial(audit_log)
    assert details["reason"] == reason
    assert event.actor == "anonymous" and event.acting_for == ""
    assert details["claimed_share"] == claimed


def _open(token: str, **client_args) -> int:
    return Client(**client_args).post(reverse("sharing:open"), {"token": token}).status_code


def _revoke(issuer, share_id: str) -> None:
    services.share_revoke(user=factories.verified(issuer), share_id=share_id, source_ip=None)


# --- revoked --------------------------------------------------------------------------------

def test_a_revoked_share_in_use_names_its_doctor(study, issuer, audit_log):
    minted = mint(issuer, study)
    consultant = consultant_client(minted)
    _revoke(issuer, minted.share.public_id)
    assert consultant.get(reverse("sharing:home")).status_code == 403  # "this share has ended"
    assert_names_the_doctor(audit_log, minted.share.public_id, issuer, "revoked")


def test_a_revoked_link_opened_later_names_its_doctor(study, issuer, audit_log):
    """The root key is gone, so the signature cannot be checked: the digest of the token as
    issued identifies it."""
    minted = mint(issuer, study)
    _revoke(issuer, minted.share.public_id)
    assert Share.objects.get().root_sealed is None
    assert _open(minted.token) == 400
    assert_names_the_doctor(audit_log, minted.share.public_id, issuer, "revoked")


def test_a_revoked_forwarded_share_names_the_root_doctor(study, issuer, audit_log):
    minted = mint(issuer, study)
    holder = consultant_client(minted)
    page = factories.post_form(holder, reverse("sharing:forward"), {
        "study": "", "actions": "view", "hours": 2, "recipient": "Dr Colleague"})
    token, _ = factories.shown(holder.get(page.url).content)
    child = Share.objects.get(parent__isnull=False)
    _revoke(issuer, child.public_id)  # the root stays live: the signature is checked
    assert _open(token) == 400
    assert_names_the_doctor(audit_log, child.public_id, issuer, "revoked")
    _revoke(issuer, minted.share.public_id)  # now the root key is gone too
    assert _open(token) == 400
    assert_names_the_doctor(audit_log, child.public_id, issuer, "revoked")


# --- out of its caveats ---------------------------------------------------------------------

def test_an_expired_share_names_its_doctor(study, issuer, audit_log, monkeypatch):
    minted = mint(issuer, study, hours=1)
    later = timezone.now() + dt.timedelta(hours=1, seconds=1)
    monkeypatch.setattr(services.timezone, "now", lambda: later)
    assert _open(minted.token) == 400
    assert_names_the_doctor(audit_log, minted.share.public_id, issuer, "expired")


def test_a_share_from_outside_its_network_names_its_doctor(study, issuer, audit_log):
    minted = mint(issuer, study, client_cidr="10.20.0.0/16")
    assert _open(minted.token, REMOTE_ADDR="192.0.2.7") == 400
    assert_names_the_doctor(audit_log, minted.share.public_id, issuer, "caveat")
    consultant = Client(REMOTE_ADDR="10.20.3.4")
    assert redeem(consultant, minted).status_code == 302
    consultant.defaults["REMOTE_ADDR"] = "192.0.2.7"  # the same session, from elsewhere
    assert consultant.get(reverse("sharing:home")).status_code == 403  # "this share has ended"
    assert_names_the_doctor(audit_log, minted.share.public_id, issuer, "caveat")


def test_an_idle_consultant_session_names_its_doctor(study, issuer, audit_log, monkeypatch):
    minted = mint(issuer, study)
    consultant = consultant_client(minted)
    later = clock.now() + dt.timedelta(minutes=31)
    monkeypatch.setattr(clock, "source", lambda: later)
    assert consultant.get(reverse("sharing:home")).status_code == 403  # "this share has ended"
    assert_names_the_doctor(audit_log, minted.share.public_id, issuer, "session idle")


# --- burned ---------------------------------------------------------------------------------

def test_a_burned_share_names_its_doctor(study, issuer, audit_log):
    minted = mint(issuer, study)
    wrong = "00000000" if minted.pin != "00000000" else "11111111"
    client = Client()
    redeem(client, minted, pin=wrong)
    for _ in range(4):
        client.post(reverse("sharing:pin"), {"pin": wrong})
    assert Share.objects.get().state == ShareState.BURNED
    wrong_pins = [e for e in audit_log.events() if e.action == "share.deny"]
    assert len(wrong_pins) == 5 and {e.acting_for for e in wrong_pins} == {issuer.username}
    assert _open(minted.token) == 400
    assert_names_the_doctor(audit_log, minted.share.public_id, issuer, "burned")


# --- already redeemed -----------------------------------------------------------------------

def test_a_redeemed_link_opened_again_names_its_doctor(study, issuer, audit_log):
    minted = mint(issuer, study)
    consultant_client(minted)
    assert _open(minted.token) == 400
    assert_names_the_doctor(audit_log, minted.share.public_id, issuer, "already redeemed")


def test_a_pin_raced_after_redemption_names_its_doctor(study, issuer, audit_log):
    minted = mint(issuer, study)
    late = Client()
    assert late.post(reverse("sharing:open"), {"token": minted.token}).status_code == 302
    consultant_client(minted)  # another browser redeems first
    assert late.post(reverse("sharing:pin"), {"pin": minted.pin}).status_code == 403
    assert_names_the_doctor(audit_log, minted.share.public_id, issuer, "already redeemed")


# --- wrong resource -------------------------------------------------------------------------

def test_a_study_of_another_patient_names_the_doctor(study, issuer, audit_log):
    elsewhere = clinical_study(patient="patient-b", uid="2.25.2001", description="CT chest")
    minted = mint(issuer, study)
    consultant = consultant_client(minted)
    viewer = reverse("rendering:viewer", args=[elsewhere.study_instance_uid])
    assert consultant.get(viewer).status_code == 404
    refused = [e for e in audit_log.events() if e.action == "study.open"][-1]
    assert refused.outcome == "denied" and refused.acting_for == issuer.username
    assert refused.actor == f"share:{minted.share.public_id}"
    # the viewer websocket records its refusal this way (gateway/sharing/websocket.py)
    principal = capability_verify(minted.token, client_ip="127.0.0.1")
    share_deny_record(refusal=ShareRefused("resource", share_id=principal.share_id),
                      source_ip="127.0.0.1", study=elsewhere.study_instance_uid,
                      channel="websocket")
    assert_names_the_doctor(audit_log, minted.share.public_id, issuer, "resource")
    share_deny_record(refusal=ShareRefused.of(principal, "resource"), source_ip="127.0.0.1",
                      study=elsewhere.study_instance_uid, channel="websocket")
    assert_names_the_doctor(audit_log, minted.share.public_id, issuer, "resource")


# --- claims: a real share id in a token that is not the share's ---------------------------

def _forged(minted) -> str:
    """The same share id and caveats, signed under a key of the forger's own."""
    parsed = token_parse(minted.token)
    return token_mint(share_id=parsed.share_id, root_key=secrets.token_bytes(32),
                      caveats=parsed.caveats)


def test_a_forged_token_with_a_real_share_id_names_no_one(study, issuer, audit_log):
    minted = mint(issuer, study)
    assert _open(_forged(minted)) == 400
    assert_names_no_one(audit_log, minted.share.public_id, "signature")


def test_a_forged_token_for_a_revoked_share_names_no_one(study, issuer, audit_log):
    """Once the key is gone a signature cannot be checked; only the issued token identifies."""
    minted = mint(issuer, study)
    _revoke(issuer, minted.share.public_id)
    assert _open(_forged(minted)) == 400
    assert_names_no_one(audit_log, minted.share.public_id, "revoked")


def test_a_token_for_an_unknown_share_names_no_one(audit_log):
    parsed = token_mint(share_id="ab" * 12, root_key=secrets.token_bytes(32), caveats=[
        Delegate("delegate", session=True, share_id="cd" * 12)])
    assert _open(parsed) == 400
    assert_names_no_one(audit_log, "cd" * 12, "unknown share")


def test_a_signed_token_with_a_foreign_delegate_names_the_doctor_only(study, issuer, audit_log):
    """Signed under the root's key (the issuer is proven) but not the recorded chain (the
    share it claims to be is not)."""
    minted = mint(issuer, study)
    unrelated = mint(doctor("dr.unrelated"), clinical_study(uid="2.25.1003"))
    bent = services.token_attenuate(minted.token, [
        Delegate("delegate", session=True, share_id=unrelated.share.public_id)])
    assert _open(bent) == 400
    event, details = denial(audit_log)
    assert details["reason"] == "delegation chain"
    assert event.actor == "anonymous" and event.acting_for == issuer.username
    assert details["claimed_share"] == unrelated.share.public_id
