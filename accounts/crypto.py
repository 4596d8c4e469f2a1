"""Second-factor secrets at rest, under the ``otp`` keyring (``gateway.keys``).

TOTP secrets are sealed with AES-256-GCM; the associated data binds a sealed
secret to its account, so a ciphertext copied onto another account's row
does not open. Backup codes are never stored: only an HMAC-SHA256 of each
under the same keyring (the codes carry 80 random bits, so a keyed fast hash
is enough and a stolen database alone cannot test guesses).
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.keys import KeyPurpose, keyring

_NONCE_BYTES = 12


def _aad(user_id: int) -> bytes:
    return f"fusion-gateway/totp-secret/v1/user:{user_id}".encode()


def secret_seal(*, secret: bytes, user_id: int) -> tuple[str, bytes]:
    """Encrypt a TOTP secret under the active ``otp`` key; returns (kid, nonce + ciphertext)."""
    key = keyring(KeyPurpose.OTP).active
    nonce = os.urandom(_NONCE_BYTES)
    return key.kid, nonce + AESGCM(key.material).encrypt(nonce, secret, _aad(user_id))


def secret_open(*, kid: str, sealed: bytes, user_id: int) -> bytes:
    """Decrypt a sealed TOTP secret; raises ``InvalidTag`` or ``UnknownKey`` on tampering."""
    key = keyring(KeyPurpose.OTP).get(kid)
    sealed = bytes(sealed)
    return AESGCM(key.material).decrypt(sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:], _aad(user_id))


def code_digest(code: str, *, kid: str | None = None) -> tuple[str, str]:
    """HMAC-SHA256 of a normalised backup code; returns (kid, hex digest)."""
    ring = keyring(KeyPurpose.OTP)
    key = ring.active if kid is None else ring.get(kid)
    digest = hmac.new(key.material, b"backup-code/v1/" + code.encode(), hashlib.sha256).hexdigest()
    return key.kid, digest
