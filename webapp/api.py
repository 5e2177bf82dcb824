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
from doodle_lib.drawing import MAX_POINTS, MAX_STROKES, DrawingError, strokes_to_bitmap
from doodle_lib.upload import image_to_bitmap
from webapp import idempotency, metrics, offload
from webapp.schemas import (
    ErrorResponse, FeedbackRequest, FeedbackResponse, ModelResponse, PredictRequest, PredictResponse, ProposalRequest,
    SaveHeaders,
)

api = APIBlueprint("api", __name__, url_prefix="/api", abp_tags=[Tag(name="doodles")])
# Every refusal a save or a prediction can get (408: the body stopped arriving, webapp.StalledBodies; 413: too large).
ERRORS = {status: ErrorResponse for status in (400, 408, 413, 415, 422)}
URL_SAFE = str.maketrans("-_", "+/")
# Every point has an x, a y and perhaps a time; the rest of a body (labels, names, a reason) is a few hundred values.
MAX_BODY_VALUES = 3 * MAX_POINTS + 3 * MAX_STROKES + 10_000
DATA_URL = re.compile(r"^data:image/[a-z+.-]+(;[a-z0-9=.+-]+)*;base64,", re.IGNORECASE)


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
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):  # JSON is UTF-8 (RFC 8259); decoding as such anyway would garble the text
        return error(415, f"send the JSON as UTF-8 (the Content-Type says charset={charset[:40]!r})")
    if request.content_encoding:
        return error(415, f"Content-Encoding {request.content_encoding[:40]!r} is not accepted: send the body as it is")
    problem = incomplete_body() or too_many_values()
    if problem:
        return problem
    try:
        body = request.get_json()
    except BadRequest as refused:
        # Outside debug mode Flask raises a bare BadRequest from Werkzeug's, whose description has the decoder's reason.
        described = refused.__cause__ if isinstance(refused.__cause__, BadRequest) else refused
        reason = str(described.description).removeprefix("Failed to decode JSON object: ")
        return error(400, f"the body is not valid JSON: {reason[:200]}")
    except RecursionError:  # json's parser recurses once a level: a few kB of "[[[[" reach Python's limit
        return error(400, "the body is nested too deeply")
    if not isinstance(body, dict):
        return error(400, f"the body must be a JSON object, not {type(body).__name__}")
    return None


def incomplete_body():
    """The error for a body cut short of its Content-Length, or a chunked one reaching the size limit: Werkzeug hands
    on either as if it were whole (it stops reading a chunked body at the limit), so it would be stored truncated."""
    received = len(request.get_data())  # cached: get_json parses the same bytes
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is None and received >= limit:
        return error(413, f"the body is too large: at most {limit} bytes")
    if request.content_length is not None and received < request.content_length:
        return error(400, f"the body ended after {received} of the {request.content_length} bytes its Content-Length announced")
    return None


def too_many_values():
    """The error for a body holding more values than the largest drawing, counted before it is parsed: parsing and
    validating the millions of numbers a 16 MB body can hold would take a worker for a second."""
    separators = request.get_data().count(b",")  # an image's base64 holds none; a drawing's numbers one each
    if separators > MAX_BODY_VALUES:
        return error(413, f"the body holds {separators} values: a drawing has at most {MAX_POINTS} points "
                          f"in at most {MAX_STROKES} strokes")
    return None


def drawing_bitmap(body: PredictRequest) -> np.ndarray:
    """The 28x28 model input of the request's strokes or image (DrawingError names what is wrong)."""
    if body.strokes is not None:
        return strokes_to_bitmap(body.strokes)
    # Line breaks (MIME's 76-column base64) and the URL-safe alphabet are base64 all the same.
    text = re.sub(r"\s+", "", DATA_URL.sub("", body.image, count=1)).translate(URL_SAFE)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise DrawingError("image must be base64 (optionally a data:image/...;base64, URL)") from None
    # Decoding a large image takes a while: off the event loop, where the worker's other requests wait (Pillow lets
    # go of the interpreter while it decodes and resizes).
    return offload.blocking(image_to_bitmap, data)


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
def post_feedback(body: FeedbackRequest, header: SaveHeaders):
    """Store a drawing with its correct label: confirmed when it matches the prediction, else a correction."""
    return idempotency.once(header.idempotency_key, body, lambda: store_feedback(body))


def store_feedback(body: FeedbackRequest):
    """post_feedback's work, once per idempotency key."""
    known = holder().known_categories()
    for field, value in (("label", body.label), ("predicted_label", body.predicted_label)):
        if value is not None and value not in known:
            lookalike = "" if value.isascii() else " (it holds characters outside ASCII)"
            return error(400, f"unknown {field} {value[:40]!r}{lookalike}: expected one of {', '.join(known)}")
    try:
        bitmap = strokes_to_bitmap(body.strokes)
        label = feedback.check_folder_name(body.label)
    except ValueError as problem:  # DrawingError and FeedbackError
        return error(400, str(problem))
    ref, kind = save_feedback(body, label, bitmap)
    return {"id": ref.key, "kind": kind}, 201


def save_feedback(
    body: FeedbackRequest | ProposalRequest, label: str, bitmap: np.ndarray, **extra
) -> tuple[feedback.DrawingRef, str]:
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
    """The served model version, its categories (the labels feedback takes), since when, and whether the registry
    answers."""
    return holder().describe()
