"""Real services for tests: free ports, and an `mlflow server` on loopback with its own store."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, timeout: float, process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    """Poll `url` until it answers 200, or fail saying why (the process died, or time ran out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"process for {url} exited with {process.returncode}:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


def stop(process: subprocess.Popen, timeout: float = 15) -> None:
    """Stop a process group started with start_new_session, politely first."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def mlflow_server(root: Path, port: int | None = None, backend_uri: str | None = None) -> Iterator[str]:
    """A real `mlflow server` (SQLite backend, artifacts under `root`); yields its URL."""
    port = port or free_port()
    root.mkdir(parents=True, exist_ok=True)
    log = root / "mlflow-server.log"
    command = [
        str(VENV_BIN / "mlflow"), "server",
        "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", backend_uri or f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--workers", "1",
    ]
    # The job runner (several huey consumers) serves MLflow's GenAI jobs, which the platform does not use.
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with log.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", 90, process, log)
        yield url
    finally:
        stop(process)


class MlflowServer:
    """An `mlflow server` that a test can stop and start again on the same port and the same store."""

    def __init__(self, root: Path, port: int | None = None, env: dict[str, str] | None = None):
        self.root, self.port = root, port or free_port()
        self.env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})}
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> str:
        """Start the server (SQLite backend and artifacts under root) and wait until it is healthy."""
        self.root.mkdir(parents=True, exist_ok=True)
        log = self.root / "mlflow-server.log"
        command = [
            str(VENV_BIN / "mlflow"), "server",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--workers", "1",
        ]
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True, env=self.env
            )
        wait_for_http(f"{self.url}/health", timeout, self.process, log)
        return self.url

    def stop(self) -> None:
        """Stop the server; its port refuses connections until start() is called again."""
        if self.process is not None:
            stop(self.process)
            self.process = None
