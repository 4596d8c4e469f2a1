"""The tamper-evident encoding of one audit event.

``event_hash = SHA-256(domain ‖ len‖field ‖ len‖field ‖ ...)`` over every
field of the event and the previous event's hash, each prefixed by its
8-byte big-endian length so no two different events encode alike. The hash
chain alone is public arithmetic: anyone with write access could rebuild it.
The *seal* — HMAC-SHA256 of the hash under a key derived from the audit
signing key, which no database holds — is what makes a forged or rebuilt
row detectable; signed checkpoints outside the database catch truncation.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import json
import struct
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway import keys

DOMAIN = b"fusion-gateway/audit-event/v1"
GENESIS_HASH = "0" * 64
HASHED_FIELDS = (
    "sequence", "event_id", "occurred_at", "actor", "actor_role", "acting_for", "action",
    "outcome", "patient_pseudonym", "study", "source_ip", "details", "previous_hash",
)
_LENGTH = struct.Struct(">Q")


def timestamp_canonical(moment: dt.datetime) -> str:
    if moment.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware")
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def details_canonical(details: Mapping[str, Any] | None) -> str:
    """Details as JSON with sorted keys and no whitespace, so the bytes are reproducible."""
    if not details:
        return ""
    return json.dumps(details, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False, default=str)


def event_hash(fields: Mapping[str, Any]) -> str:
    """Hash the event ``fields`` (strings, already canonical) chained to ``previous_hash``."""
    digest = hashlib.sha256(DOMAIN)
    for name in HASHED_FIELDS:
        encoded = str(fields[name]).encode("utf-8")
        digest.update(_LENGTH.pack(len(encoded)))
        digest.update(encoded)
    return digest.hexdigest()


@functools.lru_cache(maxsize=8)
def _seal_key(kid: str, material: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"fusion-gateway audit event seal " + kid.encode()).derive(material)


def seal_key(kid: str | None = None) -> tuple[str, bytes]:
    ring = keys.keyring(keys.KeyPurpose.AUDIT_SIGNING)
    key = ring.active if kid is None else ring.get(kid)
    return key.kid, _seal_key(key.kid, key.material)


def seal(key: bytes, hash_hex: str) -> str:
    return hmac.new(key, bytes.fromhex(hash_hex), hashlib.sha256).hexdigest()


def seal_matches(key: bytes, hash_hex: str, claimed: str) -> bool:
    try:
        expected = seal(key, hash_hex)
    except ValueError:
        return False
    return hmac.compare_digest(expected, claimed)
