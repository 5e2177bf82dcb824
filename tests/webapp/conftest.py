"""Web app fixtures: two trained models, registered versions in the session's MLflow server, app and client."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import CATEGORIES, SAMPLE
from tests.webapp.serving import log_models, register


@pytest.fixture(scope="session")
def trained_models():
    """Two small models trained in seconds on the shipped sample; they disagree on some drawings."""
    from doodle_lib.dataset import Split, load_bitmaps
    from doodle_lib.training import TrainConfig, train

    x = np.concatenate([load_bitmaps(SAMPLE, c)[:200] for c in CATEGORIES])
    split = Split(x, np.repeat(CATEGORIES, 200))
    first, _ = train(split, CATEGORIES, TrainConfig(epochs=2, seed=0, width=8, threads=2))
    second, _ = train(split, CATEGORIES, TrainConfig(epochs=1, seed=1, width=8, threads=2))
    return first.eval(), second.eval()


@pytest.fixture(scope="session")
def logged_models(mlflow_url, trained_models, tmp_path_factory) -> list[tuple[str, str]]:
    """Both models logged once in the session's MLflow server: (model URI, run id)."""
    from doodle_lib.settings import Settings

    root = tmp_path_factory.mktemp("logged")
    settings = Settings(MLFLOW_TRACKING_URI=mlflow_url, data_dir=root / "data", storage_dir=root / "storage")
    return log_models(settings, list(trained_models))


@pytest.fixture
def versions(settings, logged_models) -> list[str]:
    """Both models registered under this test's model name; the first is production."""
    return register(settings, logged_models)


@pytest.fixture
def app(settings, versions):
    """The app in this process, serving the first version, polling fast."""
    from webapp import create_app

    settings.model_poll_seconds = 0.3
    app = create_app({"SETTINGS": settings, "TESTING": True})
    yield app
    app.extensions["model_holder"].stop()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def bare_app(settings):
    """The app with no production model in a registry that has none."""
    from webapp import create_app

    app = create_app({"SETTINGS": settings, "TESTING": True})
    yield app
    app.extensions["model_holder"].stop()
