"""The accounts app's clock: every timeout, throttle and TOTP step reads it.

Tests replace :data:`source` to move time without sleeping.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from django.utils import timezone

source: Callable[[], dt.datetime] = timezone.now


def now() -> dt.datetime:
    return source()


def timestamp() -> float:
    return source().timestamp()
