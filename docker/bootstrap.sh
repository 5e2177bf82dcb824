#!/usr/bin/env bash
# First start of the stack: build the base dataset and train, register and promote a first model,
# unless the registry already has a production model (so later starts do nothing).
set -euo pipefail
doodle() { python -c 'from doodle_lib.cli import main; main()' "$@"; }
if python -c 'import sys; from doodle_lib import tracking; from doodle_lib.settings import get_settings; sys.exit(0 if tracking.production_version(get_settings()) else 1)'; then
  echo "bootstrap: a production model exists; nothing to do"
  exit 0
fi
doodle data prepare
doodle train --promote
