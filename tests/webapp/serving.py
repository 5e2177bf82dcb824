"""The web app under real gunicorn for tests, and registered model versions to serve."""
from __future__ import annotations

import json
import subprocess
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from doodle_lib.settings import PROJECT_ROOT, Settings
from tests.services import VENV_BIN, free_port, stop, wait_for_http

GUNICORN_CONF = PROJECT_ROOT / "webapp" / "gunicorn.conf.py"


def app_env(settings: Settings, poll_seconds: float = 0.5, secret: str = "") -> dict[str, str]:
    """Environment variables that make the web app use `settings`' folders, server and model name."""
    return {
        "DOODLE_DATA_DIR": str(settings.data_dir),
        "DOODLE_STORAGE_DIR": str(settings.storage_dir),
        "MLFLOW_TRACKING_URI": settings.tracking_uri,
        "DOODLE_MODEL_NAME": settings.model_name,
        "DOODLE_MODEL_POLL_SECONDS": str(poll_seconds),
        "DOODLE_WEBHOOK_SECRET": secret,
    }


@contextmanager
def gunicorn_app(env: dict[str, str], log_dir: Path, workers: int = 2,
                 port: int | None = None, args: tuple[str, ...] = ()) -> Iterator[str]:
    """The web app served by gunicorn with the repository's config file on a free loopback port; yields its URL.

    `args` are extra gunicorn command-line options; they override the config file (bench/serve.py compares settings).
    """
    import os

    port = port or free_port()
    log = log_dir / f"gunicorn-{port}.log"
    full_env = {
        **os.environ, **env,
        "DOODLE_WEBAPP_BIND": f"127.0.0.1:{port}",
        "DOODLE_WEBAPP_WORKERS": str(workers),
    }
    full_env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    command = [str(VENV_BIN / "gunicorn"), "-c", str(GUNICORN_CONF), *args]
    with log.open("ab") as output:
        process = subprocess.Popen(
            command, cwd=PROJECT_ROOT, env=full_env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/healthz", 120, process, log)
        yield url
    finally:
        stop(process, timeout=30)


def get_json(url: str, timeout: float = 10) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def log_models(settings: Settings, models: list) -> list[tuple[str, str]]:
    """Log each model in its own run; returns (model URI, run id) pairs to register later, cheaply."""
    from doodle_lib import tracking

    logged = []
    for n, model in enumerate(models):
        with tracking.training_run(settings, f"webapp-test-{n}") as run_id:
            logged.append((tracking.log_model(model), run_id))
    return logged


def register(settings: Settings, logged: list[tuple[str, str]], promote_first: bool = True) -> list[str]:
    """Register logged models as new versions of settings.model_name; returns the versions."""
    from doodle_lib import tracking

    versions = [str(tracking.register(settings, uri, run_id, {"test": "webapp"}).version) for uri, run_id in logged]
    if promote_first:
        tracking.set_production(settings, versions[0])
    return versions
