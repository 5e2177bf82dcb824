"""The flywheel end to end: `make up` on empty folders, corrections through the API, a new model served."""
from __future__ import annotations

import subprocess
import urllib.request

import numpy as np
import pytest
from mlflow import MlflowClient

from doodle_lib import feedback
from tests.conftest import fixture_drawings
from tests.e2e.stack_client import Platform, Stack, call, wait_until
from tests.services import VENV_BIN

pytestmark = pytest.mark.slow
THRESHOLD = 30
RUN_TIMEOUT = 600


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    platform = Platform(tmp_path_factory.mktemp("platform"), THRESHOLD)
    platform.start()
    yield platform
    if platform.process and platform.process.poll() is None:
        platform.stop()


def ranked_fixtures(stack: Stack) -> list[tuple[float, str, list, str]]:
    """The golden drawings, least confidently right first: (p(true label), label, strokes, predicted)."""
    ranked = []
    for category, _, strokes in fixture_drawings():
        answer = stack.predict(strokes)
        probabilities = {g["label"]: g["probability"] for g in answer["predictions"]}
        ranked.append((probabilities.get(category, 0.0), category, strokes, answer["predictions"][0]["label"]))
    return sorted(ranked, key=lambda item: item[0])


def finished_runs(stack: Stack) -> list[dict]:
    return [run for run in stack.dag_runs("retrain") if run["state"] in ("success", "failed")]


def test_corrections_become_a_served_model_and_bad_ones_do_not(platform):
    stack = platform.stack
    first_version = wait_until(lambda: stack.model()["version"], 120, "the first model to be served")
    registry = MlflowClient(stack.mlflow, registry_uri=stack.mlflow)  # not the process-global registry URI
    ranked = ranked_fixtures(stack)

    # Batch 1: the drawings the model is least sure of, correctly labelled: they should help.
    for _, label, strokes, predicted in ranked[:THRESHOLD]:
        stack.feedback(strokes, label, predicted, first_version)
    new_version = wait_until(
        lambda: stack.model()["version"] != first_version and stack.model()["version"], RUN_TIMEOUT,
        "a new version to be served",
    )
    first = wait_until(lambda: finished_runs(stack), 120, "the first run to finish (cleanup runs after promote)")
    assert [run["state"] for run in first] == ["success"]
    states = stack.task_states("retrain", first[0]["dag_run_id"])
    assert set(states.values()) == {"success"}, states
    assert {"wait_for_feedback", "snapshot", "ingest", "version", "plan", "train", "evaluate", "choose", "register",
            "promote", "cleanup"} <= states.keys()
    assert registry.get_model_version_by_alias("doodle-classifier", "production").version == new_version
    assert registry.get_model_version("doodle-classifier", new_version).tags["airflow_run_id"] == first[0]["dag_run_id"]
    # `make up` registered the web app's webhook, and MLflow delivered the promotion to it, signed (the receiver
    # touches this signal file only for a valid event about our model's production alias).
    assert [hook.name for hook in registry.list_webhooks()] == ["doodle-classifier-webapp"]
    assert (platform.root / "storage" / "webapp" / "registry-changed").is_file()
    [shown] = [run for run in call(f"{stack.webapp}/api/pipeline")["runs"] if run["run_id"] == first[0]["dag_run_id"]]
    assert shown["state"] == "success" and {stage["state"] for stage in shown["stages"]} == {"success"}
    assert shown["result"]["version"] == new_version and shown["result"]["promoted"] is True

    # Batch 2: other drawings with labels shuffled so that none is right: registered, never promoted.
    rng = np.random.default_rng(0)
    categories = stack.model()["categories"]
    for _, label, strokes, predicted in ranked[THRESHOLD : 2 * THRESHOLD]:
        wrong = rng.choice([c for c in categories if c != label])
        stack.feedback(strokes, str(wrong), predicted, new_version)
    wait_until(lambda: len(finished_runs(stack)) == 2, RUN_TIMEOUT, "the second retraining run")
    second = finished_runs(stack)[1]
    assert second["state"] == "success"
    [rejected] = registry.search_model_versions(f"name='doodle-classifier' and tags.airflow_run_id = '{second['dag_run_id']}'")
    assert "not promoted" in (rejected.description + str(rejected.tags)).lower()
    assert registry.get_model_version_by_alias("doodle-classifier", "production").version == new_version
    assert stack.model()["version"] == new_version
    [shown] = [run for run in call(f"{stack.webapp}/api/pipeline")["runs"] if run["run_id"] == second["dag_run_id"]]
    assert shown["result"]["promoted"] is False and shown["result"]["reason"]
    page = urllib.request.urlopen(f"{stack.webapp}/pipeline", timeout=30).read().decode()
    assert second["dag_run_id"] in page and "not promoted" in page
    assert feedback.count(platform.root / "data" / "feedback") == 0


def test_restart_keeps_the_model_and_the_waiting_feedback(platform):
    stack = platform.stack
    waiting = ranked_fixtures(stack)[-3:]
    for _, label, strokes, predicted in waiting:
        stack.feedback(strokes, label, predicted, stack.model()["version"])
    served = stack.model()["version"]
    feedback_dir = platform.root / "data" / "feedback"
    before = sorted(ref.key for ref in feedback.complete(feedback_dir))
    assert len(before) == 3

    platform.stop()
    log = platform.start()
    text = log.read_text()
    for step in ("creating Airflow's database", "preparing the dataset", "training the first model"):
        assert step not in text, f"the second start repeated: {step}"
    assert stack.model()["version"] == served  # the banner comes once the web app serves it again
    assert sorted(ref.key for ref in feedback.complete(feedback_dir)) == before
    assert platform.down() == 0, "`make up` stopped by `make down` reports an error"

    # With the platform down, the `doodle` command reads the same store, the served model's files included.
    env = {**platform.env, "MLFLOW_TRACKING_URI": ""}
    done = subprocess.run([str(VENV_BIN / "doodle"), "evaluate"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"version {served}: accuracy" in done.stdout
