"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway import keys

REPO = Path(__file__).resolve().parents[1]
ZONES = ["default", "identity", "audit"]
SHARED_VOLUMES = Path("/dev/shm") / f"fusion-gateway-{os.getuid()}-*"  # noqa: S108


@pytest.fixture
def keys_dir(tmp_path: Path, settings) -> Iterator[Path]:
    """A private, empty key directory for one test; keyrings are reloaded around it."""
    directory = tmp_path / "keys"
    settings.KEYS_DIR = directory
    settings.KEYS_GENERATE = True
    keys.keyrings_forget()
    yield directory
    keys.keyrings_forget()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# A child process gets its own configuration from the test: never the suite's
# databases or Redis (in the PostgreSQL pass those are shared, long-lived
# databases that children would otherwise fill and trip over).
INHERITED_CONFIGURATION = ("GATEWAY_", "DJANGO_", "DATABASE_URL", "IDENTITY_DATABASE_URL",
                           "AUDIT_DATABASE_URL", "REDIS_URL")


def child_environment() -> dict[str, str]:
    """This process's environment without the gateway's configuration."""
    return {key: value for key, value in os.environ.items()
            if not key.startswith(INHERITED_CONFIGURATION)}


def manage(*arguments: str, env: dict[str, str] | None = None,
           timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run ``manage.py`` in a child process with exactly ``env`` added to a clean environment."""
    child_env = child_environment()
    child_env.update(env or {})
    return subprocess.run(
        [sys.executable, str(REPO / "manage.py"), *arguments],
        cwd=REPO, env=child_env, capture_output=True, text=True, timeout=timeout, check=False,
    )


@pytest.fixture(autouse=True)
def _ingest_caches_forgotten():
    """Ingest caches row ids and identity rows it has seen; every test's databases start empty."""
    from imaging.services import ingest_caches_clear

    ingest_caches_clear()
    yield
    ingest_caches_clear()


@pytest.fixture(autouse=True, scope="session")
def _shared_volumes_of_served_gateways_removed():
    """Gateways the tests serve share decrypted volumes in /dev/shm (memory): none may outlive the run."""
    before = set(SHARED_VOLUMES.parent.glob(SHARED_VOLUMES.name))
    yield
    for directory in set(SHARED_VOLUMES.parent.glob(SHARED_VOLUMES.name)) - before:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(autouse=True, scope="session")
def _audit_rows_removable_between_transactional_tests():
    """Let Django's test flush empty the append-only audit table.

    Transactional tests end with a flush (DELETE or TRUNCATE), which the
    append-only triggers rightly refuse. Only here, in the test harness, the
    flush lifts the triggers, empties the table and puts them back in one
    transaction; no production code path can do this.
    """
    from django.db.backends.base.operations import BaseDatabaseOperations

    from gateway.audit import append_only

    original = BaseDatabaseOperations.execute_sql_flush

    def execute_sql_flush(self, sql_list):
        if any(append_only.TABLE in statement for statement in sql_list):
            sql_list = [*append_only.statements(self.connection, enable=False), *sql_list,
                        *append_only.statements(self.connection, enable=True)]
        original(self, sql_list)

    BaseDatabaseOperations.execute_sql_flush = execute_sql_flush
    yield
    BaseDatabaseOperations.execute_sql_flush = original


@pytest.fixture
def checkpoint_dir(tmp_path: Path, settings) -> Path:
    directory = tmp_path / "audit-checkpoints"
    settings.AUDIT_CHECKPOINT_DIR = directory
    return directory


@pytest.fixture
def signed_in(client):
    """Sign a fresh user of ``role`` in with both factors (password and a TOTP device)."""
    from django_otp import DEVICE_ID_SESSION_KEY

    from accounts.models import User
    from accounts.services import totp_device_create

    def sign_in(role: str, *, username: str | None = None, second_factor: bool = True,
                permissions: tuple[str, ...] = ()):
        user = User.objects.create_user(username=username or f"{role}-user",
                                        password="correct horse battery staple", role=role)
        for codename in permissions:
            from django.contrib.auth.models import Permission
            app_label, _, name = codename.partition(".")
            user.user_permissions.add(
                Permission.objects.get(content_type__app_label=app_label, codename=name))
        client.force_login(user)
        if second_factor:
            device = totp_device_create(user=user, confirmed=True)
            session = client.session
            session[DEVICE_ID_SESSION_KEY] = device.persistent_id
            session.save()
        return user

    return sign_in


@pytest.fixture(autouse=True)
def _fresh_channel_layer():
    """A new channel layer object for every test.

    Each async test runs on its own event loop; a Redis channel layer keeps
    connections and locks bound to the loop that first used them, so a layer
    reused by a later test can wait forever on a closed loop's lock.
    """
    from channels.layers import channel_layers

    channel_layers.backends.clear()
    yield
    channel_layers.backends.clear()


@pytest.fixture(scope="session")
def served_demo(tmp_path_factory):
    """One gateway for the session, served by daphne, with the demo seeded (40-slice PET/CT).

    Tests change it only by adding their own people, shares and devices.
    """
    from tests.served import gateway_serve

    gateway = gateway_serve(tmp_path_factory.mktemp("served-demo"), seed=True)
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest.fixture(scope="session")
def served_corpus(tmp_path_factory):
    """A fresh gateway served by daphne, with pydicom's and pydicom-data's test files imported.

    The files go through the import door (``manage.py import_dicom``) as a
    hospital's would, together with one study made from corpus files whose
    second series can never be shown (``tests.served.corpus_unshowable_study``).
    Fails, never skips, without pydicom-data. Tests change it only by adding people.
    """
    from tests.served import corpus_files, corpus_import, corpus_unshowable_study, gateway_serve

    directory = tmp_path_factory.mktemp("served-corpus")
    files = corpus_files() + corpus_unshowable_study(directory / "made")
    (directory / "var").mkdir()
    gateway = gateway_serve(directory / "var")
    try:
        yield corpus_import(gateway, files, directory)
    finally:
        gateway.stop()
