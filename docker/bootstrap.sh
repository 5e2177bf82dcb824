#!/usr/bin/env bash
# Every start of the stack: register the web app's webhook (with DOODLE_WEBHOOK_SECRET); on the first, build the base
# dataset and train, register and promote a first model (later starts find a production model and stop there).
set -euo pipefail
doodle() { python -c 'from doodle_lib.cli import main; main()' "$@"; }
# The web app's registry webhook, registered (or updated) at every start when it has a secret.
if [ -n "${DOODLE_WEBHOOK_SECRET:-}" ]; then
  doodle webhook --url http://webapp:8000/webhooks/mlflow
fi
if python -c 'import sys; from doodle_lib import tracking; from doodle_lib.settings import get_settings; sys.exit(0 if tracking.production_version(get_settings()) else 1)'; then
  echo "bootstrap: a production model exists; nothing to do"
  exit 0
fi
doodle data prepare
doodle train --promote
