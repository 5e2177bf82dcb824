"""Users teach the model a sixth category, end to end with real data: a base model on five of the shipped
categories, 25 drawings of the sixth proposed through the web app's API under names people type, and a real
retraining run (dag.test, a real MLflow server) that grows the head, passes the gate, and is served."""
from __future__ import annotations

import time

import numpy as np
import pytest

from doodle_lib import dataset, proposals, retraining, tracking, training
from tests.conftest import CATEGORIES, SAMPLE
from tests.dags import world
from tests.dags.conftest import run_dag

pytestmark = pytest.mark.slow

NEW = "fish"
OLD = [c for c in CATEGORIES if c != NEW]
TYPED = ["Fish", "fish ", "FISH", "  fish", "Fish"]  # how people type it; "fishes" would join "fish" only once it exists
# The gate's tolerance in this run. This world judges the old five on 1,000 evaluation drawings, so the default 0.5
# points is 5 of them, and where that line falls depends on the CPU's floating-point kernels (on an AMD EPYC host
# the same run lost 4 to 6, and 6 was refused; elsewhere 3). One point (10 drawings) still refuses a candidate that forgets.
TOLERANCE = 1.0


@pytest.fixture
def five_category_world(settings, tmp_path_factory) -> tuple:
    """The base world without the sixth category: data, evaluation set, model in production, the web app serving it."""
    from webapp import create_app

    dataset_version = world.prepare_base(settings, categories=OLD)
    checkpoint = world.base_checkpoint(settings)
    base = world.register_base(settings, checkpoint, dataset_version)
    tracking.set_production(settings, base)
    settings.model_poll_seconds = 0.3
    app = create_app({"SETTINGS": settings, "TESTING": True})
    yield settings, base, app
    app.extensions["model_holder"].stop()


def sixth_category_evaluation() -> dataset.Split:
    """The sixth category's drawings of the fixed split's evaluation part (the last rows of its sample file; the
    proposed drawings are rows 0-24, the ones the sample has strokes for)."""
    rows = dataset.load_bitmaps(SAMPLE, NEW)[-world.EVAL_PER_CATEGORY:]
    return dataset.Split(rows, np.array([NEW] * len(rows)))


def test_25_proposed_drawings_teach_the_model_a_sixth_category(dagbag, five_category_world):
    settings, base, app = five_category_world
    client = app.test_client()
    assert client.get("/api/model").json["categories"] == sorted(OLD)
    for i, drawing in enumerate(dataset.load_drawings(SAMPLE, NEW, limit=25)):
        answer = client.post("/api/proposals", json={"strokes": drawing["drawing"], "name": TYPED[i % len(TYPED)]})
        assert answer.status_code == 201 and answer.json["name"] == NEW and not answer.json["known"], answer.json
    assert [p.name for p in proposals.ready(settings, OLD)] == [NEW]

    # No correction waits: the ready proposal alone starts the run.
    run, states = run_dag(dagbag.get_dag("retrain"), threshold=50, tolerance=TOLERANCE)

    assert set(states.values()) == {"success"}, states
    production = tracking.production_version(settings)
    assert production.version != base, production.tags.get("promotion")
    assert "learns the new category 'fish'" in production.tags["promotion"], production.tags["promotion"]
    promoted, _ = tracking.load_production(settings)
    assert promoted.categories == [*sorted(OLD), NEW]  # old outputs kept in place, one added

    # On drawings no training run saw: the sixth category's evaluation rows, and the five old categories' set.
    new_accuracy = training.evaluate(promoted, sixth_category_evaluation()).accuracy
    evaluation = dataset.read_split(settings.evaluation_path)
    old_before = training.evaluate(tracking.load_version(settings, base), evaluation).accuracy
    old_after = training.evaluate(promoted, evaluation).accuracy
    print(f"\nsixth category {NEW!r}: {100 * new_accuracy:.2f}% of {world.EVAL_PER_CATEGORY} evaluation drawings; "
          f"old five {100 * old_before:.2f}% -> {100 * old_after:.2f}%")
    assert new_accuracy >= 0.7, f"{NEW}: {new_accuracy:.3f} on its evaluation drawings (chance is 1/6)"
    assert old_after >= old_before - TOLERANCE / 100

    # The proposal became a category: closed, and the web app offers it, read from the served model.
    assert NEW not in proposals.names(settings)
    deadline = time.monotonic() + 30
    while client.get("/api/model").json["version"] != production.version and time.monotonic() < deadline:
        time.sleep(0.3)
    assert client.get("/api/model").json["categories"] == [*sorted(OLD), NEW]
    strokes = dataset.load_drawings(SAMPLE, NEW, limit=1)[0]["drawing"]  # the sample has 25 with strokes, rows 0-24
    answer = client.post("/api/proposals", json={"strokes": strokes, "name": "Fishes"})
    assert answer.status_code == 201 and answer.json["known"] and answer.json["kind"] != "proposal", answer.json
