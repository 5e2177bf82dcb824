"""A real Prometheus scrapes the real web app (gunicorn, two workers, a model from a real MLflow registry) under
generated traffic, and every serving and model-quality Grafana panel's query returns data.

The queries come from monitoring/grafana/dashboards/*.json (no hand-kept list); the Prometheus configuration is
monitoring/prometheus/prometheus.yml with its targets moved to loopback and a fast scrape interval, its alert
rules included. The Airflow dashboards read statsd metrics through statsd-exporter, which no Debian, PyPI or npm
package ships; tests/dags/test_fault_and_sensor_live.py checks instead that the statsd lines a real Airflow run sends,
put through the exporter's mapping, produce every metric name those panels query.
"""
from __future__ import annotations

import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
import yaml

from doodle_lib import tracking
from tests.conftest import CATEGORIES, SAMPLE, fixture_drawings
from tests.stack.files import MONITORING
from tests.stack.services import node_exporter, prometheus_server, wait_until
from tests.stack.test_grafana import DASHBOARDS, SOURCES, queries
from tests.webapp.serving import app_env, gunicorn_app, log_models, register

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SCRAPE_INTERVAL = "1s"
ROUNDS = 4  # traffic rounds, each seen by several scrapes, so every rate() has increases to measure
# Grafana's built-in variables as it would fill them for a "last hour" view of this Prometheus.
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h", "__range_s": "3600", "__interval_ms": "15000"}


def dashboard_params():
    """The dashboards fed by this Prometheus's own targets (not the Airflow ones, which need statsd-exporter)."""
    params = []
    for path in DASHBOARDS:
        title = json.loads(path.read_text())["title"].split(" / ")[-1]
        if not SOURCES[title].startswith("airflow"):
            params.append(pytest.param(path, id=title))
    return params


def grafana_expr(expr: str, dashboard: dict) -> str:
    """The query Grafana sends: built-in and dashboard variables replaced ($x, ${x}, [[x]])."""
    values = dict(GRAFANA_BUILTINS)
    for variable in (dashboard.get("templating") or {}).get("list", []):
        current = (variable.get("current") or {}).get("value")
        if isinstance(current, list):
            current = "|".join(current)
        values[variable["name"]] = ".*" if current in (None, "", "$__all") else str(current)
    for name in sorted(values, key=len, reverse=True):
        expr = re.sub(r"\$\{%s(?::\w+)?\}|\[\[%s\]\]|\$%s\b" % ((re.escape(name),) * 3), values[name], expr)
    assert "$" not in expr, f"a variable is left in {expr}"
    return expr


def scrape_config(targets: dict[str, str], prometheus: str) -> tuple[dict, list[str]]:
    """monitoring/prometheus/prometheus.yml with each job's target on loopback; jobs with nothing to scrape here are
    dropped and named."""
    config = yaml.safe_load((MONITORING / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval=SCRAPE_INTERVAL, evaluation_interval=SCRAPE_INTERVAL)
    config["rule_files"] = [str(MONITORING / "prometheus" / name) for name in config.get("rule_files", [])]
    kept, dropped = [], []
    for job in config["scrape_configs"]:
        name = job["job_name"]
        target = prometheus if name == "prometheus" else targets.get(name)
        if target is None:
            dropped.append(name)
            continue
        job.pop("scrape_interval", None)
        job["static_configs"] = [{"targets": [target]}]
        kept.append(job)
    config["scrape_configs"] = kept
    return config, dropped


def post(url: str, body, content_type: str = "application/json") -> int:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def traffic_round(app: str, drawings: list, rng: np.random.Generator) -> dict[int, int]:
    """Predictions, confirmations and corrections, page and probe hits, and bad requests; returns status counts."""
    statuses: dict[int, int] = {}

    def count(status: int) -> None:
        statuses[status] = statuses.get(status, 0) + 1

    for index in rng.choice(len(drawings), 12, replace=False):
        label, strokes = drawings[index]
        request = urllib.request.Request(
            f"{app}/api/predict", data=json.dumps({"strokes": strokes}).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
        count(200)
        predicted, version = answer["predictions"][0]["label"], answer["model_version"]
        wrong = str(rng.choice([c for c in CATEGORIES if c != predicted]))
        for said in (predicted, wrong):  # one confirmation, one correction of every prediction
            count(post(f"{app}/api/feedback", {"strokes": strokes, "label": said, "predicted_label": predicted, "model_version": version}))
    for path in ("/", "/healthz", "/readyz", "/api/model"):
        count(get(f"{app}{path}"))
    bad = [
        ("/api/predict", b"strokes", "text/plain"),  # 415
        ("/api/predict", b"{not json", "application/json"),  # 400
        ("/api/predict", {"strokes": [[[1, 2], [3]]], "k": 0}, "application/json"),  # 422
        ("/api/feedback", {"strokes": drawings[0][1], "label": "../etc"}, "application/json"),  # 400 / 422
    ]
    for path, body, content_type in bad:
        count(post(f"{app}{path}", body, content_type))
    count(get(f"{app}/api/no-such-endpoint"))  # 404
    return statuses


def query(prometheus: str, expr: str) -> list[dict]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=30) as response:
        answer = json.load(response)
    assert answer["status"] == "success", answer
    result = answer["data"]["result"]
    return result if answer["data"]["resultType"] == "vector" else [{"metric": {}, "value": result}]


@pytest.fixture(scope="module")
def live(tmp_path_factory, mlflow_url):
    """The web app under traffic, node-exporter and Prometheus scraping them; yields (prometheus URL, dropped jobs)."""
    from doodle_lib.dataset import Split, load_bitmaps
    from doodle_lib.settings import Settings
    from doodle_lib.training import TrainConfig, train

    root = tmp_path_factory.mktemp("prometheus-live")
    settings = Settings(data_dir=root / "data", storage_dir=root / "storage", MLFLOW_TRACKING_URI=mlflow_url,
                        model_name=f"doodle-{root.name}")
    x = np.concatenate([load_bitmaps(SAMPLE, c)[:200] for c in CATEGORIES])
    split = Split(x, np.repeat(CATEGORIES, 200))
    models = [train(split, CATEGORIES, TrainConfig(epochs=1, seed=seed, width=8, threads=2))[0] for seed in (0, 1)]
    first, second = register(settings, log_models(settings, models))
    drawings = [(category, strokes) for category, _, strokes in fixture_drawings()]

    with ExitStack() as services:
        app = services.enter_context(gunicorn_app(app_env(settings, poll_seconds=0.5), root))
        node = services.enter_context(node_exporter(root))
        targets = {"webapp": app.removeprefix("http://"), "node": node}
        from tests.services import free_port

        port = free_port()
        config, dropped = scrape_config(targets, f"127.0.0.1:{port}")
        prometheus = services.enter_context(prometheus_server(config, root / "prometheus", port=port))

        def all_up() -> bool:
            with urllib.request.urlopen(f"{prometheus}/api/v1/targets", timeout=10) as response:
                active = json.load(response)["data"]["activeTargets"]
            return len(active) == len(config["scrape_configs"]) and all(t["health"] == "up" for t in active)

        wait_until(all_up, 60, "Prometheus scrapes every target")
        rng = np.random.default_rng(0)
        statuses: dict[int, int] = {}
        for round_number in range(ROUNDS):
            if round_number == ROUNDS // 2:  # a promotion mid-traffic: both workers reload, the version changes
                tracking.set_production(settings, second)
                wait_until(lambda: served_versions(prometheus) == {second}, 60, f"every worker serving version {second}")
            for status, n in traffic_round(app, drawings, rng).items():
                statuses[status] = statuses.get(status, 0) + n
            time.sleep(3)  # a few scrapes between rounds
        assert {200, 201, 400, 404, 415, 422} <= statuses.keys(), statuses
        yield prometheus, dropped, (first, second)


def served_versions(prometheus: str) -> set[str]:
    """The versions the web app's workers report serving, as Prometheus last scraped them."""
    return {sample["value"][1] for sample in query(prometheus, "doodle_serving_model_version")}


def test_every_target_of_the_generated_config_is_scraped_and_only_airflow_and_mlflow_are_left_out(live):
    _, dropped, _ = live
    # statsd-exporter has no package here; the test MLflow server runs without --expose-prometheus.
    assert sorted(dropped) == ["airflow", "mlflow"]


def test_the_alert_rules_load_and_evaluate_on_the_real_metrics(live):
    prometheus, _, _ = live
    with urllib.request.urlopen(f"{prometheus}/api/v1/rules", timeout=10) as response:
        groups = json.load(response)["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    expected = [rule for group in yaml.safe_load((MONITORING / "prometheus" / "alerts.yml").read_text())["groups"]
                for rule in group["rules"]]
    assert len(rules) == len(expected)
    wait_until(lambda: all(r.get("lastEvaluation", "").startswith("2") and r["health"] == "ok" for r in rows(prometheus)),
               30, "every alert rule evaluated without error")


def rows(prometheus: str) -> list[dict]:
    with urllib.request.urlopen(f"{prometheus}/api/v1/rules", timeout=10) as response:
        return [rule for group in json.load(response)["data"]["groups"] for rule in group["rules"]]


@pytest.mark.parametrize("path", dashboard_params())
def test_every_panel_query_returns_data(live, path: Path):
    prometheus, _, versions = live
    dashboard = json.loads(path.read_text())
    empty, not_numbers = [], []
    for title, expr in queries(dashboard):
        result = query(prometheus, grafana_expr(expr, dashboard))
        values = [float(sample["value"][1]) for sample in result]
        if not values:
            empty.append(f"{title}: {expr}")
        elif not any(math.isfinite(v) for v in values):
            not_numbers.append(f"{title}: {expr} -> {values}")
    assert not empty, "panels whose query returns no data:\n" + "\n".join(empty)
    assert not not_numbers, "panels whose query returns only NaN/Inf:\n" + "\n".join(not_numbers)


@pytest.mark.parametrize("path", dashboard_params())
def test_every_series_a_panel_draws_has_the_labels_its_legend_names(live, path: Path):
    """A series without them is drawn with an empty name: a stray `or vector(0)` beside labelled series, say."""
    prometheus, _, _ = live
    dashboard = json.loads(path.read_text())
    unnamed = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            named = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            for sample in query(prometheus, grafana_expr(target["expr"], dashboard)):
                if not named <= sample["metric"].keys():
                    unnamed.append(f"{panel['title']}: {target['expr']} -> {sample['metric']}")
    assert not unnamed, "series drawn without the labels of their legend:\n" + "\n".join(unnamed)


def test_the_serving_panels_show_the_traffic_that_was_sent(live):
    prometheus, _, (first, second) = live
    by_status = {s["metric"]["status"]: float(s["value"][1]) for s in query(prometheus, "sum by (status) (flask_http_request_total)")}
    assert {"200", "201", "400", "404", "415", "422"} <= by_status.keys(), by_status
    assert served_versions(prometheus) == {second}
    confidence = {s["metric"]["model_version"] for s in query(prometheus, "sum by (model_version) (doodle_prediction_confidence_count)")}
    assert confidence == {first, second}
    reloads = {s["metric"]["result"]: float(s["value"][1]) for s in query(prometheus, "sum by (result) (doodle_model_reloads_total)")}
    assert reloads.get("success", 0) >= 2, reloads  # each of the two workers loaded the promoted version
    corrections = query(prometheus, 'sum(doodle_feedback_total{kind="correction"})')
    confirmations = query(prometheus, 'sum(doodle_feedback_total{kind="confirmed"})')
    assert float(corrections[0]["value"][1]) == float(confirmations[0]["value"][1]) == 12 * ROUNDS


def test_the_correction_rate_per_version_counts_every_judged_drawing(live):
    """Each prediction got one confirmation and one correction: 24 judged drawings a round, a ratio of one half.

    Drawings counted before a series' first scrape are invisible to increase(); a version's series must be there,
    at 0, before its first answer, or its first seconds of feedback (most of this traffic) go uncounted. The
    recorded series are read, as the alert reads them: one evaluation computes both. increase() only adds to what it
    saw: it extrapolates the last rate to the end of the window, up to a scrape interval (1 s) past the last sample,
    which over a version's ~10 s of samples here is up to a tenth or more; it never extrapolates below a first
    sample of 0. So a lost drawing shows as too few, and the bounds are uneven."""
    prometheus, _, versions = live
    judged = {s["metric"]["model_version"]: float(s["value"][1]) for s in query(prometheus, "doodle:feedback_judged:increase1d")}
    ratio = {s["metric"]["model_version"]: float(s["value"][1]) for s in query(prometheus, "doodle:correction_ratio:1d")}
    for version in versions:  # each served half the rounds
        assert 24 * ROUNDS / 2 * 0.99 <= judged[version] <= 24 * ROUNDS / 2 * 1.35, judged
        assert ratio[version] == pytest.approx(0.5, abs=0.02), ratio


def test_the_confidence_percentiles_show_no_confidence_a_prediction_cannot_have(live):
    """The top label of six has a probability of at least 1/6: these small models' p10 and p50 are near it, and
    the panel may interpolate them down to its bucket's lower bound, 0.15, but never towards 0."""
    prometheus, _, _ = live
    [dashboard] = [json.loads(p.read_text()) for p in DASHBOARDS if json.loads(p.read_text())["title"].endswith("Model quality")]
    shown = {}
    for title, expr in queries(dashboard):
        if title == "Confidence percentiles by model version":
            for sample in query(prometheus, grafana_expr(expr, dashboard)):
                shown[expr[:24], sample["metric"]["model_version"]] = float(sample["value"][1])
    assert len(shown) == 4 and min(shown.values()) >= 0.15, shown


def test_the_most_frequent_corrections_are_pairs_users_corrected(live):
    """Every pair of categories is exported at 0 from a version's load: fewer than ten corrected pairs (this traffic
    corrects fewer) must not fill the table with pairs nobody corrected."""
    prometheus, _, _ = live
    [dashboard] = [json.loads(p.read_text()) for p in DASHBOARDS if json.loads(p.read_text())["title"].endswith("Model quality")]
    [expr] = [expr for title, expr in queries(dashboard) if title == "Most frequent corrections (last day)"]
    rows = {(s["metric"]["predicted_label"], s["metric"]["label"]): float(s["value"][1])
            for s in query(prometheus, grafana_expr(expr, dashboard))}
    assert rows and min(rows.values()) > 0, rows


def test_the_model_loads_panel_counts_the_promotion(live):
    """Both workers loaded the promoted version: the panel must count two loads, not the one or none it can see."""
    prometheus, _, _ = live
    [dashboard] = [json.loads(p.read_text()) for p in DASHBOARDS if json.loads(p.read_text())["title"].endswith("Model quality")]
    [expr] = [expr for title, expr in queries(dashboard) if title == "Model loads by result"]
    loads = {s["metric"].get("result"): float(s["value"][1]) for s in query(prometheus, grafana_expr(expr, dashboard))}
    assert loads.get("success", 0) >= 1.5, loads
