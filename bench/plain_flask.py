"""The issue's yardstick for bench/serve.py: "a plain Flask app under gunicorn with 2 sync workers" serving
/api/predict in-process, written the obvious way (the registered torch model, stdlib JSON, no metrics or schema).

Run under gunicorn: `gunicorn -w 2 'bench.plain_flask:create_app()'` with MLFLOW_TRACKING_URI set.
"""
from __future__ import annotations

import numpy as np
import torch
from flask import Flask, request

from doodle_lib import tracking
from doodle_lib.drawing import DrawingError, strokes_to_bitmap
from doodle_lib.settings import Settings


def create_app() -> Flask:
    torch.set_num_threads(1)  # two workers on two cores
    app = Flask(__name__)
    loaded = tracking.load_production(Settings())
    if loaded is None:
        raise SystemExit("no production model in the registry")
    model, version = loaded
    model.eval()

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
        with torch.inference_mode():
            probabilities = torch.softmax(model(torch.from_numpy(bitmap)[None]), dim=1)[0].numpy()
        top = np.argsort(probabilities)[::-1][: int(body.get("k") or 3)]
        return {
            "model_version": version.version,
            "predictions": [{"label": model.categories[i], "probability": round(float(probabilities[i]), 6)} for i in top],
            "bitmap": bitmap.tolist(),
        }

    return app
