"""System checks of the sharing app."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks

MIDDLEWARE = "gateway.sharing.middleware.CapabilityMiddleware"
AFTER = "django_otp.middleware.OTPMiddleware"
BEFORE = "accounts.middleware.AccessGate"


def middleware_order(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The consultant principal must be set after OTP annotation and before the access gate."""
    chain = list(settings.MIDDLEWARE)
    if MIDDLEWARE not in chain:
        return [checks.Error(f"{MIDDLEWARE} is missing from MIDDLEWARE: consultant sessions "
                             "would not be re-verified", id="sharing.E001")]
    position = chain.index(MIDDLEWARE)
    if AFTER not in chain[:position] or BEFORE not in chain[position + 1:]:
        return [checks.Error(f"{MIDDLEWARE} must come after {AFTER} and before {BEFORE}",
                             id="sharing.E002")]
    return []


def register() -> None:
    checks.register(middleware_order, checks.Tags.security)
