"""Sealing per-share root keys and keying PINs under the ``share`` keyring."""

from __future__ import annotations

import hashlib
import hmac
import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.keys import KeyPurpose, UnknownKey, keyring
from gateway.sharing import conf

ROOT_KEY_BYTES = 32
_NONCE_BYTES = 12


class RootKeyUnavailable(LookupError):
    """The root key is gone (revoked), sealed under an unknown key, or tampered with."""


def _aad(share_id: str) -> bytes:
    return b"fusion-gateway share root key\0" + share_id.encode()


def root_key_new() -> bytes:
    return secrets.token_bytes(ROOT_KEY_BYTES)


def root_key_seal(share_id: str, root_key: bytes) -> tuple[str, bytes]:
    """AES-256-GCM under the active share key, bound to the share id; returns (kid, sealed)."""
    key = keyring(KeyPurpose.SHARE).active
    nonce = secrets.token_bytes(_NONCE_BYTES)
    return key.kid, nonce + AESGCM(key.material).encrypt(nonce, root_key, _aad(share_id))


def root_key_open(share_id: str, kid: str, sealed: bytes | memoryview | None) -> bytes:
    if not sealed or not kid:
        raise RootKeyUnavailable(share_id)
    sealed = bytes(sealed)
    try:
        key = keyring(KeyPurpose.SHARE).get(kid)
        return AESGCM(key.material).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:],
                                            _aad(share_id))
    except (UnknownKey, InvalidTag, ValueError) as exc:
        raise RootKeyUnavailable(share_id) from exc


def pin_new() -> str:
    return f"{secrets.randbelow(10 ** conf.PIN_DIGITS):0{conf.PIN_DIGITS}d}"


def pin_normalise(pin: object) -> str:
    """Digits only (people type ``1234 5678`` or ``1234-5678``)."""
    if not isinstance(pin, str):
        return ""
    return "".join(ch for ch in pin[:32] if ch in "0123456789")


def _pin_mac(key: bytes, share_id: str, pin: str) -> str:
    message = b"fusion-gateway share pin\0" + share_id.encode() + b"\0" + pin.encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def pin_protect(share_id: str, pin: str) -> tuple[str, str]:
    """A keyed MAC of the PIN (a PIN is too short for an unkeyed hash); returns (kid, mac)."""
    key = keyring(KeyPurpose.SHARE).active
    return key.kid, _pin_mac(key.material, share_id, pin)


def pin_matches(share_id: str, kid: str, mac: str, pin: str) -> bool:
    try:
        key = keyring(KeyPurpose.SHARE).get(kid)
    except UnknownKey:
        return False
    expected = _pin_mac(key.material, share_id, pin_normalise(pin))
    return hmac.compare_digest(expected.encode(), mac.encode())
