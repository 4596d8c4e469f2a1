import base64
import json
import os
import stat
from concurrent.futures import ThreadPoolExecutor

import pytest
from cryptography.exceptions import InvalidSignature

from gateway import keys
from gateway.config import ConfigurationError, private_file_write
from gateway.keys import KeyPurpose


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_use_generates_private_keyrings(keys_dir):
    keys.keyrings_load_all()

    assert _mode(keys_dir) == 0o700
    for purpose in KeyPurpose:
        path = keys_dir / f"{purpose}.json"
        assert _mode(path) == 0o600
        assert len(keys.keyring(purpose).active.material) == keys.KEY_BYTES
    materials = {keys.keyring(purpose).active.material for purpose in KeyPurpose}
    assert len(materials) == len(KeyPurpose)


def test_keys_survive_a_reload(keys_dir):
    first = keys.keyring(KeyPurpose.PSEUDONYM).active
    keys.keyrings_forget()
    assert keys.keyring(KeyPurpose.PSEUDONYM).active == first


@pytest.mark.parametrize("loose_mode", [0o644, 0o640, 0o604, 0o660])
def test_a_readable_key_file_is_refused(keys_dir, loose_mode):
    keys.keyrings_load_all()
    (keys_dir / "master.json").chmod(loose_mode)
    keys.keyrings_forget()

    with pytest.raises(ConfigurationError, match="chmod 600"):
        keys.keyring(KeyPurpose.MASTER)


def test_a_readable_key_directory_is_refused(keys_dir):
    keys.keyrings_load_all()
    keys_dir.chmod(0o755)
    keys.keyrings_forget()

    with pytest.raises(ConfigurationError, match="chmod 700"):
        keys.keyring(KeyPurpose.SHARE)


def test_missing_keys_are_an_error_when_generation_is_off(keys_dir, settings):
    settings.KEYS_GENERATE = False
    with pytest.raises(ConfigurationError, match="GATEWAY_MASTER_KEYS"):
        keys.keyring(KeyPurpose.MASTER)
    assert not keys_dir.exists()


def test_environment_keys_take_precedence(keys_dir, monkeypatch):
    active, older = os.urandom(32), os.urandom(32)
    monkeypatch.setenv(
        "GATEWAY_SHARE_KEYS",
        f"k2:{base64.b64encode(active).decode()},k1:{base64.b64encode(older).decode()}",
    )
    ring = keys.keyring(KeyPurpose.SHARE)

    assert ring.source == "environment"
    assert (ring.active.kid, ring.active.material) == ("k2", active)
    assert ring.get("k1").material == older
    assert not (keys_dir / "share.json").exists()


@pytest.mark.parametrize("value", ["no-separator", "k1:not-base64!", "k1:" + "QUFB", ":QUFB"])
def test_malformed_environment_keys_are_refused(keys_dir, monkeypatch, value):
    monkeypatch.setenv("GATEWAY_MASTER_KEYS", value)
    with pytest.raises(ConfigurationError):
        keys.keyring(KeyPurpose.MASTER)


def test_keyring_file_named_by_environment(keys_dir, tmp_path, monkeypatch):
    material = os.urandom(32)
    path = tmp_path / "secret-pseudonym.json"
    document = {"purpose": "pseudonym",
                "keys": [{"kid": "prod-1", "material": base64.b64encode(material).decode()}]}
    private_file_write(path, json.dumps(document).encode())
    monkeypatch.setenv("GATEWAY_PSEUDONYM_KEYS_FILE", str(path))

    assert keys.keyring(KeyPurpose.PSEUDONYM).active.material == material

    path.chmod(0o644)
    keys.keyrings_forget()
    with pytest.raises(ConfigurationError):
        keys.keyring(KeyPurpose.PSEUDONYM)


def test_a_keyring_for_another_purpose_is_refused(keys_dir, tmp_path, monkeypatch):
    keys.keyring(KeyPurpose.SHARE)
    monkeypatch.setenv("GATEWAY_MASTER_KEYS_FILE", str(keys_dir / "share.json"))
    keys.keyrings_forget()
    with pytest.raises(ConfigurationError, match="holds share keys"):
        keys.keyring(KeyPurpose.MASTER)


def test_rotation_keeps_old_keys_readable(keys_dir):
    data_key = os.urandom(32)
    old_kid, wrapped = keys.data_key_wrap(data_key)

    fresh = keys.keyring_rotate(KeyPurpose.MASTER)
    new_kid, _ = keys.data_key_wrap(os.urandom(32))

    assert new_kid == fresh.kid != old_kid
    assert keys.data_key_unwrap(old_kid, wrapped) == data_key
    assert _mode(keys_dir / "master.json") == 0o600
    assert [key.kid for key in keys.keyring(KeyPurpose.MASTER).keys] == [fresh.kid, old_kid]


def test_environment_keys_cannot_be_rotated_here(keys_dir, monkeypatch):
    monkeypatch.setenv("GATEWAY_MASTER_KEYS", f"k:{base64.b64encode(os.urandom(32)).decode()}")
    with pytest.raises(ConfigurationError, match="rotate it where it is kept"):
        keys.keyring_rotate(KeyPurpose.MASTER)


def test_tampered_or_unknown_wrapped_keys_fail(keys_dir):
    kid, wrapped = keys.data_key_wrap(os.urandom(32))
    tampered = bytes([wrapped[0] ^ 1]) + wrapped[1:]

    with pytest.raises(keys.InvalidUnwrap):
        keys.data_key_unwrap(kid, tampered)
    with pytest.raises(keys.UnknownKey):
        keys.data_key_unwrap("forged-kid", wrapped)


def test_audit_signatures_verify_only_unaltered_messages(keys_dir):
    kid, signer = keys.audit_signing_key()
    signature = signer.sign(b"sequence=7 head=abc")

    keys.audit_verify_key(kid).verify(signature, b"sequence=7 head=abc")
    with pytest.raises(InvalidSignature):
        keys.audit_verify_key(kid).verify(signature, b"sequence=7 head=abd")


def test_racing_first_starts_agree_on_one_key(keys_dir):
    def load_fresh(_):
        keys.keyrings_forget()
        return keys._keyring_load(KeyPurpose.MASTER).active

    with ThreadPoolExecutor(max_workers=8) as pool:
        loaded = set(pool.map(load_fresh, range(32)))

    assert len(loaded) == 1
    assert [path.name for path in keys_dir.iterdir()] == ["master.json"]


def test_key_material_never_appears_in_repr(keys_dir):
    key = keys.keyring(KeyPurpose.MASTER).active
    assert base64.b64encode(key.material).decode() not in repr(key)
    assert key.material.hex() not in repr(key)


@pytest.mark.django_db(databases=["default", "identity", "audit"])
def test_rotate_command_rotates_and_is_audited(keys_dir, capsys):
    from django.core.management import call_command

    from gateway.audit.models import AuditEvent

    before = keys.keyring(KeyPurpose.SHARE).active.kid
    call_command("keys_rotate", purpose="share", operator="it.linus")
    after = keys.keyring(KeyPurpose.SHARE).active.kid
    assert after != before
    assert after in capsys.readouterr().out
    event = AuditEvent.objects.get(action="admin.key")
    assert (event.actor, event.outcome) == ("it.linus", "success")
    assert after in event.details
    assert keys.keyring(KeyPurpose.SHARE).active.material.hex() not in event.details
