"""A reader's own hanging rules: kept, listed and deleted, each write one transaction.

Rules are a person's viewing preference, kept with the account: a consultant
holding a share has no account and so no rules (:func:`hanging_owner`). They
hold no patient data (modalities and series-description fragments), so they
are not audited. Every rule is checked by ``rendering.hanging.hanging_parse``
before it is written and again when it is read back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from django.db import transaction
from django.db.models import Max
from django.utils.translation import ngettext

from accounts import clock
from accounts.models import HangingRule, User
from rendering.hanging import (
    RULES_PER_USER,
    Hanging,
    HangingRuleError,
    hanging_name_clean,
    hanging_parse,
)

logger = logging.getLogger("accounts.hanging")


class HangingRuleNotFound(LookupError):
    """No such rule of this user (the same answer whether it is missing or someone else's)."""


@dataclass(frozen=True)
class SavedHanging:
    id: int
    name: str
    hanging: Hanging


def hanging_owner(principal: Any) -> User | None:
    """The account whose rules apply to ``principal``: a signed-in user; a share has none."""
    return principal if isinstance(principal, User) and principal.pk is not None else None


def hanging_rules_of(*, user: User) -> list[SavedHanging]:
    """The user's rules by position; one that no longer parses is left out and logged."""
    rules = []
    for row in HangingRule.objects.filter(user_id=user.pk).order_by("position", "id"):
        try:
            rules.append(SavedHanging(row.pk, row.name, hanging_parse(data=row.rule)))
        except HangingRuleError as error:
            logger.warning("hanging rule %s of user %s is skipped: %s", row.pk, user.pk, error)
    return rules


@transaction.atomic
def hanging_rule_save(*, user: User, name: str, rule: Any) -> SavedHanging:
    """Keep ``rule`` (its JSON form) as the user's last rule; at most ``RULES_PER_USER``."""
    clean_name = hanging_name_clean(name=name)
    hanging = hanging_parse(data=rule)
    # The account's row is the lock: two saves at once cannot both pass the count.
    User.objects.select_for_update().filter(pk=user.pk).exists()
    rules = HangingRule.objects.filter(user_id=user.pk)
    if rules.count() >= RULES_PER_USER:
        raise HangingRuleError(ngettext("at most %(count)d hanging rule per user: delete one first",
                                        "at most %(count)d hanging rules per user: delete one first",
                                        RULES_PER_USER) % {"count": RULES_PER_USER})
    last = rules.aggregate(last=Max("position"))["last"]
    now = clock.now()
    row = HangingRule.objects.create(user_id=user.pk, name=clean_name,
                                     position=0 if last is None else last + 1,
                                     rule=hanging.wire(), created_at=now, updated_at=now)
    return SavedHanging(row.pk, row.name, hanging)


@transaction.atomic
def hanging_rule_delete(*, user: User, rule_id: int) -> None:
    deleted, _ = HangingRule.objects.filter(user_id=user.pk, pk=rule_id).delete()
    if not deleted:
        raise HangingRuleNotFound(rule_id)
