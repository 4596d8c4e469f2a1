-- Step 3 of 3 for the clinical zone: least grants. Run as gateway_owner connected to
-- the clinical database after every `manage.py migrate --database default`:
--   psql -v ON_ERROR_STOP=1 "postgres://gateway_owner@HOST/gateway_clinical" -f deploy/postgres/clinical-roles.sql
-- Idempotent: it revokes everything first, then grants exactly this.
BEGIN;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC, gateway_clinical_app, gateway_ingest, gateway_render;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM PUBLIC, gateway_clinical_app, gateway_ingest, gateway_render;
GRANT USAGE ON SCHEMA public TO gateway_clinical_app, gateway_ingest, gateway_render;

-- The web application: read/write rows, no DDL (it owns nothing), no migration bookkeeping.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO gateway_clinical_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO gateway_clinical_app;
REVOKE INSERT, UPDATE, DELETE ON django_migrations FROM gateway_clinical_app;
-- Tables a later migration adds are readable/writable by the web app at once
-- (re-running this script is still required for the narrower roles below).
ALTER DEFAULT PRIVILEGES FOR ROLE gateway_owner IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO gateway_clinical_app;
ALTER DEFAULT PRIVILEGES FOR ROLE gateway_owner IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO gateway_clinical_app;

-- The SCP (devices): append images. It reads what the idempotency and allowlist checks
-- need, inserts patients/studies/series/instances, never updates or deletes an instance,
-- and may only touch the volume bookkeeping of a series. The audit outbox is a transient
-- queue (an event is removed once it is in the audit chain), so it gets DELETE.
GRANT SELECT ON imaging_patient, imaging_study, imaging_series, imaging_instance,
                imaging_deviceendpoint, accounts_user TO gateway_ingest;
GRANT INSERT ON imaging_patient, imaging_study, imaging_series, imaging_instance TO gateway_ingest;
GRANT UPDATE (volume_state, volume_object, volume_reason, pixels_may_identify) ON imaging_series
    TO gateway_ingest;
GRANT SELECT, INSERT, DELETE ON gateway_auditoutbox TO gateway_ingest;

-- Render workers: read the imaging catalogue; rebuilding a stale volume updates only
-- its bookkeeping columns. No accounts, sessions, shares or devices.
GRANT SELECT ON imaging_patient, imaging_study, imaging_series, imaging_instance TO gateway_render;
GRANT UPDATE (volume_state, volume_object, volume_reason) ON imaging_series TO gateway_render;
COMMIT;
