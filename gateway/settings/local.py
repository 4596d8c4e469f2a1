"""Embedded defaults for ``make run``; see base.py for every variable."""

from gateway.settings.base import *  # noqa: F403
