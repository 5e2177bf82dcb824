"""Fixtures shared by every test area: settings on temporary folders, a real MLflow server, a small model."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from doodle_lib.settings import PROJECT_ROOT, Settings
from tests.services import mlflow_server

SAMPLE = PROJECT_ROOT / "data" / "quickdraw-sample"
CATEGORIES = ["apple", "bicycle", "cat", "diamond", "eye", "fish"]


def fixture_drawings() -> list[tuple[str, int, list]]:
    """The 150 golden drawings: (category, row, strokes)."""
    drawings = []
    for category in CATEGORIES:
        lines = (SAMPLE / "simplified" / f"{category}.ndjson").read_text().splitlines()
        drawings += [(category, row, json.loads(line)["drawing"]) for row, line in enumerate(lines)]
    return drawings


# The tracking URI the session started with (none in CI): Settings() reads it from the environment.
SESSION_TRACKING_ENV = {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}


@pytest.fixture(autouse=True)
def tracking_uri_kept():
    """mlflow.set_tracking_uri also writes MLFLOW_TRACKING_URI into os.environ: put back as the session started after
    each test, or a server some test or module fixture used (and stopped) becomes every later test's tracking URI."""
    yield
    for name, value in SESSION_TRACKING_ENV.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def mlflow_url(tmp_path_factory) -> str:
    """URL of a real `mlflow server` on a free loopback port, for the whole session."""
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


@pytest.fixture
def settings(tmp_path, mlflow_url, monkeypatch) -> Settings:
    """Settings on empty temporary data and storage folders, tracking to the session's MLflow server."""
    monkeypatch.setenv("DOODLE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DOODLE_STORAGE_DIR", str(tmp_path / "storage"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_url)
    # Each test gets its own registered model, so tests sharing the server cannot see each other's aliases.
    monkeypatch.setenv("DOODLE_MODEL_NAME", f"doodle-{tmp_path.name}")
    monkeypatch.setenv("DOODLE_EVAL_PER_CATEGORY", "100")
    return Settings()


@pytest.fixture
def small_split():
    """200 training and 100 evaluation drawings a category from the shipped sample."""
    from doodle_lib.dataset import Split, load_bitmaps

    train_x, eval_x = [], []
    for category in CATEGORIES:
        rows = load_bitmaps(SAMPLE, category)
        train_x.append(rows[:200])
        eval_x.append(rows[-100:])
    labels_train = np.repeat(CATEGORIES, 200)
    labels_eval = np.repeat(CATEGORIES, 100)
    return Split(np.concatenate(train_x), labels_train), Split(np.concatenate(eval_x), labels_eval)
