#!/usr/bin/env bash
# Runs once, on the first start of the postgres container (empty data volume): a database and a role for
# MLflow's backend store beside Airflow's metadata database, so neither can touch the other's tables.
set -euo pipefail
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD in .env (see .env.example)}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     --set=password="$MLFLOW_DB_PASSWORD" <<'SQL'
CREATE ROLE mlflow LOGIN PASSWORD :'password';
CREATE DATABASE mlflow OWNER mlflow;
SQL
