#!/usr/bin/env bash
# airflow-init: refuse missing or placeholder secrets, migrate the metadata database, set the admin's
# password, and create the folders every component expects on the shared data/ and storage/ volumes.
set -euo pipefail

required=(
  AIRFLOW__DATABASE__SQL_ALCHEMY_CONN AIRFLOW__CELERY__BROKER_URL AIRFLOW__CORE__FERNET_KEY
  AIRFLOW__API_AUTH__JWT_SECRET AIRFLOW__API__SECRET_KEY AIRFLOW_ADMIN_USER AIRFLOW_ADMIN_PASSWORD
)
problems=()
for name in "${required[@]}"; do
  [[ -n "${!name:-}" ]] || problems+=("$name is not set")
done
# Values anyone could guess are refused too, so no example or default secret ever runs a stack.
for name in AIRFLOW__API_AUTH__JWT_SECRET AIRFLOW__API__SECRET_KEY AIRFLOW_ADMIN_PASSWORD; do
  value="${!name:-}"
  if [[ -n "$value" ]] && { ((${#value} < 12)) || [[ "${value,,}" =~ ^(airflow|admin|password|changeme|secret) ]]; }; then
    problems+=("$name is too short or a well-known value: use at least 12 random characters")
  fi
done
if [[ -n "${AIRFLOW__CORE__FERNET_KEY:-}" ]] \
   && ! python -c 'import os; from cryptography.fernet import Fernet; Fernet(os.environ["AIRFLOW__CORE__FERNET_KEY"])' 2>/dev/null; then
  problems+=("AIRFLOW__CORE__FERNET_KEY is not a Fernet key (make one with: python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())')")
fi
if ((${#problems[@]})); then
  printf 'airflow-init: %s\n' "${problems[@]}" >&2
  echo "airflow-init: set these in .env (see .env.example), then run docker compose up again" >&2
  exit 1
fi

mkdir -p "$DOODLE_DATA_DIR/feedback" "$DOODLE_DATA_DIR/batches" \
         "$DOODLE_STORAGE_DIR/dvc-remote" "$DOODLE_STORAGE_DIR/runs" "$DOODLE_STORAGE_DIR/webapp"

airflow db migrate

# The simple auth manager reads its users' passwords from this file; writing it ourselves means no
# generated password is printed to the logs. umask: only the airflow user may read it.
umask 077
python - <<'PYTHON'
import json, os
path = os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
with open(path + ".tmp", "w") as out:
    json.dump({os.environ["AIRFLOW_ADMIN_USER"]: os.environ["AIRFLOW_ADMIN_PASSWORD"]}, out)
os.replace(path + ".tmp", path)
PYTHON
echo "airflow-init: database migrated, user '${AIRFLOW_ADMIN_USER}' ready"
