"""The gateway's keys: where they come from, how they rotate.

Five purposes, each a keyring whose first key is active and whose older keys
stay readable so data written under them can still be opened:

``master``
    wraps the per-object data keys of encrypted DICOM storage (AES key wrap);
``pseudonym``
    HMAC-SHA256 key that turns (issuer, patient ID) into the clinical pseudonym;
``audit-signing``
    Ed25519 seed that signs audit checkpoints;
``share``
    encrypts the per-share macaroon root keys;
``otp``
    seals TOTP secrets at rest (AES-256-GCM) and keys the HMAC under which
    backup codes are stored (``accounts.crypto``).

Sources, first match wins: ``GATEWAY_<PURPOSE>_KEYS`` (``kid:base64,...``,
first active), a keyring file named by ``GATEWAY_<PURPOSE>_KEYS_FILE``, or
``KEYS_DIR/<purpose>.json``, generated on first run when
``GATEWAY_KEYS_GENERATE`` allows it. Key files and the directory must be
private to their owner (0600/0700) or the gateway refuses to start.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import os
import secrets
import threading
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap, aes_key_wrap
from django.conf import settings

from gateway.config import (
    ConfigurationError,
    private_file_check,
    private_file_replace,
    private_file_write,
)

KEY_BYTES = 32


class KeyPurpose(StrEnum):
    MASTER = "master"
    PSEUDONYM = "pseudonym"
    AUDIT_SIGNING = "audit-signing"
    SHARE = "share"
    OTP = "otp"

    @property
    def environment_name(self) -> str:
        return f"GATEWAY_{self.name}_KEYS"


class UnknownKey(LookupError):
    """Data names a key id that is not in its keyring (rotated out, or forged)."""


@dataclass(frozen=True)
class Key:
    kid: str
    material: bytes

    def __repr__(self) -> str:
        return f"Key(kid={self.kid!r})"


@dataclass(frozen=True)
class Keyring:
    purpose: KeyPurpose
    keys: tuple[Key, ...]
    source: str

    @property
    def active(self) -> Key:
        return self.keys[0]

    def get(self, kid: str) -> Key:
        for key in self.keys:
            if key.kid == kid:
                return key
        raise UnknownKey(f"no {self.purpose} key with id {kid!r}")


_cache: dict[KeyPurpose, Keyring] = {}
_lock = threading.Lock()


def keyring(purpose: KeyPurpose) -> Keyring:
    """Return the keyring for ``purpose``, loading or generating it once per process."""
    with _lock:
        if purpose not in _cache:
            _cache[purpose] = _keyring_load(purpose)
        return _cache[purpose]


def keyrings_load_all() -> None:
    """Load every keyring now, so a missing or unsafe key stops the process at start."""
    for purpose in KeyPurpose:
        keyring(purpose)


def keyrings_forget() -> None:
    """Drop cached keyrings (after rotation, and between tests)."""
    with _lock:
        _cache.clear()


def keyring_rotate(purpose: KeyPurpose) -> Key:
    """Make a new active key for ``purpose``; older keys stay for reading."""
    current = keyring(purpose)
    if not current.source.startswith("file:"):
        raise ConfigurationError(
            f"the {purpose} keyring comes from {current.source}; rotate it where it is kept"
        )
    path = Path(current.source.removeprefix("file:"))
    fresh = _key_generate()
    private_file_replace(path, _keyring_encode(purpose, (fresh, *current.keys)))
    keyrings_forget()
    return fresh


def _keyring_load(purpose: KeyPurpose) -> Keyring:
    inline = os.environ.get(purpose.environment_name)
    if inline:
        return Keyring(purpose, _keys_parse_inline(purpose, inline), "environment")
    named_file = os.environ.get(f"{purpose.environment_name}_FILE")
    if named_file:
        return _keyring_read(purpose, Path(named_file))
    directory = Path(settings.KEYS_DIR)
    path = directory / f"{purpose}.json"
    if not path.exists():
        if not settings.KEYS_GENERATE:
            raise ConfigurationError(
                f"no {purpose} key: set {purpose.environment_name} or "
                f"{purpose.environment_name}_FILE"
            )
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        private_file_write(path, _keyring_encode(purpose, (_key_generate(),)))
    private_file_check(directory)
    return _keyring_read(purpose, path)


def _keyring_read(purpose: KeyPurpose, path: Path) -> Keyring:
    if not path.is_file():
        raise ConfigurationError(f"{purpose} keyring {path} is not a file")
    private_file_check(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        if document["purpose"] != purpose.value:
            raise ConfigurationError(f"{path} holds {document['purpose']} keys, not {purpose}")
        keys = tuple(
            Key(entry["kid"], _material_decode(entry["material"])) for entry in document["keys"]
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigurationError(f"{purpose} keyring {path} is malformed: {exc}") from exc
    if not keys:
        raise ConfigurationError(f"{purpose} keyring {path} holds no key")
    return Keyring(purpose, keys, f"file:{path}")


def _keys_parse_inline(purpose: KeyPurpose, value: str) -> tuple[Key, ...]:
    keys = []
    for item in value.split(","):
        kid, separator, encoded = item.strip().partition(":")
        if not separator or not kid:
            raise ConfigurationError(f"{purpose.environment_name} must be kid:base64[,kid:base64]")
        keys.append(Key(kid, _material_decode(encoded)))
    return tuple(keys)


def _material_decode(encoded: str) -> bytes:
    try:
        material = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise ConfigurationError("key material is not valid base64") from exc
    if len(material) != KEY_BYTES:
        raise ConfigurationError(f"a key must be {KEY_BYTES} bytes, not {len(material)}")
    return material


def _key_generate() -> Key:
    created = dt.datetime.now(dt.UTC)
    return Key(f"{created:%Y%m%d}-{secrets.token_hex(4)}", secrets.token_bytes(KEY_BYTES))


def _keyring_encode(purpose: KeyPurpose, keys: tuple[Key, ...]) -> bytes:
    document = {
        "purpose": purpose.value,
        "keys": [
            {"kid": key.kid, "material": base64.b64encode(key.material).decode()} for key in keys
        ],
    }
    return json.dumps(document, indent=2).encode()


def data_key_wrap(data_key: bytes) -> tuple[str, bytes]:
    """Wrap a data key under the active master key (RFC 3394); returns (kid, wrapped)."""
    master = keyring(KeyPurpose.MASTER).active
    return master.kid, aes_key_wrap(master.material, data_key)


def data_key_unwrap(kid: str, wrapped: bytes) -> bytes:
    """Unwrap a data key; raises :class:`UnknownKey` or ``InvalidUnwrap`` on tampering."""
    master = keyring(KeyPurpose.MASTER).get(kid)
    return aes_key_unwrap(master.material, wrapped)


def audit_signing_key() -> tuple[str, Ed25519PrivateKey]:
    key = keyring(KeyPurpose.AUDIT_SIGNING).active
    return key.kid, Ed25519PrivateKey.from_private_bytes(key.material)


def audit_verify_key(kid: str) -> Ed25519PublicKey:
    key = keyring(KeyPurpose.AUDIT_SIGNING).get(kid)
    return Ed25519PrivateKey.from_private_bytes(key.material).public_key()


__all__ = [
    "InvalidUnwrap",
    "Key",
    "KeyPurpose",
    "Keyring",
    "UnknownKey",
    "audit_signing_key",
    "audit_verify_key",
    "data_key_unwrap",
    "data_key_wrap",
    "keyring",
    "keyring_rotate",
    "keyrings_forget",
    "keyrings_load_all",
]
