"""Shares (clinical zone): who shared which patient or study with whom, and its state.

Only a root share (minted by a doctor) has a root key, stored sealed under
the ``share`` keyring; revoking or burning it deletes the key, which kills
the root token and every token derived from it. A forwarded share (a holder
derived a narrower token for a colleague) has a ``parent`` and its own PIN,
but no key: its token is the parent's token plus caveats, ending with
``delegate = <its id>``.
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _


class ShareState(models.TextChoices):
    # Translators: states of a share; "redeemed" means its recipient has opened it with the PIN.
    PENDING = "pending", _("not yet redeemed")
    ACTIVE = "active", _("redeemed")
    REVOKED = "revoked", _("revoked")
    # Translators: a share destroyed after too many wrong PINs.
    BURNED = "burned", _("burned (wrong PINs)")


LIVE_STATES = (ShareState.PENDING, ShareState.ACTIVE)


class Share(models.Model):
    public_id = models.CharField(max_length=24, unique=True)
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT,
                               related_name="children")
    issued_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT,
                                  related_name="shares_issued",
                                  help_text="the doctor on whose authority the share exists")
    patient = models.ForeignKey("imaging.Patient", on_delete=models.PROTECT, related_name="+")
    study = models.ForeignKey("imaging.Study", null=True, blank=True, on_delete=models.PROTECT,
                              related_name="+", help_text="empty: every study of the patient")
    actions = models.CharField(max_length=32)
    not_before = models.DateTimeField()
    expires_at = models.DateTimeField()
    client_cidr = models.CharField(max_length=64, blank=True)
    recipient = models.CharField(max_length=120)
    root_kid = models.CharField(max_length=64, blank=True)
    root_sealed = models.BinaryField(null=True, blank=True)
    pin_kid = models.CharField(max_length=64)
    pin_mac = models.CharField(max_length=64)
    pin_failures = models.PositiveSmallIntegerField(default=0)
    state = models.CharField(max_length=16, choices=ShareState.choices, default=ShareState.PENDING)
    created_at = models.DateTimeField(auto_now_add=True)
    redeemed_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.CharField(max_length=150, blank=True)
    token_digest = models.CharField(
        max_length=64, blank=True,
        help_text="SHA-256 of the token as issued (tokens.token_digest): names the share of a "
                  "refused token after its root key is gone; never grants anything")
    mint_key = models.CharField(
        max_length=64, blank=True,
        help_text="idempotency key of the form that minted it: the same form posted twice "
                  "mints one share")

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["issued_by", "mint_key"], name="sharing_share_root_mint_key",
                condition=models.Q(parent__isnull=True) & ~models.Q(mint_key="")),
            models.UniqueConstraint(
                fields=["parent", "mint_key"], name="sharing_share_forward_mint_key",
                condition=models.Q(parent__isnull=False) & ~models.Q(mint_key="")),
        ]

    def __str__(self) -> str:
        return f"share {self.public_id}"

    @property
    def actor(self) -> str:
        return f"share:{self.public_id}"
