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


@pytest.mark.parametrize("dag_id, first", [("retrain", "wait_for_feedback"), ("retrain_from_scratch", "take_waiting")])
def test_the_params_are_checked_before_the_run_waits_or_takes_a_drawing(dagbag, dag_id, first):
    dag = dagbag.get_dag(dag_id)
    assert dag.get_task("check_params").upstream_task_ids == set()
    assert dag.get_task(first).upstream_task_ids == {"check_params"}


def trigger_params(dag):
    """The params as the trigger endpoint validates a run's conf: on the serialized DAG."""
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag)).params


@pytest.mark.parametrize("dag_id", ["retrain", "retrain_from_scratch"])
def test_an_emptied_field_is_accepted_at_trigger_time(dagbag, dag_id):
    """The form sends null for a cleared number or list field, which the descriptions call empty: the default."""
    emptied = {"epochs": None, "learning_rates": None, "widths": None}
    validated = trigger_params(dagbag.get_dag(dag_id)).deep_merge(emptied).validate()
    assert {name: validated[name] for name in emptied} == emptied


def test_kinds_is_a_choice_of_the_known_kinds(dagbag):
    """Airflow 3.3's form shows an array as a multi-select only when its schema has `examples` (or `enum`); else a
    text box, one kind a line, where a trailing newline is a kind ''."""
    params = trigger_params(dagbag.get_dag("retrain"))
    schema = params.get_param("kinds").schema
    assert schema["type"] == "array" and schema["examples"] == schema["items"]["enum"] == ["fine-tune", "scratch"]
    assert params.deep_merge({"kinds": ["scratch", "fine-tune"]}).validate()["kinds"] == ["scratch", "fine-tune"]


@pytest.mark.parametrize(
    "dag_id, param, setting",
    [
        ("retrain", "threshold", "feedback_threshold"),
        ("retrain", "wait_minutes", "feedback_wait_minutes"),
        ("retrain", "tolerance", "promotion_tolerance"),
        ("retrain", "new_category_bar", "new_category_bar"),
        ("retrain_from_scratch", "epochs", "retrain_epochs"),
    ],
)
def test_a_setting_outside_its_param_s_bounds_is_refused_by_its_variable(dagbag, monkeypatch, dag_id, param, setting):
    """The setting is the param's default: outside the bounds, Airflow would refuse the whole DAG with a headline that
    names neither the param nor the variable. The bounds themselves are fine."""
    import click

    from doodle_lib.cli import current_settings

    schema = dagbag.get_dag(dag_id).params.get_param(param).schema
    variable = f"DOODLE_{setting.upper()}"
    for value in (schema["minimum"], schema["maximum"]):
        monkeypatch.setenv(variable, str(value))
        assert getattr(current_settings(), setting) == value
    for value in (schema["minimum"] - 1, schema["maximum"] + 1):
        monkeypatch.setenv(variable, str(value))
        with pytest.raises(click.ClickException, match=f"{variable}='{value}'"):
            current_settings()
