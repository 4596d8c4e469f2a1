#!/bin/sh
# Compose only: the gateway roles (no passwords) may connect from the internal backend
# network; everything else needs a password. Bare-metal installs write pg_hba.conf
# themselves (docs/deployment.md), preferably with client certificates.
set -e
cat > "$PGDATA/pg_hba.conf" <<'HBA'
local   all  postgres                         peer
host    all  postgres        0.0.0.0/0        scram-sha-256
host    all  +gateway_roles  samenet          trust
host    all  all             0.0.0.0/0        reject
HBA
psql -v ON_ERROR_STOP=1 -U postgres -d postgres <<'SQL'
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'gateway_roles') THEN CREATE ROLE gateway_roles NOLOGIN; END IF;
END $$;
GRANT gateway_roles TO gateway_owner, gateway_clinical_app, gateway_identity_app, gateway_audit_app,
                       gateway_ingest, gateway_render, gateway_auditor;
SQL
