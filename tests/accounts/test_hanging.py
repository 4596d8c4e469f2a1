"""A reader's hanging rules in the database: checked before every write, at most 20, their own only."""

from __future__ import annotations

import pytest

from accounts.hanging import (
    HangingRuleNotFound,
    hanging_owner,
    hanging_rule_delete,
    hanging_rule_save,
    hanging_rules_of,
)
from accounts.models import HangingRule
from rendering.hanging import RULES_PER_USER, HangingRuleError, hanging_parse

pytestmark = pytest.mark.django_db

RULE = {"match": {"modalities": ["CT"]}, "views": [{"kind": "axial", "layers": [{"modality": "CT"}]}]}


def test_rules_are_kept_in_order_and_listed_parsed(person):
    reader = person()
    first = hanging_rule_save(user=reader, name=" CT axial ", rule=RULE)
    second = hanging_rule_save(user=reader, name="CT again", rule={**RULE, "match": {"modalities": ["CT"],
                                                                                     "description": "chest"}})
    listed = hanging_rules_of(user=reader)
    assert [(saved.id, saved.name) for saved in listed] == [(first.id, "CT axial"), (second.id, "CT again")]
    assert listed[1].hanging.description == "chest"
    rows = HangingRule.objects.filter(user=reader)
    assert [row.position for row in rows] == [0, 1]
    assert rows[0].rule == hanging_parse(data=RULE).wire()
    assert rows[0].created_at is not None and rows[0].updated_at == rows[0].created_at


def test_a_malformed_rule_or_name_is_never_written(person):
    reader = person()
    with pytest.raises(HangingRuleError):
        hanging_rule_save(user=reader, name="bad", rule={**RULE, "views": []})
    with pytest.raises(HangingRuleError):
        hanging_rule_save(user=reader, name="   ", rule=RULE)
    assert not HangingRule.objects.exists()


def test_at_most_twenty_rules_per_user(person):
    reader, other = person(), person("dr.other")
    for number in range(RULES_PER_USER):
        hanging_rule_save(user=reader, name=f"rule {number}", rule=RULE)
    with pytest.raises(HangingRuleError, match="at most 20"):
        hanging_rule_save(user=reader, name="one too many", rule=RULE)
    hanging_rule_save(user=other, name="someone else's first", rule=RULE)
    hanging_rule_delete(user=reader, rule_id=hanging_rules_of(user=reader)[0].id)
    assert hanging_rule_save(user=reader, name="room again", rule=RULE).name == "room again"
    assert [saved.name for saved in hanging_rules_of(user=reader)][-1] == "room again"


def test_only_the_owner_deletes_a_rule_and_others_look_missing(person):
    reader, other = person(), person("dr.other")
    saved = hanging_rule_save(user=reader, name="mine", rule=RULE)
    with pytest.raises(HangingRuleNotFound):
        hanging_rule_delete(user=other, rule_id=saved.id)
    with pytest.raises(HangingRuleNotFound):
        hanging_rule_delete(user=reader, rule_id=saved.id + 1000)
    assert hanging_rules_of(user=other) == []
    hanging_rule_delete(user=reader, rule_id=saved.id)
    assert hanging_rules_of(user=reader) == []


def test_a_stored_rule_that_no_longer_parses_is_left_out(person, caplog):
    reader = person()
    HangingRule.objects.create(user=reader, name="edited by hand", position=0, rule={"views": "?"})
    kept = hanging_rule_save(user=reader, name="fine", rule=RULE)
    assert [saved.id for saved in hanging_rules_of(user=reader)] == [kept.id]
    assert "is skipped" in caplog.text


def test_only_an_account_owns_rules(person):
    from gateway.policy import CapabilitySketch

    reader = person()
    assert hanging_owner(reader) is reader
    assert hanging_owner(CapabilitySketch()) is None
    assert hanging_owner(None) is None
