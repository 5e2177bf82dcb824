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
from flask import Flask

from bench.baseline_app import strokes_app, top_k


def create_app() -> Flask:
    invocations = os.environ["BENCH_INVOCATIONS_URL"]
    categories = json.loads(os.environ["BENCH_CATEGORIES"])
    local = threading.local()  # one keep-alive session a thread

    def forward(bitmap: np.ndarray, k: int):
        if not hasattr(local, "session"):
            local.session = requests.Session()
        answer = local.session.post(invocations, json={"inputs": bitmap[None].astype(np.float32).tolist()}, timeout=60)
        if answer.status_code != 200:
            return {"error": f"model server answered {answer.status_code}"}, 502
        logits = np.asarray(answer.json()["predictions"][0], dtype=np.float64)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        return {"predictions": top_k(probabilities, categories, k)}

    return strokes_app(forward)
