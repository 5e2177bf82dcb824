"""The retraining DAG on a real Airflow (scheduler, triggerer, LocalExecutor, api-server): the deferred sensor
fires on drawings the web app's writer stores one by one, the train task's process is killed mid-training, the
task is cleared and runs again, and no drawing is lost or counted twice. Airflow's statsd output is checked too."""
from __future__ import annotations

import os
import re
import signal
import time

import pytest

from doodle_lib import feedback, tracking
from tests.dags import stack, world
from tests.stack.files import MONITORING, load_yaml, parse_promql
from tests.stack.test_statsd_mapping import exported, used_airflow_queries

pytestmark = pytest.mark.slow
THRESHOLD = 20


def mlflow_runs(settings, run_id: str):
    client = tracking.client(settings)
    experiment = client.get_experiment_by_name(settings.experiment)
    return client.search_runs([experiment.experiment_id], f"tags.airflow_run_id = '{run_id}'")


def training_started(settings, run_id: str) -> bool:
    return any(run.data.metrics.get("train_loss") is not None for run in mlflow_runs(settings, run_id))


def test_killed_train_task_is_cleared_and_reruns_without_losing_or_doubling_drawings(retrain_world, airflow_db, tmp_path):
    settings = retrain_world
    extra = {"DOODLE_FEEDBACK_THRESHOLD": str(THRESHOLD), "DOODLE_FINE_TUNE_EPOCHS": "12", "DOODLE_FEEDBACK_POLL_SECONDS": "1"}
    with stack.statsd_listener() as (statsd_port, metrics), stack.airflow_stack(tmp_path / "logs", statsd_port, extra) as api:
        stack.set_paused("retrain", False)  # @continuous: the scheduler starts a run at once
        sensor = stack.wait_until(
            lambda: next((ti for ti in stack.task_instances("retrain") if ti.task_id == "wait_for_feedback" and ti.state == "deferred"), None),
            90,
            "the feedback sensor deferred to the triggerer",
        )
        run_id = sensor.run_id

        counted = [world.save_feedback(settings, 1, start=i)[0] for i in range(THRESHOLD)]  # one by one
        threshold_th = time.time()
        snapshot = stack.wait_until(lambda: (ti := stack.task_state("retrain", run_id, "snapshot")) and ti.start_date and ti, 60, "snapshot started")
        sensor_to_snapshot = snapshot.start_date.timestamp() - threshold_th
        assert sensor_to_snapshot < 8, f"snapshot started {sensor_to_snapshot:.1f}s after the threshold-th drawing"

        stack.wait_until(lambda: training_started(settings, run_id), 180, "the first training epoch logged", every=0.5)
        train = stack.task_state("retrain", run_id, "train")
        assert train.state == "running" and train.pid
        os.kill(train.pid, signal.SIGKILL)  # the task's process dies mid-training
        late = world.save_feedback(settings, 5, start=100)  # drawings that arrive during the run
        failed = stack.wait_until(
            lambda: (ti := stack.task_state("retrain", run_id, "train")) and ti.state in ("up_for_retry", "failed") and ti, 60, "train marked failed"
        )
        stack.clear_task("retrain", run_id, "train")
        stack.wait_until(lambda: stack.run_state("retrain", run_id) in ("success", "failed"), 300, "the run finished", every=0.5)
        stack.set_paused("retrain", True)
        states = {ti.task_id: ti.state for ti in stack.task_instances("retrain", run_id)}
        links = {task: stack.api_get(api, f"/api/v2/dags/retrain/dagRuns/{run_id}/taskInstances/{task}/links?map_index={index}")["extra_links"]
                 for task, index in (("train", 0), ("choose", -1), ("register", -1))}
        train_tries = stack.task_state("retrain", run_id, "train").try_number

    assert stack.run_state("retrain", run_id) == "success", states
    assert train_tries > failed.try_number
    # None lost, none counted twice: each drawing is in exactly one dataset batch, or still waits.
    in_dataset = world.dataset_keys(settings)
    assert sorted(in_dataset) == sorted(counted) and len(set(in_dataset)) == len(in_dataset)
    assert sorted(ref.key for ref in feedback.complete(settings.feedback_dir)) == sorted(late)
    assert not (settings.batches_dir / world.batch_name(run_id)).exists()
    # One registered version for the run; the killed try's MLflow run is marked KILLED, the parent run finished.
    registered = tracking.client(settings).search_model_versions(f"name = '{settings.model_name}' and tags.airflow_run_id = '{run_id}'")
    assert len(registered) == 1
    statuses = sorted(run.info.status for run in mlflow_runs(settings, run_id))
    assert statuses == ["FINISHED", "FINISHED", "KILLED"]
    # The UI's extra links lead to the MLflow runs (the candidate's and the parent) and the model version.
    assert re.fullmatch(rf"{settings.tracking_uri}/#/experiments/\d+/runs/\w+", links["train"]["MLflow"]), links
    assert re.fullmatch(rf"{settings.tracking_uri}/#/experiments/\d+/runs/\w+", links["choose"]["MLflow"]), links
    assert links["register"]["MLflow"] == f"{settings.tracking_uri}/#/models/{settings.model_name}/versions/{registered[0].version}"
    # Airflow's own metrics and the pipeline's figures went to statsd.
    names = {line.split(":")[0] for line in metrics}
    assert "airflow.doodle.retrain.feedback_consumed" in names and "airflow.doodle.retrain.candidate_eval_accuracy" in names
    assert any(name.startswith("airflow.ti.finish") or name.startswith("airflow.dagrun") for name in names), sorted(names)[:30]
    # Those very lines, through statsd-exporter's mapping, become the names the Pipeline dashboard reads.
    kinds = {"c": "counter", "g": "gauge", "ms": "timer", "h": "histogram", "d": "histogram"}
    sent = [(line.split(":", 1)[0], kinds[line.split(":", 1)[1].split("|")[1]]) for line in metrics if "|" in line]
    produced = exported(load_yaml(MONITORING / "statsd_mapping.yml"), sent)
    read = {n for _, expr in used_airflow_queries() for n in parse_promql(expr).metrics if n.startswith("airflow_")}
    signs = ("success", "ti_finish", "task_duration", "candidate_eval_accuracy", "scheduler_heartbeat")
    a_successful_run_makes = {n for n in read if any(sign in n for sign in signs)}
    assert a_successful_run_makes and a_successful_run_makes <= produced.keys(), a_successful_run_makes - produced.keys()
