"""The two-hop design of earlier systems, for bench/serve.py: a thin Flask app that renders the strokes and
forwards the bitmap to `mlflow models serve`'s /invocations, then turns the logits into top-k labels.

Run under gunicorn: `gunicorn 'bench.proxy:create_app()'` with BENCH_INVOCATIONS_URL and BENCH_CATEGORIES
(a JSON list) set.
"""
from __future__ import annotations

import json
import os
import threading

import numpy as np
import requests
from flask import Flask, request

from doodle_lib.drawing import DrawingError, strokes_to_bitmap


def create_app() -> Flask:
    app = Flask(__name__)
    invocations = os.environ["BENCH_INVOCATIONS_URL"]
    categories = json.loads(os.environ["BENCH_CATEGORIES"])
    local = threading.local()  # one keep-alive session a thread

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
        if not hasattr(local, "session"):
            local.session = requests.Session()
        answer = local.session.post(invocations, json={"inputs": bitmap[None].astype(np.float32).tolist()}, timeout=60)
        if answer.status_code != 200:
            return {"error": f"model server answered {answer.status_code}"}, 502
        logits = np.asarray(answer.json()["predictions"][0], dtype=np.float64)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        top = np.argsort(probabilities)[::-1][: int(body.get("k") or 3)]
        return {"predictions": [{"label": categories[i], "probability": round(float(probabilities[i]), 6)} for i in top]}

    return app
