-- Run once by the postgres image on a new data volume (compose.yaml): Prefect's own database
-- beside consentflow's ledger (POSTGRES_DB), both owned by the consentflow role.
CREATE DATABASE prefect OWNER consentflow;
