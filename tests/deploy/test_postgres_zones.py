"""deploy/postgres on the real server: three zone databases, an owner that migrates, least roles.

Each module run provisions its own scratch databases (unique names) with the
deployment's own SQL through ``psql``, exactly as an installer would, migrates
them as ``gateway_owner``, applies the per-zone grants, and drops the
databases afterwards. The roles are cluster-wide and shared with parallel runs;
cluster.sql serialises their creation (see test_provisioning_can_run_in_parallel).
"""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest
from psycopg import errors

from tests.conftest import manage
from tests.deploy.postgres import (
    SERVER,
    ZONE_SQL,
    ProvisionError,
    pg_url,
    provision,
    zone_env,
    zones_create,
    zones_drop,
)

pytestmark = pytest.mark.postgres

@pytest.fixture(scope="module")
def zones(tmp_path_factory):
    try:
        psycopg.connect(SERVER, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL must answer at {SERVER} for the deployment role tests: {exc}")
    suffix = uuid.uuid4().hex[:10]
    names = {zone: f"gateway_t_{zone}_{suffix}" for zone in ZONE_SQL}
    var_dir = tmp_path_factory.mktemp("pg-zones-var")
    try:
        zones_create(names, var_dir)
        yield names, var_dir
    except ProvisionError as error:
        pytest.fail(f"provisioning with deploy/postgres failed: {error}")
    finally:
        zones_drop(names)


def app_env(names, var_dir):
    return zone_env(names, clinical="gateway_clinical_app", identity="gateway_identity_app",
                    audit="gateway_audit_app", var_dir=var_dir)


def ingest_env(names, var_dir):
    return zone_env(names, clinical="gateway_ingest", identity="gateway_ingest",
                    audit="gateway_audit_app", var_dir=var_dir)


def test_the_owner_migrates_and_owns_every_table_but_is_no_superuser(zones):
    names, _ = zones
    for zone, name in names.items():
        with psycopg.connect(pg_url(name, "gateway_owner")) as owner:
            owners = owner.execute("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
                                   ).fetchall()
            assert owners == [("gateway_owner",)], zone
            assert owner.execute("SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
                                 "WHERE rolname = current_user").fetchone() == (False, False, False)


def test_the_web_roles_run_the_gateway(zones):
    """The application, connected as the least role of each zone, creates an account and audits it."""
    names, var_dir = zones
    created = manage("create_user", "--username", "dr.zones", "--role", "doctor",
                     "--password", "a long enough password 1", env=app_env(names, var_dir))
    assert created.returncode == 0, created.stderr
    verified = manage("audit_verify", env=app_env(names, var_dir))
    assert verified.returncode == 0, verified.stderr + verified.stdout


def test_the_ingest_role_appends_a_study(zones, tmp_path):
    """import_dicom runs the same ingest as the SCP; as gateway_ingest it must succeed."""
    from imaging.phantom import phantom_write

    names, var_dir = zones
    phantom_write(out_dir=tmp_path, slices=32, patients=1, seed=5)
    imported = manage("import_dicom", str(tmp_path), "--no-progress", env=ingest_env(names, var_dir),
                      timeout=300)
    assert imported.returncode == 0, imported.stderr + imported.stdout
    with psycopg.connect(pg_url(names["clinical"], "gateway_owner")) as owner:
        assert owner.execute("SELECT count(*) FROM imaging_instance").fetchone()[0] > 32
        assert owner.execute("SELECT count(*) FROM imaging_series WHERE volume_state = 'ready'"
                             ).fetchone()[0] >= 1


def test_the_render_role_reads_series_and_records_volume_state(zones):
    names, _ = zones
    with psycopg.connect(pg_url(names["clinical"], "gateway_render")) as render:
        render.execute("SELECT series_instance_uid, volume_object FROM imaging_series").fetchall()
        render.execute("UPDATE imaging_series SET volume_state = volume_state")


FORBIDDEN = [
    # (role, zone, statement): each must fail with a privilege error.
    ("gateway_clinical_app", "clinical", "CREATE TABLE mallory (id int)"),
    ("gateway_clinical_app", "clinical", "DROP TABLE imaging_instance"),
    ("gateway_clinical_app", "clinical", "ALTER TABLE imaging_instance ADD COLUMN x int"),
    ("gateway_clinical_app", "clinical", "DELETE FROM django_migrations"),
    ("gateway_identity_app", "identity", "CREATE TABLE mallory (id int)"),
    ("gateway_identity_app", "identity", "TRUNCATE identity_patientidentity"),
    ("gateway_ingest", "clinical", "UPDATE imaging_instance SET size = 0"),
    ("gateway_ingest", "clinical", "DELETE FROM imaging_instance"),
    ("gateway_ingest", "clinical", "DELETE FROM imaging_study"),
    ("gateway_ingest", "clinical", "UPDATE imaging_series SET modality = 'XX'"),
    ("gateway_ingest", "clinical", "UPDATE accounts_user SET is_superuser = true"),
    ("gateway_ingest", "clinical", "SELECT * FROM accounts_totpdevice"),
    ("gateway_ingest", "clinical", "SELECT * FROM django_session"),
    ("gateway_ingest", "identity", "UPDATE identity_patientidentity SET pseudonym = 'x'"),
    ("gateway_ingest", "identity", "DELETE FROM identity_uidmap"),
    ("gateway_render", "clinical", "INSERT INTO imaging_patient (pseudonym) VALUES ('x')"),
    ("gateway_render", "clinical", "DELETE FROM imaging_instance"),
    ("gateway_render", "clinical", "UPDATE imaging_series SET study_id = study_id"),
    ("gateway_render", "clinical", "SELECT * FROM accounts_user"),
    ("gateway_render", "clinical", "SELECT * FROM django_session"),
    ("gateway_audit_app", "audit", "UPDATE audit_auditevent SET actor = 'mallory'"),
    ("gateway_audit_app", "audit", "DELETE FROM audit_auditevent"),
    ("gateway_auditor", "audit", "INSERT INTO audit_auditevent (sequence) VALUES (1)"),
    ("gateway_auditor", "audit", "UPDATE audit_auditevent SET actor = 'mallory'"),
    ("gateway_auditor", "audit", "DELETE FROM audit_auditevent"),
]


@pytest.mark.parametrize(("role", "zone", "statement"), FORBIDDEN)
def test_a_least_role_cannot_step_outside_its_grants(zones, role, zone, statement):
    names, _ = zones
    with psycopg.connect(pg_url(names[zone], role)) as connection, \
            pytest.raises(errors.InsufficientPrivilege):
        connection.execute(statement)


@pytest.mark.parametrize(("role", "zone"), [
    ("gateway_clinical_app", "audit"), ("gateway_clinical_app", "identity"),
    ("gateway_render", "identity"), ("gateway_render", "audit"),
    ("gateway_ingest", "audit"), ("gateway_auditor", "clinical"), ("gateway_audit_app", "clinical"),
])
def test_a_role_cannot_even_connect_to_another_zone(zones, role, zone):
    names, _ = zones
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(pg_url(names[zone], role), connect_timeout=5).close()


def test_the_auditor_reads_the_chain(zones):
    names, _ = zones
    with psycopg.connect(pg_url(names["audit"], "gateway_auditor")) as auditor:
        assert auditor.execute("SELECT count(*) FROM audit_auditevent").fetchone()[0] >= 1


def test_provisioning_can_run_in_parallel():
    """Four installers at once: role creation is serialised, every run succeeds."""
    suffix = uuid.uuid4().hex[:8]
    sets = [{zone: f"gateway_p{i}_{zone}_{suffix}" for zone in ZONE_SQL} for i in range(4)]
    failures: list[str] = []

    def run(names):
        try:
            provision(names)
        except ProvisionError as error:
            failures.append(str(error))

    threads = [threading.Thread(target=run, args=(names,)) for names in sets]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert failures == []
    finally:
        for names in sets:
            zones_drop(names)
