"""Signed checkpoints of the chain head, kept outside the audit database.

A checkpoint is ``(sequence, head hash, time)`` signed with Ed25519. Written
every minute by ``audit_checkpoint --every 60`` (and on demand), it lets
verification prove that no event up to ``sequence`` was removed or rebuilt,
even by someone who controls the whole audit database. Ship the files (or
the syslog copies) to another host so they are out of that person's reach.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import logging.handlers
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from django.conf import settings
from django.db import connections

from gateway import keys
from gateway.config import private_file_write
from gateway.routers import AUDIT

FORMAT = "fusion-gateway-audit-checkpoint/1"
logger = logging.getLogger("gateway.audit.checkpoints")


@dataclass(frozen=True)
class Checkpoint:
    sequence: int
    head_hash: str
    created_at: str
    kid: str
    signature: str
    path: Path | None = None

    def message(self) -> bytes:
        return _message(self.sequence, self.head_hash, self.created_at)

    def document(self) -> dict[str, object]:
        return {"format": FORMAT, "sequence": self.sequence, "head_hash": self.head_hash,
                "created_at": self.created_at, "kid": self.kid, "signature": self.signature}

    def signature_valid(self) -> bool:
        try:
            public = keys.audit_verify_key(self.kid)
            public.verify(base64.b64decode(self.signature, validate=True), self.message())
        except (keys.UnknownKey, InvalidSignature, ValueError):
            return False
        return True


class CheckpointUnreadable(ValueError):
    """A file in the checkpoint directory is not a well-formed checkpoint."""


def _message(sequence: int, head_hash: str, created_at: str) -> bytes:
    return f"{FORMAT}\n{sequence}\n{head_hash}\n{created_at}\n".encode()


def checkpoint_directory() -> Path:
    return Path(settings.AUDIT_CHECKPOINT_DIR)


def chain_head() -> tuple[int, str] | None:
    with connections[AUDIT].cursor() as cursor:
        cursor.execute(
            "SELECT sequence, event_hash FROM audit_auditevent ORDER BY sequence DESC LIMIT 1"
        )
        row = cursor.fetchone()
    return (int(row[0]), str(row[1])) if row else None


def checkpoint_write() -> Checkpoint | None:
    """Sign the current head; returns None when the log is empty or the head is already signed."""
    head = chain_head()
    if head is None:
        return None
    sequence, head_hash = head
    path = checkpoint_directory() / f"{sequence:012d}.json"
    if path.exists():
        return None
    kid, signer = keys.audit_signing_key()
    created_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    signature = base64.b64encode(signer.sign(_message(sequence, head_hash, created_at))).decode()
    checkpoint = Checkpoint(sequence, head_hash, created_at, kid, signature, path)
    text = json.dumps(checkpoint.document(), sort_keys=True)
    if not private_file_write(path, text.encode()):
        return None
    _ship_to_syslog(text)
    return checkpoint


def _ship_to_syslog(text: str) -> None:
    address = settings.AUDIT_CHECKPOINT_SYSLOG
    if not address:
        return
    host, _, port = address.rpartition(":")
    target: str | tuple[str, int] = address if address.startswith("/") else (host, int(port))
    handler = logging.handlers.SysLogHandler(
        address=target, facility=logging.handlers.SysLogHandler.LOG_AUTHPRIV
    )
    try:
        handler.emit(logging.makeLogRecord({"msg": f"fusion-gateway audit checkpoint {text}",
                                            "levelno": logging.WARNING, "levelname": "WARNING"}))
    finally:
        handler.close()


def checkpoint_read(path: Path) -> Checkpoint:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document["format"] != FORMAT:
            raise CheckpointUnreadable(f"{path.name}: unknown format {document['format']!r}")
        return Checkpoint(int(document["sequence"]), str(document["head_hash"]),
                          str(document["created_at"]), str(document["kid"]),
                          str(document["signature"]), path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointUnreadable(f"{path.name}: {exc}") from exc


def checkpoints_all() -> list[Checkpoint | CheckpointUnreadable]:
    directory = checkpoint_directory()
    if not directory.is_dir():
        return []
    found: list[Checkpoint | CheckpointUnreadable] = []
    for path in sorted(directory.glob("*.json")):
        try:
            found.append(checkpoint_read(path))
        except CheckpointUnreadable as problem:
            found.append(problem)
    return found
