"""monitoring/statsd_mapping.yml turns the names Airflow sends into the names the Pipeline dashboard and alerts read.

The names Airflow sends come from Airflow's own metrics registry (metrics_template.yaml) and from the
pipeline's emit_stats calls; the mapping is applied with statsd_exporter's rules (glob or regex, first match
wins, unmatched names escaped), so a renamed mapping or a renamed Airflow metric fails here.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from doodle_lib.settings import PROJECT_ROOT
from tests.stack.files import MONITORING, load_yaml, parse_promql

MAPPING = MONITORING / "statsd_mapping.yml"
PREFIX = "airflow"  # AIRFLOW__METRICS__STATSD_PREFIX in docker-compose.yaml
# Values for the name variables of Airflow's metrics, as a retraining run fills them.
EXAMPLES = {
    "dag_id": "retrain", "task_id": "snapshot", "state": "success", "job_name": "scheduler", "operator_name": "PythonOperator",
    "pool_name": "default_pool", "queue": "default", "executor_class_name": "CeleryExecutor", "hostname": "worker1",
    "file_name": "retrain", "bundle_name": "dags-folder", "dag_file": "retrain", "job_id": "7", "return_code": "0",
    "task_type": "PythonOperator", "event_type": "start", "transport_type": "http", "worker_name": "w1",
}
STATES = ["success", "failed", "up_for_retry", "skipped"]


def airflow_names() -> list[tuple[str, str]]:
    """(statsd name, type) of every metric Airflow 3 sends, both its tagged name and its legacy dotted one."""
    import airflow

    template = Path(airflow.__file__).parent / "_shared" / "observability" / "metrics" / "metrics_template.yaml"
    sent = []
    for metric in load_yaml(template)["metrics"]:
        kind = metric.get("type", "counter")
        for name in {metric["name"], metric.get("legacy_name", "-")} - {"-"}:
            for state in STATES if "{state}" in name else [None]:
                values = {**EXAMPLES, **({"state": state} if state else {})}
                sent.append((f"{PREFIX}.{name.format(**values)}", kind))
    return sent


def pipeline_names() -> list[tuple[str, str]]:
    """(statsd name, type) of every figure doodle_lib.retraining.emit_stats sends, read from its calls."""
    source = (PROJECT_ROOT / "doodle_lib" / "retraining.py").read_text()
    prefix = re.search(r'STATS_PREFIX = "([^"]+)"', source)[1]
    sent = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "emit_stats":
            for keyword in node.keywords:
                kind = "gauge" if keyword.arg == "gauges" else "counter"
                for key in keyword.value.keys:
                    # A key may be `"a" if promoted else "b"`: both names are sent at some point.
                    options = [key.body, key.orelse] if isinstance(key, ast.IfExp) else [key]
                    sent += [(f"{PREFIX}.{prefix}.{option.value}", kind) for option in options]
    assert sent, "found no emit_stats calls in doodle_lib/retraining.py"
    return sent


def glob_regex(pattern: str) -> re.Pattern:
    """statsd_exporter's glob: '*' is one dot-free part of the name."""
    return re.compile("^" + "".join("([^.]+)" if c == "*" else re.escape(c) for c in pattern) + "$")


def map_name(mapping: dict, statsd_name: str, kind: str) -> tuple[str, dict, str] | None:
    """(Prometheus name, labels, observer type) of one statsd metric, or None when the mapping drops it."""
    defaults = mapping.get("defaults") or {}
    for rule in mapping.get("mappings", []):
        if rule.get("match_metric_type") and rule["match_metric_type"] != ("observer" if kind == "timer" else kind):
            continue
        match_type = rule.get("match_type", defaults.get("match_type", "glob"))
        regex = re.compile(rule["match"]) if match_type == "regex" else glob_regex(rule["match"])
        found = regex.match(statsd_name)
        if not found:
            continue
        if rule.get("action") == "drop":
            return None

        def expand(template: str) -> str:
            return re.sub(r"\$\{?(\d+)\}?", lambda m: found.group(int(m[1])), template)

        labels = {key: expand(str(value)) for key, value in (rule.get("labels") or {}).items()}
        observer = rule.get("observer_type") or rule.get("timer_type") or defaults.get("observer_type", "summary")
        return expand(rule["name"]), labels, observer
    if defaults.get("action") == "drop":
        return None
    name = re.sub(r"[^a-zA-Z0-9_]", "_", statsd_name)
    return ("_" + name if name[0].isdigit() else name), {}, defaults.get("observer_type", "summary")


def exported(mapping: dict, sent: list[tuple[str, str]]) -> dict[str, set[str]]:
    """Prometheus sample name -> label names, for everything `sent` becomes."""
    samples: dict[str, set[str]] = {}
    for statsd_name, kind in sent:
        mapped = map_name(mapping, statsd_name, kind)
        if mapped is None:
            continue
        name, labels, observer = mapped
        if kind == "timer":
            suffixes = ["_sum", "_count"] + (["_bucket"] if observer == "histogram" else [""])
        else:
            suffixes = [""]
        for suffix in suffixes:
            samples.setdefault(name + suffix, set()).update(labels)
    return samples


@pytest.fixture(scope="module")
def mapping() -> dict:
    if not MAPPING.is_file():
        pytest.fail(f"{MAPPING.relative_to(PROJECT_ROOT)} is missing: statsd-exporter (docker-compose.yaml) mounts it "
                    "and the Pipeline dashboard and alerts read the names it makes")
    return load_yaml(MAPPING)


def used_airflow_queries() -> list[tuple[str, str]]:
    """(where, expr) of every query that reads airflow_* names: Pipeline panels and alert rules."""
    found = []
    for path in (MONITORING / "grafana" / "dashboards").glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                found.append((f"{path.stem} / {panel['title']}", target["expr"]))
    for group in load_yaml(MONITORING / "prometheus" / "alerts.yml")["groups"]:
        for rule in group["rules"]:
            found.append((rule.get("alert") or rule["record"], rule["expr"]))
    return [(where, expr) for where, expr in found if "airflow_" in expr]


def test_every_airflow_name_the_dashboards_and_alerts_read_is_produced(mapping):
    samples = exported(mapping, airflow_names() + pipeline_names())
    queries = used_airflow_queries()
    assert queries, "no dashboard or alert reads Airflow's metrics"
    for where, expr in queries:
        query = parse_promql(expr)
        for name in sorted(n for n in query.metrics if n.startswith("airflow_")):
            assert name in samples, f"{where}: no statsd metric Airflow sends becomes {name}"
            missing = query.matched_labels & {"dag_id", "task_id", "state"} - samples[name]
            assert not missing, f"{where}: {name} has no label {missing}"


@pytest.mark.parametrize("statsd_name, kind, name", [
    ("airflow.dagrun.duration.failed.retrain", "timer", "x_failed"),
    ("airflow.ti.finish.retrain.train.failed", "counter", "airflow_ti_finish_retrain_train_failed"),
])
def test_the_mapping_rules_are_applied_like_statsd_exporter(statsd_name, kind, name):
    mapping = {"mappings": [{"match": "airflow.dagrun.duration.*.*", "name": "x_$1", "labels": {"dag_id": "$2"}}]}
    assert map_name(mapping, statsd_name, kind)[0] == name
