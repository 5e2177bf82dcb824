"""The issue's yardstick for bench/serve.py: "a plain Flask app under gunicorn with 2 sync workers" serving
/api/predict in-process, written the obvious way (the registered torch model, stdlib JSON, no metrics or schema).

Run under gunicorn: `gunicorn -w 2 'bench.plain_flask:create_app()'` with MLFLOW_TRACKING_URI set.
"""
from __future__ import annotations

import numpy as np
import torch
from flask import Flask

from bench.baseline_app import strokes_app, top_k
from doodle_lib import tracking
from doodle_lib.settings import Settings


def create_app() -> Flask:
    torch.set_num_threads(1)  # two workers on two cores
    loaded = tracking.load_production(Settings())
    if loaded is None:
        raise SystemExit("no production model in the registry")
    model, version = loaded
    model.eval()

    def forward(bitmap: np.ndarray, k: int) -> dict:
        with torch.inference_mode():
            probabilities = torch.softmax(model(torch.from_numpy(bitmap)[None]), dim=1)[0].numpy()
        return {"model_version": version.version, "predictions": top_k(probabilities, model.categories, k),
                "bitmap": bitmap.tolist()}

    return strokes_app(forward)
