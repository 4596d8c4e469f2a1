"""The strict verifier over pymacaroons: every caveat by its own checker, one error for bad input.

No database here: tokens are minted with a fresh root key and checked with
``token_parse`` + ``signature_valid`` + ``ParsedToken.holds``, which is all
that ``capability_verify`` adds to the share chain lookup.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import ipaddress
import secrets

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymacaroons import Macaroon, Verifier
from pymacaroons.macaroon import MACAROON_V1, MACAROON_V2

from gateway.sharing import caveats as cv
from gateway.sharing.caveats import Context, ShareAction, TokenMalformed
from gateway.sharing.tokens import (
    MAX_CAVEATS,
    MAX_TOKEN_CHARS,
    signature_valid,
    token_attenuate,
    token_mint,
    token_parse,
)

NOW = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)
PATIENT_A = "a" * 64
PATIENT_B = "b" * 64
STUDY_1 = "2.25.11"
STUDY_2 = "2.25.22"
SHARE_ID = "0123456789abcdef01234567"
ROOT_KEY = bytes(range(32))


def _root_caveats(*, patient=PATIENT_A, study: str | None = STUDY_1, actions=("view",),
                  hours=72, cidr: str | None = None) -> list:
    caveats = [cv.caveat_parse(f"patient = {patient}".encode())]
    if study:
        caveats.append(cv.caveat_parse(f"study = {study}".encode()))
    caveats += [cv.caveat_parse(f"action in {','.join(actions)}".encode()),
                cv.caveat_parse(f"expires < {cv.time_format(NOW + dt.timedelta(hours=hours))}".encode()),
                cv.caveat_parse(f"not-before {cv.time_format(NOW - dt.timedelta(hours=1))}".encode())]
    if cidr:
        caveats.append(cv.caveat_parse(f"client-ip in {cidr}".encode()))
    return caveats


def _token(**kwargs) -> str:
    return token_mint(share_id=SHARE_ID, root_key=ROOT_KEY, caveats=_root_caveats(**kwargs))


def _context(*, now=NOW, ip="10.1.2.3", action=ShareAction.VIEW, patient=PATIENT_A,
             study=STUDY_1) -> Context:
    return Context(now=now, client_ip=ipaddress.ip_address(ip) if ip else None, action=action,
                   patient=patient, study=study)


def allows(token: str, context: Context, root_key: bytes = ROOT_KEY) -> bool:
    """What a request gets: the token parses, its signature holds and every caveat holds."""
    try:
        parsed = token_parse(token)
    except TokenMalformed:
        return False
    return signature_valid(parsed, root_key) and parsed.holds(context)


def _add_raw_caveat(token: str, predicate: bytes) -> str:
    """Attenuate with any bytes at all (what a hostile holder can do), bypassing our builder."""
    macaroon = Macaroon.deserialize(token + "=" * (-len(token) % 4))
    macaroon.add_first_party_caveat(predicate)
    return base64.urlsafe_b64encode(
        base64.urlsafe_b64decode(macaroon.serialize() + "=" * (-len(macaroon.serialize()) % 4))
    ).rstrip(b"=").decode()


def test_a_fresh_token_allows_exactly_its_study_and_action():
    token = _token()
    assert allows(token, _context())
    assert token_parse(token).leaf_id == SHARE_ID


def test_our_signature_chain_agrees_with_pymacaroons():
    token = token_attenuate(_token(), [cv.caveat_parse(b"study = 2.25.11")])
    macaroon = Macaroon.deserialize(token + "=" * (-len(token) % 4))
    verifier = Verifier()
    verifier.satisfy_general(lambda predicate: True)
    assert verifier.verify(macaroon, ROOT_KEY)
    assert signature_valid(token_parse(token), ROOT_KEY)


@pytest.mark.parametrize(("label", "token_args", "context_args"), [
    ("expired", {"hours": 1}, {"now": NOW + dt.timedelta(hours=1)}),
    ("not yet valid", {}, {"now": NOW - dt.timedelta(hours=1, seconds=1)}),
    ("wrong patient", {}, {"patient": PATIENT_B}),
    ("wrong study", {}, {"study": STUDY_2}),
    ("measure on a view-only share", {}, {"action": ShareAction.MEASURE}),
    ("address outside the CIDR", {"cidr": "10.1.0.0/16"}, {"ip": "10.2.0.1"}),
    ("IPv6 address against an IPv4 CIDR", {"cidr": "10.1.0.0/16"}, {"ip": "::ffff:10.1.0.1"}),
    ("no address known", {"cidr": "10.1.0.0/16"}, {"ip": None}),
    ("no resource named", {}, {"patient": None, "study": None}),
])
def test_a_caveat_that_does_not_hold_denies(label, token_args, context_args):
    token = _token(**token_args)
    assert allows(token, _context()) or label == "not yet valid"
    assert not allows(token, _context(**context_args)), label


def test_patient_scope_allows_every_study_of_that_patient_only():
    token = _token(study=None)
    assert allows(token, _context(study=STUDY_2))
    assert not allows(token, _context(patient=PATIENT_B, study=STUDY_2))


def test_inside_the_cidr_is_allowed():
    assert allows(_token(cidr="10.1.0.0/16"), _context(ip="10.1.200.7"))


def test_widening_the_action_by_attenuation_does_not_widen():
    token = token_attenuate(_token(), [cv.caveat_parse(b"action in view,measure")])
    assert signature_valid(token_parse(token), ROOT_KEY)
    assert not allows(token, _context(action=ShareAction.MEASURE))
    assert allows(token, _context(action=ShareAction.VIEW))


def test_a_later_expiry_added_by_a_holder_does_not_extend():
    later = cv.caveat_parse(f"expires < {cv.time_format(NOW + dt.timedelta(days=20))}".encode())
    token = token_attenuate(_token(hours=1), [later])
    assert not allows(token, _context(now=NOW + dt.timedelta(hours=2)))


def test_a_second_study_caveat_matches_nothing():
    token = token_attenuate(_token(study=None), [cv.caveat_parse(b"study = 2.25.11"),
                                                 cv.caveat_parse(b"study = 2.25.22")])
    assert not allows(token, _context(study=STUDY_1))
    assert not allows(token, _context(study=STUDY_2))


@pytest.mark.parametrize("predicate", [
    b"time < 2099-01-01T00:00:00Z", b"admin = true", b"patient == " + PATIENT_A.encode(),
    b"study = 2.25.11 or 1=1", b"action in view,delete", b"action in view,view",
    b"expires < tomorrow", b"client-ip in 10.0.0.1/8", b"client-ip in any",
    b"patient = " + PATIENT_A.upper().encode(), b"", b" study = 2.25.11", b"study = 2.25.11 ",
    "study = 2.25.\u0661".encode(), b"study = 2.25.11\n", b"x" * 200,
])
def test_an_unknown_or_malformed_caveat_denies(predicate):
    token = _add_raw_caveat(_token(), predicate)
    with pytest.raises(TokenMalformed):
        token_parse(token)
    assert not allows(token, _context())


def test_pymacaroons_alone_would_let_a_lenient_callback_satisfy_every_caveat():
    """The flaw the wrapper exists for: general callbacks are ORed."""
    token = _add_raw_caveat(_token(), b"admin = true")
    macaroon = Macaroon.deserialize(token + "=" * (-len(token) % 4))
    verifier = Verifier()
    verifier.satisfy_general(lambda predicate: predicate.startswith("study"))  # strict one
    verifier.satisfy_general(lambda predicate: True)  # a lenient one elsewhere
    assert verifier.verify(macaroon, ROOT_KEY)  # pymacaroons: allowed
    assert not allows(token, _context())  # the gateway: unknown caveat, denied


def test_a_tampered_signature_denies():
    token = _token()
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[-1] ^= 0x01
    tampered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert token_parse(tampered).caveats == token_parse(token).caveats
    assert not allows(tampered, _context())
    assert not allows(token, _context(), root_key=secrets.token_bytes(32))


def test_a_removed_caveat_denies():
    macaroon = Macaroon.deserialize(_token() + "=" * (-len(_token()) % 4))
    macaroon.caveats = [c for c in macaroon.caveats if not c.caveat_id.startswith(b"study")]
    stripped = macaroon.serialize().rstrip("=").replace("+", "-").replace("/", "_")
    assert not allows(stripped, _context(study=STUDY_2))


@pytest.mark.parametrize("bad", [
    "", "   ", "%%%%", "AgE", "not a token at all!", "A" * 10, "=" * 8, None, 12345, b"bytes",
    "AgEOZnVzaW9uLWdhdGV3YXkCHGZnMTpj", "\u00e9" * 20, "Ag" + "\x00" * 30,
])
def test_garbage_raises_one_exception_type(bad):
    with pytest.raises(TokenMalformed):
        token_parse(bad)


def test_every_truncation_raises_one_exception_type():
    token = _token(cidr="10.0.0.0/8")
    for length in range(len(token)):
        try:
            parsed = token_parse(token[:length])
        except TokenMalformed:
            continue
        assert not signature_valid(parsed, ROOT_KEY), length


def test_random_bytes_raise_one_exception_type():
    for _ in range(3000):
        raw = bytes([2]) + secrets.token_bytes(secrets.randbelow(300))
        candidate = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        with contextlib.suppress(TokenMalformed):  # anything else propagates and fails
            token_parse(candidate)


def test_oversize_tokens_and_too_many_caveats_are_refused():
    with pytest.raises(TokenMalformed, match="too large"):
        token_parse("A" * (MAX_TOKEN_CHARS + 1))
    token = _token()
    for _ in range(MAX_CAVEATS - len(token_parse(token).caveats) + 1):
        token = _add_raw_caveat(token, b"study = 2.25.11")
    with pytest.raises(TokenMalformed):
        token_parse(token)


def test_third_party_caveats_are_refused():
    macaroon = Macaroon.deserialize(_token() + "=" * (-len(_token()) % 4))
    macaroon.add_third_party_caveat("https://elsewhere.example", b"k" * 32, "discharge-me")
    token = macaroon.serialize().rstrip("=").replace("+", "-").replace("/", "_")
    with pytest.raises(TokenMalformed, match="third-party"):
        token_parse(token)


def test_version_one_macaroons_are_refused():
    macaroon = Macaroon(location="x", identifier=b"fg1:" + SHARE_ID.encode(), key=ROOT_KEY,
                        version=MACAROON_V1)
    macaroon.add_first_party_caveat("study = 2.25.11")
    with pytest.raises(TokenMalformed):
        token_parse(macaroon.serialize().rstrip("="))
    assert MACAROON_V2 == 2


def test_a_foreign_identifier_is_refused():
    macaroon = Macaroon(location="x", identifier=b"someone-else", key=ROOT_KEY, version=MACAROON_V2)
    token = macaroon.serialize().rstrip("=").replace("+", "-").replace("/", "_")
    with pytest.raises(TokenMalformed, match="identifier"):
        token_parse(token)


# --- one spelling per token ----------------------------------------------------------------

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _token_with_spare_bits() -> str:
    """A token whose last base64 character has unused low bits (length not a multiple of 4)."""
    for cidr in (None, "10.0.0.0/8", "10.0.0.0/16", "10.10.0.0/16"):
        token = _token(cidr=cidr)
        if len(token) % 4:
            return token
    raise AssertionError("every candidate token has a length divisible by 4")


def _raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def _spellings(token: str) -> dict[str, str]:
    """Other spellings of ``token`` that a lenient decoder reads as the same macaroon."""
    last = _ALPHABET.index(token[-1])
    raw = _raw(token)
    minimal = raw[1:2]  # the first packet's field type, one varint byte (location = 1)
    assert minimal == b"\x01"
    return {
        "T+A": token + "A",
        "T+T": token + token,
        "T+24 random": token + "".join(secrets.choice(_ALPHABET) for _ in range(24)),
        "flipped spare bit": token[:-1] + _ALPHABET[last ^ 1],
        "padded": token + "=" * (-len(token) % 4),
        "standard alphabet": base64.b64encode(raw).rstrip(b"=").decode().replace("-", "+") + "/",
        "trailing raw byte": base64.urlsafe_b64encode(raw + b"\0").rstrip(b"=").decode(),
        "non-minimal varint": base64.urlsafe_b64encode(
            raw[:1] + b"\x81\x00" + raw[2:]).rstrip(b"=").decode(),
        "white space": token + "\n",
    }


def test_a_token_has_exactly_one_spelling():
    token = _token_with_spare_bits()
    assert allows(token, _context())
    for label, spelling in _spellings(token).items():
        assert spelling != token
        with pytest.raises(TokenMalformed):
            token_parse(spelling)
        assert not allows(spelling, _context()), label


@pytest.mark.parametrize("cidr", [None, "10.0.0.0/8", "10.0.0.0/16", "10.10.0.0/16"])
def test_trailing_bytes_are_refused_whatever_the_length(cidr):
    token = _token(cidr=cidr)
    with pytest.raises(TokenMalformed):
        token_parse(token + token)
    with pytest.raises(TokenMalformed, match="trailing bytes"):
        token_parse(base64.urlsafe_b64encode(_raw(token) * 2).rstrip(b"=").decode())
    with pytest.raises(TokenMalformed, match="trailing bytes"):
        token_parse(base64.urlsafe_b64encode(_raw(token) + secrets.token_bytes(18))
                    .rstrip(b"=").decode())


def test_the_unsigned_location_has_one_value():
    """The location is outside the HMAC chain: another one would be the same token renamed."""
    elsewhere = Macaroon(location="elsewhere", identifier=b"fg1:" + SHARE_ID.encode(), key=ROOT_KEY,
                         version=MACAROON_V2)
    for caveat in _root_caveats():
        elsewhere.add_first_party_caveat(caveat.text())
    token = elsewhere.serialize().rstrip("=").replace("+", "-").replace("/", "_")
    assert _raw(token)[-32:] == token_parse(_token()).signature  # the very same signature
    with pytest.raises(TokenMalformed, match="location"):
        token_parse(token)


def test_what_we_mint_and_attenuate_is_canonical():
    token = _token_with_spare_bits()
    assert token_parse(token).signature == _raw(token)[-32:]
    attenuated = token_attenuate(token, [cv.caveat_parse(b"study = 2.25.11")])
    assert token_parse(attenuated).caveats[-1] == cv.caveat_parse(b"study = 2.25.11")
    token_parse(_add_raw_caveat(token, b"action in view"))  # pymacaroons' own encoding agrees


# --- the property: adding any caveat never turns a deny into an allow --------------------------

_times = st.datetimes(min_value=dt.datetime(2025, 1, 1), max_value=dt.datetime(2028, 1, 1),  # noqa: DTZ001 - hypothesis wants naive bounds
                      timezones=st.just(dt.UTC)).map(lambda t: t.replace(microsecond=0))
_known = st.one_of(
    st.sampled_from([PATIENT_A, PATIENT_B]).map(lambda p: f"patient = {p}"),
    st.sampled_from([STUDY_1, STUDY_2, "2.25.33"]).map(lambda s: f"study = {s}"),
    st.sampled_from(["view", "measure", "view,measure", "measure,view"]).map(lambda a: f"action in {a}"),
    _times.map(lambda t: f"expires < {cv.time_format(t)}"),
    _times.map(lambda t: f"not-before {cv.time_format(t)}"),
    st.sampled_from(["10.0.0.0/8", "10.1.0.0/16", "192.168.0.0/24", "0.0.0.0/0", "::/0",
                     "2001:db8::/32"]).map(lambda n: f"client-ip in {n}"),
    st.just("delegate = " + "c" * 24),
)
_any_caveat = st.one_of(_known.map(str.encode), st.binary(max_size=140),
                        st.text(max_size=60).map(lambda t: t.encode("utf-8", "replace")))
_contexts = st.builds(
    Context, now=_times,
    client_ip=st.sampled_from([None, "10.1.2.3", "10.2.0.1", "192.168.0.5", "2001:db8::1"]).map(
        lambda a: ipaddress.ip_address(a) if a else None),
    action=st.sampled_from([None, ShareAction.VIEW, ShareAction.MEASURE]),
    patient=st.sampled_from([None, PATIENT_A, PATIENT_B]),
    study=st.sampled_from([None, STUDY_1, STUDY_2, "2.25.33"]))
_base_tokens = st.builds(
    lambda study, actions, hours, cidr: _token(study=study, actions=actions, hours=hours, cidr=cidr),
    study=st.sampled_from([None, STUDY_1]),
    actions=st.sampled_from([("view",), ("view", "measure")]),
    hours=st.integers(min_value=-24 * 400, max_value=24 * 600),
    cidr=st.sampled_from([None, "10.0.0.0/8", "192.168.0.0/24"]))


@settings(max_examples=400, deadline=None)
@given(token=_base_tokens, extra=st.lists(_any_caveat, min_size=1, max_size=3), context=_contexts)
def test_adding_any_caveat_never_turns_a_deny_into_an_allow(token, extra, context):
    before = allows(token, context)
    attenuated = token
    for predicate in extra:
        try:
            attenuated = _add_raw_caveat(attenuated, predicate)
        except (UnicodeDecodeError, ValueError):
            return  # pymacaroons itself refuses non-UTF-8 first-party caveats
        after = allows(attenuated, context)
        assert not (after and not before)
        before = after


def test_the_middleware_order_is_checked(settings):
    from gateway.sharing.checks import middleware_order

    assert middleware_order() == []
    chain = list(settings.MIDDLEWARE)
    chain.remove("gateway.sharing.middleware.CapabilityMiddleware")
    settings.MIDDLEWARE = chain
    assert [error.id for error in middleware_order()] == ["sharing.E001"]
    settings.MIDDLEWARE = ["gateway.sharing.middleware.CapabilityMiddleware", *chain]
    assert [error.id for error in middleware_order()] == ["sharing.E002"]
