"""The pipeline page: recent retraining runs, each stage's state and the gate's verdict, from Airflow."""
from __future__ import annotations

import json
from graphlib import TopologicalSorter

from flask import Blueprint, current_app, jsonify, render_template

from webapp.airflow_client import AirflowClient, AirflowUnavailable, quote

bp = Blueprint("pipeline", __name__)
DAGS = ("retrain", "retrain_from_scratch")
RUNS_PER_DAG = 10


def init_app(app) -> None:
    """One Airflow client per worker, sharing its token between requests."""
    app.extensions["airflow"] = AirflowClient(app.config["SETTINGS"])
    app.register_blueprint(bp)


def recent_runs() -> list[dict]:
    """The newest runs of the retraining DAGs, newest first, with their stages and outcome."""
    client: AirflowClient = current_app.extensions["airflow"]
    runs = []
    for dag_id in DAGS:
        order = stage_order(client, dag_id)
        listing = client.get(f"/api/v2/dags/{dag_id}/dagRuns?order_by=-run_after&limit={RUNS_PER_DAG}")
        for run in listing["dag_runs"]:
            path = f"/api/v2/dags/{dag_id}/dagRuns/{quote(run['dag_run_id'])}"
            tasks = client.get(f"{path}/taskInstances")["task_instances"]
            # In the DAG's order, not by start date: tasks yet to run have none (SQLite sorts them first, before the
            # waiting sensor), and the tasks a skip or failure cascades over start in whatever order Airflow marks them.
            tasks.sort(key=lambda t: (order.get(t["task_id"], len(order)), t["task_id"], t.get("map_index") or 0))
            runs.append({
                "dag_id": dag_id,
                "run_id": run["dag_run_id"],
                "state": run["state"],
                "start": run.get("start_date"),
                "end": run.get("end_date"),
                "stages": [{"task": stage_name(t), "state": t["state"], "seconds": t.get("duration")} for t in tasks],
                "result": outcome(client, path, tasks),
                "note": note(tasks),
            })
    return sorted(runs, key=lambda r: r["start"] or "", reverse=True)


def stage_order(client: AirflowClient, dag_id: str) -> dict[str, int]:
    """Each task's place in the order the DAG runs them: the length of its longest path from a first task."""
    upstream: dict[str, set[str]] = {}
    for task in client.get(f"/api/v2/dags/{dag_id}/tasks")["tasks"]:
        upstream.setdefault(task["task_id"], set())
        for downstream in task["downstream_task_ids"]:
            upstream.setdefault(downstream, set()).add(task["task_id"])
    depth: dict[str, int] = {}
    for task_id in TopologicalSorter(upstream).static_order():
        depth[task_id] = max((depth[before] + 1 for before in upstream[task_id]), default=0)
    return depth


def stage_name(task: dict) -> str:
    """A task's id; a mapped task's instances (one per candidate) as `train[0]`, `train[1]`, ..."""
    index = task.get("map_index", -1)
    return task["task_id"] if index is None or index < 0 else f"{task['task_id']}[{index}]"


def outcome(client: AirflowClient, run_path: str, tasks: list[dict]) -> dict | None:
    """The promote task's verdict (version, promoted, reason), once it has one."""
    if not any(t["task_id"] == "promote" and t["state"] == "success" for t in tasks):
        return None
    value = client.get(f"{run_path}/taskInstances/promote/xcomEntries/return_value")["value"]
    return json.loads(value) if isinstance(value, str) else value


def note(tasks: list[dict]) -> str | None:
    """What a run that trained nothing did instead: its state alone ("success") reads like a new model."""
    if any(t["task_id"] == "wait_for_feedback" and t["state"] == "skipped" for t in tasks):
        return "nothing trained: too little feedback arrived in time"
    return None


@bp.get("/api/pipeline")
def pipeline_json():
    """Recent retraining runs as JSON; 503 with the reason when Airflow cannot be asked."""
    try:
        return jsonify(airflow=current_app.extensions["airflow"].base, runs=recent_runs())
    except AirflowUnavailable as error:
        return jsonify(error=str(error)), 503


@bp.get("/pipeline")
def pipeline_page():
    """Recent retraining runs as a table that refreshes itself."""
    try:
        runs, error = recent_runs(), None
    except AirflowUnavailable as problem:
        runs, error = [], str(problem)
    return render_template("pipeline.html", runs=runs, error=error, airflow=current_app.extensions["airflow"].base)
