"""Minting, redeeming, forwarding, verifying and revoking shares.

Every state change is one function, one transaction, with its audit event
written in it (the outbox appends it to the chain on commit). Verification
(:func:`capability_verify`) runs on every request and websocket message of a
consultant: it parses the token strictly, reads the share chain (root key
included) in one query, checks the HMAC chain in constant time, and the time
and address caveats; the resource caveats are asked per study by
``ConsultantPrincipal.grants``.

Attribution of refusals: a ``share.deny`` names the share (``actor
share:<id>``) and its issuing doctor (``acting_for``) only when the share is
*identified*, i.e. the token is provably one the gateway issued: its HMAC
chain verifies under the share's root key, or, once that key is gone
(revoked, burned), the token is byte for byte the one recorded at issue
(:func:`~gateway.sharing.tokens.token_digest`). A token that merely names a
real share id (a forgery, or one whose signature fails) is recorded as
``anonymous`` with the id under ``claimed_share``: anyone can write a share id
into a token, and the audit must not let them speak for a doctor.

Minting and forwarding take an idempotency key (the form's): the same key
twice from the same doctor (or the same holder's share) mints one share;
the second call raises :class:`ShareAlreadyMinted`, and a unique constraint
settles a race.
"""

from __future__ import annotations

import datetime as dt
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from django.db import IntegrityError, connections, router, transaction
from django.utils import timezone
from django.utils.translation import gettext as _
from django.utils.translation import ngettext

from accounts.broadcast import groups_tell
from accounts.models import Role
from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from gateway.policy import Permission, may
from gateway.sharing import conf
from gateway.sharing.caveats import (
    ActionIn,
    Caveat,
    ClientIn,
    Context,
    Delegate,
    ExpiresBefore,
    NotBefore,
    PatientIs,
    ShareAction,
    StudyIs,
    TokenMalformed,
)
from gateway.sharing.crypto import (
    RootKeyUnavailable,
    pin_matches,
    pin_new,
    pin_protect,
    root_key_new,
    root_key_open,
    root_key_seal,
)
from gateway.sharing.models import LIVE_STATES, Share, ShareState
from gateway.sharing.principal import ChainLink, ConsultantPrincipal
from gateway.sharing.tokens import (
    ParsedToken,
    signature_valid,
    token_attenuate,
    token_digest,
    token_mint,
    token_parse,
)
from imaging.models import Study


class ShareRefused(Exception):
    """A token or request that the share does not allow; ``reason`` goes to the audit log.

    ``share_id`` is set only for an *identified* share (the token verified, or
    is the one issued; see the module docstring), with ``issuer`` its issuing
    doctor when the raiser knows it (:func:`share_deny_record` looks it up
    otherwise). ``claimed`` is the share id an unidentified token names:
    recorded, never trusted.
    """

    def __init__(self, reason: str, *, share_id: str = "", issuer: str = "",
                 claimed: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.share_id = share_id
        self.issuer = issuer
        self.claimed = claimed

    @classmethod
    def of(cls, principal: ConsultantPrincipal, reason: str) -> ShareRefused:
        """A refusal of something a verified consultant asked (e.g. a study outside the share)."""
        return cls(reason, share_id=principal.share_id, issuer=principal.issuer)


class ShareNotFound(LookupError):
    """No such share or study, or not for this user (one error for both)."""


class ShareInvalid(ValueError):
    """A mint or forward request outside the rules (expiry, actions, network).

    Its message is shown to the person on the form, so it is translated when raised.
    """


class ShareAlreadyMinted(Exception):
    """This idempotency key already minted ``share_id``: nothing new was minted.

    Its token and PIN were handed out once, to the first request; they are not
    kept, so they cannot be handed out again.
    """

    def __init__(self, share_id: str) -> None:
        super().__init__(share_id)
        self.share_id = share_id


class Scope(StrEnum):
    STUDY = "study"
    PATIENT = "patient"


@dataclass(frozen=True)
class Minted:
    """Shown once: the token (for the link's fragment) and the PIN (for another channel)."""

    share: Share
    token: str
    pin: str


def share_group(share_id: str) -> str:
    """The channel-layer group that every open viewer of this share (or its descendants) joins."""
    return f"share.{share_id}"


def _address(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value or "")
    except ValueError:
        return None


def _network(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    value = (value or "").strip()
    if not value:
        return None
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ShareInvalid(_("the client network must be an address or a CIDR block")) from exc


def _actions(actions: Any) -> frozenset[ShareAction]:
    try:
        chosen = frozenset(ShareAction(a) for a in actions)
    except ValueError as exc:
        raise ShareInvalid(_("actions are view or view+measure")) from exc
    if ShareAction.VIEW not in chosen:
        raise ShareInvalid(_("a share always includes view"))
    return chosen


def _expiry(now: dt.datetime, hours: float, ceiling: dt.datetime) -> dt.datetime:
    if not 0 < hours <= conf.max_days() * 24:
        raise ShareInvalid(ngettext("expiry is between 1 hour and %(days)d day",
                                    "expiry is between 1 hour and %(days)d days",
                                    conf.max_days()) % {"days": conf.max_days()})
    expires = (now + dt.timedelta(hours=hours)).replace(microsecond=0)
    if expires > ceiling:
        raise ShareInvalid(_("the expiry may not be later than the share it derives from"))
    return expires


def _new_id() -> str:
    return secrets.token_hex(12)


def study_for_share(*, principal: Any, study_uid: str) -> Study:
    """The study a doctor may share, or :class:`ShareNotFound` (missing or forbidden alike)."""
    if not may(principal, Permission.STUDY_SHARE, study_uid):
        raise ShareNotFound(study_uid)
    study = Study.objects.filter(study_instance_uid=study_uid).select_related("patient").first()
    if study is None:
        raise ShareNotFound(study_uid)
    return study


def _minted_before(**lookup: Any) -> None:
    earlier = Share.objects.filter(**lookup).values_list("public_id", flat=True).first()
    if earlier is not None:
        raise ShareAlreadyMinted(earlier)


def _create_once(fields: dict[str, Any], *, once: dict[str, Any], audit: dict[str, Any]) -> Share:
    """Create the share and its audit event; a racing twin with the same key loses on the
    unique constraint and gets :class:`ShareAlreadyMinted` (and leaves no event)."""
    try:
        with transaction.atomic():
            share = Share.objects.create(**fields)
            audit_record(**audit)
    except IntegrityError:
        if not fields.get("mint_key"):
            raise
        _minted_before(**once)
        raise
    return share


def share_mint(*, doctor: Any, study_uid: str, scope: Scope, actions: Any, hours: float,
               client_cidr: str = "", recipient: str, source_ip: str | None = None,
               idempotency_key: str = "") -> Minted:
    """Mint a root share of one study (or all of its patient's studies) for a consultant.

    ``idempotency_key`` (the mint form's): a second call with the same key by
    the same doctor raises :class:`ShareAlreadyMinted` instead of minting.
    """
    study = study_for_share(principal=doctor, study_uid=study_uid)
    once = {"issued_by_id": doctor.pk, "parent__isnull": True, "mint_key": idempotency_key}
    if idempotency_key:
        _minted_before(**once)
    chosen = _actions(actions)
    network = _network(client_cidr)
    recipient = (recipient or "").strip()[:120]
    if not recipient:
        raise ShareInvalid(_("name the recipient"))
    now = timezone.now().replace(microsecond=0)
    expires = _expiry(now, hours, now + dt.timedelta(days=conf.max_days()))
    share_id = _new_id()
    root_key = root_key_new()
    pin = pin_new()
    caveats: list[Caveat] = [PatientIs("patient", pseudonym=study.patient.pseudonym)]
    if scope is Scope.STUDY:
        caveats.append(StudyIs("study", uid=study.study_instance_uid))
    caveats += [ActionIn("action", actions=chosen),
                ExpiresBefore("expires", session=True, moment=expires),
                NotBefore("not-before", session=True, moment=now)]
    if network is not None:
        caveats.append(ClientIn("client-ip", session=True, network=network))
    token = token_mint(share_id=share_id, root_key=root_key, caveats=caveats)
    root_kid, sealed = root_key_seal(share_id, root_key)
    pin_kid, pin_mac = pin_protect(share_id, pin)
    actions_text = ",".join(a.value for a in ShareAction if a in chosen)
    share = _create_once(dict(
        public_id=share_id, issued_by_id=doctor.pk, patient=study.patient,
        study=study if scope is Scope.STUDY else None, actions=actions_text,
        not_before=now, expires_at=expires, client_cidr=str(network or ""),
        recipient=recipient, root_kid=root_kid, root_sealed=sealed,
        pin_kid=pin_kid, pin_mac=pin_mac, token_digest=token_digest(token),
        mint_key=idempotency_key), once=once, audit=dict(
        actor=doctor, action=Action.SHARE_MINT, outcome=Outcome.SUCCESS,
        patient_pseudonym=study.patient.pseudonym,
        study=study.study_instance_uid if scope is Scope.STUDY else "",
        source_ip=source_ip,
        details={"share": share_id, "chain": [share_id], "scope": scope.value,
                 "actions": actions_text, "expires": expires.isoformat(),
                 "client_cidr": str(network or ""), "recipient": recipient}))
    return Minted(share=share, token=token, pin=pin)


_CHAIN_FIELDS = ("pk", "public_id", "parent_id", "state", "expires_at", "root_kid", "root_sealed",
                 "issued_by__username")


_chain_sql: dict[tuple[str, int], str] = {}


def _aware(value: Any) -> dt.datetime:
    if isinstance(value, str):  # SQLite hands back naive UTC text
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _chain_rows(ids: list[str]) -> list[tuple[Any, ...]]:
    """The chain's rows in one query, on the hot path of every consultant request.

    The SQL is built by the ORM once per chain length and kept: building a
    query costs several times more than running it (docs/benchmarks.md).
    """
    alias = router.db_for_read(Share)
    sql = _chain_sql.get((alias, len(ids)))
    if sql is None:
        queryset = (Share.objects.using(alias).filter(public_id__in=ids).order_by()
                    .values_list(*_CHAIN_FIELDS))
        sql = queryset.query.get_compiler(using=alias).as_sql()[0]
        _chain_sql[(alias, len(ids))] = sql
    with connections[alias].cursor() as cursor:
        cursor.execute(sql, ids)
        return [(*row[:4], _aware(row[4]), *row[5:]) for row in cursor.fetchall()]


def capability_verify(token: object, *, client_ip: str | None, redeemed: bool = True,
                      now: dt.datetime | None = None) -> ConsultantPrincipal:
    """Verify a token for a request; returns the principal or raises :class:`ShareRefused`.

    ``redeemed``: the last share of the chain must have been redeemed (a
    consultant session); False while the PIN is still to be given.
    """
    try:
        parsed = token_parse(token)
    except TokenMalformed as malformed:
        raise ShareRefused(f"malformed: {malformed.reason}") from None
    claimed = parsed.leaf_id
    ids = [parsed.share_id, *parsed.delegates]
    if len(parsed.delegates) > conf.MAX_DELEGATION_DEPTH or len(set(ids)) != len(ids):
        raise ShareRefused("delegation chain", claimed=claimed)
    rows = {row[1]: row for row in _chain_rows(ids)}
    if len(rows) != len(ids):
        raise ShareRefused("unknown share", claimed=claimed)
    root = rows[parsed.share_id]
    if root[2] is not None:
        raise ShareRefused("not a root share", claimed=claimed)
    try:
        root_key = root_key_open(root[1], root[5], root[6])
    except RootKeyUnavailable:
        raise _keyless_refusal(str(token), ids, rows) from None
    if not signature_valid(parsed, root_key):
        raise ShareRefused("signature", claimed=claimed)

    def refused(reason: str) -> ShareRefused:  # from here on the share is identified
        return ShareRefused(reason, share_id=claimed, issuer=root[7])

    now = now or timezone.now()
    chain: list[ChainLink] = []
    previous: int | None = None
    for share_id in ids:
        pk, public_id, parent_id, state, expires_at = rows[share_id][:5]
        if parent_id != previous:
            # signed under the root's key, but not the recorded chain: the issuer is proven,
            # the share it claims to be is not
            raise ShareRefused("delegation chain", claimed=claimed, issuer=root[7])
        if state not in LIVE_STATES:
            raise refused(state)
        if now >= expires_at:
            raise refused("expired")
        chain.append(ChainLink(pk, public_id, parent_id, state, expires_at))
        previous = pk
    wanted = ShareState.ACTIVE if redeemed else ShareState.PENDING
    if chain[-1].state != wanted:
        raise refused("not redeemed" if redeemed else "already redeemed")
    address = _address(client_ip)
    if not parsed.holds(Context(now=now, client_ip=address), session_only=True):
        raise refused("caveat")
    return ConsultantPrincipal(token=parsed, chain=tuple(chain), issuer=root[7], client_ip=address)


def _keyless_refusal(token: str, ids: list[str], rows: dict[str, tuple[Any, ...]]) -> ShareRefused:
    """The refusal of a token whose root key is gone: named after the chain's first dead share.

    The signature cannot be checked any more, so the share counts as
    identified only if the token is exactly the one issued for its last
    share (digest recorded at mint or forward); anything else is a claim.
    """
    reason = next((rows[i][3] for i in ids if rows[i][3] not in LIVE_STATES), "root key unavailable")
    leaf = ids[-1]
    issued = Share.objects.filter(public_id=leaf).values_list("token_digest", flat=True).first()
    if issued and hmac.compare_digest(issued, token_digest(token)):
        return ShareRefused(reason, share_id=leaf, issuer=rows[ids[0]][7])
    return ShareRefused(reason, claimed=leaf)


def share_refusal(reason: str, *, token: object) -> ShareRefused:
    """A refusal for ``reason`` (e.g. the session timed out) about whatever share ``token`` is,
    identified exactly as :func:`capability_verify` would identify it."""
    try:
        principal = capability_verify(token, client_ip=None, redeemed=True)
    except ShareRefused as other:
        return ShareRefused(reason, share_id=other.share_id, issuer=other.issuer,
                            claimed=other.claimed)
    return ShareRefused.of(principal, reason)


def _issuer_of(share_id: str) -> str:
    return Share.objects.filter(public_id=share_id).values_list(
        "issued_by__username", flat=True).first() or ""


def share_deny_record(*, refusal: ShareRefused, source_ip: str | None, study: str = "",
                      channel: str = "http") -> None:
    """Audit a refused use of a share (the token itself is never recorded).

    An identified share is the actor (``share:<id>``), acting for its issuing
    doctor, like every other event of a consultant; an unidentified claim is
    ``anonymous`` with ``claimed_share`` in the details (module docstring).
    """
    issuer = refusal.issuer or (_issuer_of(refusal.share_id) if refusal.share_id else "")
    details: dict[str, Any] = {"reason": refusal.reason, "channel": channel}
    if refusal.claimed and not refusal.share_id:
        details["claimed_share"] = refusal.claimed
    audit_record(actor=f"share:{refusal.share_id}" if refusal.share_id else "anonymous",
                 actor_role="consultant", acting_for=issuer, action=Action.SHARE_DENY,
                 outcome=Outcome.DENIED, study=study[:64], source_ip=source_ip, details=details)


def share_use_record(*, principal: ConsultantPrincipal, source_ip: str | None, what: str,
                     study: str = "", pseudonym: str = "") -> None:
    """Audit a use of the capability and note when the shares were last used."""
    now = timezone.now()
    with transaction.atomic():
        Share.objects.filter(pk__in=[link.pk for link in principal.chain]).update(last_used_at=now)
        audit_record(**principal.audit_fields(), action=Action.SHARE_USE, outcome=Outcome.SUCCESS,
                     patient_pseudonym=pseudonym, study=study, source_ip=source_ip,
                     details={"what": what, "chain": principal.chain_ids})


class PinResult(StrEnum):
    REDEEMED = "redeemed"
    WRONG = "wrong"
    BURNED = "burned"


def share_redeem(*, token: str, pin: str, source_ip: str | None) -> tuple[PinResult, int]:
    """Check the one-time PIN of the token's share; returns (result, attempts left).

    The share row is locked while the PIN is checked, so attempts cannot race
    past the limit. The last allowed wrong PIN burns the share: a root share
    loses its key (so every token derived from it dies), a forwarded share
    only itself.
    """
    principal = capability_verify(token, client_ip=source_ip, redeemed=False)
    leaf_id = principal.share_id
    with transaction.atomic():
        share = Share.objects.select_for_update().get(public_id=leaf_id)
        if share.state != ShareState.PENDING:
            raise ShareRefused.of(principal, "already redeemed"
                                  if share.state == ShareState.ACTIVE else share.state)
        audit = {**principal.audit_fields(), "patient_pseudonym": share.patient.pseudonym,
                 "source_ip": source_ip}
        if pin_matches(share.public_id, share.pin_kid, share.pin_mac, pin):
            share.state = ShareState.ACTIVE
            share.redeemed_at = share.last_used_at = timezone.now()
            share.save(update_fields=["state", "redeemed_at", "last_used_at"])
            audit_record(**audit, action=Action.SHARE_REDEEM, outcome=Outcome.SUCCESS,
                         details={"chain": principal.chain_ids})
            return PinResult.REDEEMED, 0
        share.pin_failures += 1
        left = max(conf.pin_attempts() - share.pin_failures, 0)
        audit_record(**audit, action=Action.SHARE_DENY, outcome=Outcome.DENIED,
                     details={"reason": "wrong pin", "attempts_left": left,
                              "chain": principal.chain_ids})
        if left:
            share.save(update_fields=["pin_failures"])
            return PinResult.WRONG, left
        _end(share, state=ShareState.BURNED, by=principal.username)
        audit_record(**audit, action=Action.SHARE_REVOKE, outcome=Outcome.SUCCESS,
                     details={"reason": f"{conf.pin_attempts()} wrong PINs", "share": leaf_id,
                              "chain": principal.chain_ids})
    return PinResult.BURNED, 0


def _descendants(share: Share) -> list[Share]:
    found, frontier = [], [share]
    while frontier:
        children = list(Share.objects.select_for_update().filter(parent__in=frontier))
        found += children
        frontier = children
    return found


def _end(share: Share, *, state: ShareState, by: str) -> list[str]:
    """Revoke or burn ``share`` and its descendants; delete a root key. Returns the ids ended."""
    now = timezone.now()
    ended = []
    for item in [share, *_descendants(share)]:
        if item.state in LIVE_STATES:
            item.state = state if item.pk == share.pk else ShareState.REVOKED
            item.revoked_at = now
            item.revoked_by = by
        item.root_sealed = None
        item.root_kid = ""
        item.save(update_fields=["state", "revoked_at", "revoked_by", "root_sealed", "root_kid"])
        ended.append(item.public_id)
    transaction.on_commit(lambda: shares_broadcast_ended(ended))
    return ended


def shares_broadcast_ended(share_ids: list[str]) -> None:
    """Tell every open viewer of these shares to close now (the watchdog is the backstop)."""
    groups_tell([share_group(share_id) for share_id in share_ids], {"type": "share.ended"})


def shares_manageable(user: Any):
    """Shares this user may see and revoke: a doctor their own, an IT admin all."""
    if not may(user, Permission.SHARE_MANAGE):
        return Share.objects.none()
    shares = Share.objects.select_related("patient", "study", "parent", "issued_by")
    if getattr(user, "role", None) != Role.IT_ADMIN:
        shares = shares.filter(issued_by=user)
    return shares


def share_revoke(*, user: Any, share_id: str, source_ip: str | None) -> list[str]:
    """Revoke a share and everything derived from it; takes effect on the next request or message."""
    with transaction.atomic():
        share = shares_manageable(user).select_for_update(of=("self",)).filter(
            public_id=share_id).first()
        if share is None:
            raise ShareNotFound(share_id)
        if share.state not in LIVE_STATES:
            return []
        ended = _end(share, state=ShareState.REVOKED, by=user.username)
        audit_record(actor=user, action=Action.SHARE_REVOKE, outcome=Outcome.SUCCESS,
                     acting_for=share.issued_by.username,
                     patient_pseudonym=share.patient.pseudonym,
                     study=share.study.study_instance_uid if share.study else "",
                     source_ip=source_ip, details={"share": share_id, "ended": ended})
    return ended


def share_forward(*, holder: ConsultantPrincipal, token: str, study_uid: str | None, actions: Any,
                  hours: float, client_cidr: str = "", recipient: str,
                  source_ip: str | None, idempotency_key: str = "") -> Minted:
    """Derive a narrower token for a colleague, redeemed with its own PIN.

    The new token is the holder's token plus caveats (never fewer), ending in
    ``delegate = <new share>``; so it can only be narrower, whatever is asked
    here. Asking for more than the holder has is refused rather than
    silently narrowed, so the holder knows what they forwarded.
    ``idempotency_key``: as for :func:`share_mint`, per holder's share.
    """
    once = {"parent_id": holder.chain[-1].pk, "mint_key": idempotency_key}
    if idempotency_key:
        _minted_before(**once)
    if len(holder.chain) > conf.MAX_DELEGATION_DEPTH:
        raise ShareInvalid(_("this share cannot be forwarded further"))
    chosen = _actions(actions)
    if not chosen <= holder.actions:
        raise ShareInvalid(_("a forwarded share cannot allow more actions"))
    network = _network(client_cidr)
    recipient = (recipient or "").strip()[:120]
    if not recipient:
        raise ShareInvalid(_("name the recipient"))
    now = timezone.now().replace(microsecond=0)
    expires = _expiry(now, hours, holder.expires_at)
    study = None
    if study_uid:
        if not holder.grants(Permission.STUDY_VIEW, study_uid):
            raise ShareInvalid(_("that study is not part of this share"))
        study = Study.objects.get(study_instance_uid=study_uid)
    child_id = _new_id()
    caveats: list[Caveat] = [Delegate("delegate", session=True, share_id=child_id),
                             ActionIn("action", actions=chosen),
                             ExpiresBefore("expires", session=True, moment=expires)]
    if study is not None:
        caveats.append(StudyIs("study", uid=study.study_instance_uid))
    if network is not None:
        caveats.append(ClientIn("client-ip", session=True, network=network))
    derived = token_attenuate(token, caveats)
    pin = pin_new()
    pin_kid, pin_mac = pin_protect(child_id, pin)
    parent = Share.objects.select_related("patient", "study").get(pk=holder.chain[-1].pk)
    child_study = study or parent.study
    actions_text = ",".join(a.value for a in ShareAction if a in chosen)
    child = _create_once(dict(
        public_id=child_id, parent=parent, issued_by_id=parent.issued_by_id,
        patient=parent.patient, study=child_study, actions=actions_text,
        not_before=now, expires_at=expires, client_cidr=str(network or ""),
        recipient=recipient, pin_kid=pin_kid, pin_mac=pin_mac,
        token_digest=token_digest(derived), mint_key=idempotency_key), once=once, audit=dict(
        **holder.audit_fields(), action=Action.SHARE_MINT, outcome=Outcome.SUCCESS,
        patient_pseudonym=parent.patient.pseudonym,
        study=child_study.study_instance_uid if child_study else "",
        source_ip=source_ip,
        details={"share": child_id, "forwarded_from": parent.public_id,
                 "chain": [*holder.chain_ids, child_id], "actions": actions_text,
                 "expires": expires.isoformat(), "client_cidr": str(network or ""),
                 "recipient": recipient}))
    return Minted(share=child, token=derived, pin=pin)


def parsed_expiry(token: ParsedToken) -> dt.datetime | None:
    return min(token.expires) if token.expires else None
