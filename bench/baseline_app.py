"""The Flask app the baselines of bench/serve.py share: /healthz, and /api/predict rendering the strokes as the web
app does before the baseline's own way of answering."""
from __future__ import annotations

from typing import Callable

import numpy as np
from flask import Flask, request

from doodle_lib.drawing import DrawingError, strokes_to_bitmap


def strokes_app(answer: Callable[[np.ndarray, int], dict | tuple[dict, int]]) -> Flask:
    """The app; `answer(bitmap, k)` gives /api/predict's answer about one rendered drawing and its top k."""
    app = Flask(__name__)

    @app.get("/healthz")
    def healthz():
        return {"status": "alive"}

    @app.post("/api/predict")
    def predict():
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return {"error": "the body must be a JSON object"}, 400
        try:
            bitmap = strokes_to_bitmap(body.get("strokes"))
        except DrawingError as problem:
            return {"error": str(problem)}, 400
        return answer(bitmap, int(body.get("k") or 3))

    return app


def top_k(probabilities: np.ndarray, categories: list[str], k: int) -> list[dict]:
    """The k most probable labels, most probable first."""
    top = np.argsort(probabilities)[::-1][:k]
    return [{"label": categories[i], "probability": round(float(probabilities[i]), 6)} for i in top]
