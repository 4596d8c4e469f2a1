"""Saved grid layouts (rows x columns, merged cells): a reader's own, and the hospital's.

A grid is a viewing preference like a hanging rule (``accounts.hanging``): kept with the
account (a consultant's share has none), or hospital-wide (no owner), set by IT
(``Permission.LAYOUT_MANAGE``) and listed to every reader after their own. A grid holds no
patient data; a reader's own are not audited, each change of a hospital grid is
(``admin.layout``). Every grid is checked by ``rendering.grids.grid_parse`` before it is written
and again when it is read back; one that no longer parses is left out and logged.

The viewer reads :func:`grids_of` and saves with :func:`grid_save`; the "Layouts and rules" page
uses the rest.
"""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction
from django.db.models import Max, QuerySet
from django.utils.translation import ngettext

from accounts import clock
from accounts.models import GridLayout, User
from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from rendering.grids import Grid, GridError, grid_parse
from rendering.hanging import HangingRuleError, hanging_name_clean

logger = logging.getLogger("accounts.grids")

GRIDS_PER_USER = 20
HOSPITAL_GRIDS = 40


class GridLayoutNotFound(LookupError):
    """No such grid of this owner (the same answer whether it is missing or someone else's)."""


def grid_name_clean(*, name: Any) -> str:
    """A grid's name as listed: trimmed, 1 to 64 printable characters (as a hanging rule's)."""
    try:
        return hanging_name_clean(name=name)
    except HangingRuleError as error:
        raise GridError.from_error(error) from None


def _rows(owner: User | None) -> QuerySet[GridLayout]:
    if owner is None:
        return GridLayout.objects.filter(user__isnull=True)
    return GridLayout.objects.filter(user_id=owner.pk)


def _wire(row_id: int, name: str, grid: Grid, *, hospital: bool) -> dict[str, Any]:
    return {"id": row_id, "name": name, "grid": grid.wire(), "hospital": hospital}


def _listed(owner: User | None) -> list[dict[str, Any]]:
    grids = []
    for row in _rows(owner).order_by("position", "id"):
        try:
            grids.append(_wire(row.pk, row.name, grid_parse(row.grid), hospital=owner is None))
        except GridError as error:
            logger.warning("grid %s of %s is skipped: %s", row.pk,
                           "the hospital" if owner is None else f"user {owner.pk}", error)
    return grids


def grids_of(*, user: User) -> list[dict[str, Any]]:
    """The grids a reader may use, own first then the hospital's:
    ``[{"id", "name", "grid": Grid.wire(), "hospital": bool}]``."""
    return _listed(user) + _listed(None)


def grids_hospital() -> list[dict[str, Any]]:
    """The hospital-wide grids by position (each ``"hospital": True``)."""
    return _listed(None)


def _checked(grid: Grid) -> Grid:
    # A Grid can be built by hand; what is written is what grid_parse accepts.
    return grid_parse(grid.wire())


def _create(owner: User | None, lock: User, name: str, grid: Grid) -> dict[str, Any]:
    clean_name = grid_name_clean(name=name)
    grid = _checked(grid)
    # An account's row is the lock (as for hanging rules): two saves cannot both pass the count.
    User.objects.select_for_update().filter(pk=lock.pk).exists()
    rows = _rows(owner)
    limit = HOSPITAL_GRIDS if owner is None else GRIDS_PER_USER
    if rows.count() >= limit:
        if owner is None:
            raise GridError(ngettext("at most %(count)d hospital-wide grid: delete one first",
                                     "at most %(count)d hospital-wide grids: delete one first",
                                     limit) % {"count": limit})
        raise GridError(ngettext("at most %(count)d grid per user: delete one first",
                                 "at most %(count)d grids per user: delete one first",
                                 limit) % {"count": limit})
    last = rows.aggregate(last=Max("position"))["last"]
    now = clock.now()
    row = GridLayout.objects.create(user_id=None if owner is None else owner.pk, name=clean_name,
                                    position=0 if last is None else last + 1,
                                    grid=grid.wire(), created_at=now, updated_at=now)
    return _wire(row.pk, row.name, grid, hospital=owner is None)


def _update(owner: User | None, grid_id: int, name: str, grid: Grid) -> dict[str, Any]:
    clean_name = grid_name_clean(name=name)
    grid = _checked(grid)
    if not _rows(owner).filter(pk=grid_id).update(name=clean_name, grid=grid.wire(), updated_at=clock.now()):
        raise GridLayoutNotFound(grid_id)
    return _wire(grid_id, clean_name, grid, hospital=owner is None)


def _delete(owner: User | None, grid_id: int) -> str:
    row = _rows(owner).filter(pk=grid_id).first()
    if row is None:
        raise GridLayoutNotFound(grid_id)
    row.delete()
    return row.name


@transaction.atomic
def grid_save(*, user: User, name: str, grid: Grid) -> dict[str, Any]:
    """Keep ``grid`` as the user's last grid (at most ``GRIDS_PER_USER``); :class:`GridError` says why not."""
    return _create(user, user, name, grid)


@transaction.atomic
def grid_update(*, user: User, grid_id: int, name: str, grid: Grid) -> dict[str, Any]:
    return _update(user, grid_id, name, grid)


@transaction.atomic
def grid_delete(*, user: User, grid_id: int) -> None:
    _delete(user, grid_id)


def _audited(actor: User, change: str, grid_id: int, name: str, grid: dict[str, Any] | None = None) -> None:
    details: dict[str, Any] = {"change": change, "what": "grid", "id": grid_id, "name": name}
    if grid is not None:
        details["grid"] = grid
    audit_record(actor=actor, action=Action.ADMIN_LAYOUT, outcome=Outcome.SUCCESS, details=details)


@transaction.atomic
def grid_hospital_save(*, actor: User, name: str, grid: Grid) -> dict[str, Any]:
    """Keep ``grid`` as the hospital's last grid (at most ``HOSPITAL_GRIDS``); audited.

    The caller has checked ``Permission.LAYOUT_MANAGE`` (the route's rule does)."""
    saved = _create(None, actor, name, grid)
    _audited(actor, "added", saved["id"], saved["name"], saved["grid"])
    return saved


@transaction.atomic
def grid_hospital_update(*, actor: User, grid_id: int, name: str, grid: Grid) -> dict[str, Any]:
    saved = _update(None, grid_id, name, grid)
    _audited(actor, "changed", grid_id, saved["name"], saved["grid"])
    return saved


@transaction.atomic
def grid_hospital_delete(*, actor: User, grid_id: int) -> None:
    name = _delete(None, grid_id)
    _audited(actor, "deleted", grid_id, name)
