"""A real Airflow on loopback for tests and benchmarks: api-server, scheduler, dag-processor, triggerer (LocalExecutor),
sharing this process's AIRFLOW_HOME and SQLite DB, plus a UDP listener standing in for statsd-exporter."""
from __future__ import annotations

import os
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from tests.services import VENV_BIN, free_port, stop, wait_for_http

COMPONENTS = {
    "api-server": ["api-server"],
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}


def stack_env(port: int, statsd_port: int, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The measured low-latency settings (DESIGN.md): few executor slots, quick scheduler loop and heartbeats."""
    return {
        **os.environ,
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": "doodle-tests-only",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.25",
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
        "AIRFLOW__METRICS__STATSD_ON": "True",
        "AIRFLOW__METRICS__STATSD_HOST": "127.0.0.1",
        "AIRFLOW__METRICS__STATSD_PORT": str(statsd_port),
        "AIRFLOW__METRICS__STATSD_PREFIX": "airflow",
        **(extra or {}),
    }


@contextmanager
def statsd_listener() -> Iterator[tuple[int, list[str]]]:
    """A UDP socket collecting statsd lines; yields (port, lines)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    lines: list[str] = []
    running = True

    def receive():
        while running:
            try:
                lines.extend(sock.recv(65535).decode(errors="replace").splitlines())
            except socket.timeout:
                continue

    thread = threading.Thread(target=receive, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()[1], lines
    finally:
        running = False
        thread.join()
        sock.close()


@contextmanager
def airflow_stack(logs: Path, statsd_port: int, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """Start the four components, wait until the health endpoint says all are healthy; yields the API URL."""
    port = free_port()
    env = stack_env(port, statsd_port, extra_env)
    logs.mkdir(parents=True, exist_ok=True)
    processes = []
    try:
        for name, args in COMPONENTS.items():
            with (logs / f"{name}.log").open("wb") as out:
                processes.append(
                    subprocess.Popen([str(VENV_BIN / "airflow"), *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
                )
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/api/v2/monitor/health", 120, processes[0], logs / "api-server.log")
        wait_until(lambda: all_healthy(url), 120, "all Airflow components healthy")
        yield url
    finally:
        for process in processes:
            stop(process)


def all_healthy(url: str) -> bool:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url}/api/v2/monitor/health", timeout=5) as response:
        health = json.load(response)
    return all(part.get("status") == "healthy" for part in health.values())


def wait_until(check: Callable[[], object], timeout: float, what: str, every: float = 0.1):
    """Poll `check` until it returns something truthy (returned), or fail saying what did not happen."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:  # a component still starting up
            value = None
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"not within {timeout:.0f}s: {what}")


# --- the metadata DB, read and changed the way the REST API would --------------------------------------


def task_instances(dag_id: str, run_id: str | None = None) -> list:
    """Current task instances of a DAG (optionally one run), detached from the session."""
    from sqlalchemy import select

    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:
        query = select(TaskInstance).where(TaskInstance.dag_id == dag_id)
        if run_id:
            query = query.where(TaskInstance.run_id == run_id)
        found = session.scalars(query).all()
        session.expunge_all()
        return found


def task_state(dag_id: str, run_id: str, task_id: str):
    return next((ti for ti in task_instances(dag_id, run_id) if ti.task_id == task_id), None)


def run_state(dag_id: str, run_id: str) -> str | None:
    from sqlalchemy import select

    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session

    with create_session() as session:
        state = session.scalar(select(DagRun.state).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        return getattr(state, "value", state)


def set_paused(dag_id: str, paused: bool) -> None:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        session.get(DagModel, dag_id).is_paused = paused


def clear_task(dag_id: str, run_id: str, task_id: str) -> None:
    """Clear one task instance (what the UI's Clear button does): it runs again with a new try."""
    from sqlalchemy import select

    from airflow.models.taskinstance import TaskInstance, clear_task_instances
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = session.scalars(
            select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id, TaskInstance.task_id == task_id)
        ).all()
        clear_task_instances(tis, session)


def api_get(url: str, path: str) -> dict:
    """GET a REST API v2 path with a token from the all-admins simple auth manager (tests only)."""
    import json
    import urllib.request

    with urllib.request.urlopen(f"{url}/auth/token", timeout=10) as response:
        token = json.load(response)["access_token"]
    request = urllib.request.Request(f"{url}{path}", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)
