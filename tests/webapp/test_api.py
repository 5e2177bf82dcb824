"""The JSON API in-process: predict, feedback files, the model endpoint, probes, no-model behaviour."""
from __future__ import annotations

import base64
import io
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from doodle_lib import feedback
from doodle_lib.drawing import strokes_to_bitmap
from tests.conftest import CATEGORIES, fixture_drawings
from tests.webapp.serving import register

DRAWINGS = fixture_drawings()


def png_of(bitmap: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(255 - bitmap).resize((280, 280)).save(buffer, format="PNG")  # dark ink on white, bigger
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def test_predict_strokes_returns_version_top_k_and_bitmap(client, versions):
    category, _, strokes = DRAWINGS[40]
    answer = client.post("/api/predict", json={"strokes": strokes, "k": 4})
    assert answer.status_code == 200, answer.json
    body = answer.json
    assert body["model_version"] == versions[0]
    assert len(body["predictions"]) == 4
    probabilities = [p["probability"] for p in body["predictions"]]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1.0001
    assert {p["label"] for p in body["predictions"]} <= set(CATEGORIES)
    seen = np.frombuffer(base64.b64decode(body["bitmap"]), dtype=np.uint8).reshape(28, 28)
    assert np.array_equal(seen, strokes_to_bitmap(strokes))


def test_predict_image_upload_matches_strokes(client):
    _, _, strokes = DRAWINGS[7]
    from_strokes = client.post("/api/predict", json={"strokes": strokes}).json
    from_image = client.post("/api/predict", json={"image": png_of(strokes_to_bitmap(strokes))}).json
    assert from_image["predictions"][0]["label"] == from_strokes["predictions"][0]["label"]
    assert len(from_image["predictions"]) == 3  # the default top-k


@pytest.mark.parametrize("predicted, kind", [("cat", "confirmed"), ("fish", "correction"), (None, "unprompted")])
def test_feedback_writes_png_and_json(client, settings, versions, predicted, kind):
    _, _, strokes = DRAWINGS[60]
    body = {"strokes": strokes, "label": "cat", "predicted_label": predicted, "model_version": versions[0]}
    answer = client.post("/api/feedback", json=body)
    assert answer.status_code == 201, answer.json
    assert answer.json["kind"] == kind
    [ref] = feedback.complete(settings.feedback_dir)
    assert answer.json["id"] == ref.key and ref.category == "cat"
    bitmap, record = feedback.read(settings.feedback_dir, ref)
    assert np.array_equal(bitmap, strokes_to_bitmap(strokes))
    assert record["label"] == "cat" and record["predicted_label"] == predicted and record["kind"] == kind
    assert record["model_version"] == versions[0] and record["created_at"]
    assert record["strokes"] == json.loads(json.dumps(strokes))


def test_model_endpoint_and_probes(client, versions):
    model = client.get("/api/model").json
    assert model["status"] == "ok" and model["version"] == versions[0]
    assert model["categories"] == CATEGORIES and model["registry_reachable"] and model["loaded_since"]
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json["version"] == versions[0]


def test_openapi_document_lists_the_api(client):
    paths = client.get("/openapi/openapi.json").json["paths"]
    assert {"/api/predict", "/api/feedback", "/api/model"} <= paths.keys()
    assert "requestBody" in paths["/api/predict"]["post"]
    for path in ("/api/predict", "/api/feedback", "/api/proposals"):  # each refusal's status, documented
        assert {"400", "408", "413", "415", "422"} <= paths[path]["post"]["responses"].keys(), path


def test_page_shows_version_and_categories(client, versions):
    page = client.get("/").data.decode()
    assert f'id="model-version">{versions[0]}<' in page
    assert all(f'<option value="{name}">' in page for name in CATEGORIES)
    assert "touch-action: none" in client.get("/static/app.css").data.decode()
    headers = client.get("/").headers  # its own script only, in no other site's frame
    assert "default-src 'self'" in headers["Content-Security-Policy"] and headers["X-Frame-Options"] == "DENY"


def test_without_production_model(bare_app, settings):
    client = bare_app.test_client()
    _, _, strokes = DRAWINGS[0]
    answer = client.post("/api/predict", json={"strokes": strokes})
    assert answer.status_code == 503 and "no model is in production" in answer.json["error"]
    assert "No model is in production yet" in client.get("/").data.decode()
    described = client.get("/api/model").json
    assert described["status"] == "no_model" and described["categories"] == list(CATEGORIES)  # what feedback takes
    assert described["reason"] == "no model is in production yet: train and promote one"
    assert client.get("/readyz").status_code == 200  # the registry answered: there is simply none yet
    unprompted = ("doodle_feedback_total", (("kind", "unprompted"), ("label", "apple"), ("model_version", "none"),
                                            ("predicted_label", "none")))
    assert samples(client.get("/metrics").data.decode())[unprompted] == 0  # there from the start, for increase()
    saved = client.post("/api/feedback", json={"strokes": strokes, "label": "apple"})
    assert saved.status_code == 201 and feedback.count(settings.feedback_dir) == 1
    assert samples(client.get("/metrics").data.decode())[unprompted] == 1



def test_production_version_that_cannot_be_loaded(settings, logged_models):
    """The alias names a version with no checkpoint: not ready, degraded, predict says why, feedback still taken."""
    import mlflow

    from doodle_lib import tracking
    from webapp import create_app

    with tracking.training_run(settings, "not-a-doodle-model") as run_id:
        mlflow.log_text("not a model", "notes/readme.txt")
        source = mlflow.get_artifact_uri("notes")
    registry = tracking.client(settings)
    registry.create_registered_model(settings.model_name)
    broken = registry.create_model_version(settings.model_name, source, run_id=run_id)
    tracking.set_production(settings, broken.version)
    app = create_app({"SETTINGS": settings, "TESTING": True})
    try:
        client = app.test_client()
        model = client.get("/api/model").json
        assert model["status"] == "degraded" and model["version"] is None and model["registry_reachable"]
        assert f"loading version {broken.version} failed" in model["last_error"]
        assert client.get("/readyz").status_code == 503
        answer = client.post("/api/predict", json={"strokes": DRAWINGS[0][2]})
        assert answer.status_code == 503 and "could not be loaded" in answer.json["error"]
        page = client.get("/").data.decode()
        assert "No model is loaded: the production model could not be loaded" in page
        header = page[page.index('id="model"'):page.index("</p>")]
        said = header[header.index(">") + 1:]  # the header's text, not its attributes (which hold the reason too)
        assert said.lower().count("no model is loaded") == 1  # said once, not as the reason's start again
        saved = client.post("/api/feedback", json={"strokes": DRAWINGS[0][2], "label": "apple"})
        assert saved.status_code == 201
        # A good version in production heals it at the next check.
        [good] = register(settings, logged_models[:1])
        app.extensions["model_holder"].check()
        assert client.get("/api/model").json["status"] == "ok" and client.get("/readyz").status_code == 200
        assert client.get("/api/model").json["version"] == good
        # Back to the broken one: the good one stays served, and the page says which version failed, not the registry.
        tracking.set_production(settings, broken.version)
        app.extensions["model_holder"].check()
        model = client.get("/api/model").json
        assert model["status"] == "degraded" and model["version"] == good and model["registry_reachable"]
        assert model["reason"] == f"version {broken.version} could not be loaded: still serving"
        page = client.get("/").data.decode()
        assert f"version {broken.version} could not be loaded: still serving" in page and "unreachable" not in page
    finally:
        app.extensions["model_holder"].stop()

def test_metrics_count_predictions_and_feedback(client, versions):
    _, _, strokes = DRAWINGS[3]
    before = samples(client.get("/metrics").data.decode())
    label = client.post("/api/predict", json={"strokes": strokes}).json["predictions"][0]["label"]
    client.post("/api/feedback", json={"strokes": strokes, "label": "eye", "predicted_label": label,
                                       "model_version": versions[0]})
    after = samples(client.get("/metrics").data.decode())
    found = {key: value - before.get(key, 0) for key, value in after.items()}  # counters are per process
    assert found[("doodle_predictions_total", (("label", label), ("model_version", versions[0])))] == 1
    key = (("kind", "correction"), ("label", "eye"), ("model_version", versions[0]), ("predicted_label", label))
    assert found[("doodle_feedback_total", key)] == 1
    assert after[("doodle_serving_model_version", ())] == int(versions[0])
    assert after[("doodle_feedback_waiting", ())] == 1
    assert found[("doodle_prediction_confidence_count", (("model_version", versions[0]),))] == 1
    latency = ("flask_http_request_duration_seconds_count", (("endpoint", "api.predict"), ("method", "POST"), ("status", "200")))
    assert found[latency] == 1


def test_a_save_sent_again_with_its_idempotency_key_is_stored_once(client, settings, versions):
    """The page sends a save again with the same key when the first answer was lost: one drawing, the first answer."""
    _, _, strokes = DRAWINGS[1]
    body = {"strokes": strokes, "label": "cat", "predicted_label": "fish", "model_version": versions[0]}
    before = samples(client.get("/metrics").data.decode())
    first, again = (client.post("/api/feedback", json=body, headers={"Idempotency-Key": "k" * 20}) for _ in "12")
    assert first.status_code == again.status_code == 201 and again.json == first.json
    assert first.json["kind"] == "correction" and "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    found = {k: v - before.get(k, 0) for k, v in samples(client.get("/metrics").data.decode()).items()}
    key = (("kind", "correction"), ("label", "cat"), ("model_version", versions[0]), ("predicted_label", "fish"))
    assert found[("doodle_feedback_total", key)] == 1  # counted once
    other = client.post("/api/feedback", json=body, headers={"Idempotency-Key": "m" * 20})
    assert other.status_code == 201 and other.json["id"] != first.json["id"]
    proposed = [client.post("/api/proposals", json={"strokes": strokes, "name": "Dog"},
                            headers={"Idempotency-Key": "p" * 20}) for _ in "12"]
    assert [(p.status_code, p.json["count"]) for p in proposed] == [(201, 1), (201, 1)]
    assert proposed[0].json["id"] == proposed[1].json["id"] == f"dog/{proposed[0].json['id'].split('/')[1]}"
    known = [client.post("/api/proposals", json={"strokes": strokes, "name": "Eye"},
                         headers={"Idempotency-Key": "q" * 20}) for _ in "12"]
    assert known[0].json == known[1].json and known[0].json["known"] and known[0].json["id"].startswith("eye/")
    # The key of a save, reused for another one (another drawing, label or endpoint), stores nothing.
    for path, other in (("/api/feedback", {**body, "strokes": DRAWINGS[2][2]}), ("/api/feedback", {**body, "label": "eye"}),
                        ("/api/proposals", {"strokes": strokes, "name": "dog"})):
        refused = client.post(path, json=other, headers={"Idempotency-Key": "k" * 20})
        assert refused.status_code == 422 and "came before with another drawing" in refused.json["error"]
    for bad in ("../../etc/passwd", "short", "x" * 65, "k k k k k k"):
        refused = client.post("/api/feedback", json=body, headers={"Idempotency-Key": bad})
        assert refused.status_code == 422 and "Idempotency-Key" in refused.json["error"], (bad, refused.json)
    assert len(feedback.complete(settings.feedback_dir)) == 3 and len(feedback.complete(settings.proposals_dir)) == 1


def test_a_save_sent_again_after_its_drawing_went_to_training_gets_its_first_answer(client, settings, monkeypatch):
    """A retry can come after a retraining run took the drawing (or a proposal grew): the first answer, as it was."""
    from webapp import idempotency

    _, _, strokes = DRAWINGS[3]
    body = {"strokes": strokes, "label": "cat", "predicted_label": "cat"}
    first = client.post("/api/feedback", json=body, headers={"Idempotency-Key": "moved-away-1"})
    proposal = {"strokes": strokes, "name": "Dog"}
    proposed = client.post("/api/proposals", json=proposal, headers={"Idempotency-Key": "proposal-1"})
    client.post("/api/proposals", json=proposal, headers={"Idempotency-Key": "proposal-2"})  # the proposal grows to 2
    taken = feedback.move(feedback.complete(settings.feedback_dir), settings.feedback_dir, settings.batches_dir / "b")
    assert [ref.key for ref in taken] == [first.json["id"]]
    again = client.post("/api/feedback", json=body, headers={"Idempotency-Key": "moved-away-1"})
    assert (again.status_code, again.json, again.headers["Idempotent-Replayed"]) == (201, first.json, "true")
    assert feedback.complete(settings.feedback_dir) == []
    proposed_again = client.post("/api/proposals", json=proposal, headers={"Idempotency-Key": "proposal-1"})
    assert proposed_again.json == proposed.json and proposed.json["count"] == 1
    # A day later the key is forgotten: the same save is a new one, and the expired answers are deleted.
    kept = list((settings.webapp_state_dir / "idempotency").glob("*.json"))
    assert len(kept) == 3
    for path in kept:
        a_day_ago = time.time() - idempotency.KEEP_SECONDS - 60
        os.utime(path, (a_day_ago, a_day_ago))
    monkeypatch.setattr(idempotency, "_last_prune", 0.0)
    later = client.post("/api/feedback", json=body, headers={"Idempotency-Key": "moved-away-1"})
    assert later.status_code == 201 and later.json["id"] != first.json["id"] and "Idempotent-Replayed" not in later.headers
    assert len(feedback.complete(settings.feedback_dir)) == 1
    assert len(list((settings.webapp_state_dir / "idempotency").glob("*.json"))) == 1  # the new answer; the others pruned


def test_copies_of_a_keyed_save_arriving_together_store_one_drawing(app, settings):
    _, _, strokes = DRAWINGS[4]

    def post(_):
        with app.test_client() as client:  # a client per thread
            return client.post("/api/feedback", json={"strokes": strokes, "label": "fish"},
                               headers={"Idempotency-Key": "together-1234"})

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(post, range(8)))
    assert {a.status_code for a in answers} == {201} and len({a.json["id"] for a in answers}) == 1
    assert sum("Idempotent-Replayed" in a.headers for a in answers) == 7
    assert len(feedback.complete(settings.feedback_dir)) == 1


def test_a_scrape_lists_the_folders_at_most_every_few_seconds_unless_a_drawing_was_stored(client, settings, monkeypatch):
    """/metrics answers anyone: asking it again and again does not list the feedback folder again and again."""
    from webapp import metrics

    def waiting() -> float:
        return samples(client.get("/metrics").data.decode())[("doodle_feedback_waiting", ())]

    client.post("/api/feedback", json={"strokes": DRAWINGS[5][2], "label": "cat"})
    assert waiting() == 1
    feedback.save(settings.feedback_dir, "cat", strokes_to_bitmap(DRAWINGS[6][2]), {})  # as another worker would
    assert waiting() == 1  # counted a moment ago
    client.post("/api/feedback", json={"strokes": DRAWINGS[7][2], "label": "cat"})
    assert waiting() == 3  # this worker stored one: counted again at once
    feedback.save(settings.feedback_dir, "cat", strokes_to_bitmap(DRAWINGS[8][2]), {})
    monkeypatch.setattr(metrics, "FOLDER_COUNT_SECONDS", 0.0)  # as if the seconds had passed
    assert waiting() == 4


def test_metrics_export_a_served_versions_series_before_its_first_answer(client, versions):
    """rate() and increase() start from a series' first scrape: one born at 1 never counts that first drawing."""
    exported = samples(client.get("/metrics").data.decode())
    for predicted in CATEGORIES:
        assert ("doodle_predictions_total", (("label", predicted), ("model_version", versions[0]))) in exported
        for label in CATEGORIES:
            kind = "confirmed" if predicted == label else "correction"
            key = (("kind", kind), ("label", label), ("model_version", versions[0]), ("predicted_label", predicted))
            assert ("doodle_feedback_total", key) in exported, key
        unprompted = (("kind", "unprompted"), ("label", predicted), ("model_version", "none"), ("predicted_label", "none"))
        assert ("doodle_feedback_total", unprompted) in exported, unprompted
    assert ("doodle_prediction_confidence_count", (("model_version", versions[0]),)) in exported


def samples(text: str) -> dict:
    """Prometheus text as {(sample name, sorted labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }
