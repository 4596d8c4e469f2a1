"""Recomputing the chain: the answer to "has anyone edited the audit log?"."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from django.db import connections

from gateway import keys
from gateway.audit import chain
from gateway.audit.checkpoints import Checkpoint, CheckpointUnreadable, checkpoints_all
from gateway.routers import AUDIT

_COLUMNS = ("sequence", "event_id", "occurred_at", "actor", "actor_role", "acting_for", "action",
            "outcome", "patient_pseudonym", "study", "source_ip", "details", "previous_hash",
            "event_hash", "seal_kid", "seal")
_BATCH = 5000


@dataclass
class VerificationReport:
    ok: bool = True
    events: int = 0
    head_sequence: int = 0
    head_hash: str = chain.GENESIS_HASH
    first_bad_sequence: int | None = None
    problem: str = ""
    checkpoints: int = 0
    latest_checkpoint: int | None = None
    verified_at: str = field(
        default_factory=lambda: dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

    def fail(self, sequence: int, problem: str) -> None:
        if self.first_bad_sequence is None or sequence < self.first_bad_sequence:
            self.ok, self.first_bad_sequence, self.problem = False, sequence, problem

    def summary(self) -> dict[str, Any]:
        return {"ok": self.ok, "events": self.events, "through_sequence": self.head_sequence,
                "first_bad_sequence": self.first_bad_sequence, "problem": self.problem,
                "checkpoints": self.checkpoints, "latest_checkpoint": self.latest_checkpoint}


def _rows() -> Iterator[tuple[Any, ...]]:
    with connections[AUDIT].cursor() as cursor:
        cursor.execute(f"SELECT {', '.join(_COLUMNS)} FROM audit_auditevent ORDER BY sequence")  # noqa: S608
        while batch := cursor.fetchmany(_BATCH):
            yield from batch


def _timestamp(value: Any) -> str:
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return chain.timestamp_canonical(value)


def _event_id(value: Any) -> str:
    return value.hex if isinstance(value, uuid.UUID) else str(value)


def _seal_keys() -> dict[str, bytes]:
    ring = keys.keyring(keys.KeyPurpose.AUDIT_SIGNING)
    return {key.kid: chain.seal_key(key.kid)[1] for key in ring.keys}


def chain_verify() -> VerificationReport:
    """Recompute every hash and seal in sequence order, then check every checkpoint.

    Reports the first sequence number at which the log stops being the one
    the gateway wrote: an edited field, a missing, swapped, inserted or
    forged row, or a tail cut off below a signed checkpoint.
    """
    report = VerificationReport()
    checkpoints = checkpoints_all()
    wanted = {c.sequence for c in checkpoints if isinstance(c, Checkpoint)}
    hashes_at: dict[int, str] = {}
    _verify_rows(report, wanted, hashes_at)
    _verify_checkpoints(report, checkpoints, hashes_at)
    return report


def _verify_rows(report: VerificationReport, wanted: set[int], hashes_at: dict[int, str]) -> None:
    seal_keys = _seal_keys()
    previous_hash = chain.GENESIS_HASH
    expected = 1
    for row in _rows():
        values = dict(zip(_COLUMNS, row, strict=True))
        sequence = int(values["sequence"])
        if sequence != expected:
            report.fail(expected, f"event {expected} is missing (next stored is {sequence})")
        stored_hash = str(values["event_hash"])
        if values["previous_hash"] != previous_hash:
            report.fail(sequence, f"event {sequence} does not follow event {sequence - 1}")
        fields = {**values, "sequence": sequence, "event_id": _event_id(values["event_id"]),
                  "occurred_at": _timestamp(values["occurred_at"])}
        if chain.event_hash(fields) != stored_hash:
            report.fail(sequence, f"event {sequence} was altered (its hash does not match)")
        key = seal_keys.get(str(values["seal_kid"]))
        if key is None or not chain.seal_matches(key, stored_hash, str(values["seal"])):
            report.fail(sequence, f"event {sequence} carries no valid seal (forged or rebuilt)")
        if sequence in wanted:
            hashes_at[sequence] = stored_hash
        previous_hash, expected = stored_hash, sequence + 1
        report.events += 1
        report.head_sequence, report.head_hash = sequence, stored_hash


def _verify_checkpoints(report: VerificationReport,
                        checkpoints: list[Checkpoint | CheckpointUnreadable],
                        hashes_at: dict[int, str]) -> None:
    for checkpoint in checkpoints:
        if isinstance(checkpoint, CheckpointUnreadable):
            report.fail(report.head_sequence + 1, f"unreadable checkpoint {checkpoint}")
            continue
        report.checkpoints += 1
        report.latest_checkpoint = max(report.latest_checkpoint or 0, checkpoint.sequence)
        if not checkpoint.signature_valid():
            report.fail(checkpoint.sequence,
                        f"checkpoint {checkpoint.sequence} has an invalid signature")
        elif checkpoint.sequence > report.head_sequence:
            report.fail(report.head_sequence + 1,
                        f"the log ends at event {report.head_sequence} but a signed checkpoint "
                        f"vouches for event {checkpoint.sequence}: the tail was removed")
        elif hashes_at.get(checkpoint.sequence) != checkpoint.head_hash:
            report.fail(checkpoint.sequence,
                        f"event {checkpoint.sequence} differs from its signed checkpoint")
