"""The "Layouts and rules" pages: a reader edits their own rules and grids as JSON, sees the hospital's
read-only; IT edits the hospital's, audited. A refusal keeps what was typed and changes nothing."""

from __future__ import annotations

import json

import pytest
from django.urls import reverse

from accounts.grids import grid_hospital_save, grid_save, grids_of
from accounts.hanging import hanging_hospital_save, hanging_rule_save, hanging_rules_of
from accounts.models import GridLayout, HangingRule, User
from gateway.audit.models import AuditEvent
from rendering.grids import Grid
from tests.conftest import ZONES

pytestmark = pytest.mark.django_db(databases=ZONES)

RULE = {"match": {"modalities": ["CT"]}, "views": [{"kind": "axial", "layers": [{"modality": "CT"}]}]}
PT_RULE = {"match": {"modalities": ["PT"]}, "views": [{"kind": "coronal", "layers": [{"modality": "PT"}]}]}
PAGE = reverse("rendering:layouts")
HOSPITAL = reverse("rendering:layouts_hospital")


def _post(client, url, **fields):
    return client.post(url, fields)


def test_a_doctor_sees_own_rules_and_grids_as_json_and_the_hospital_s_read_only(client, signed_in):
    doctor = signed_in("doctor")
    admin = User.objects.create_user(username="it.admin", role="it_admin")
    hanging_rule_save(user=doctor, name="CT axial", rule=RULE)
    grid_save(user=doctor, name="Two by two", grid=Grid.even(2, 2))
    hanging_hospital_save(actor=admin, name="Hospital PET", rule=PT_RULE)
    grid_hospital_save(actor=admin, name="Hospital wide", grid=Grid.even(1, 3))
    page = client.get(PAGE)
    assert page.status_code == 200
    text = page.content.decode()
    assert "CT axial" in text and "Two by two" in text
    assert "Hospital PET" in text and "Hospital wide" in text
    assert "&quot;modalities&quot;: [\n      &quot;CT&quot;" in text
    assert text.count('name="op" value="save"') == 2  # the doctor's own two; the hospital's have no form


def test_invalid_json_or_rule_is_refused_next_to_the_field_keeping_what_was_typed(client, signed_in):
    doctor = signed_in("doctor")
    saved = hanging_rule_save(user=doctor, name="CT axial", rule=RULE)
    typed = '{"match": {"modalities": ["CT"]}, "views": ['
    answer = _post(client, PAGE, kind="rule", op="save", item=saved.id, name="CT axial", text=typed)
    assert answer.status_code == 200
    text = answer.content.decode()
    assert "This is not JSON" in text and "Nothing was changed" in text
    assert '{&quot;match&quot;: {&quot;modalities&quot;: [&quot;CT&quot;]}, &quot;views&quot;: [' in text
    deep = "[" * 8000 + "]" * 8000  # JSON nested deeper than Python's parser goes: refused, not a 500
    answer = _post(client, PAGE, kind="rule", op="save", item=saved.id, name="CT axial", text=deep)
    assert answer.status_code == 200 and "This is not JSON" in answer.content.decode()
    unknown = json.dumps({**RULE, "colour": "red"})
    answer = _post(client, PAGE, kind="rule", op="save", item=saved.id, name="CT axial", text=unknown)
    assert "unknown field(s): colour" in answer.content.decode()
    assert HangingRule.objects.get(pk=saved.id).rule == RULE | {"views": [
        {"kind": "axial", "layers": [{"modality": "CT", "opacity": 1.0}]}]}


def test_a_valid_edit_is_saved_and_the_page_redirects(client, signed_in):
    doctor = signed_in("doctor")
    saved = hanging_rule_save(user=doctor, name="CT axial", rule=RULE)
    answer = _post(client, PAGE, kind="rule", op="save", item=saved.id, name="PET coronal",
                   text=json.dumps(PT_RULE))
    assert answer.status_code == 302 and answer["Location"] == PAGE
    [listed] = hanging_rules_of(user=doctor)
    assert (listed.id, listed.name, listed.hanging.modalities) == (saved.id, "PET coronal", ("PT",))
    assert "Saved." in client.get(PAGE).content.decode()


def test_a_doctor_adds_and_deletes_a_grid(client, signed_in):
    doctor = signed_in("doctor")
    grid = {"rows": 2, "columns": 2, "cells": [[0, 0, 2, 1], [0, 1, 1, 1], [1, 1, 1, 1]]}
    assert _post(client, PAGE, kind="grid", op="add", name="merged", text=json.dumps(grid)).status_code == 302
    [saved] = grids_of(user=doctor)
    assert saved["grid"] == grid and not saved["hospital"]
    overlapping = {"rows": 1, "columns": 2, "cells": [[0, 0, 1, 2], [0, 1, 1, 1]]}
    answer = _post(client, PAGE, kind="grid", op="add", name="bad", text=json.dumps(overlapping))
    assert "two grid cells overlap" in answer.content.decode()
    assert _post(client, PAGE, kind="grid", op="delete", item=saved["id"]).status_code == 302
    assert grids_of(user=doctor) == []
    assert "Deleted." in client.get(PAGE).content.decode()


def test_a_doctor_cannot_change_a_hospital_rule_or_grid(client, signed_in):
    signed_in("doctor")
    admin = User.objects.create_user(username="it.admin", role="it_admin")
    rule = hanging_hospital_save(actor=admin, name="Hospital PET", rule=PT_RULE)
    grid = grid_hospital_save(actor=admin, name="Hospital wide", grid=Grid.even(1, 3))
    # On the reader's page a hospital item is no item of theirs ...
    assert _post(client, PAGE, kind="rule", op="save", item=rule.id, name="mine now",
                 text=json.dumps(RULE)).status_code == 404
    assert _post(client, PAGE, kind="rule", op="delete", item=rule.id).status_code == 404
    assert _post(client, PAGE, kind="grid", op="delete", item=grid["id"]).status_code == 404
    # ... and IT's page is refused (and the refusal audited).
    before = AuditEvent.objects.count()
    assert _post(client, HOSPITAL, kind="rule", op="delete", item=rule.id).status_code == 403
    assert client.get(HOSPITAL).status_code == 403
    assert list(AuditEvent.objects.order_by("sequence").values_list("action", "outcome"))[before:] == [
        ("admin.layout", "denied")] * 2
    assert HangingRule.objects.get(pk=rule.id).name == "Hospital PET"
    assert GridLayout.objects.filter(pk=grid["id"]).exists()


def test_it_edits_hospital_rules_and_grids_audited(client, signed_in, django_capture_on_commit_callbacks):
    signed_in("it_admin", username="it.linus")
    assert client.get(HOSPITAL).status_code == 200
    assert client.get(PAGE).status_code == 403  # IT reads no images, and keeps no rules of its own
    with django_capture_on_commit_callbacks(execute=True):
        assert _post(client, HOSPITAL, kind="rule", op="add", name="PET coronal",
                     text=json.dumps(PT_RULE)).status_code == 302
    rule = HangingRule.objects.get(user__isnull=True)
    with django_capture_on_commit_callbacks(execute=True):
        refused = _post(client, HOSPITAL, kind="rule", op="save", item=rule.pk, name="PET", text="[]")
        assert refused.status_code == 200 and "must be an object" in refused.content.decode()
        assert _post(client, HOSPITAL, kind="rule", op="save", item=rule.pk, name="PET",
                     text=json.dumps(PT_RULE)).status_code == 302
        assert _post(client, HOSPITAL, kind="grid", op="add", name="Wide",
                     text=json.dumps(Grid.even(1, 3).wire())).status_code == 302
        assert _post(client, HOSPITAL, kind="rule", op="delete", item=rule.pk).status_code == 302
    events = AuditEvent.objects.filter(action="admin.layout").order_by("sequence")
    details = [json.loads(event.details) for event in events]
    assert [(event.actor, event.outcome, detail["change"], detail["what"])
            for event, detail in zip(events, details, strict=True)] == [
        ("it.linus", "success", "added", "hanging rule"), ("it.linus", "success", "changed", "hanging rule"),
        ("it.linus", "success", "added", "grid"), ("it.linus", "success", "deleted", "hanging rule")]
    assert GridLayout.objects.get(user__isnull=True).name == "Wide"


def test_a_malformed_post_is_not_found(client, signed_in):
    signed_in("doctor")
    for fields in ({"kind": "x", "op": "add"}, {"kind": "rule", "op": "save"},
                   {"kind": "rule", "op": "add", "item": "3"}, {"kind": "grid", "op": "drop", "item": "1"}):
        assert client.post(PAGE, fields).status_code == 404
