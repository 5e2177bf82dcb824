"""Prometheus: promtool checks the config and runs the alert unit tests; names match what is really exported."""
from __future__ import annotations

import subprocess

import pytest

from tests.stack.files import MONITORING, compose, load_yaml, parse_promql, promtool, raw_compose, variables

PROMETHEUS = MONITORING / "prometheus"
REQUIRED_ALERTS = {
    "WebappDown", "WebappHighErrorRate", "WebappHighLatencyP99", "NoProductionModelLoaded",
    "ServingVersionCorrectionRateHigh", "RetrainingRunFailed", "FeedbackPilingUp", "HostDiskNearlyFull",
}


def rules() -> list[dict]:
    return [rule for group in load_yaml(PROMETHEUS / "alerts.yml")["groups"] for rule in group["rules"]]


def test_promtool_checks_the_config_and_its_rules():
    result = subprocess.run([promtool(), "check", "config", str(PROMETHEUS / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "rules found" in result.stdout


def test_alert_unit_tests_pass():
    result = subprocess.run([promtool(), "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_required_and_fires_then_clears_in_the_unit_tests():
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    assert REQUIRED_ALERTS <= alerts, f"missing alerts: {REQUIRED_ALERTS - alerts}"
    cases: dict[str, list[tuple[int, bool]]] = {}
    for test in load_yaml(PROMETHEUS / "alerts_test.yml")["tests"]:
        for case in test.get("alert_rule_test", []):
            cases.setdefault(case["alertname"], []).append((case["eval_time"], bool(case["exp_alerts"])))
    for alert in alerts:
        outcomes = cases.get(alert, [])
        fires = [i for i, (_, firing) in enumerate(outcomes) if firing]
        assert fires, f"{alert} never fires in alerts_test.yml"
        assert any(not firing for _, firing in outcomes[fires[0] + 1:]), f"{alert} never clears after firing"
        assert any(not firing for _, firing in outcomes[:fires[0]]), f"{alert} is not shown quiet before it fires"


def test_every_alert_has_a_severity_and_a_summary():
    for rule in rules():
        if "alert" in rule:
            assert rule["labels"]["severity"] in ("page", "warning"), rule["alert"]
            assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]


def test_scrape_targets_are_compose_services_on_their_ports():
    services = compose({name: "x" * 16 for name, op, _ in variables(raw_compose()) if op == ":?"})["services"]
    config = load_yaml(PROMETHEUS / "prometheus.yml")
    jobs = {job["job_name"]: target for job in config["scrape_configs"]
            for target in job["static_configs"][0]["targets"]}
    assert {"webapp", "airflow", "node", "mlflow", "prometheus"} <= jobs.keys()
    listens = {"webapp": "8000", "mlflow": "5000", "node-exporter": "9100"}
    for job, target in jobs.items():
        host, port = target.split(":")
        if host == "localhost":
            continue
        assert host in services, f"job {job} scrapes {host}, which is no compose service"
        if host == "statsd-exporter":
            assert f"--web.listen-address=:{port}" in services[host]["command"]
        else:
            assert listens[host] == port, f"job {job}: {host} listens on {listens[host]}, not {port}"
    assert any("--expose-prometheus" in line or "MLFLOW_EXPOSE_PROMETHEUS" in line
               for line in (MONITORING.parent / "docker" / "mlflow.Dockerfile").read_text().splitlines())


def test_webapp_names_in_the_alerts_are_exported_by_the_app(webapp_metrics):
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    for rule in rules():
        query = parse_promql(rule["expr"])
        for name in query.metrics - recorded:
            if name.startswith(("doodle_", "flask_")):
                assert name in webapp_metrics, f"{rule.get('alert') or rule.get('record')}: the web app exports no {name}"
                labels = webapp_metrics[name] | {"job", "instance"}
                assert query.matched_labels <= labels | {"__name__"} or len(query.metrics) > 1, (name, query.matched_labels)


@pytest.mark.parametrize("expr, metrics", [
    ('sum by (le) (rate(flask_http_request_duration_seconds_bucket{status=~"5.."}[5m]))',
     {"flask_http_request_duration_seconds_bucket"}),
    ("a:b:rate1h > on () group_left () min(c unless on (x) d offset 1h) + 0.10", {"a:b:rate1h", "c", "d"}),
    ('histogram_quantile(0.99, sum by (le, endpoint) (rate(x_bucket[5m]))) or vector(0)', {"x_bucket"}),
])
def test_promql_names_are_read_correctly(expr, metrics):
    assert parse_promql(expr).metrics == metrics
