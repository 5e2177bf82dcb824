"""Benchmark the flywheel: from the threshold-th correction posted to the web app to the new model being served.

Real services on loopback: `mlflow server`, Airflow 3.3 (api-server, scheduler, dag-processor, triggerer,
LocalExecutor, the low-latency settings of DESIGN.md), the web app under gunicorn (alias poll), a DVC remote.
The data is the tests' small world (500 training + 200 evaluation drawings a category, a base model trained
on it); fine-tuning cost does not depend on the base size (the replay draws a fixed number of old drawings).
Each run posts `--threshold` golden drawings one by one to /api/feedback and times the chain, split into
Airflow's share (sensor reaction + gaps between tasks + task start-up inside the task slots) and the work.

Run from the project root: `.venv/bin/python -m bench.flywheel [--runs 3]`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import date
from pathlib import Path

STAGES = ["snapshot", "ingest", "version", "train", "evaluate", "register", "promote"]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threshold", type=int, default=50, help="corrections that start a run")
    parser.add_argument("--runs", type=int, default=3, help="turns to time (3 x 50 uses each golden drawing once)")
    parser.add_argument("--poll", type=float, default=5.0, help="the web app's registry poll, seconds (its default)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # run the finally blocks: stop every service

    root = Path(tempfile.mkdtemp(prefix="doodle-flywheel-"))
    os.environ.update({
        "AIRFLOW_HOME": str(root / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(Path("dags").resolve()),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(Path("plugins").resolve()),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "DOODLE_DATA_DIR": str(root / "data"),
        "DOODLE_STORAGE_DIR": str(root / "storage"),
        "DOODLE_FEEDBACK_THRESHOLD": str(args.threshold),
        "DOODLE_TORCH_THREADS": "2",
    })
    sys.path.append(str(Path("plugins").resolve()))
    subprocess.run([str(Path(sys.executable).parent / "airflow"), "db", "migrate"], check=True, capture_output=True)

    from doodle_lib import tracking
    from doodle_lib.settings import get_settings
    from tests.conftest import fixture_drawings
    from tests.dags import stack, world
    from tests.services import mlflow_server
    from tests.webapp.serving import app_env, get_json, gunicorn_app

    with mlflow_server(root / "mlflow") as mlflow_url:
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_url
        settings = get_settings()
        dataset_version = world.prepare_base(settings)
        tracking.set_production(settings, world.register_base(settings, world.base_checkpoint(settings), dataset_version))
        drawings = fixture_drawings()
        with (
            stack.statsd_listener() as (statsd_port, _),
            stack.airflow_stack(root / "logs", statsd_port),
            gunicorn_app(app_env(settings, poll_seconds=args.poll), root / "logs", workers=2) as webapp,
        ):
            stack.set_paused("retrain", False)
            results = []
            for turn in range(args.runs):
                # Every gunicorn worker polls on its own: start only when all of them serve production.
                served = tracking.production_version(settings).version
                stack.wait_until(lambda: all(get_json(f"{webapp}/api/model")["version"] == served for _ in range(8)),
                                 60, "every web app worker serving production")
                sensor = stack.wait_until(
                    lambda: next((ti for ti in stack.task_instances("retrain") if ti.task_id == "wait_for_feedback"
                                  and ti.state == "deferred"), None), 120, "the sensor deferred")
                for n in range(args.threshold):
                    category, _, strokes = drawings[(turn * args.threshold + n) % len(drawings)]
                    post(f"{webapp}/api/feedback", {"strokes": strokes, "label": category, "predicted_label": category, "model_version": served})
                t0 = time.time()

                def served_or_rejected():
                    version = registered(settings, sensor.run_id)
                    if version and get_json(f"{webapp}/api/model")["version"] == version.version:
                        return "served"  # by the first worker that asks the registry
                    promote = stack.task_state("retrain", sensor.run_id, "promote")
                    return promote and promote.state == "success" and version.tags.get("promoted") != "true" and "rejected"

                outcome = stack.wait_until(served_or_rejected, 600, "the new model served (or rejected)", 0.05)
                t_served = time.time() if outcome == "served" else float("nan")
                stack.wait_until(lambda: stack.run_state("retrain", sensor.run_id) == "success", 120, "the run finished", 0.2)
                tis = {ti.task_id: ti for ti in stack.task_instances("retrain", sensor.run_id)}
                results.append(measure(settings, sensor.run_id, tis, t0, t_served))
    report(results, args)


def registered(settings, run_id: str):
    """The model version the run registered, or None yet."""
    from doodle_lib import tracking

    found = tracking.client(settings).search_model_versions(f"name = '{settings.model_name}' and tags.airflow_run_id = '{run_id}'")
    return found[0] if found else None


def measure(settings, run_id: str, tis: dict, t0: float, t_served: float) -> dict:
    """Split the turn: Airflow's share, the stages' own work (timed inside doodle_lib), the web app's pickup."""
    from doodle_lib import tracking

    start = {k: ti.start_date.timestamp() for k, ti in tis.items()}
    end = {k: ti.end_date.timestamp() for k, ti in tis.items()}
    slots = sum(end[s] - start[s] for s in STAGES)  # task slots, start-up included
    chain = end["promote"] - t0
    client = tracking.client(settings)
    run = client.search_runs([client.get_experiment_by_name(settings.experiment).experiment_id], f"tags.airflow_run_id = '{run_id}'")[0]
    return {
        "total": t_served - t0,
        "sensor": end["wait_for_feedback"] - t0,
        "gaps": chain - (end["wait_for_feedback"] - t0) - slots,
        "slots": slots,
        "train_slot": end["train"] - start["train"],
        "training": run.data.metrics["train_seconds"],
        "pickup": t_served - end["promote"],
        "promoted": t_served == t_served,  # NaN when the gate kept production
        "stages": {s: end[s] - start[s] for s in STAGES},
    }


def report(results: list[dict], args) -> None:
    print(f"## Flywheel (bench/flywheel.py), {date.today()}")
    print(f"machine: {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}; "
          f"threshold {args.threshold}, web app poll {args.poll:g} s, {len(results)} turns")
    print("| turn | correction to served | sensor reaction | gaps between tasks | task slots (snapshot..promote) | "
          "of which pure training | web app pickup | Airflow share |")
    print("|---|---|---|---|---|---|---|---|")
    for n, r in enumerate(results, 1):
        airflow = r["sensor"] + r["gaps"]
        if not r["promoted"]:
            print(f"| {n} | not promoted (gate) | {r['sensor']:.1f} s | {r['gaps']:.1f} s | {r['slots']:.1f} s | "
                  f"{r['training']:.1f} s | - | - |")
            continue
        print(f"| {n} | {r['total']:.1f} s | {r['sensor']:.1f} s | {r['gaps']:.1f} s | {r['slots']:.1f} s | "
              f"{r['training']:.1f} s | {r['pickup']:.1f} s | {airflow / r['total']:.0%} |")
    print()
    print("Stage slots (s): " + "; ".join(
        f"{s} " + "/".join(f"{r['stages'][s]:.1f}" for r in results) for s in STAGES))


if __name__ == "__main__":
    main()
