-- Least privilege for the audit database. Run as the owner of the audit
-- database, connected to it, after `manage.py migrate --database audit`:
--   psql "$AUDIT_DATABASE_URL_OWNER" -f deploy/postgres/audit-roles.sql
-- The gateway then connects as gateway_audit_app (set its password, or use
-- peer/cert authentication): it may append and read events, never change or
-- remove them. The triggers from migration audit.0002 refuse UPDATE, DELETE
-- and TRUNCATE even for the owner.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'gateway_audit_app') THEN
        CREATE ROLE gateway_audit_app LOGIN;
    END IF;
END $$;

REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM gateway_audit_app;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO gateway_audit_app;
GRANT SELECT, INSERT ON audit_auditevent TO gateway_audit_app;
GRANT SELECT ON django_migrations TO gateway_audit_app;
