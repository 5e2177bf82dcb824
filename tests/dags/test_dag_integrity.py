"""Every DAG file imports fast and clean, without torch, mlflow or dvc, and every DAG has tags, retries and a doc."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from doodle_lib.settings import PROJECT_ROOT

DAG_FILES = sorted(p.name for p in (PROJECT_ROOT / "dags").glob("*.py"))
HEAVY = ("torch", "mlflow", "dvc")


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) >= {"retrain", "retrain_from_scratch"}


@pytest.mark.parametrize("dag_id", ["retrain", "retrain_from_scratch"])
def test_tags_retries_doc_and_one_run_at_a_time(dagbag, dag_id):
    dag = dagbag.get_dag(dag_id)
    assert dag.tags and dag.doc_md and dag.max_active_runs == 1
    for task in dag.tasks:
        if task.task_id != "wait_for_feedback":  # the sensor's wait is not a flaky stage
            assert task.retries >= 1 and task.retry_delay.total_seconds() > 0, task.task_id


def test_train_choose_and_register_link_to_mlflow(dagbag):
    for dag_id in ("retrain", "retrain_from_scratch"):
        dag = dagbag.get_dag(dag_id)
        for task_id in ("train", "choose", "register"):
            assert [link.name for link in dag.get_task(task_id).operator_extra_links] == ["MLflow"]


@pytest.mark.parametrize("name", DAG_FILES)
def test_file_imports_fast_without_heavy_libraries(airflow_db, name):
    """In a fresh interpreter, as the DAG processor would: the file's own import time and what it pulled in."""
    script = f"""
import importlib.util, json, sys, time
import airflow.sdk, doodle_lib.settings  # what every DAG processor has loaded already
sys.path.append({str(PROJECT_ROOT / "plugins")!r})
start = time.perf_counter()
spec = importlib.util.spec_from_file_location("dag_under_test", {str(PROJECT_ROOT / "dags" / name)!r})
spec.loader.exec_module(importlib.util.module_from_spec(spec))
print(json.dumps({{"seconds": time.perf_counter() - start, "heavy": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ, cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["heavy"] == []
    assert result["seconds"] < 0.5, result


@pytest.mark.parametrize("deployed", ["2026-11-29T05:00:00", "2026-11-29T19:00:00", "2026-11-28T12:00:00"])
def test_a_new_deployment_waits_for_the_weekly_slot_instead_of_retraining_at_once(dagbag, monkeypatch, deployed):
    """Deployed two hours after a Sunday's slot, or any time later in the week: the first run is next Sunday's."""
    from datetime import datetime, timedelta, timezone

    import airflow.timetables.trigger
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import TimeRestriction

    now = datetime.fromisoformat(deployed).replace(tzinfo=timezone.utc)
    monkeypatch.setattr(airflow.timetables.trigger, "utcnow", lambda: now)
    dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dagbag.get_dag("retrain_from_scratch")))
    first = dag.timetable.next_dagrun_info(
        last_automated_data_interval=None, restriction=TimeRestriction(earliest=dag.start_date, latest=None, catchup=False)
    )
    assert now < first.run_after <= now + timedelta(days=7)
    assert first.run_after.weekday() == 6 and first.run_after.hour == 3  # Sunday 03:00 UTC
