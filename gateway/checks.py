"""System checks for the gate itself (IDs ``gateway.E0xx``)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks


def _database_identity(alias: str) -> tuple[str, str, str, str]:
    database = settings.DATABASES[alias]
    return (
        database["ENGINE"],
        str(database.get("HOST", "")),
        str(database.get("PORT", "")),
        str(database["NAME"]),
    )


def zones_are_separate(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The three trust zones must be three databases, or the split protects nothing."""
    seen: dict[tuple[str, str, str, str], str] = {}
    errors: list[checks.CheckMessage] = []
    for alias in ("default", "identity", "audit"):
        if alias not in settings.DATABASES:
            errors.append(checks.Error(f"database alias {alias!r} is not configured",
                                       id="gateway.E001"))
            continue
        where = _database_identity(alias)
        if where in seen:
            errors.append(checks.Error(
                f"databases {seen[where]!r} and {alias!r} point at the same database",
                hint="identity, clinical and audit data must live in separate databases",
                id="gateway.E002",
            ))
        seen[where] = alias
    return errors


def register() -> None:
    checks.register(zones_are_separate, checks.Tags.security)
