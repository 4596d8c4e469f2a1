"""Shares against a served gateway: daphne on loopback, a real HTTP client, a real websocket.

A doctor signed in over HTTP (password + TOTP) mints through the form and
follows the 303 as a browser does; the consultant posts the token from the
link's fragment in the open page's form body (what ``open.js`` does), then the
PIN. Rows and audit events are read in the served gateway's own databases.
"""

from __future__ import annotations

import json
import re
import secrets

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.served import Browser, Response, ServedGateway, viewer_socket

pytestmark = pytest.mark.server

_CSRF = re.compile(rb'name="csrfmiddlewaretoken" value="([^"]+)"')
_KEY = re.compile(rb'name="idempotency_key" value="([A-Za-z0-9_-]+)"')
_LINK = re.compile(rb"/share/open/#([A-Za-z0-9_-]+)<")
_PIN = re.compile(rb'class="share-pin"><strong>(\d{4}) (\d{4})<')
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
# Networks that all hold 127.0.0.1 but differ in length, so one of them gives a token whose
# last character has unused bits.
_LOOPBACK_NETWORKS = ("", "0.0.0.0/0", "64.0.0.0/2", "127.0.0.0/8")


def _hidden(page: Response, pattern: re.Pattern[bytes]) -> str:
    match = pattern.search(page.body)
    assert match, (page.status, page.body[:400])
    return match.group(1).decode()


def mint_form(doctor: Browser, study_uid: str, *, cidr: str = "") -> tuple[str, dict[str, str]]:
    """The mint form as the doctor's browser renders it: its URL and the fields it will post."""
    path = f"/share/new/{study_uid}/"
    page = doctor.request(path)
    assert page.status == 200, page.status
    return path, {"csrfmiddlewaretoken": _hidden(page, _CSRF),
                  "idempotency_key": _hidden(page, _KEY), "scope": "study", "actions": "view",
                  "hours": "2", "client_cidr": cidr, "recipient": "Dr Served, Elsewhere UH"}


def shown(page: Response) -> tuple[str, str] | None:
    link, pin = _LINK.search(page.body), _PIN.search(page.body)
    assert bool(link) == bool(pin)
    return (link.group(1).decode(), (pin.group(1) + pin.group(2)).decode()) if link and pin else None


def mint(gateway: ServedGateway, doctor: Browser, *, cidr: str = "") -> tuple[str, str, str]:
    """Mint through the form and follow the 303: (share id, token, PIN)."""
    path, fields = mint_form(doctor, gateway.study_uid, cidr=cidr)
    posted = doctor.request(path, data=fields)
    assert posted.status == 303, posted.status
    created = posted.headers["Location"]
    page = doctor.request(created)
    token_pin = shown(page)
    assert token_pin is not None
    return created.rsplit("=", 1)[1], *token_pin


def open_link(gateway: ServedGateway, token: str, browser: Browser | None = None) -> Response:
    """A browser opens ``/share/open/#<token>``: the page's script posts the fragment."""
    browser = browser or Browser(gateway.base)
    page = browser.request("/share/open/")
    assert page.status == 200 and b'id="share-token"' in page.body
    return browser.request("/share/open/", data={
        "csrfmiddlewaretoken": _hidden(page, _CSRF), "token": token})


def consultant(gateway: ServedGateway, token: str, pin: str) -> Browser:
    browser = Browser(gateway.base)
    opened = open_link(gateway, token, browser)
    assert opened.status == 302 and opened.headers["Location"] == "/share/pin/", opened.status
    entered = browser.form("/share/pin/", {"pin": pin})
    assert entered.status == 302 and entered.headers["Location"] == "/share/", entered.status
    return browser


def rows(gateway: ServedGateway, code: str) -> object:
    """Run ``code`` (which leaves its answer in ``out``) in the served gateway's databases."""
    return json.loads(gateway.shell(f"import json\n{code}\nprint(json.dumps(out))"))


def audit_head(gateway: ServedGateway) -> int:
    return rows(gateway, "from gateway.audit.services import audit_outbox_drain\n"
                         "from gateway.audit.models import AuditEvent\naudit_outbox_drain()\n"
                         "last = AuditEvent.objects.order_by('-sequence').first()\n"
                         "out = last.sequence if last else 0")


def denials(gateway: ServedGateway, after: int) -> list[dict]:
    return rows(gateway, "from gateway.audit.services import audit_outbox_drain\n"
                         "from gateway.audit.models import AuditEvent\naudit_outbox_drain()\n"
                         f"out = [dict(actor=e.actor, acting_for=e.acting_for, study=e.study,\n"
                         f"            **json.loads(e.details)) for e in AuditEvent.objects\n"
                         f"       .filter(sequence__gt={after}, action='share.deny')"
                         f".order_by('sequence')]")


def live_shares(gateway: ServedGateway, username: str) -> list[str]:
    return rows(gateway, "from gateway.sharing.models import Share, LIVE_STATES\n"
                         f"out = list(Share.objects.filter(issued_by__username={username!r},\n"
                         "          state__in=LIVE_STATES).values_list('public_id', flat=True))")


def revoke(doctor: Browser, share_id: str) -> None:
    page = doctor.request("/share/active/")
    answer = doctor.request(f"/share/{share_id}/revoke/",
                            data={"csrfmiddlewaretoken": _hidden(page, _CSRF)})
    assert answer.status == 302, answer.status


# --- 3. minting is POST → 303 → GET, shown once, idempotent ---------------------------------

def test_mint_is_post_redirect_get_shown_once_and_idempotent(served_demo):
    person = served_demo.person("doctor")
    doctor = served_demo.sign_in(person)
    path, fields = mint_form(doctor, served_demo.study_uid)
    posted = doctor.request(path, data=fields)
    assert posted.status == 303
    created = posted.headers["Location"]
    assert created.startswith(f"{path}?created=")
    share_id = created.rsplit("=", 1)[1]

    first, reload = doctor.request(created), doctor.request(created)
    assert first.status == reload.status == 200
    token, pin = shown(first)
    assert shown(reload) is None and b"Already shown" in reload.body
    assert pin.encode() not in reload.body and token[:24].encode() not in reload.body
    assert "no-store" in first.headers["Cache-Control"]
    assert live_shares(served_demo, person.username) == [share_id]

    again = doctor.request(path, data=fields)  # the same form, posted again
    assert again.status == 303 and again.headers["Location"] == created
    assert shown(doctor.request(created)) is None
    assert live_shares(served_demo, person.username) == [share_id]

    path, fields = mint_form(doctor, served_demo.study_uid)  # a double click on a new form
    twice = [doctor.request(path, data=fields) for _ in range(2)]
    assert [answer.status for answer in twice] == [303, 303]
    assert twice[0].headers["Location"] == twice[1].headers["Location"] != created
    assert shown(doctor.request(twice[1].headers["Location"])) is not None
    assert len(live_shares(served_demo, person.username)) == 2

    consultant(served_demo, token, pin)  # what was shown works


def test_forwarding_is_post_redirect_get_shown_once_and_idempotent(served_demo):
    person = served_demo.person("doctor")
    _, token, pin = mint(served_demo, served_demo.sign_in(person))
    holder = consultant(served_demo, token, pin)
    page = holder.request("/share/forward/")
    assert page.status == 200
    fields = {"csrfmiddlewaretoken": _hidden(page, _CSRF), "idempotency_key": _hidden(page, _KEY),
              "study": "", "actions": "view", "hours": "1", "client_cidr": "",
              "recipient": "Dr Colleague"}
    first, second = (holder.request("/share/forward/", data=fields) for _ in range(2))
    assert first.status == second.status == 303
    assert first.headers["Location"] == second.headers["Location"]
    created = first.headers["Location"]
    forwarded = shown(holder.request(created))
    assert forwarded is not None and shown(holder.request(created)) is None
    assert len(live_shares(served_demo, person.username)) == 2  # the root and one forward
    consultant(served_demo, *forwarded)


# --- 1. one spelling per token --------------------------------------------------------------

def _spare_bits_token(gateway: ServedGateway, doctor: Browser) -> tuple[str, str, str]:
    for cidr in _LOOPBACK_NETWORKS:
        share_id, token, pin = mint(gateway, doctor, cidr=cidr)
        if len(token) % 4:
            return share_id, token, pin
    raise AssertionError("no minted token had spare bits in its last character")


def test_only_the_token_as_issued_opens_the_pin_page(served_demo):
    doctor = served_demo.doctor()
    _, token, pin = _spare_bits_token(served_demo, doctor)
    last = _ALPHABET.index(token[-1])
    spellings = {
        "T+A": token + "A",
        "T+T": token + token,
        "T+24 random": token + "".join(secrets.choice(_ALPHABET) for _ in range(24)),
        "flipped spare bit": token[:-1] + _ALPHABET[last ^ 1],
    }
    head = audit_head(served_demo)
    for label, spelling in spellings.items():
        browser = Browser(served_demo.base)
        refused = open_link(served_demo, spelling, browser)
        assert refused.status == 400 and b"not valid" in refused.body, label
        assert browser.request("/share/pin/").headers.get("Location") == "/share/open/", label
    reasons = [event["reason"] for event in denials(served_demo, head)]
    assert len(reasons) == 4 and all(r.startswith("malformed: ") for r in reasons), reasons
    consultant(served_demo, token, pin)  # the token itself still opens, once


# --- 2. every refusal of an identified share names the doctor -------------------------------

def test_refusals_of_a_real_share_name_its_doctor(served_demo):
    person = served_demo.person("doctor")
    doctor = served_demo.sign_in(person)
    share_id, token, pin = mint(served_demo, doctor)
    session = consultant(served_demo, token, pin)
    head = audit_head(served_demo)

    # a study the share does not grant: refused at the handshake or closed right after it
    with (pytest.raises((InvalidStatus, ConnectionClosed)),
          viewer_socket(served_demo, session, study="2.25.404") as socket):
        socket.recv(timeout=30)
    assert open_link(served_demo, token).status == 400  # already redeemed
    revoke(doctor, share_id)
    assert session.request("/share/").status == 403  # the session ends: "this share has ended"
    assert open_link(served_demo, token).status == 400  # revoked: the key is gone

    events = denials(served_demo, head)
    assert [event["reason"] for event in events] == [
        "resource", "already redeemed", "revoked", "revoked"]
    for event in events:
        assert event["actor"] == f"share:{share_id}", event
        assert event["acting_for"] == person.username, event


def test_a_consultant_whose_share_was_revoked_is_told_it_ended_not_sent_to_the_staff_sign_in(served_demo):
    doctor = served_demo.doctor()
    share_id, token, pin = mint(served_demo, doctor)
    browser = consultant(served_demo, token, pin)
    assert browser.request("/share/").status == 200
    revoke(doctor, share_id)
    for _ in range(2):  # the request that finds the share revoked, and every later one
        ended = browser.request("/share/")
        assert ended.status == 403, ended.status
        assert b"This share has ended" in ended.body and b"/accounts/login/" in ended.body
    assert browser.request("/imaging/worklist").status == 302  # a staff page still asks staff to sign in
    _, fresh_token, fresh_pin = mint(served_demo, doctor)
    again = consultant(served_demo, fresh_token, fresh_pin)
    assert again.request("/share/").status == 200
