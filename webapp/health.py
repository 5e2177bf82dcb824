"""Liveness and readiness probes."""
from __future__ import annotations

from flask import Blueprint, current_app

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    """The process answers requests."""
    return {"status": "alive"}


@bp.get("/readyz")
def readyz():
    """Ready once a model is served or the registry said there is none yet; degraded still serves."""
    holder = current_app.extensions["model_holder"]
    served = holder.served
    body = {
        "status": holder.status(),
        "version": served.version if served else None,
        "registry_reachable": holder.registry_reachable,
    }
    return body, 200 if holder.ready() else 503
