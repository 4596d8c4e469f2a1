"""On PostgreSQL the audit role may only append and read; triggers stop even the owner.

This runs against the PostgreSQL server at 127.0.0.1 in every pass of the
suite (it makes its own scratch database), and fails loudly if none answers.
"""

import os
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import errors

from tests.conftest import REPO, ZONES, manage

SERVER = os.environ.get("GATEWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ROLES_SQL = REPO / "deploy" / "postgres" / "audit-roles.sql"
APP_ROLE = "gateway_audit_app"


def _url(database: str, user: str = "postgres") -> str:
    info = psycopg.conninfo.conninfo_to_dict(SERVER)
    return psycopg.conninfo.make_conninfo(**{**info, "dbname": database, "user": user})


@pytest.fixture(scope="module")
def audit_database(tmp_path_factory):
    try:
        admin = psycopg.connect(SERVER, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL must answer at {SERVER} for the audit role tests: {exc}")
    name = f"gateway_audit_roles_{uuid.uuid4().hex[:10]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    var_dir: Path = tmp_path_factory.mktemp("pg-roles-var")
    env = {"GATEWAY_VAR_DIR": str(var_dir),
           "AUDIT_DATABASE_URL": f"postgres://postgres@{_host()}/{name}"}
    try:
        for zone in ZONES:
            migrated = manage("migrate", "--database", zone, "--noinput", env=env)
            assert migrated.returncode == 0, migrated.stderr
        with psycopg.connect(_url(name), autocommit=True) as owner:
            owner.execute(ROLES_SQL.read_text())
        yield name, env
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def _host() -> str:
    info = psycopg.conninfo.conninfo_to_dict(SERVER)
    return f"{info.get('host', '127.0.0.1')}:{info.get('port', 5432)}"


def test_the_app_role_can_append_and_read_through_the_gateway(audit_database):
    name, env = audit_database
    app_env = {**env, "AUDIT_DATABASE_URL": f"postgres://{APP_ROLE}@{_host()}/{name}"}
    first = manage("audit_verify", env=app_env)
    second = manage("audit_verify", "--json", env=app_env)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert '"events": 1' in second.stdout
    with psycopg.connect(_url(name)) as owner:
        assert owner.execute("SELECT count(*) FROM audit_auditevent").fetchone() == (2,)


@pytest.mark.parametrize("statement", [
    "UPDATE audit_auditevent SET actor = 'mallory'",
    "DELETE FROM audit_auditevent",
    "TRUNCATE audit_auditevent",
    "DROP TABLE audit_auditevent",
    "ALTER TABLE audit_auditevent DISABLE TRIGGER ALL",
])
def test_the_app_role_cannot_change_or_remove_events(audit_database, statement):
    name, _ = audit_database
    with psycopg.connect(_url(name, APP_ROLE)) as app, pytest.raises(errors.InsufficientPrivilege):
        app.execute(statement)


@pytest.mark.parametrize("statement", [
    "UPDATE audit_auditevent SET actor = 'mallory'",
    "DELETE FROM audit_auditevent",
    "TRUNCATE audit_auditevent",
])
def test_triggers_refuse_even_the_owner(audit_database, statement):
    name, _ = audit_database
    with psycopg.connect(_url(name)) as owner:
        if owner.execute("SELECT count(*) FROM audit_auditevent").fetchone() == (0,):
            pytest.fail("the append test must have written events first")
        with pytest.raises(errors.InsufficientPrivilege, match="append-only"):
            owner.execute(statement)
