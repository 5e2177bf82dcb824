#!/usr/bin/env bash
# Health of one Airflow component: the one named as $1, or the one this container runs (its command line).
set -euo pipefail
component="${1:-}"
if [[ -z "$component" ]]; then
  # PID 1 is dumb-init -- /entrypoint <command>; the command names the component.
  cmdline=$(tr '\0' ' ' </proc/1/cmdline)
  for name in api-server scheduler dag-processor triggerer worker flower; do
    [[ " $cmdline " == *" $name "* ]] && component=$name && break
  done
fi
case "$component" in
  api-server) exec curl --fail --silent --max-time 10 http://localhost:8080/api/v2/version -o /dev/null ;;
  scheduler) exec curl --fail --silent --max-time 10 http://localhost:8974/health -o /dev/null ;;
  dag-processor) exec airflow jobs check --job-type DagProcessorJob --hostname "$HOSTNAME" ;;
  triggerer) exec airflow jobs check --job-type TriggererJob --hostname "$HOSTNAME" ;;
  worker)
    exec celery --app airflow.providers.celery.executors.celery_executor.app inspect ping \
      --destination "celery@$HOSTNAME" --timeout 10 ;;
  flower) exec curl --fail --silent --max-time 10 http://localhost:5555/healthcheck -o /dev/null ;;
  *) echo "airflow-healthcheck: unknown component '${component}'" >&2; exit 1 ;;
esac
