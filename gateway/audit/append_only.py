"""Database triggers that refuse UPDATE, DELETE and TRUNCATE of audit events.

They hold even for a privileged session that goes around the application;
only dropping the trigger (itself a DDL change a DBA would have to make, and
which verification would still expose) gets past them.
"""

from __future__ import annotations

from django.db.backends.base.base import BaseDatabaseWrapper

TABLE = "audit_auditevent"
REFUSAL = "audit events are append-only"

SQLITE = [
    f"CREATE TRIGGER IF NOT EXISTS {TABLE}_no_update BEFORE UPDATE ON {TABLE} "
    f"BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END",
    f"CREATE TRIGGER IF NOT EXISTS {TABLE}_no_delete BEFORE DELETE ON {TABLE} "
    f"BEGIN SELECT RAISE(ABORT, '{REFUSAL}'); END",
]
SQLITE_REMOVE = [f"DROP TRIGGER IF EXISTS {TABLE}_no_update",
                 f"DROP TRIGGER IF EXISTS {TABLE}_no_delete"]

POSTGRES = [
    f"""CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '{REFUSAL} (% refused)', TG_OP USING ERRCODE = 'insufficient_privilege';
    END $$""",
    f"CREATE TRIGGER {TABLE}_no_update_delete BEFORE UPDATE OR DELETE ON {TABLE} "
    "FOR EACH ROW EXECUTE FUNCTION audit_append_only()",
    f"CREATE TRIGGER {TABLE}_no_truncate BEFORE TRUNCATE ON {TABLE} "
    "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()",
]
POSTGRES_REMOVE = [f"DROP TRIGGER IF EXISTS {TABLE}_no_update_delete ON {TABLE}",
                   f"DROP TRIGGER IF EXISTS {TABLE}_no_truncate ON {TABLE}",
                   "DROP FUNCTION IF EXISTS audit_append_only()"]


def statements(connection: BaseDatabaseWrapper, *, enable: bool) -> list[str]:
    if connection.vendor == "sqlite":
        return SQLITE if enable else SQLITE_REMOVE
    if connection.vendor == "postgresql":
        return POSTGRES if enable else POSTGRES_REMOVE
    raise NotImplementedError(f"no append-only triggers for {connection.vendor}")
