-- Least privilege for the audit database (step 3 of 3 for the audit zone). Run as the
-- owner of the audit database, connected to it, after `manage.py migrate --database audit`:
--   psql -v ON_ERROR_STOP=1 "postgres://gateway_owner@HOST/gateway_audit" -f deploy/postgres/audit-roles.sql
-- The gateway then connects as gateway_audit_app (set its password, or use
-- peer/cert authentication): it may append and read events, never change or
-- remove them. gateway_auditor (external audit tools) may only read them.
-- The triggers from migration audit.0002 refuse UPDATE, DELETE and TRUNCATE
-- even for the owner.
--
-- cluster.sql normally creates the roles; this file still creates them where it
-- runs standalone with CREATEROLE, serialised by an advisory lock so that runs
-- in parallel cannot race on "role already exists".
BEGIN;
SELECT pg_advisory_xact_lock(hashtext('fusion-gateway:roles'));
DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['gateway_audit_app', 'gateway_auditor'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name) THEN
            EXECUTE format('CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE', name);
        END IF;
    END LOOP;
END $$;
COMMIT;

BEGIN;
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM gateway_audit_app, gateway_auditor;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM PUBLIC, gateway_audit_app, gateway_auditor;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO gateway_audit_app, gateway_auditor;
GRANT SELECT, INSERT ON audit_auditevent TO gateway_audit_app;
GRANT SELECT ON django_migrations TO gateway_audit_app;
GRANT SELECT ON audit_auditevent TO gateway_auditor;
COMMIT;
