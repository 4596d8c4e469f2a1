"""Encrypted object store: one file per object, AES-256-GCM, atomic writes.

File format (all integers big-endian)::

    b"FGO1"                      magic and version
    u8  len(kid) | kid (ASCII)   master key id that wrapped the data key
    u8  len(wrapped) | wrapped   data key wrapped by the master key (RFC 3394)
    12 bytes nonce
    ciphertext || 16-byte GCM tag

Every object has its own fresh 256-bit data key. The associated data binds
the header and the object id, so a file renamed onto another object's path,
or a header edited to name another key, fails to decrypt.

Writes go to a temporary file in the destination directory, are fsynced,
renamed over the final name and the directory is fsynced: a reader sees the
old object, the new one, or none, never half of one, and once
:func:`object_put` returns the object survives a power cut. A fan-out
directory created for the object is made durable too (its parent is fsynced
after the ``mkdir``), so the object's path does not vanish with the crash.
A process killed mid-write leaves at most a ``.tmp-*`` file, which nothing
reads and :func:`storage_sweep` removes.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import struct
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway import keys
from imaging import conf

MAGIC = b"FGO1"
NONCE_BYTES = 12
TEMP_PREFIX = ".tmp-"
_OBJECT_ID = re.compile(r"^[a-z]{1,8}-[0-9a-f]{16,64}$")


class StorageError(RuntimeError):
    """An object is missing, malformed or fails authentication."""


def object_path(object_id: str) -> Path:
    """Where ``object_id`` lives: two levels of fan-out by the id's hash part."""
    if not _OBJECT_ID.match(object_id):
        raise StorageError(f"malformed object id {object_id!r}")
    digest = object_id.partition("-")[2]
    return conf.storage_dir() / digest[:2] / digest[2:4] / object_id


def _associated_data(object_id: str, kid: bytes, wrapped: bytes) -> bytes:
    return MAGIC + object_id.encode() + b"\0" + kid + b"\0" + wrapped


def _encrypt_parts(object_id: str, plaintext: bytes | bytearray | memoryview) -> tuple[bytes, bytes]:
    """(header, ciphertext) of the stored form; the plaintext is read in place, not copied."""
    data_key = AESGCM.generate_key(bit_length=256)
    kid, wrapped = keys.data_key_wrap(data_key)
    kid_bytes = kid.encode("ascii")
    nonce = secrets.token_bytes(NONCE_BYTES)
    ciphertext = AESGCM(data_key).encrypt(nonce, plaintext,
                                          _associated_data(object_id, kid_bytes, wrapped))
    header = (MAGIC + struct.pack(">B", len(kid_bytes)) + kid_bytes
              + struct.pack(">B", len(wrapped)) + wrapped + nonce)
    return header, ciphertext


def object_encrypt(object_id: str, plaintext: bytes | bytearray | memoryview) -> bytes:
    """The stored form of ``plaintext`` under a fresh data key."""
    header, ciphertext = _encrypt_parts(object_id, plaintext)
    return header + ciphertext


def object_decrypt(object_id: str, stored: bytes) -> bytes:
    """Open the stored form of ``object_id``; raises :class:`StorageError` on any tampering."""
    try:
        if stored[:4] != MAGIC:
            raise StorageError(f"object {object_id} has no valid header")
        offset = 4
        kid_len = stored[offset]
        kid_bytes = stored[offset + 1: offset + 1 + kid_len]
        offset += 1 + kid_len
        wrapped_len = stored[offset]
        wrapped = stored[offset + 1: offset + 1 + wrapped_len]
        offset += 1 + wrapped_len
        nonce = stored[offset: offset + NONCE_BYTES]
        ciphertext = memoryview(stored)[offset + NONCE_BYTES:]
        data_key = keys.data_key_unwrap(kid_bytes.decode("ascii"), wrapped)
        return AESGCM(data_key).decrypt(nonce, ciphertext,
                                        _associated_data(object_id, kid_bytes, wrapped))
    except StorageError:
        raise
    except Exception as exc:  # InvalidTag, InvalidUnwrap, UnknownKey, IndexError...
        raise StorageError(f"object {object_id} failed to decrypt: {type(exc).__name__}") from exc


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_known_dirs: set[Path] = set()
_known_dirs_lock = threading.Lock()


def _directory_ensure(directory: Path) -> None:
    """Create ``directory`` (and missing parents) durably; remembered once it exists."""
    with _known_dirs_lock:
        if directory in _known_dirs:
            return
    missing = []
    probe = directory
    while not probe.is_dir():
        missing.append(probe)
        probe = probe.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        _fsync_dir(path.parent)  # the new entry itself must survive a crash
    with _known_dirs_lock:
        if len(_known_dirs) > 70_000:
            _known_dirs.clear()
        _known_dirs.add(directory)


def object_put(object_id: str, plaintext: bytes | bytearray | memoryview) -> int:
    """Encrypt and store ``plaintext`` atomically and durably under ``object_id``.

    Returns the stored size. Writing the same id again replaces the object
    atomically (idempotent re-ingest). When it returns, the file's data and
    its directory entry have been fsynced: an instance acknowledged after this
    call survives a power cut.
    """
    path = object_path(object_id)
    _directory_ensure(path.parent)
    header, ciphertext = _encrypt_parts(object_id, plaintext)
    temp = path.parent / f"{TEMP_PREFIX}{object_id}-{secrets.token_hex(6)}"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileNotFoundError:
        # The directory went away (a test emptied the store): forget it and create it again.
        with _known_dirs_lock:
            _known_dirs.discard(path.parent)
        _directory_ensure(path.parent)
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb", closefd=True) as handle:
            handle.write(header)
            handle.write(ciphertext)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    _fsync_dir(path.parent)
    return len(header) + len(ciphertext)


def object_get(object_id: str) -> bytes:
    """Read and decrypt one object."""
    path = object_path(object_id)
    try:
        stored = path.read_bytes()
    except FileNotFoundError as exc:
        raise StorageError(f"object {object_id} is missing") from exc
    return object_decrypt(object_id, stored)


def object_exists(object_id: str) -> bool:
    return object_path(object_id).is_file()


def object_delete(object_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        object_path(object_id).unlink()


def storage_objects() -> list[str]:
    """Ids of every complete object in the store (temporary files excluded)."""
    root = conf.storage_dir()
    if not root.exists():
        return []
    return sorted(path.name for path in root.glob("??/??/*")
                  if path.is_file() and not path.name.startswith(TEMP_PREFIX))


def storage_sweep(*, older_than_s: float = 3600.0) -> int:
    """Remove temporary files left by killed writers; returns how many were removed."""
    root = conf.storage_dir()
    if not root.exists():
        return 0
    cutoff = time.time() - older_than_s
    removed = 0
    for path in root.glob(f"??/??/{TEMP_PREFIX}*"):
        with contextlib.suppress(FileNotFoundError):
            if path.stat().st_mtime <= cutoff:
                path.unlink()
                removed += 1
    return removed
