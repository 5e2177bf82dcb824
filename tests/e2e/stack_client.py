"""Drive a running embedded stack from a test: the web app's API, Airflow's REST API, the registry."""
from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass


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

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        url = f"{self.airflow}/api/v2/dags/{dag_id}/dagRuns/{urllib.request.quote(run_id)}/taskInstances"
        return {ti["task_id"]: ti["state"] for ti in call(url, token=self.token())["task_instances"]}
