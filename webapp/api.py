"""The JSON API: predict, feedback and the served model, validated by pydantic through flask-openapi3."""
from __future__ import annotations

import base64
import binascii
import re

import numpy as np
from flask import current_app, request
from flask_openapi3 import APIBlueprint, Tag
from werkzeug.exceptions import BadRequest

from doodle_lib import feedback
from doodle_lib.drawing import DrawingError, strokes_to_bitmap
from doodle_lib.upload import image_to_bitmap
from webapp import metrics
from webapp.schemas import (
    ErrorResponse, FeedbackRequest, FeedbackResponse, ModelResponse, PredictRequest, PredictResponse, ProposalRequest,
)

api = APIBlueprint("api", __name__, url_prefix="/api", abp_tags=[Tag(name="doodles")])
ERRORS = {400: ErrorResponse, 415: ErrorResponse, 422: ErrorResponse}
DATA_URL = re.compile(r"^data:image/[a-z+.-]+;base64,", re.IGNORECASE)


def error(status: int, message: str):
    return {"error": message}, status


def holder():
    return current_app.extensions["model_holder"]


@api.before_request
def require_json_object():
    """Name the problem of a body that is not a JSON object before schema validation sees it."""
    if request.method != "POST":
        return None
    if not request.is_json:
        return error(415, f"send the body as application/json (got {request.mimetype or 'no content type'!r})")
    try:
        body = request.get_json()
    except BadRequest:
        return error(400, "the body is not valid JSON")
    except RecursionError:  # json's parser recurses once a level: a few kB of "[[[[" reach Python's limit
        return error(400, "the body is nested too deeply")
    if not isinstance(body, dict):
        return error(400, f"the body must be a JSON object, not {type(body).__name__}")
    return None


def drawing_bitmap(body: PredictRequest) -> np.ndarray:
    """The 28x28 model input of the request's strokes or image (DrawingError names what is wrong)."""
    if body.strokes is not None:
        return strokes_to_bitmap(body.strokes)
    try:
        data = base64.b64decode(DATA_URL.sub("", body.image, count=1), validate=True)
    except (binascii.Error, ValueError):
        raise DrawingError("image must be base64 (optionally a data:image/...;base64, URL)") from None
    return image_to_bitmap(data)


@api.post("/predict", responses={200: PredictResponse, 503: ErrorResponse, **ERRORS})
def predict(body: PredictRequest):
    """Top-k labels of a drawing, with the model version and the bitmap the model saw."""
    served = holder().served
    try:
        bitmap = drawing_bitmap(body)
    except DrawingError as problem:
        return error(400, str(problem))
    if served is None:
        return error(503, f"{holder().why_no_model()}; feedback is still accepted")
    probabilities = served.predict(bitmap)
    k = min(body.k or current_app.config["SETTINGS"].top_k, len(probabilities))
    top = np.argsort(probabilities)[::-1][:k]
    categories = served.categories
    metrics.observe_prediction(served.version, categories[top[0]], float(probabilities[top[0]]))
    return {
        "model_version": served.version,
        "predictions": [{"label": categories[i], "probability": round(float(probabilities[i]), 6)} for i in top],
        "bitmap": base64.b64encode(bitmap.tobytes()).decode(),
    }


@api.post("/feedback", responses={201: FeedbackResponse, **ERRORS})
def post_feedback(body: FeedbackRequest):
    """Store a drawing with its correct label: confirmed when it matches the prediction, else a correction."""
    known = holder().known_categories()
    for field, value in (("label", body.label), ("predicted_label", body.predicted_label)):
        if value is not None and value not in known:
            return error(400, f"unknown {field} {value[:40]!r}: expected one of {', '.join(known)}")
    try:
        bitmap = strokes_to_bitmap(body.strokes)
        label = feedback.check_folder_name(body.label)
    except ValueError as problem:  # DrawingError and FeedbackError
        return error(400, str(problem))
    ref, kind = save_feedback(body, label, bitmap)
    return {"id": ref.key, "kind": kind}, 201


def save_feedback(body: FeedbackRequest | ProposalRequest, label: str, bitmap: np.ndarray, **extra):
    """Store a drawing as feedback for the known category `label` and count it; returns its ref and kind."""
    if body.predicted_label is None:
        kind = "unprompted"
    else:
        kind = "confirmed" if body.predicted_label == label else "correction"
    record = {
        "strokes": body.strokes,
        "predicted_label": body.predicted_label,
        "model_version": body.model_version,
        "kind": kind,
        "source": "webapp",
        **extra,
    }
    ref = feedback.save(current_app.config["SETTINGS"].feedback_dir, label, bitmap, record)
    # Versions become label values only when this worker served them: clients cannot grow the series.
    version = body.model_version if body.model_version in holder().versions_seen else "other"
    version = "none" if body.model_version is None else version
    metrics.observe_feedback(version, body.predicted_label or "none", label, kind)
    return ref, kind


@api.get("/model", responses={200: ModelResponse})
def model():
    """The served model version, its categories, since when it is served, and whether the registry answers."""
    h = holder()
    served = h.served
    return {
        "status": h.status(),
        "version": served.version if served else None,
        "categories": served.categories if served else [],
        "loaded_since": served.loaded_at.isoformat() if served else None,
        "registry_reachable": h.registry_reachable,
        "poll_seconds": h.settings.model_poll_seconds,
        "last_error": h.last_error,
    }
