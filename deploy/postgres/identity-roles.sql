-- Step 3 of 3 for the identity zone: least grants. Run as gateway_owner connected to
-- the identity database after every `manage.py migrate --database identity`:
--   psql -v ON_ERROR_STOP=1 "postgres://gateway_owner@HOST/gateway_identity" -f deploy/postgres/identity-roles.sql
BEGIN;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC, gateway_identity_app, gateway_ingest;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM PUBLIC, gateway_identity_app, gateway_ingest;
GRANT USAGE ON SCHEMA public TO gateway_identity_app, gateway_ingest;

GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO gateway_identity_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO gateway_identity_app;
REVOKE INSERT, UPDATE, DELETE ON django_migrations FROM gateway_identity_app;
ALTER DEFAULT PRIVILEGES FOR ROLE gateway_owner IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO gateway_identity_app;
ALTER DEFAULT PRIVILEGES FOR ROLE gateway_owner IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO gateway_identity_app;

-- The SCP: a new patient's identity, its date shift, the study's identifying
-- attributes and the UID map are appended; nothing is changed or removed.
GRANT SELECT, INSERT ON identity_patientidentity, identity_patientdateshift,
                        identity_studyidentity, identity_uidmap TO gateway_ingest;
COMMIT;
