"""Appending to the chain, and detecting every kind of tampering."""

import itertools
import threading

import pytest
from django.db import IntegrityError, OperationalError, connections, transaction

from gateway.audit import append_only, chain
from gateway.audit.catalogue import Action, Outcome
from gateway.audit.checkpoints import checkpoint_write
from gateway.audit.models import AuditEvent
from gateway.audit.services import audit_outbox_drain, audit_outbox_pending, audit_record
from gateway.audit.verification import chain_verify
from gateway.models import AuditOutbox
from tests.conftest import ZONES

pytestmark = pytest.mark.django_db(databases=ZONES)

MUTABLE_FIELDS = ["event_id", "occurred_at", "actor", "actor_role", "acting_for", "action",
                  "outcome", "patient_pseudonym", "study", "source_ip", "details",
                  "previous_hash", "event_hash", "seal_kid", "seal"]


def _record(count: int, **overrides) -> None:
    for index in range(count):
        audit_record(**{
            "actor": f"user{index % 3}", "actor_role": "doctor", "action": Action.STUDY_OPEN,
            "outcome": Outcome.SUCCESS, "patient_pseudonym": f"{index:064x}",
            "study": f"2.25.{index}", "source_ip": f"10.0.0.{index % 250}",
            "details": {"index": index}, **overrides})


def _tamper(*statements: tuple[str, list]) -> None:
    """What a DBA could do: lift the triggers, change rows, put the triggers back."""
    connection = connections["audit"]
    with connection.cursor() as cursor:
        for statement in append_only.statements(connection, enable=False):
            cursor.execute(statement)
        for sql, params in statements:
            cursor.execute(sql, params)
        for statement in append_only.statements(connection, enable=True):
            cursor.execute(statement)


def test_events_are_chained_in_order(keys_dir):
    _record(5)
    events = list(AuditEvent.objects.order_by("sequence"))
    assert [event.sequence for event in events] == [1, 2, 3, 4, 5]
    assert events[0].previous_hash == chain.GENESIS_HASH
    for before, after in itertools.pairwise(events):
        assert after.previous_hash == before.event_hash
    report = chain_verify()
    assert report.ok and report.events == 5 and report.head_sequence == 5


def test_an_empty_log_verifies(keys_dir):
    report = chain_verify()
    assert report.ok and report.events == 0


def test_the_encoding_is_length_prefixed():
    base = {name: "" for name in chain.HASHED_FIELDS}
    shifted_left = {**base, "actor": "ab", "actor_role": "c"}
    shifted_right = {**base, "actor": "a", "actor_role": "bc"}
    assert chain.event_hash(shifted_left) != chain.event_hash(shifted_right)


def test_details_are_canonical_json():
    assert chain.details_canonical({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
    assert chain.details_canonical(None) == ""
    with pytest.raises(ValueError):
        chain.details_canonical({"x": float("nan")})


def test_unknown_actions_and_outcomes_are_refused(keys_dir):
    with pytest.raises(ValueError):
        audit_record(actor="x", action="study.peek", outcome=Outcome.SUCCESS)
    with pytest.raises(ValueError):
        audit_record(actor="x", action=Action.STUDY_OPEN, outcome="meh")
    assert AuditEvent.objects.count() == 0


def test_the_database_refuses_updates_and_deletes(keys_dir):
    _record(2)
    with pytest.raises((IntegrityError, OperationalError, Exception)) as refused, \
            transaction.atomic(using="audit"):
        AuditEvent.objects.filter(sequence=1).update(actor="mallory")
    assert append_only.REFUSAL in str(refused.value)
    with pytest.raises(Exception, match=append_only.REFUSAL), transaction.atomic(using="audit"):
        AuditEvent.objects.filter(sequence=2).delete()
    assert AuditEvent.objects.get(sequence=1).actor == "user0"
    assert AuditEvent.objects.count() == 2


@pytest.mark.parametrize("field", MUTABLE_FIELDS)
@pytest.mark.parametrize("target", [1, 4, 8])
def test_editing_any_field_of_any_row_is_detected(keys_dir, field, target):
    _record(8)
    replacement = {"event_id": "f" * 32, "occurred_at": "2001-01-01 00:00:00", "seal_kid": "kid-x",
                   "previous_hash": "9" * 64, "event_hash": "9" * 64, "seal": "9" * 64,
                   "patient_pseudonym": "9" * 64}.get(field, "tampered")
    _tamper((f"UPDATE audit_auditevent SET {field} = %s WHERE sequence = %s",  # noqa: S608
             [replacement, target]))
    report = chain_verify()
    assert not report.ok
    assert report.first_bad_sequence == target


@pytest.mark.parametrize("target", [1, 5, 9])
def test_deleting_a_row_is_detected(keys_dir, target):
    _record(10)
    _tamper(("DELETE FROM audit_auditevent WHERE sequence = %s", [target]))
    report = chain_verify()
    assert not report.ok
    assert report.first_bad_sequence == target


def test_swapping_two_rows_is_detected(keys_dir):
    _record(6)
    _tamper(("UPDATE audit_auditevent SET sequence = -1 WHERE sequence = 3", []),
            ("UPDATE audit_auditevent SET sequence = 3 WHERE sequence = 4", []),
            ("UPDATE audit_auditevent SET sequence = 4 WHERE sequence = -1", []))
    report = chain_verify()
    assert not report.ok
    assert report.first_bad_sequence == 3


def test_truncating_the_tail_below_a_checkpoint_is_detected(keys_dir, checkpoint_dir):
    _record(6)
    assert checkpoint_write().sequence == 6
    _tamper(("DELETE FROM audit_auditevent WHERE sequence > %s", [4]))
    report = chain_verify()
    assert not report.ok
    assert report.first_bad_sequence == 5
    assert "tail was removed" in report.problem


def test_a_rebuilt_chain_is_caught_by_the_seal_and_the_checkpoint(keys_dir, checkpoint_dir):
    """An attacker recomputes every hash after an edit; without the seal key the seals fail."""
    _record(5)
    checkpoint_write()
    rows = list(AuditEvent.objects.order_by("sequence").values())
    rows[1]["actor"] = "mallory"
    previous = chain.GENESIS_HASH
    updates = []
    for row in rows:
        fields = {**row, "event_id": row["event_id"].hex, "previous_hash": previous,
                  "occurred_at": chain.timestamp_canonical(row["occurred_at"])}
        row["event_hash"] = chain.event_hash(fields)
        updates.append(("UPDATE audit_auditevent SET actor = %s, previous_hash = %s, "
                        "event_hash = %s WHERE sequence = %s",
                        [row["actor"], previous, row["event_hash"], row["sequence"]]))
        previous = row["event_hash"]
    _tamper(*updates)
    report = chain_verify()
    assert not report.ok
    assert report.first_bad_sequence == 2


@pytest.mark.parametrize("position", ["middle", "end"])
def test_inserting_a_forged_row_is_detected(keys_dir, position):
    _record(4)
    last = AuditEvent.objects.order_by("-sequence").first()
    forged_sequence = 5 if position == "end" else 3
    if position == "middle":
        _tamper(*[("UPDATE audit_auditevent SET sequence = sequence + 10 WHERE sequence >= 3", []),
                  ("UPDATE audit_auditevent SET sequence = sequence - 9 WHERE sequence >= 13", [])])
    fields = {
        "sequence": forged_sequence, "event_id": "e" * 32,
        "occurred_at": chain.timestamp_canonical(last.occurred_at), "actor": "mallory",
        "actor_role": "doctor", "acting_for": "", "action": "study.open", "outcome": "success",
        "patient_pseudonym": "", "study": "", "source_ip": "", "details": "",
        "previous_hash": last.event_hash if position == "end" else
        AuditEvent.objects.get(sequence=2).event_hash,
    }
    forged_hash = chain.event_hash(fields)
    AuditEvent.objects.create(**{**fields, "event_id": "e" * 32,
                                 "occurred_at": last.occurred_at},
                              event_hash=forged_hash, seal_kid=last.seal_kid, seal="ab" * 32)
    report = chain_verify()
    assert not report.ok
    assert report.first_bad_sequence == forged_sequence


def test_a_forged_checkpoint_is_detected(keys_dir, checkpoint_dir):
    _record(3)
    path = checkpoint_write().path
    path.write_text(path.read_text().replace('"sequence": 3', '"sequence": 2'))
    report = chain_verify()
    assert not report.ok
    assert "invalid signature" in report.problem


def test_an_unreadable_checkpoint_is_reported(keys_dir, checkpoint_dir):
    _record(2)
    checkpoint_write()
    (checkpoint_dir / "000000000009.json").write_text("{not json")
    report = chain_verify()
    assert not report.ok
    assert "unreadable checkpoint" in report.problem


def test_a_checkpoint_is_written_once_per_head(keys_dir, checkpoint_dir):
    assert checkpoint_write() is None
    _record(2)
    first = checkpoint_write()
    assert first is not None and first.signature_valid()
    assert checkpoint_write() is None
    _record(1)
    assert checkpoint_write().sequence == 3
    assert sorted(p.name for p in checkpoint_dir.iterdir()) == ["000000000002.json",
                                                                "000000000003.json"]


def test_events_inside_a_clinical_transaction_wait_in_the_outbox(
        keys_dir, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True), transaction.atomic():
        audit_record(actor="dr", action=Action.ADMIN_USER, outcome=Outcome.SUCCESS)
        assert AuditOutbox.objects.count() == 1
        assert AuditEvent.objects.count() == 0
    assert AuditOutbox.objects.count() == 0
    assert AuditEvent.objects.get().action == "admin.user"


def test_a_rolled_back_change_leaves_no_event(keys_dir, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=True), pytest.raises(RuntimeError), \
            transaction.atomic():
        audit_record(actor="dr", action=Action.ADMIN_USER, outcome=Outcome.SUCCESS)
        raise RuntimeError("the change failed")
    assert AuditOutbox.objects.count() == 0
    assert AuditEvent.objects.count() == 0


def test_an_interrupted_drain_appends_each_event_exactly_once(keys_dir, monkeypatch):
    with transaction.atomic():
        for _ in range(3):
            audit_record(actor="dr", action=Action.ADMIN_ROLE, outcome=Outcome.SUCCESS)
    assert audit_outbox_pending() == 3

    from django.db.models.query import QuerySet
    real_delete = QuerySet.delete
    calls = {"n": 0}

    def crash_after_first_append(self):
        calls["n"] += 1
        raise ConnectionError("process killed between append and outbox delete")

    monkeypatch.setattr(QuerySet, "delete", crash_after_first_append)
    with pytest.raises(ConnectionError):
        audit_outbox_drain()
    monkeypatch.setattr(QuerySet, "delete", real_delete)

    assert AuditEvent.objects.count() == 1
    assert audit_outbox_drain() == 3
    assert AuditEvent.objects.count() == 3
    assert audit_outbox_pending() == 0
    assert chain_verify().ok


@pytest.mark.django_db(databases=ZONES, transaction=True)
def test_parallel_appends_form_one_unbroken_chain(keys_dir):
    errors = []

    def append_many():
        try:
            _record(25)
        except Exception as exc:
            errors.append(exc)
        finally:
            for connection in connections.all():
                connection.close()

    threads = [threading.Thread(target=append_many) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    report = chain_verify()
    assert report.ok, report.problem
    assert report.events == 100
