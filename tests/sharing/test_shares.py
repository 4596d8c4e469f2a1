"""Mint, redeem, use, forward, revoke over HTTP: states, PINs, audit events, no leaks."""

from __future__ import annotations

import datetime as dt

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from gateway.audit.models import AuditEvent
from gateway.sharing import services
from gateway.sharing.crypto import root_key_open
from gateway.sharing.models import Share, ShareState
from gateway.sharing.services import Scope, ShareRefused, capability_verify
from tests.conftest import ZONES
from tests.sharing import factories
from tests.sharing.factories import clinical_study, consultant_client, mint, redeem

pytestmark = [pytest.mark.django_db(databases=ZONES), pytest.mark.usefixtures("committed")]


def assert_ended(response) -> None:
    """A consultant whose share ended has no session left: told so, never served (nor sent to the staff
    sign-in, which is not theirs)."""
    assert response.status_code == 403 and b"This share has ended" in response.content


def test_mint_page_shows_the_token_once_in_the_fragment_and_the_pin_apart(client, signed_in, study,
                                                                          audit_log):
    user = signed_in("doctor")
    url = reverse("sharing:mint", args=[study.study_instance_uid])
    page = client.get(url)
    assert page.status_code == 200 and b"72" in page.content
    response = client.post(url, {
        "scope": "study", "actions": "view", "hours": 72, "client_cidr": "",
        "recipient": "Dr Second Opinion", "idempotency_key": factories.form_key(page.content)})
    assert response.status_code == 303
    assert response.url == f"{url}?created={Share.objects.get().public_id}"
    response = client.get(response.url)
    assert response.status_code == 200
    html = response.content.decode()
    share = Share.objects.get()
    link = next(line for line in html.splitlines() if "/share/open/#" in line)
    token = link.split("/share/open/#", 1)[1].split("<", 1)[0]
    assert "?" not in link.split("#", 1)[0].rsplit("/share/open/", 1)[1]
    assert capability_verify(token, client_ip="127.0.0.1", redeemed=False).share_id == share.public_id
    assert share.issued_by == user and share.state == ShareState.PENDING
    assert audit_log.actions() == ["share.mint"]
    event = audit_log.events()[0]
    assert event.actor == user.username and event.study == study.study_instance_uid
    assert event.patient_pseudonym == study.patient.pseudonym
    assert token not in event.details and token[:40] not in event.details
    assert "sharing:mint" not in html


def test_root_key_and_pin_are_stored_only_sealed(study, issuer):
    minted = mint(issuer, study)
    share = Share.objects.get()
    sealed = bytes(share.root_sealed)
    root_key = root_key_open(share.public_id, share.root_kid, sealed)
    assert root_key not in sealed and len(root_key) == 32
    assert minted.pin not in share.pin_mac and len(share.pin_mac) == 64
    other = Share.objects.create(**{f.attname: getattr(share, f.attname) for f in Share._meta.fields
                                    if f.attname not in {"id", "public_id"}},
                                 public_id="f" * 24)
    with pytest.raises(services.RootKeyUnavailable):  # sealed key is bound to its share id
        root_key_open(other.public_id, other.root_kid, bytes(other.root_sealed))


def test_only_doctors_share_and_only_studies_they_may_view(client, signed_in, study):
    signed_in("nurse")
    assert client.get(reverse("sharing:mint", args=[study.study_instance_uid])).status_code == 403
    client.logout()
    signed_in("doctor", username="dr.other")
    assert client.get(reverse("sharing:mint", args=["2.25.404"])).status_code == 404


@pytest.mark.parametrize(("hours", "cidr", "recipient"), [
    (0, "", "x"), (24 * 30 + 1, "", "x"), (72, "not-a-network", "x"), (72, "", ""),
])
def test_mint_refuses_bad_requests(client, signed_in, study, hours, cidr, recipient):
    signed_in("doctor")
    response = factories.post_form(client, reverse("sharing:mint", args=[study.study_instance_uid]), {
        "scope": "study", "actions": "view", "hours": hours, "client_cidr": cidr,
        "recipient": recipient})
    assert response.status_code == 400
    assert not Share.objects.exists()


def test_redeem_then_use_is_audited_with_the_doctor_behind_it(study, issuer, audit_log):
    minted = mint(issuer, study)
    consultant = consultant_client(minted)
    page = consultant.get(reverse("sharing:home"))
    assert page.status_code == 200
    assert study.study_description in page.content.decode()
    assert audit_log.actions() == ["share.mint", "share.redeem", "share.use"]
    redeemed, used = audit_log.events()[1:]
    assert redeemed.actor == used.actor == f"share:{minted.share.public_id}"
    assert redeemed.acting_for == used.acting_for == issuer.username
    assert redeemed.actor_role == "consultant"
    assert Share.objects.get().last_used_at is not None


def test_the_pin_is_one_time(study, issuer):
    minted = mint(issuer, study)
    consultant_client(minted)
    again = Client()
    response = again.post(reverse("sharing:open"), {"token": minted.token})
    assert response.status_code == 400
    assert not again.session.get("gw.share.pending")


def test_five_wrong_pins_burn_the_share(study, issuer, audit_log):
    minted = mint(issuer, study)
    client = Client()
    wrong = "00000000" if minted.pin != "00000000" else "11111111"
    for left in (4, 3, 2, 1):
        response = redeem(client, minted, pin=wrong) if left == 4 else client.post(
            reverse("sharing:pin"), {"pin": wrong})
        assert response.status_code == 403 and f"{left} attempt" in response.content.decode()
    response = client.post(reverse("sharing:pin"), {"pin": wrong})
    assert response.status_code == 403 and b"destroyed" in response.content
    share = Share.objects.get()
    assert share.state == ShareState.BURNED and share.root_sealed is None
    assert audit_log.actions() == ["share.mint"] + ["share.deny"] * 5 + ["share.revoke"]
    assert Client().post(reverse("sharing:open"), {"token": minted.token}).status_code == 400
    assert audit_log.actions()[-1] == "share.deny"
    assert audit_log.details("share.revoke")[0]["reason"] == "5 wrong PINs"


def test_pin_with_spaces_or_dash_is_accepted(study, issuer):
    minted = mint(issuer, study)
    response = redeem(Client(), minted, pin=f"{minted.pin[:4]} - {minted.pin[4:]}")
    assert response.status_code == 302 and response.url == reverse("sharing:home")


def test_a_share_outside_its_network_is_refused_and_audited(study, issuer, audit_log):
    minted = mint(issuer, study, client_cidr="10.20.0.0/16")
    response = Client().post(reverse("sharing:open"), {"token": minted.token})
    assert response.status_code == 400
    assert audit_log.details("share.deny")[0]["reason"] == "caveat"
    inside = Client(REMOTE_ADDR="10.20.3.4")
    assert redeem(inside, minted).status_code == 302
    assert inside.get(reverse("sharing:home")).status_code == 200


@pytest.mark.parametrize("token", ["", "garbage!", "A" * 5000, "AgEOZnVzaW9uLWdhdGV3YXk"])
def test_malformed_tokens_are_refused_and_audited(token, audit_log):
    response = Client().post(reverse("sharing:open"), {"token": token})
    assert response.status_code == 400
    assert audit_log.details("share.deny")[0]["reason"].startswith("malformed")


def test_revocation_ends_the_consultant_session_on_the_next_request(client, signed_in, study,
                                                                    audit_log):
    user = signed_in("doctor")
    minted = mint(user, study)
    consultant = consultant_client(minted)
    assert consultant.get(reverse("sharing:home")).status_code == 200
    listing = client.get(reverse("sharing:active")).content.decode()
    assert minted.share.public_id in listing and "Dr Consult" in listing
    response = client.post(reverse("sharing:revoke", args=[minted.share.public_id]))
    assert response.status_code == 302
    assert_ended(consultant.get(reverse("sharing:home")))
    assert_ended(consultant.get(reverse("rendering:viewer", args=[study.study_instance_uid])))
    share = Share.objects.get()
    assert share.state == ShareState.REVOKED and share.root_sealed is None
    assert share.revoked_by == user.username
    assert "share.revoke" in audit_log.actions()
    assert audit_log.details("share.deny")[-1]["reason"] == "revoked"
    assert minted.share.public_id not in client.get(reverse("sharing:active")).content.decode()


def test_only_the_issuer_or_an_it_admin_sees_and_revokes(client, signed_in, study, issuer):
    minted = mint(issuer, study)
    signed_in("doctor", username="dr.colleague")
    assert minted.share.public_id not in client.get(reverse("sharing:active")).content.decode()
    assert client.post(reverse("sharing:revoke", args=[minted.share.public_id])).status_code == 404
    client.logout()
    signed_in("nurse")
    assert client.get(reverse("sharing:active")).status_code == 403
    refused = AuditEvent.objects.filter(outcome="denied").latest("sequence")
    assert refused.action == "share.list"  # what was attempted: listing, not revoking
    client.logout()
    signed_in("it_admin")
    assert minted.share.public_id in client.get(reverse("sharing:active")).content.decode()
    assert client.post(reverse("sharing:revoke", args=[minted.share.public_id])).status_code == 302
    assert Share.objects.get().state == ShareState.REVOKED


def test_an_expired_share_ends_the_session(study, issuer, monkeypatch, audit_log):
    minted = mint(issuer, study, hours=1)
    consultant = consultant_client(minted)
    later = timezone.now() + dt.timedelta(hours=1, seconds=1)
    monkeypatch.setattr(services.timezone, "now", lambda: later)
    assert_ended(consultant.get(reverse("sharing:home")))
    assert audit_log.details("share.deny")[-1]["reason"] == "expired"


def test_a_consultant_sees_only_the_shared_study(study, issuer):
    other = clinical_study(uid="2.25.1002", description="MR brain (same patient)")
    elsewhere = clinical_study(patient="patient-b", uid="2.25.2001", description="CT chest")
    consultant = consultant_client(mint(issuer, study))
    page = consultant.get(reverse("sharing:home")).content.decode()
    assert study.study_description in page and other.study_description not in page
    for refused in (other, elsewhere):
        assert consultant.get(reverse("rendering:viewer", args=[refused.study_instance_uid])
                              ).status_code == 404
    whole = consultant_client(mint(issuer, study, scope=Scope.PATIENT))
    page = whole.get(reverse("sharing:home")).content.decode()
    assert study.study_description in page and other.study_description in page
    assert elsewhere.study_description not in page


def test_consultant_cannot_reach_user_routes(study, issuer):
    consultant = consultant_client(mint(issuer, study))
    for name in ("home", "imaging:worklist", "sharing:active", "accounts:security", "audit:console"):
        assert consultant.get(reverse(name)).status_code == 403, name


def test_a_user_session_cannot_redeem_in_the_same_browser(client, signed_in, study, issuer):
    signed_in("doctor", username="dr.busy")
    minted = mint(issuer, study)
    assert client.post(reverse("sharing:open"), {"token": minted.token}).status_code == 409


def test_forwarding_narrows_and_has_its_own_pin(study, issuer, audit_log):
    other = clinical_study(uid="2.25.1002", description="MR brain (same patient)")
    minted = mint(issuer, study, scope=Scope.PATIENT, actions=("view", "measure"), hours=48)
    holder = consultant_client(minted)
    page = holder.get(reverse("sharing:forward"))
    assert page.status_code == 200
    widened = factories.post_form(holder, reverse("sharing:forward"), {
        "study": "", "actions": "view,measure", "hours": 24 * 30, "recipient": "Dr Third"})
    assert widened.status_code == 400 and not Share.objects.filter(parent__isnull=False).exists()
    response = factories.post_form(holder, reverse("sharing:forward"), {
        "study": other.study_instance_uid, "actions": "view", "hours": 12,
        "recipient": "Dr Third"})
    assert response.status_code == 303
    token, pin = factories.shown(holder.get(response.url).content)
    child = Share.objects.get(parent__isnull=False)
    parsed = capability_verify(token, client_ip="127.0.0.1", redeemed=False)
    assert parsed.chain_ids == [minted.share.public_id, child.public_id]
    assert parsed.actions == {services.ShareAction.VIEW}
    assert redeem(Client(), factories.Minted(child, token, minted.pin)).status_code == 403
    third = Client()
    assert redeem(third, factories.Minted(child, token, "0" * 8 if pin != "0" * 8 else "1" * 8)
                  ).status_code == 403
    assert third.post(reverse("sharing:pin"), {"pin": pin}).status_code == 302
    listing = third.get(reverse("sharing:home")).content.decode()
    assert other.study_description in listing and study.study_description not in listing
    mint_events = audit_log.details("share.mint")
    assert mint_events[-1]["chain"] == [minted.share.public_id, child.public_id]
    assert mint_events[-1]["forwarded_from"] == minted.share.public_id
    forwarded = [e for e in audit_log.events() if e.action == "share.mint"][-1]
    assert forwarded.actor == f"share:{minted.share.public_id}"
    assert forwarded.acting_for == issuer.username
    services.share_revoke(user=factories.verified(issuer), share_id=minted.share.public_id,
                          source_ip=None)
    assert_ended(third.get(reverse("sharing:home")))
    assert Share.objects.get(pk=child.pk).state == ShareState.REVOKED


def test_a_forwarded_token_cannot_be_used_with_a_stripped_delegate(study, issuer):
    minted = mint(issuer, study)
    consultant_client(minted)
    parsed = capability_verify(minted.token, client_ip="127.0.0.1")
    assert parsed.chain_ids == [minted.share.public_id]
    with pytest.raises(ShareRefused, match="unknown share"):
        capability_verify(services.token_attenuate(minted.token, [
            services.Delegate("delegate", session=True, share_id="e" * 24)]),
            client_ip="127.0.0.1")


def test_audit_never_names_the_token(study, issuer):
    minted = mint(issuer, study)
    consultant_client(minted).get(reverse("sharing:home"))
    for details in AuditEvent.objects.values_list("details", flat=True):
        assert minted.token[:32] not in details and minted.pin not in details
