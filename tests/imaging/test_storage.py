"""Encrypted object store: AES-256-GCM per object, wrapped data keys, atomic writes."""

from __future__ import annotations

import os

import pytest

from gateway import keys
from imaging import storage


def test_round_trip_and_nothing_in_clear(store):
    secret = b"MRN0042 Doe^Jane " * 100
    size = storage.object_put("dcm-" + "ab" * 32, secret)
    path = storage.object_path("dcm-" + "ab" * 32)
    raw = path.read_bytes()
    assert len(raw) == size and b"Doe^Jane" not in raw and b"MRN0042" not in raw
    assert storage.object_get("dcm-" + "ab" * 32) == secret
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_header_names_the_master_key_and_each_object_has_its_own_data_key(store):
    storage.object_put("dcm-" + "01" * 32, b"same")
    storage.object_put("dcm-" + "02" * 32, b"same")
    first = storage.object_path("dcm-" + "01" * 32).read_bytes()
    second = storage.object_path("dcm-" + "02" * 32).read_bytes()
    kid = keys.keyring(keys.KeyPurpose.MASTER).active.kid.encode()
    assert first.startswith(storage.MAGIC + bytes([len(kid)]) + kid)
    wrapped_at = 4 + 1 + len(kid) + 1
    assert first[wrapped_at:wrapped_at + 40] != second[wrapped_at:wrapped_at + 40]


def test_tampering_is_detected(store):
    object_id = "dcm-" + "cd" * 32
    storage.object_put(object_id, b"x" * 1000)
    path = storage.object_path(object_id)
    raw = bytearray(path.read_bytes())
    raw[-20] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(storage.StorageError, match="failed to decrypt"):
        storage.object_get(object_id)


def test_object_id_is_bound_as_associated_data(store):
    a, b = "dcm-" + "aa" * 32, "dcm-" + "bb" * 32
    storage.object_put(a, b"patient A")
    storage.object_put(b, b"patient B")
    storage.object_path(b).write_bytes(storage.object_path(a).read_bytes())
    with pytest.raises(storage.StorageError):
        storage.object_get(b)


def test_rotated_master_key_still_opens_old_objects(store):
    storage.object_put("dcm-" + "ee" * 32, b"before rotation")
    keys.keyring_rotate(keys.KeyPurpose.MASTER)
    storage.object_put("dcm-" + "ef" * 32, b"after rotation")
    assert storage.object_get("dcm-" + "ee" * 32) == b"before rotation"
    assert storage.object_get("dcm-" + "ef" * 32) == b"after rotation"


def test_writes_are_atomic_and_leave_no_temporary_file(store):
    object_id = "dcm-" + "12" * 32
    storage.object_put(object_id, b"one")
    storage.object_put(object_id, b"two")
    assert storage.object_get(object_id) == b"two"
    assert storage.storage_objects() == [object_id]
    assert not list(store.rglob(f"{storage.TEMP_PREFIX}*"))


def test_sweep_removes_only_stale_temporary_files(store):
    object_id = "dcm-" + "34" * 32
    storage.object_put(object_id, b"kept")
    stale = storage.object_path(object_id).parent / f"{storage.TEMP_PREFIX}{object_id}-dead"
    stale.write_bytes(b"half a write")
    os.utime(stale, (0, 0))
    assert storage.storage_objects() == [object_id]
    assert storage.storage_sweep() == 1
    assert not stale.exists() and storage.object_get(object_id) == b"kept"


def test_malformed_ids_and_missing_objects_are_refused(store):
    with pytest.raises(storage.StorageError, match="malformed"):
        storage.object_path("../../etc/passwd")
    with pytest.raises(storage.StorageError, match="missing"):
        storage.object_get("dcm-" + "56" * 32)
