"""Hanging rules kept as data: a reader's own, and the hospital's; each write one transaction.

Rules are a person's viewing preference, kept with the account: a consultant
holding a share has no account and so no rules (:func:`hanging_owner`). A rule
with no owner is hospital-wide, set by IT (``Permission.LAYOUT_MANAGE``), and
applies to every reader after the reader's own (:func:`hanging_rules_for`).
Rules hold no patient data (modalities and series-description fragments), so a
reader's own are not audited; a hospital rule changes every doctor's reading,
so each change of one is (``admin.layout``, with the rule as it was written).
Every rule is checked by ``rendering.hanging.hanging_parse`` before it is
written and again when it is read back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Max, QuerySet
from django.utils.translation import ngettext

from accounts import clock
from accounts.models import HangingRule, User
from accounts.services import account_of
from gateway.audit.catalogue import Action, Outcome
from gateway.audit.services import audit_record
from rendering.hanging import (
    RULES_PER_USER,
    Hanging,
    HangingRuleError,
    hanging_name_clean,
    hanging_parse,
)

logger = logging.getLogger("accounts.hanging")

HOSPITAL_RULES = 40
"""At most this many hospital-wide rules (a reader's own: ``RULES_PER_USER``)."""


class HangingRuleNotFound(LookupError):
    """No such rule of this owner (the same answer whether it is missing or someone else's)."""


@dataclass(frozen=True)
class SavedHanging:
    id: int
    name: str
    hanging: Hanging
    hospital: bool = False
    """A hospital-wide rule (IT's): listed to every reader, changed only by IT."""


def hanging_owner(principal: Any) -> User | None:
    """The account whose rules apply to ``principal``: a signed-in user; a share has none."""
    return account_of(principal)


def _rows(owner: User | None) -> QuerySet[HangingRule]:
    if owner is None:
        return HangingRule.objects.filter(user__isnull=True)
    return HangingRule.objects.filter(user_id=owner.pk)


def _listed(owner: User | None) -> list[SavedHanging]:
    rules = []
    for row in _rows(owner).order_by("position", "id"):
        try:
            rules.append(SavedHanging(row.pk, row.name, hanging_parse(data=row.rule), hospital=owner is None))
        except HangingRuleError as error:
            logger.warning("hanging rule %s of %s is skipped: %s", row.pk,
                           "the hospital" if owner is None else f"user {owner.pk}", error)
    return rules


def hanging_rules_of(*, user: User) -> list[SavedHanging]:
    """The user's own rules by position; one that no longer parses is left out and logged."""
    return _listed(user)


def hanging_hospital_rules() -> list[SavedHanging]:
    """The hospital-wide rules by position (each ``hospital``); one that no longer parses is left out."""
    return _listed(None)


def hanging_rules_for(*, user: User) -> list[SavedHanging]:
    """The rules that apply to a reader, in the order they are tried: their own, then the hospital's."""
    return _listed(user) + _listed(None)


def _limit_error(limit: int, *, hospital: bool) -> HangingRuleError:
    if hospital:
        return HangingRuleError(ngettext("at most %(count)d hospital-wide hanging rule: delete one first",
                                         "at most %(count)d hospital-wide hanging rules: delete one first",
                                         limit) % {"count": limit})
    return HangingRuleError(ngettext("at most %(count)d hanging rule per user: delete one first",
                                     "at most %(count)d hanging rules per user: delete one first",
                                     limit) % {"count": limit})


def _create(owner: User | None, lock: User, name: str, rule: Any) -> SavedHanging:
    clean_name = hanging_name_clean(name=name)
    hanging = hanging_parse(data=rule)
    # An account's row is the lock: two saves at once cannot both pass the count (for the
    # hospital's list, the IT admin's own row: two admins at once could pass it by one).
    User.objects.select_for_update().filter(pk=lock.pk).exists()
    rows = _rows(owner)
    limit = HOSPITAL_RULES if owner is None else RULES_PER_USER
    if rows.count() >= limit:
        raise _limit_error(limit, hospital=owner is None)
    last = rows.aggregate(last=Max("position"))["last"]
    now = clock.now()
    row = HangingRule.objects.create(user_id=None if owner is None else owner.pk, name=clean_name,
                                     position=0 if last is None else last + 1,
                                     rule=hanging.wire(), created_at=now, updated_at=now)
    return SavedHanging(row.pk, row.name, hanging, hospital=owner is None)


def _update(owner: User | None, rule_id: int, name: str, rule: Any) -> SavedHanging:
    clean_name = hanging_name_clean(name=name)
    hanging = hanging_parse(data=rule)
    changed = _rows(owner).filter(pk=rule_id).update(name=clean_name, rule=hanging.wire(),
                                                     updated_at=clock.now())
    if not changed:
        raise HangingRuleNotFound(rule_id)
    return SavedHanging(rule_id, clean_name, hanging, hospital=owner is None)


def _delete(owner: User | None, rule_id: int) -> str:
    row = _rows(owner).filter(pk=rule_id).first()
    if row is None:
        raise HangingRuleNotFound(rule_id)
    row.delete()
    return row.name


@transaction.atomic
def hanging_rule_save(*, user: User, name: str, rule: Any) -> SavedHanging:
    """Keep ``rule`` (its JSON form) as the user's last rule; at most ``RULES_PER_USER``."""
    return _create(user, user, name, rule)


@transaction.atomic
def hanging_rule_update(*, user: User, rule_id: int, name: str, rule: Any) -> SavedHanging:
    """Change one of the user's own rules (name and JSON form), checked as a new one is."""
    return _update(user, rule_id, name, rule)


@transaction.atomic
def hanging_rule_delete(*, user: User, rule_id: int) -> None:
    _delete(user, rule_id)


def _audited(actor: User, change: str, rule_id: int, name: str, hanging: Hanging | None = None) -> None:
    details: dict[str, Any] = {"change": change, "what": "hanging rule", "id": rule_id, "name": name}
    if hanging is not None:
        details["rule"] = hanging.wire()
    audit_record(actor=actor, action=Action.ADMIN_LAYOUT, outcome=Outcome.SUCCESS, details=details)


@transaction.atomic
def hanging_hospital_save(*, actor: User, name: str, rule: Any) -> SavedHanging:
    """Keep ``rule`` as the hospital's last rule (at most ``HOSPITAL_RULES``); audited.

    The caller has checked ``Permission.LAYOUT_MANAGE`` (the route's rule does)."""
    saved = _create(None, actor, name, rule)
    _audited(actor, "added", saved.id, saved.name, saved.hanging)
    return saved


@transaction.atomic
def hanging_hospital_update(*, actor: User, rule_id: int, name: str, rule: Any) -> SavedHanging:
    saved = _update(None, rule_id, name, rule)
    _audited(actor, "changed", saved.id, saved.name, saved.hanging)
    return saved


@transaction.atomic
def hanging_hospital_delete(*, actor: User, rule_id: int) -> None:
    name = _delete(None, rule_id)
    _audited(actor, "deleted", rule_id, name)
