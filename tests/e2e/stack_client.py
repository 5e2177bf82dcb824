"""Drive a running embedded stack from a test: the web app's API, Airflow's REST API, the registry."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

from doodle_lib.settings import PROJECT_ROOT
from tests.services import free_port

START_TIMEOUT = 900  # the first start trains the first model


def call(url: str, body: dict | None = None, token: str | None = None, timeout: float = 30) -> dict:
    """One JSON request; raises urllib's HTTPError on a non-2xx answer."""
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode())
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read() or b"{}")


def wait_until(check, timeout: float, what: str, interval: float = 1.0):
    """Poll `check()` until it returns something truthy; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except OSError as error:  # a service still starting or restarting
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error})")


@dataclass
class Stack:
    webapp: str
    airflow: str
    mlflow: str
    password_file: str

    def model(self) -> dict:
        return call(f"{self.webapp}/api/model")

    def predict(self, strokes) -> dict:
        return call(f"{self.webapp}/api/predict", {"strokes": strokes, "k": 10})

    def feedback(self, strokes, label: str, predicted: str, version: str) -> dict:
        body = {"strokes": strokes, "label": label, "predicted_label": predicted, "model_version": version}
        return call(f"{self.webapp}/api/feedback", body)

    def token(self) -> str:
        with open(self.password_file) as handle:
            password = json.load(handle)["admin"]
        return call(f"{self.airflow}/auth/token", {"username": "admin", "password": password})["access_token"]

    def dag_runs(self, dag_id: str) -> list[dict]:
        url = f"{self.airflow}/api/v2/dags/{dag_id}/dagRuns?order_by=start_date&limit=100"
        return call(url, token=self.token())["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict]:
        url = f"{self.airflow}/api/v2/dags/{dag_id}/dagRuns/{urllib.request.quote(run_id)}/taskInstances"
        return call(url, token=self.token())["task_instances"]

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        return {ti["task_id"]: ti["state"] for ti in self.task_instances(dag_id, run_id)}


class Platform:
    """`make up` in the background with its own folders and ports; stop() is Ctrl-C."""

    def __init__(self, root: Path, threshold: int):
        self.root = root
        ports = {name: free_port() for name in ("webapp", "airflow", "mlflow", "prometheus")}
        # A user's shell, not this test process: other test folders configure Airflow and doodle in os.environ.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "DOODLE_", "MLFLOW_"))}
        self.env = {
            **inherited,
            "DOODLE_DATA_DIR": str(root / "data"),
            "DOODLE_STORAGE_DIR": str(root / "storage"),
            "DOODLE_WEBAPP_BIND": f"127.0.0.1:{ports['webapp']}",
            "DOODLE_AIRFLOW_PORT": str(ports["airflow"]),
            "DOODLE_MLFLOW_PORT": str(ports["mlflow"]),
            "DOODLE_PROMETHEUS_PORT": str(ports["prometheus"]),
            "DOODLE_FEEDBACK_THRESHOLD": str(threshold),
            "DOODLE_WEBHOOK_SECRET": "flywheel-webhook-secret",  # the registry tells the web app at once
        }
        self.stack = Stack(
            webapp=f"http://127.0.0.1:{ports['webapp']}",
            airflow=f"http://127.0.0.1:{ports['airflow']}",
            mlflow=f"http://127.0.0.1:{ports['mlflow']}",
            password_file=str(root / "storage" / "airflow" / "simple_auth_manager_passwords.json.generated"),
        )
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> Path:
        self.starts += 1
        log = self.root / f"up-{self.starts}.log"
        with log.open("wb") as output:
            self.process = subprocess.Popen(
                ["make", "-s", "up"], cwd=PROJECT_ROOT, env=self.env, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(lambda: self.process.poll() is None and "The doodle platform is up" in log.read_text(),
                   START_TIMEOUT, f"`make up` to print its banner (log: {log})", interval=2)
        return log

    def processes(self) -> list[psutil.Process]:
        """Every process the stack runs now (descendants of `make up`)."""
        return psutil.Process(self.process.pid).children(recursive=True)

    def stop(self) -> None:
        """Ctrl-C, as a terminal sends it to the foreground group; then nothing of the stack may be left."""
        tree = self.processes()
        os.killpg(self.process.pid, signal.SIGINT)
        assert self.process.wait(120) is not None
        gone, alive = psutil.wait_procs(tree, timeout=30)
        assert not alive, f"left running after Ctrl-C: {[p.info for p in alive]}"

    def down(self) -> int:
        """`make down` from another terminal; returns the exit code of `make up`."""
        done = subprocess.run(["make", "-s", "down"], cwd=PROJECT_ROOT, env=self.env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and done.stdout.strip() == "stopped", done.stdout + done.stderr
        return self.process.wait(60)
