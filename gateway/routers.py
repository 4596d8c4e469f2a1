"""Database zones: identity, clinical (``default``) and audit.

Each Django app lives in exactly one zone. The router sends reads, writes and
migrations of an app's models to its zone only, so an identity table never
exists in the clinical or audit database; :func:`zone_guard` additionally
refuses an explicit ``.save(using=...)`` aimed at the wrong zone with a clear
error instead of a "no such table".
"""

from __future__ import annotations

from typing import Any

from django.db import models

IDENTITY = "identity"
CLINICAL = "default"
AUDIT = "audit"

APP_ZONES: dict[str, str] = {
    "identity": IDENTITY,
    "audit": AUDIT,
}


# Django's migration recorder keeps its bookkeeping row in every database.
ZONELESS_APPS = frozenset({"migrations"})


class ZoneViolation(RuntimeError):
    """A model was about to be written to a database outside its zone."""


def zone_of(app_label: str) -> str:
    return APP_ZONES.get(app_label, CLINICAL)


def model_zone(model: type[models.Model]) -> str:
    return zone_of(model._meta.app_label)


class ZoneRouter:
    """Route every app to its zone and keep relations inside one zone."""

    def db_for_read(self, model: type[models.Model], **hints: Any) -> str:
        return model_zone(model)

    def db_for_write(self, model: type[models.Model], **hints: Any) -> str:
        return model_zone(model)

    def allow_relation(self, obj1: models.Model, obj2: models.Model, **hints: Any) -> bool:
        return model_zone(type(obj1)) == model_zone(type(obj2))

    def allow_migrate(self, db: str, app_label: str, model_name: str | None = None,
                      **hints: Any) -> bool:
        return zone_of(app_label) == db


def zone_guard(sender: type[models.Model], using: str, **kwargs: Any) -> None:
    """``pre_save``/``pre_delete`` receiver: refuse a write outside the model's zone."""
    if sender._meta.app_label in ZONELESS_APPS:
        return
    zone = model_zone(sender)
    if using != zone:
        raise ZoneViolation(
            f"{sender._meta.label} belongs to the {zone!r} database and may not be "
            f"written to {using!r}"
        )
