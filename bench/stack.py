"""Benchmark the embedded stack: first and warm start, memory idle and while retraining, flywheel time.

Run from the project root: `.venv/bin/python -m bench.stack`.
"""
from __future__ import annotations

import argparse
import os
import platform as host
import tempfile
import threading
import time
from datetime import date, datetime
from pathlib import Path

import psutil

from tests.conftest import fixture_drawings
from tests.e2e.stack_client import Platform, wait_until


def pss_mb(processes: list[psutil.Process]) -> float:
    """Proportional set size summed over processes: shared pages counted once in all."""
    total = 0
    for process in processes:
        try:
            total += process.memory_full_info().pss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total / 2**20


# What a stack process is, from a marker in its command line; the first marker that matches names it.
ROLES = (
    ("/bin/sh -c", "sh -c (honcho's shell per Procfile line)"),
    ("doodle stack up", "doodle stack up (waits, prints the banner)"),
    ("honcho start", "honcho (manager, one reader per Procfile line)"),
    ("uvicorn", "MLflow server (uvicorn)"),
    ("doodle_lib.stack airflow", "Airflow launcher (imports Airflow, forks the components)"),
    ("api_server", "Airflow api-server"),
    ("LocalExecutor", "Airflow LocalExecutor workers (pre-forked, one per slot)"),
    ("airflow scheduler", "Airflow scheduler"),
    ("airflow dag-processor", "Airflow dag-processor"),
    ("airflow triggerer", "Airflow triggerer (and its trigger runner)"),
    ("gunicorn: master", "web app: gunicorn master (torch imported, shared)"),
    ("gunicorn: worker", "web app: gunicorn workers"),
    ("prometheus", "Prometheus"),
)


def breakdown(processes: list[psutil.Process]) -> dict[str, tuple[int, float]]:
    """PSS per role: {role: (processes, MB)}, in ROLES order."""
    found: dict[str, tuple[int, float]] = {}
    for process in processes:
        try:
            line = " ".join(process.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        role = next((name for marker, name in ROLES if marker in line), process.name())
        count, mb = found.get(role, (0, 0.0))
        found[role] = (count + 1, mb + pss_mb([process]))
    order = [name for _, name in ROLES]
    return dict(sorted(found.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)))


def seconds(stamp: str | None) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() if stamp else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threshold", type=int, default=30, help="feedback that starts a retraining run")
    parser.add_argument("--idle-seconds", type=float, default=30, help="settle time before measuring idle memory")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        platform = Platform(Path(folder), args.threshold)
        started = time.monotonic()
        platform.start()
        first_start = time.monotonic() - started
        stack = platform.stack
        version = wait_until(lambda: stack.model()["version"], 120, "the first model")
        time.sleep(args.idle_seconds)
        idle_processes = platform.processes()
        idle_roles = breakdown(idle_processes)
        idle = sum(mb for _, mb in idle_roles.values())

        drawings = fixture_drawings()[: args.threshold]
        for category, _, strokes in drawings[:-1]:
            stack.feedback(strokes, category, category, version)
        peak, done = [idle], threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak.append(pss_mb(platform.processes()))
                time.sleep(0.5)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        category, _, strokes = drawings[-1]
        t0 = time.time()
        stack.feedback(strokes, category, category, version)
        wait_until(lambda: stack.model()["version"] != version, 600, "the retrained model to be served", 0.1)
        served = time.time()
        done.set()
        sampler.join()

        run = [r for r in stack.dag_runs("retrain") if r["state"] == "success"][0]
        tasks = stack.task_instances("retrain", run["dag_run_id"])
        busy = {t["task_id"]: seconds(t["end_date"]) - seconds(t["start_date"]) for t in tasks}
        sensor_end = seconds(next(t["end_date"] for t in tasks if t["task_id"] == "wait_for_feedback"))
        last_end = max(seconds(t["end_date"]) for t in tasks if t["task_id"] == "promote")
        after_sensor = [t for t in tasks if t["task_id"] != "wait_for_feedback" and seconds(t["end_date"]) <= last_end]
        work = sum(busy[t["task_id"]] for t in after_sensor)
        pipeline = last_end - t0
        overhead = pipeline - work  # sensor reaction plus the gaps between tasks

        platform.stop()
        started = time.monotonic()
        platform.start()
        warm_start = time.monotonic() - started
        platform.stop()

    total = served - t0
    print(f"## Embedded stack (bench/stack.py), {date.today()}")
    print(f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, {host.platform()}, "
          f"Python {host.python_version()}")
    print(f"threshold {args.threshold}; processes idle: {len(idle_processes)}")
    print("| measure | value |")
    print("|---|---|")
    print(f"| first start on empty folders (init, first model, services healthy) | {first_start:.0f} s |")
    print(f"| warm start (services healthy) | {warm_start:.1f} s |")
    print(f"| PSS idle, whole stack | {idle:.0f} MB |")
    print(f"| PSS peak during a retraining run | {max(peak):.0f} MB |")
    print(f"| threshold-th correction to new model served | {total:.1f} s |")
    print(f"| of which task work after the sensor (snapshot..promote) | {work:.1f} s |")
    print(f"| of which train task | {busy.get('train', float('nan')):.1f} s |")
    print(f"| of which Airflow overhead (sensor reaction + gaps between tasks) | {overhead:.1f} s ({overhead / total:.0%}) |")
    print(f"| of which sensor reaction (correction to sensor done) | {sensor_end - t0:.1f} s |")
    print(f"| of which web app picking up the alias | {served - last_end:.1f} s |")
    print()
    print("| process (idle) | count | PSS |")
    print("|---|---|---|")
    for role, (count, mb) in idle_roles.items():
        print(f"| {role} | {count} | {mb:.0f} MB |")


if __name__ == "__main__":
    main()
