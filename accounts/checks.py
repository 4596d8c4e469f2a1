"""System checks of the accounts app (IDs ``accounts.E0xx``)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks

PLAINTEXT_OTP_APPS = ("django_otp.plugins.otp_totp", "django_otp.plugins.otp_static")


def second_factor_storage(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """django-otp's TOTP and static plugins store secrets and backup codes in plaintext."""
    return [
        checks.Error(f"{app} is installed; it stores second-factor secrets in plaintext",
                     hint="use accounts.TOTPDevice and accounts.BackupCodeDevice", id="accounts.E001")
        for app in PLAINTEXT_OTP_APPS if app in settings.INSTALLED_APPS
    ]


def password_hashing(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """Deployment check (``check --deploy``): the test settings use a fast hasher on purpose."""
    if settings.PASSWORD_HASHERS[0].endswith("Argon2PasswordHasher"):
        return []
    return [checks.Error("Argon2id must be the first password hasher", id="accounts.E002")]


def register() -> None:
    checks.register(second_factor_storage, checks.Tags.security)
    checks.register(password_hashing, checks.Tags.security, deploy=True)
