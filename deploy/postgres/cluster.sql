-- Fusion Gateway on PostgreSQL, step 1 of 3: roles and the three zone databases.
--
-- Run as a superuser on the maintenance database, once per cluster (idempotent):
--   psql -v ON_ERROR_STOP=1 -d postgres -f deploy/postgres/cluster.sql
-- Database names default to gateway_clinical / gateway_identity / gateway_audit;
-- override with -v clinical_db=... -v identity_db=... -v audit_db=...
--
-- Roles (all NOSUPERUSER NOCREATEDB NOCREATEROLE; no passwords are set here:
-- set them with \password, or better use cert/peer authentication in pg_hba.conf):
--   gateway_owner         owns the three databases and every table; runs `migrate`
--                         and the *-roles.sql grants; never used by a running service
--   gateway_clinical_app  web (daphne): read/write the clinical zone
--   gateway_identity_app  web (daphne): read/write the identity zone
--   gateway_audit_app     every service: INSERT and SELECT audit events, nothing else
--   gateway_ingest        the C-STORE SCP: append images (INSERT), read what ingest
--                         checks, update only a series' volume bookkeeping columns
--   gateway_render        render workers: read the clinical imaging tables, update
--                         only a series' volume bookkeeping columns
--   gateway_auditor       external audit tooling: SELECT on the audit zone only
--
-- Roles are cluster-wide and several installs (or parallel test runs) may run
-- this at once: creation is serialised by an advisory lock, so "already exists"
-- can never race.

\if :{?clinical_db}
\else
\set clinical_db gateway_clinical
\endif
\if :{?identity_db}
\else
\set identity_db gateway_identity
\endif
\if :{?audit_db}
\else
\set audit_db gateway_audit
\endif

BEGIN;
SELECT pg_advisory_xact_lock(hashtext('fusion-gateway:roles'));
DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['gateway_owner', 'gateway_clinical_app', 'gateway_identity_app',
                                'gateway_audit_app', 'gateway_ingest', 'gateway_render',
                                'gateway_auditor']
    LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name) THEN
            EXECUTE format('CREATE ROLE %I', name);
        END IF;
        -- Re-asserted on every run, so a role made by hand earlier ends up exactly so.
        EXECUTE format('ALTER ROLE %I LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION '
                       'NOBYPASSRLS', name);
    END LOOP;
END $$;
COMMIT;

-- CREATE DATABASE cannot run inside a transaction or a DO block: \gexec runs the
-- generated statement only where the database is missing.
SELECT format('CREATE DATABASE %I OWNER gateway_owner', db)
  FROM unnest(ARRAY[:'clinical_db', :'identity_db', :'audit_db']) AS db
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = db) \gexec

BEGIN;
SELECT pg_advisory_xact_lock(hashtext('fusion-gateway:roles'));
REVOKE ALL ON DATABASE :"clinical_db" FROM PUBLIC;
REVOKE ALL ON DATABASE :"identity_db" FROM PUBLIC;
REVOKE ALL ON DATABASE :"audit_db" FROM PUBLIC;
-- Which role may even connect to which zone: the render workers and the SCP
-- never see the audit database's rows except through gateway_audit_app, and
-- only the web and the SCP reach the identity zone.
GRANT CONNECT ON DATABASE :"clinical_db" TO gateway_clinical_app, gateway_ingest, gateway_render;
GRANT CONNECT ON DATABASE :"identity_db" TO gateway_identity_app, gateway_ingest;
GRANT CONNECT ON DATABASE :"audit_db" TO gateway_audit_app, gateway_auditor;
COMMIT;
