"""Provisioning scratch zone databases with deploy/postgres, as an installer would (tests only)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import psycopg

from tests.conftest import REPO, manage


class ProvisionError(AssertionError):
    pass


SERVER = os.environ.get("GATEWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
SQL = REPO / "deploy" / "postgres"
ZONE_SQL = {"clinical": "clinical-roles.sql", "identity": "identity-roles.sql", "audit": "audit-roles.sql"}


def _info() -> dict:
    return psycopg.conninfo.conninfo_to_dict(SERVER)


def _host() -> str:
    info = _info()
    return f"{info.get('host', '127.0.0.1')}:{info.get('port', 5432)}"


def pg_url(database: str, user: str) -> str:
    return psycopg.conninfo.make_conninfo(**{**_info(), "dbname": database, "user": user})


def _django_url(database: str, user: str) -> str:
    return f"postgres://{user}@{_host()}/{database}"


def psql(*arguments: str, url: str = SERVER) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("psql")
    if binary is None:
        raise ProvisionError("the deployment SQL is applied with psql: apt-get install postgresql-client")
    return subprocess.run([binary, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, *arguments],
                          capture_output=True, text=True, timeout=120, check=False)


def provision(names: dict[str, str]) -> None:
    done = psql("-v", f"clinical_db={names['clinical']}", "-v", f"identity_db={names['identity']}",
                "-v", f"audit_db={names['audit']}", "-f", str(SQL / "cluster.sql"))
    if done.returncode != 0:
        raise ProvisionError(done.stderr)


def zone_env(names: dict[str, str], *, clinical: str, identity: str, audit: str,
             var_dir: Path) -> dict[str, str]:
    return {"GATEWAY_VAR_DIR": str(var_dir),
            "DATABASE_URL": _django_url(names["clinical"], clinical),
            "IDENTITY_DATABASE_URL": _django_url(names["identity"], identity),
            "AUDIT_DATABASE_URL": _django_url(names["audit"], audit)}



def zones_create(names: dict[str, str], var_dir: Path) -> None:
    """cluster.sql, ``migrate`` of every zone as gateway_owner, then each zone's grants."""
    provision(names)
    owner_env = zone_env(names, clinical="gateway_owner", identity="gateway_owner",
                         audit="gateway_owner", var_dir=var_dir)
    for zone in ("default", "identity", "audit"):
        migrated = manage("migrate", "--database", zone, "--noinput", env=owner_env)
        if migrated.returncode != 0:
            raise ProvisionError(migrated.stderr)
    for zone, script in ZONE_SQL.items():
        granted = psql("-f", str(SQL / script), url=pg_url(names[zone], "gateway_owner"))
        if granted.returncode != 0:
            raise ProvisionError(granted.stderr)


def zones_drop(names: dict[str, str]) -> None:
    with psycopg.connect(SERVER, autocommit=True, connect_timeout=5) as admin:
        for name in names.values():
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
