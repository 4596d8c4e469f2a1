"""Writes to accounts: each state change is one function, audited with it."""

from __future__ import annotations

import base64
import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F
from django.utils.translation import gettext_lazy
from django_otp.models import Device

from accounts import clock, conf, crypto
from accounts.broadcast import sessions_changed
from accounts.models import (
    BackupCode,
    BackupCodeDevice,
    LoginThrottle,
    Role,
    TOTPDevice,
    User,
    backup_code_normalise,
)
from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import Actor, audit_record


def _admin_action(user: User) -> Action:
    return Action.ADMIN_DEVICE if user.role == Role.DEVICE else Action.ADMIN_USER


@transaction.atomic
def user_create(*, username: str, password: str, role: Role | str, first_name: str = "",
                last_name: str = "", email: str = "", actor: Actor | str = "system",
                source_ip: str | None = None) -> User:
    """Create an account after the password passes every password rule; always audited."""
    user = User(username=username, role=role, first_name=first_name, last_name=last_name,
                email=email)
    validate_password(password, user)
    user.set_password(password)
    user.full_clean()
    user.save()
    audit_record(actor=actor, action=_admin_action(user), outcome=Outcome.SUCCESS,
                 source_ip=source_ip,
                 details={"change": "created", "user": user.username, "role": user.role})
    return user


# --- TOTP --------------------------------------------------------------------

@transaction.atomic
def totp_device_create(*, user: User, confirmed: bool, name: str = "authenticator") -> TOTPDevice:
    """Give ``user`` a fresh TOTP secret, replacing any device they had (sealed at rest)."""
    if user.role == Role.DEVICE:
        raise ValueError("device accounts authenticate with their device credential, not TOTP")
    TOTPDevice.objects.filter(user=user).delete()
    kid, sealed = crypto.secret_seal(secret=secrets.token_bytes(20), user_id=user.pk)
    return TOTPDevice.objects.create(user_id=user.pk, name=name, confirmed=confirmed, key_kid=kid,
                                     key_sealed=sealed)


def totp_enrolment_device(*, user: User) -> TOTPDevice:
    """The pending (unconfirmed) device to show at enrolment; refused once one is confirmed."""
    existing = TOTPDevice.objects.filter(user=user).first()
    if existing is not None and existing.confirmed:
        raise PermissionError("this account already has a confirmed authenticator")
    return existing or totp_device_create(user=user, confirmed=False)


@transaction.atomic
def totp_enrolment_confirm(*, user: User, token: str, source_ip: str | None = None) -> list[str] | None:
    """Activate the pending device if ``token`` is its current code; returns fresh backup codes."""
    device = TOTPDevice.objects.select_for_update().filter(user=user, confirmed=False).first()
    if device is None or not device.verify_token(token):
        return None
    device.confirmed = True
    device.save(update_fields=["confirmed"])
    audit_record(actor=user, action=Action.ADMIN_USER, outcome=Outcome.SUCCESS, source_ip=source_ip,
                 details={"change": "totp-enrolled", "user": user.username})
    return backup_codes_regenerate(user=user, actor=user, source_ip=source_ip)


def second_factor_verify(*, user: User, token: str) -> Device | None:
    """Check a TOTP code or a backup code of ``user``; returns the device that accepted it."""
    candidate = token.strip().replace(" ", "")
    if candidate.isdigit():
        device: Device | None = TOTPDevice.objects.filter(user=user, confirmed=True).first()
    else:
        device = BackupCodeDevice.objects.filter(user=user, confirmed=True).first()
    if device is not None and device.verify_token(candidate):
        return device
    return None


# --- backup codes ------------------------------------------------------------

def _backup_code_new() -> str:
    raw = base64.b32encode(secrets.token_bytes(conf.BACKUP_CODE_BYTES)).decode()
    return "-".join(raw[i:i + 4] for i in range(0, len(raw), 4))


@transaction.atomic
def backup_codes_regenerate(*, user: User, actor: Actor | str, source_ip: str | None = None) -> list[str]:
    """Burn the old set and return ten new codes; only their keyed hashes are kept."""
    device, _ = BackupCodeDevice.objects.get_or_create(user_id=user.pk, defaults={"name": "backup codes"})
    device = BackupCodeDevice.objects.select_for_update().get(pk=device.pk)
    device.codes.all().delete()
    device.generated_at = clock.now()
    device.save(update_fields=["generated_at"])
    codes = [_backup_code_new() for _ in range(conf.BACKUP_CODE_COUNT)]
    for code in codes:
        kid, digest = crypto.code_digest(backup_code_normalise(code))
        BackupCode.objects.create(device=device, key_kid=kid, digest=digest)
    audit_record(actor=actor, action=Action.ADMIN_USER, outcome=Outcome.SUCCESS, source_ip=source_ip,
                 details={"change": "backup-codes-regenerated", "user": user.username})
    return codes


# --- second-factor reset and sessions ---------------------------------------

@transaction.atomic
def second_factor_reset(*, user: User, actor: Actor | str, source_ip: str | None = None) -> None:
    """Lost phone: remove the authenticator and backup codes and end every session.

    The user enrols a new authenticator at the next sign-in (password first).
    """
    TOTPDevice.objects.filter(user=user).delete()
    BackupCodeDevice.objects.filter(user=user).delete()
    User.objects.filter(pk=user.pk).update(session_generation=F("session_generation") + 1)
    sessions_changed(user_id=user.pk)
    audit_record(actor=actor, action=Action.ADMIN_USER, outcome=Outcome.SUCCESS, source_ip=source_ip,
                 details={"change": "second-factor-reset", "user": user.username})


@transaction.atomic
def user_logout_everywhere(*, user: User, actor: Actor | str, source_ip: str | None = None) -> None:
    """End every session of ``user`` (HTTP and websocket) by changing its session hash."""
    User.objects.filter(pk=user.pk).update(session_generation=F("session_generation") + 1)
    user.refresh_from_db(fields=["session_generation"])
    sessions_changed(user_id=user.pk)
    audit_record(actor=actor, action=Action.LOGOUT, outcome=Outcome.SUCCESS, source_ip=source_ip,
                 acting_for="" if getattr(actor, "pk", None) == user.pk else user.username,
                 details={"scope": "everywhere", "user": user.username})


# --- own password ------------------------------------------------------------

WRONG_CURRENT_PASSWORD = gettext_lazy("Your current password is not right.")


def user_password_change(*, user: User, current_password: str, new_password: str,
                         source_ip: str | None = None) -> None:
    """A signed-in person changes their own password; every other session of theirs ends.

    The current password is asked again, so that a session left open is not
    enough to take the account over; a wrong one counts as a failed sign-in
    step (throttled like one) and is audited. The new password passes the
    same rules as every password (``AUTH_PASSWORD_VALIDATORS``). The new
    hash changes the session hash, which ends every session of the account;
    the caller keeps its own with ``update_session_auth_hash``.

    Raises
    ------
    ValidationError
        ``current_password`` or ``new_password`` as the key of what was refused.
    """
    if not user.check_password(current_password):
        throttle_failure(username=user.username, address=source_ip or "", step="password-change")
        audit_record(actor=user, action=Action.ADMIN_USER, outcome=Outcome.DENIED, source_ip=source_ip,
                     details={"change": "password change refused", "user": user.username,
                              "reason": "wrong current password"})
        raise ValidationError({"current_password": ValidationError(WRONG_CURRENT_PASSWORD,
                                                                   code="password_incorrect")})
    try:
        validate_password(new_password, user)
    except ValidationError as refused:
        raise ValidationError({"new_password": refused.error_list}) from refused
    with transaction.atomic():
        user.set_password(new_password)
        user.save(update_fields=["password"])  # the post_save receiver tells open websockets
        audit_record(actor=user, action=Action.ADMIN_USER, outcome=Outcome.SUCCESS, source_ip=source_ip,
                     details={"change": "password changed by self", "user": user.username,
                              "other_sessions": "ended"})


# --- throttling and lockout --------------------------------------------------


def account_of(principal: Any) -> User | None:
    """The account behind ``principal``: a signed-in user; a consultant's share has none."""
    return principal if isinstance(principal, User) and principal.pk is not None else None

@dataclass(frozen=True)
class ThrottleVerdict:
    allowed: bool
    locked: bool = False
    retry_after: float = 0.0


def account_key(username: str) -> str:
    return username.strip().lower()[:200]


def _delay(failures: int) -> float:
    excess = failures - conf.throttle_free_failures()
    if excess < 0:
        return 0.0
    return min(conf.throttle_base_seconds() * 2 ** min(excess, 40), conf.throttle_max_seconds())


def _row_verdict(row: LoginThrottle | None, now: dt.datetime) -> ThrottleVerdict:
    if row is None:
        return ThrottleVerdict(True)
    if row.locked_at is not None:
        return ThrottleVerdict(False, locked=True)
    if row.last_failure_at is None:
        return ThrottleVerdict(True)
    wait = (row.last_failure_at + dt.timedelta(seconds=_delay(row.failures)) - now).total_seconds()
    return ThrottleVerdict(wait <= 0, retry_after=max(wait, 0.0))


def _keys(username: str, address: str) -> list[tuple[str, str]]:
    keys = [(LoginThrottle.Scope.ACCOUNT.value, account_key(username))]
    if address:
        keys.append((LoginThrottle.Scope.ADDRESS.value, address))
    return keys


def throttle_verdict(*, username: str, address: str) -> ThrottleVerdict:
    """May a sign-in step for this account name from this address be tried now?"""
    now = clock.now()
    verdicts = [_row_verdict(LoginThrottle.objects.filter(scope=scope, key=key).first(), now)
                for scope, key in _keys(username, address)]
    return ThrottleVerdict(
        allowed=all(v.allowed for v in verdicts),
        locked=any(v.locked for v in verdicts),
        retry_after=max(v.retry_after for v in verdicts),
    )


@transaction.atomic
def throttle_failure(*, username: str, address: str, step: str) -> None:
    """Count one failed step (password, OTP or backup code); lock at the threshold."""
    now = clock.now()
    for scope, key in _keys(username, address):
        LoginThrottle.objects.get_or_create(scope=scope, key=key)
        row = LoginThrottle.objects.select_for_update().get(scope=scope, key=key)
        if row.locked_at is not None:
            continue
        row.failures += 1
        row.last_failure_at = now
        if scope == LoginThrottle.Scope.ACCOUNT and address:
            row.sources = [*(source for source in row.sources if source != address),
                           address][-conf.THROTTLE_SOURCES_KEPT:]
        if row.failures >= conf.lockout_threshold():
            row.locked_at = now
            audit_record(actor=account_key(username) or "anonymous", action=Action.LOCKOUT,
                         outcome=Outcome.SUCCESS, source_ip=address or None,
                         details={"scope": scope, "key": key, "failures": row.failures,
                                  "step": step})
        row.save()


@transaction.atomic
def throttle_success(*, username: str, address: str) -> None:
    """Both factors passed: the consecutive-failure counts start again (locks stay)."""
    for scope, key in _keys(username, address):
        LoginThrottle.objects.filter(scope=scope, key=key, locked_at__isnull=True).update(
            failures=0, last_failure_at=None, sources=[])


@transaction.atomic
def throttle_unlock(*, scope: str, key: str, actor: Actor | str, source_ip: str | None = None) -> bool:
    """An IT admin lifts a lock (and the failure count) on an account name or address.

    Unlocking an account name also clears the rows of the source addresses
    its failures came from (its row's ``sources``): an address row may hold
    the person back as surely as the account row. The price is that an
    address also guessing at other names starts its count again; the
    account's own row, and every other address, keep theirs.
    """
    row = LoginThrottle.objects.select_for_update().filter(scope=scope, key=key).first()
    addresses = list(row.sources) if row is not None and scope == LoginThrottle.Scope.ACCOUNT else []
    cleared: dict[str, object] = {"failures": 0, "last_failure_at": None, "locked_at": None, "sources": []}
    updated = LoginThrottle.objects.filter(scope=scope, key=key).update(**cleared)
    addresses_cleared = sorted(LoginThrottle.objects.filter(
        scope=LoginThrottle.Scope.ADDRESS, key__in=addresses).values_list("key", flat=True))
    LoginThrottle.objects.filter(scope=LoginThrottle.Scope.ADDRESS, key__in=addresses_cleared).update(
        **cleared)
    audit_record(actor=actor, action=Action.UNLOCK, outcome=Outcome.SUCCESS, source_ip=source_ip,
                 acting_for=key if scope == LoginThrottle.Scope.ACCOUNT else "",
                 details={"scope": scope, "key": key, "was_throttled": bool(updated),
                          "addresses_cleared": addresses_cleared})
    return bool(updated)
