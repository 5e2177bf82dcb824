"""The web app's pipeline page on a real Airflow: a run's stages are listed in the order they run."""
from __future__ import annotations

import pytest

from tests.dags import stack

pytestmark = pytest.mark.slow
STAGES = ["check_params", "wait_for_feedback", "snapshot", "ingest", "version", "plan", "train", "evaluate", "choose",
          "register", "promote", "cleanup"]


def test_a_waiting_run_lists_its_stages_in_order(settings, airflow_db, tmp_path):
    from webapp import create_app

    with stack.statsd_listener() as (statsd_port, _), stack.airflow_stack(tmp_path / "logs", statsd_port) as api:
        stack.set_paused("retrain", False)  # @continuous: the scheduler starts a run, which waits for feedback
        sensor = stack.wait_until(
            lambda: next((ti for ti in stack.task_instances("retrain") if ti.task_id == "wait_for_feedback" and ti.state == "deferred"), None),
            90,
            "the feedback sensor deferred to the triggerer",
        )
        stack.set_paused("retrain", True)
        # The simple auth manager of the tests' Airflow makes everyone admin: any password logs in.
        app = create_app({"MODEL_WATCH": False, "SETTINGS": settings.model_copy(update={"airflow_url": api, "airflow_password": "x"})})
        answer = app.test_client().get("/api/pipeline")

    assert answer.status_code == 200, answer.json
    [run] = [run for run in answer.json["runs"] if run["run_id"] == sensor.run_id]
    assert [stage["task"] for stage in run["stages"]] == STAGES and run["note"] is None
