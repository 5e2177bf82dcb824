"""Prometheus metrics: HTTP metrics from prometheus-flask-exporter plus the model's own."""
from __future__ import annotations

import time

from flask import request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_flask_exporter import PrometheusMetrics
from prometheus_flask_exporter.multiprocess import GunicornInternalPrometheusMetrics

from doodle_lib import feedback, proposals

# Created unregistered: each app's registry adds them, so tests can build many apps in one process.
PREDICTIONS = Counter(
    "doodle_predictions", "Predictions served, by top label and model version", ["label", "model_version"], registry=None
)
# histogram_quantile() interpolates from 0 inside the first bucket, where no top label can be: its probability is at
# least 1/categories (1/6 now, 0.1 with ten). Bounds at 0.1 and 0.15 keep a low percentile near what it really is.
CONFIDENCE = Histogram(
    "doodle_prediction_confidence", "Probability of the top label", ["model_version"], registry=None,
    buckets=(0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0),
)
FEEDBACK = Counter(
    "doodle_feedback", "Feedback stored, by the model version it answers, predicted and correct label",
    ["model_version", "predicted_label", "label", "kind"], registry=None,
)
SERVING_VERSION = Gauge(
    "doodle_serving_model_version", "Registered version each worker serves (0: none)", registry=None,
    multiprocess_mode="liveall",
)
RELOADS = Counter("doodle_model_reloads", "Model loads after the alias moved, by result", ["result"], registry=None)
REGISTRY_UP = Gauge(
    "doodle_registry_reachable", "1 when the model registry answered the last poll (min over workers)", registry=None,
    multiprocess_mode="livemin",
)
WAITING = Gauge(
    "doodle_feedback_waiting", "Complete feedback drawings waiting to be trained on", registry=None,
    multiprocess_mode="livemostrecent",
)
# By outcome only: proposal names are typed by users, so as label values they could grow the series without end.
PROPOSED = Counter(
    "doodle_proposed_drawings", "Drawings sent under a typed category name, by outcome: proposal, known, refused",
    ["outcome"], registry=None,
)
PROPOSALS_READY = Gauge(
    "doodle_proposals_ready", "Proposed categories the next retraining may add", registry=None,
    multiprocess_mode="livemostrecent",
)
FOLDER_COUNT_SECONDS = 5.0  # as often as the embedded stack's Prometheus scrapes (the compose stack's: 15 s)
_counted_at = float("-inf")  # when this worker last counted the folders (time.monotonic)
_stored_since = False  # whether it stored a drawing since
MODEL_METRICS = (PREDICTIONS, CONFIDENCE, FEEDBACK, SERVING_VERSION, RELOADS, REGISTRY_UP, WAITING, PROPOSED,
                 PROPOSALS_READY)


def init_app(app) -> None:
    """Attach /metrics: multiprocess under gunicorn (PROMETHEUS_MULTIPROC_DIR set), one registry otherwise."""
    settings = app.config["SETTINGS"]
    options = {"group_by": "endpoint", "excluded_paths": ["^/static/"], "default_labels": {}}
    if settings.prometheus_multiproc_dir:
        app.extensions["metrics"] = GunicornInternalPrometheusMetrics(app, **options)
    else:
        registry = CollectorRegistry()
        for metric in MODEL_METRICS:
            registry.register(metric)
        app.extensions["metrics"] = PrometheusMetrics(app, registry=registry, **options)
    holder = app.extensions["model_holder"]
    holder.on_reload = on_reload
    for result in ("success", "failure"):
        RELOADS.labels(result)  # exported at 0 from the start, so increase() sees a worker's first load
    for outcome in ("proposal", "known", "refused"):
        PROPOSED.labels(outcome)
    holder.on_check = lambda reachable: REGISTRY_UP.set(1 if reachable else 0)
    on_reload(None, holder.served)
    export_unprompted(holder.known_categories())  # feedback is accepted before any model is served
    REGISTRY_UP.set(1 if holder.registry_reachable else 0)

    @app.before_request
    def refresh_gauges():
        # Gauges that are costly or only true at a moment are refreshed when Prometheus scrapes: each lists a folder
        # (thousands of files while retraining is off), so at most once in FOLDER_COUNT_SECONDS a worker, however
        # often anyone asks for /metrics, and at once after this worker stored a drawing.
        global _counted_at, _stored_since
        if request.path == "/metrics" and (_stored_since or time.monotonic() - _counted_at >= FOLDER_COUNT_SECONDS):
            _counted_at, _stored_since = time.monotonic(), False
            WAITING.set(feedback.count(settings.feedback_dir))
            PROPOSALS_READY.set(sum(p.ready for p in proposals.list_all(settings)))


def on_reload(result: str | None, served) -> None:
    """Count a load and publish the version now served, with its series."""
    if result:
        RELOADS.labels(result).inc()
    if served:  # before the version: a scrape that sees a worker serve it sees the version's series too
        export_version(served.version, served.categories)
    SERVING_VERSION.set(int(served.version) if served else 0)


# The children of one (label, version) pair, looked up once: .labels() checks and locks on every call. Bounded:
# labels are the served model's categories and versions the ones this process served.
_prediction_children: dict[tuple[str, str], tuple] = {}


def prediction_series(label: str, version: str) -> tuple:
    """The prediction counter and confidence histogram of one (label, version) pair."""
    children = _prediction_children.get((label, version))
    if children is None:
        children = _prediction_children[label, version] = (PREDICTIONS.labels(label, version), CONFIDENCE.labels(version))
    return children


def observe_prediction(version: str, label: str, confidence: float) -> None:
    predictions, confidences = prediction_series(label, version)
    predictions.inc()
    confidences.observe(confidence)


def export_version(version: str, categories: list[str]) -> None:
    """A served version's prediction and judged-feedback series, exported at 0 before its first answer.

    increase() and rate() start from a series' first scrape: a series first scraped at 5 never counts those 5. The
    feedback counter has a series per (predicted, correct) pair, so a new version's correction rate would lose the
    first seconds of each of its 30 correction pairs (6 categories) and mostly count confirmations.
    """
    for predicted in categories:
        prediction_series(predicted, version)
        for label in categories:
            FEEDBACK.labels(version, predicted, label, "confirmed" if predicted == label else "correction")
    export_unprompted(categories)


def export_unprompted(categories: list[str]) -> None:
    """The series of drawings labelled with no prediction to answer (version and prediction "none"), at 0."""
    for label in categories:
        FEEDBACK.labels("none", "none", label, "unprompted")


def observe_feedback(version: str, predicted: str, label: str, kind: str) -> None:
    global _stored_since
    FEEDBACK.labels(version, predicted, label, kind).inc()
    _stored_since = True


def observe_proposal(outcome: str) -> None:
    global _stored_since
    PROPOSED.labels(outcome).inc()
    _stored_since = _stored_since or outcome == "proposal"
