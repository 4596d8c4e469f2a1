"""A reader's hanging rules in the database: checked before every write, at most 20, their own only."""

from __future__ import annotations

import json

import pytest

from accounts.hanging import (
    HOSPITAL_RULES,
    HangingRuleNotFound,
    hanging_hospital_delete,
    hanging_hospital_rules,
    hanging_hospital_save,
    hanging_hospital_update,
    hanging_owner,
    hanging_rule_delete,
    hanging_rule_save,
    hanging_rule_update,
    hanging_rules_for,
    hanging_rules_of,
)
from accounts.models import HangingRule
from rendering.hanging import RULES_PER_USER, HangingRuleError, hanging_parse
from tests.conftest import ZONES

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


# --- hospital-wide rules -------------------------------------------------------------------------

PT_RULE = {"match": {"modalities": ["PT"]}, "views": [{"kind": "coronal", "layers": [{"modality": "PT"}]}]}


def _layout_events():
    from gateway.audit.models import AuditEvent

    return list(AuditEvent.objects.filter(action="admin.layout").order_by("sequence"))


@pytest.mark.django_db(databases=ZONES)
def test_hospital_rules_come_after_the_reader_s_own_and_each_change_is_audited(
        person, django_capture_on_commit_callbacks):
    reader, it = person(), person("it.admin", "it_admin")
    with django_capture_on_commit_callbacks(execute=True):
        hospital = hanging_hospital_save(actor=it, name="PET coronal", rule=PT_RULE)
    own = hanging_rule_save(user=reader, name="CT axial", rule=RULE)
    assert [(saved.id, saved.hospital) for saved in hanging_rules_for(user=reader)] == [
        (own.id, False), (hospital.id, True)]
    assert [saved.id for saved in hanging_rules_of(user=reader)] == [own.id]
    assert [saved.id for saved in hanging_hospital_rules()] == [hospital.id]
    assert HangingRule.objects.get(pk=hospital.id).user is None
    with django_capture_on_commit_callbacks(execute=True):
        hanging_hospital_update(actor=it, rule_id=hospital.id, name="PET coronal 2", rule=PT_RULE)
        hanging_hospital_delete(actor=it, rule_id=hospital.id)
    events = _layout_events()
    assert [event.actor for event in events] == ["it.admin"] * 3
    assert [json.loads(event.details)["change"] for event in events] == ["added", "changed", "deleted"]
    assert json.loads(events[0].details)["rule"] == hanging_parse(data=PT_RULE).wire()
    assert hanging_rules_for(user=reader) == [hanging_rules_of(user=reader)[0]]


@pytest.mark.django_db(databases=ZONES)
def test_a_reader_cannot_reach_a_hospital_rule_nor_the_hospital_a_reader_s(person):
    reader, it = person(), person("it.admin", "it_admin")
    hospital = hanging_hospital_save(actor=it, name="PET", rule=PT_RULE)
    own = hanging_rule_save(user=reader, name="mine", rule=RULE)
    with pytest.raises(HangingRuleNotFound):
        hanging_rule_delete(user=reader, rule_id=hospital.id)
    with pytest.raises(HangingRuleNotFound):
        hanging_rule_update(user=reader, rule_id=hospital.id, name="taken", rule=RULE)
    with pytest.raises(HangingRuleNotFound):
        hanging_hospital_delete(actor=it, rule_id=own.id)
    with pytest.raises(HangingRuleNotFound):
        hanging_hospital_update(actor=it, rule_id=own.id, name="taken", rule=PT_RULE)
    assert HangingRule.objects.get(pk=hospital.id).name == "PET"
    assert HangingRule.objects.get(pk=own.id).name == "mine"


@pytest.mark.django_db(databases=ZONES)
def test_hospital_rules_are_checked_and_bounded(person):
    it = person("it.admin", "it_admin")
    with pytest.raises(HangingRuleError):
        hanging_hospital_save(actor=it, name="bad", rule={**PT_RULE, "extra": 1})
    for number in range(HOSPITAL_RULES):
        hanging_hospital_save(actor=it, name=f"rule {number}", rule=PT_RULE)
    with pytest.raises(HangingRuleError, match="at most 40 hospital-wide"):
        hanging_hospital_save(actor=it, name="one too many", rule=PT_RULE)
    first = hanging_hospital_rules()[0]
    with pytest.raises(HangingRuleError):
        hanging_hospital_update(actor=it, rule_id=first.id, name="x", rule={"views": []})
    assert HangingRule.objects.get(pk=first.id).name == "rule 0"


def test_a_reader_s_rule_is_edited_in_place_checked_as_a_new_one(person):
    reader = person()
    saved = hanging_rule_save(user=reader, name="CT", rule=RULE)
    with pytest.raises(HangingRuleError):
        hanging_rule_update(user=reader, rule_id=saved.id, name="CT", rule={**RULE, "views": []})
    hanging_rule_update(user=reader, rule_id=saved.id, name=" PET ", rule=PT_RULE)
    [listed] = hanging_rules_of(user=reader)
    assert (listed.id, listed.name) == (saved.id, "PET")
    assert listed.hanging.wire() == hanging_parse(data=PT_RULE).wire()
