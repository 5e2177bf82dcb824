"""Grafana: provisioning, dashboards as valid JSON on the pinned datasource, queries that Prometheus accepts."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.stack.files import MONITORING, compose, load_yaml, parse_promql, promtool, raw_compose, variables

GRAFANA = MONITORING / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
# What each dashboard may read, so a real Prometheus scraping the real app shows data in every panel.
SOURCES = {"Serving": "webapp", "Model quality": "webapp", "Pipeline": "airflow_", "Host": "node_"}


def datasource_uid() -> str:
    [source] = [s for f in (GRAFANA / "provisioning" / "datasources").glob("*.yml") for s in load_yaml(f)["datasources"]]
    assert source["type"] == "prometheus" and source["uid"], "the Prometheus datasource needs a pinned uid"
    return source["uid"]


def panels(dashboard: dict) -> list[dict]:
    """Every panel, including those inside collapsed rows."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found += panel.get("panels", [])
    return found


def queries(dashboard: dict) -> list[tuple[str, str]]:
    return [(panel["title"], target["expr"]) for panel in panels(dashboard) if panel["type"] != "row"
            for target in panel.get("targets", [])]


@pytest.fixture(scope="module")
def dashboards() -> dict[str, dict]:
    loaded = {}
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        loaded[dashboard["title"].split(" / ")[-1]] = dashboard
    return loaded


def test_the_four_dashboards_exist_with_unique_uids(dashboards):
    assert SOURCES.keys() == dashboards.keys()
    uids = [d["uid"] for d in dashboards.values()]
    assert len(set(uids)) == len(uids) and all(uids)


def test_every_panel_and_query_uses_the_pinned_datasource(dashboards):
    uid = datasource_uid()
    for title, dashboard in dashboards.items():
        for panel in panels(dashboard):
            if panel["type"] == "row":
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": uid}, f"{title} / {panel['title']}"
            assert panel["targets"], f"{title} / {panel['title']} has no query"
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == uid and target["expr"].strip(), f"{title} / {panel['title']}"


def test_panels_do_not_overlap(dashboards):
    for title, dashboard in dashboards.items():
        cells = set()
        for panel in panels(dashboard):
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, f"{title} / {panel['title']} is wider than the grid"
            area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"]) for y in range(pos["y"], pos["y"] + pos["h"])}
            assert not cells & area, f"{title} / {panel['title']} overlaps another panel"
            cells |= area


def test_every_query_is_valid_promql(dashboards, tmp_path):
    """promtool parses each query as a recording rule, the way Prometheus would."""
    rules = [{"record": f"dashboard:query_{i}", "expr": expr}
             for i, (_, expr) in enumerate(q for d in dashboards.values() for q in queries(d))]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_dashboards_read_only_their_own_source(dashboards, webapp_metrics):
    for title, dashboard in dashboards.items():
        for panel_title, expr in queries(dashboard):
            for name in parse_promql(expr).metrics:
                if SOURCES[title] == "webapp":
                    assert name in webapp_metrics, f"{title} / {panel_title}: the web app exports no {name}"
                else:
                    assert name.startswith(SOURCES[title]), f"{title} / {panel_title}: {name} is not an {SOURCES[title]}* metric"


def test_grafana_mounts_the_provisioning_and_dashboards():
    services = compose({name: "x" * 16 for name, op, _ in variables(raw_compose()) if op == ":?"})["services"]
    grafana = services["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"]}
    assert mounts["./monitoring/grafana/provisioning"] == "/etc/grafana/provisioning"
    [provider] = load_yaml(GRAFANA / "provisioning" / "dashboards" / "doodle.yml")["providers"]
    assert mounts["./monitoring/grafana/dashboards"] == provider["options"]["path"]
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert home.parent.as_posix() == provider["options"]["path"] and (GRAFANA / "dashboards" / home.name).is_file()
    [source] = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert source["url"] == "http://prometheus:9090" and "prometheus" in services
