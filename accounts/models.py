"""People who sign in to the gateway, each with exactly one role, and their second factors."""

from __future__ import annotations

import base64
import hmac
import re
from urllib.parse import quote, urlencode

from django.contrib.auth.models import AbstractUser
from django.db import models, transaction
from django.utils.crypto import salted_hmac
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext
from django_otp.models import Device
from django_otp.oath import TOTP

from accounts import clock, conf, crypto


class Role(models.TextChoices):
    DOCTOR = "doctor", _("Doctor")
    NURSE = "nurse", _("Nurse")
    ADMIN_STAFF = "admin_staff", _("Administrative staff")
    # Translators: an account that an imaging device (scanner, PACS) uses to send images.
    DEVICE = "device", _("Imaging device")
    AUDITOR = "auditor", _("Auditor")
    IT_ADMIN = "it_admin", _("IT administrator")


class User(AbstractUser):  # type: ignore[django-manager-missing]
    """A person or device account; the role decides what the policy allows."""

    role = models.CharField(_("role"), max_length=16, choices=Role.choices)
    # Part of the session hash: raising it ends every session of the account
    # ("log out everywhere"), for HTTP and websockets alike.
    session_generation = models.PositiveIntegerField(default=0, editable=False)

    class Meta:
        verbose_name = _("user")
        verbose_name_plural = _("users")
        constraints = [
            models.CheckConstraint(
                condition=models.Q(role__in=Role.values), name="accounts_user_role_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.username} ({self.get_role_display()})"

    def _get_session_auth_hash(self, secret: str | None = None) -> str:
        key_salt = "accounts.User.session_auth_hash"
        return salted_hmac(key_salt, f"{self.password}\x00{self.session_generation}",
                           secret=secret, algorithm="sha256").hexdigest()


_DIGITS = re.compile(r"^[0-9]{6}$")


class TOTPDevice(Device):
    """An RFC 6238 authenticator (30 s, 6 digits, SHA-1), secret sealed at rest.

    Every verification runs in a transaction on a locked row and remembers the
    last accepted time step: a code (or any code of an earlier step) is never
    accepted twice, whichever path submits it.
    """

    key_kid = models.CharField(max_length=64)
    key_sealed = models.BinaryField()
    last_t = models.BigIntegerField(default=-1)
    created_at = models.DateTimeField(_("created at"), default=clock.now)

    class Meta:
        # Translators: TOTP is the time-based one-time password of an authenticator app.
        verbose_name = _("TOTP device")
        verbose_name_plural = _("TOTP devices")
        constraints = [models.UniqueConstraint(fields=["user"], name="accounts_one_totp_per_user")]

    def secret(self) -> bytes:
        return crypto.secret_open(kid=self.key_kid, sealed=bytes(self.key_sealed), user_id=self.user_id)

    def config_url(self) -> str:
        """The ``otpauth://`` URI an authenticator app imports (shown at enrolment only)."""
        issuer = conf.TOTP_ISSUER
        label = quote(f"{issuer}:{self.user.username}")
        query = urlencode({
            "secret": base64.b32encode(self.secret()).decode().rstrip("="),
            "issuer": issuer, "algorithm": "SHA1",
            "digits": conf.TOTP_DIGITS, "period": conf.TOTP_STEP_SECONDS,
        }, quote_via=quote)
        return f"otpauth://totp/{label}?{query}"

    def _totp(self, at: float) -> TOTP:
        totp = TOTP(self.secret(), step=conf.TOTP_STEP_SECONDS, digits=conf.TOTP_DIGITS)
        totp.time = at
        return totp

    def token_at(self, at: float) -> str:
        """The code valid at ``at`` (Unix time): for tests and the demo helper."""
        return f"{self._totp(at).token():0{conf.TOTP_DIGITS}d}"

    def verify_token(self, token: object) -> bool:
        candidate = str(token).strip().replace(" ", "")
        if not _DIGITS.match(candidate):
            return False
        with transaction.atomic():
            locked = type(self).objects.select_for_update().get(pk=self.pk)
            totp = locked._totp(clock.timestamp())
            if not totp.verify(int(candidate), tolerance=conf.TOTP_TOLERANCE_STEPS,
                               min_t=locked.last_t + 1):
                return False
            locked.last_t = totp.t()
            locked.save(update_fields=["last_t"])
        self.last_t = locked.last_t
        return True


class BackupCodeDevice(Device):
    """The account's current set of single-use backup codes (stored as keyed hashes)."""

    generated_at = models.DateTimeField(default=clock.now)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user"], name="accounts_one_backup_set_per_user")]

    def remaining(self) -> int:
        return self.codes.filter(used_at__isnull=True).count()

    def verify_token(self, token: object) -> bool:
        candidate = backup_code_normalise(str(token))
        if len(candidate) != 16:
            return False
        with transaction.atomic():
            type(self).objects.select_for_update().get(pk=self.pk)
            for code in self.codes.select_for_update().filter(used_at__isnull=True):
                _, digest = crypto.code_digest(candidate, kid=code.key_kid)
                if hmac.compare_digest(digest, code.digest):
                    code.used_at = clock.now()
                    code.save(update_fields=["used_at"])
                    return True
        return False


def backup_code_normalise(raw: str) -> str:
    return re.sub(r"[^A-Z2-7]", "", raw.upper())


class BackupCode(models.Model):
    device = models.ForeignKey(BackupCodeDevice, on_delete=models.CASCADE, related_name="codes")
    key_kid = models.CharField(max_length=64)
    digest = models.CharField(max_length=64)
    used_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"backup code of {self.device.user_id} ({'used' if self.used_at else 'unused'})"


class LoginThrottle(models.Model):
    """Consecutive sign-in failures of one account name or one source address.

    Delays grow with each failure; at the lockout threshold the row is locked
    until an IT admin unlocks it (NIST SP 800-63B 5.2.2). Rows exist for
    names that match no account too, so the answer never tells which exist.
    An account's row remembers the source addresses its failures came from
    (``sources``), so that unlocking the account clears those addresses' rows
    as well: otherwise the person, unlocked, would still be refused from the
    desk they were locked out at.
    """

    class Scope(models.TextChoices):
        ACCOUNT = "account", _("Account")
        ADDRESS = "address", _("Source address")

    scope = models.CharField(_("scope"), max_length=8, choices=Scope.choices)
    # Translators: the account name or source address a throttle row counts failures of.
    key = models.CharField(_("key"), max_length=200)
    failures = models.PositiveIntegerField(_("failures"), default=0)
    last_failure_at = models.DateTimeField(_("last failure at"), null=True, blank=True)
    locked_at = models.DateTimeField(_("locked at"), null=True, blank=True)
    sources = models.JSONField(_("sources"), default=list, blank=True,
                               help_text=_("account rows: the source addresses of the counted failures, "
                                           "most recent last"))

    class Meta:
        verbose_name = _("login throttle")
        verbose_name_plural = _("login throttles")
        constraints = [models.UniqueConstraint(fields=["scope", "key"], name="accounts_throttle_unique")]

    def __str__(self) -> str:
        state = (str(_("locked")) if self.locked_at
                 else ngettext("%(count)d failure", "%(count)d failures", self.failures)
                 % {"count": self.failures})
        return f"{self.get_scope_display()} {self.key}: {state}"


class HangingRule(models.Model):
    """One hanging rule: which series go in which view, as data.

    ``rule`` is the JSON form that ``rendering.hanging.hanging_parse`` reads
    (and ``accounts.hanging`` checks before every write). ``user`` null is a
    hospital-wide rule, set by IT; a reader's own rules come first, then the
    hospital's, each by ``position``, and the first that fits a study hangs it
    when it opens.
    """

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="hanging_rules", null=True,
                             blank=True)
    name = models.CharField(max_length=64)
    position = models.PositiveIntegerField(default=0)
    rule = models.JSONField()
    created_at = models.DateTimeField(default=clock.now)
    updated_at = models.DateTimeField(default=clock.now)

    class Meta:
        ordering = ["position", "id"]
        indexes = [models.Index(fields=["user", "position"], name="accounts_hanging_user_pos")]

    def __str__(self) -> str:
        return f"{self.name} (rule {self.pk} of user {self.user_id})"


class GridLayout(models.Model):
    """A saved grid layout (rows x columns, merged cells) as data: a reader's own, or the hospital's.

    ``grid`` is the JSON form that ``rendering.grids.grid_parse`` reads (checked by
    ``accounts.grids`` before every write and again when read back); ``user`` null is a
    hospital-wide layout, set by IT.
    """

    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="grid_layouts", null=True,
                             blank=True)
    name = models.CharField(max_length=64)
    position = models.PositiveIntegerField(default=0)
    grid = models.JSONField()
    created_at = models.DateTimeField(default=clock.now)
    updated_at = models.DateTimeField(default=clock.now)

    class Meta:
        ordering = ["position", "id"]
        indexes = [models.Index(fields=["user", "position"], name="accounts_grid_user_pos")]

    def __str__(self) -> str:
        owner = "the hospital" if self.user_id is None else f"user {self.user_id}"
        return f"{self.name} (grid {self.pk} of {owner})"
