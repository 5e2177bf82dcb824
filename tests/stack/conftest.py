"""Fixtures of the stack tests: what the real web app exports on /metrics."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def webapp_metrics(tmp_path_factory) -> dict[str, set[str]]:
    """Sample name -> label names, from the real app's /metrics after one of each event it counts."""
    from prometheus_client.parser import text_string_to_metric_families

    from doodle_lib.settings import Settings
    from webapp import create_app, metrics

    root = tmp_path_factory.mktemp("webapp-metrics")
    # No registry is needed: the app does not watch one here, and the events are fed to the metrics directly.
    settings = Settings(data_dir=root / "data", storage_dir=root / "storage", MLFLOW_TRACKING_URI="http://127.0.0.1:9")
    app = create_app({"SETTINGS": settings, "TESTING": True, "MODEL_WATCH": False})
    metrics.observe_prediction("1", "cat", 0.9)
    metrics.observe_feedback("1", "cat", "dog", "correction")
    metrics.on_reload("success", None)
    client = app.test_client()
    client.get("/healthz")
    client.post("/api/predict", json={})  # a 4xx, so the error paths have series too
    body = client.get("/metrics").get_data(as_text=True)
    exported: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            exported.setdefault(sample.name, set()).update(sample.labels)
    return exported
