"""Settings of the sharing app, with their defaults."""

from __future__ import annotations

from django.conf import settings

MAX_DELEGATION_DEPTH = 3
PIN_DIGITS = 8


def default_hours() -> int:
    return int(getattr(settings, "SHARING_DEFAULT_HOURS", 72))


def max_days() -> int:
    return int(getattr(settings, "SHARING_MAX_DAYS", 30))


def pin_attempts() -> int:
    return int(getattr(settings, "SHARING_PIN_ATTEMPTS", 5))
