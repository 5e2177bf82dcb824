#!/usr/bin/env bash
# mlflow: refuse the settings MLflow would fail on with a bare traceback, then exec the server (options from MLFLOW_*).
set -euo pipefail

# The backend store URI carries the database password, so it has no default: without it MLflow would quietly use SQLite.
: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI to the PostgreSQL URI}"
# MLflow builds its webhook cipher from this key when it imports the registry's tables: a malformed key fails there
# with Fernet's message, which names no variable. Unset, MLflow would make a new key each start and could no longer
# read the webhook secrets it stored before.
if ! python -c 'import os; from cryptography.fernet import Fernet; Fernet(os.environ["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"])' 2>/dev/null; then
  echo "mlflow: MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY (MLFLOW_WEBHOOK_ENCRYPTION_KEY in .env) is not set or not a Fernet key;" \
       "make one with: python3 -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'" >&2
  exit 1
fi
exec mlflow server --backend-store-uri "$MLFLOW_BACKEND_STORE_URI"
