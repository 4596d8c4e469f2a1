"""Settings of the accounts app, with their defaults (overridable in Django settings)."""

from __future__ import annotations

from django.conf import settings

TOTP_STEP_SECONDS = 30
TOTP_DIGITS = 6
# RFC 6238 look-around: at most one step either side (NIST SP 800-63B allows some drift).
TOTP_TOLERANCE_STEPS = 1
TOTP_ISSUER = "Fusion Gateway"
BACKUP_CODE_COUNT = 10
BACKUP_CODE_BYTES = 10  # 80 bits each
# Source addresses an account's throttle row remembers (unlocking the account clears their rows).
THROTTLE_SOURCES_KEPT = 32


def lockout_threshold() -> int:
    """Consecutive failures after which an account or address is locked until an IT admin unlocks."""
    return int(getattr(settings, "ACCOUNTS_LOCKOUT_THRESHOLD", 100))


def throttle_free_failures() -> int:
    """Failures allowed before delays begin."""
    return int(getattr(settings, "ACCOUNTS_THROTTLE_FREE_FAILURES", 3))


def throttle_base_seconds() -> float:
    return float(getattr(settings, "ACCOUNTS_THROTTLE_BASE_SECONDS", 2))


def throttle_max_seconds() -> float:
    return float(getattr(settings, "ACCOUNTS_THROTTLE_MAX_SECONDS", 900))


def session_idle_seconds() -> int:
    return int(getattr(settings, "SESSION_IDLE_SECONDS", 30 * 60))


def session_absolute_seconds() -> int:
    return int(getattr(settings, "SESSION_COOKIE_AGE", 12 * 3600))


def websocket_session_check_seconds() -> float:
    return float(getattr(settings, "ACCOUNTS_WEBSOCKET_SESSION_CHECK_SECONDS", 30))
