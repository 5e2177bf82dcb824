"""MLflow registry webhooks: a signed model_version_alias.created event makes every worker check at once."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time

from flask import Blueprint, current_app, request

bp = Blueprint("webhooks", __name__, url_prefix="/webhooks")
MAX_SKEW_SECONDS = 300  # older deliveries are refused, so a captured one cannot be replayed later


def signature_valid(secret: str, delivery_id: str, timestamp: str, payload: bytes, signature: str) -> bool:
    """MLflow's scheme: v1,base64(HMAC-SHA256(secret, '<delivery id>.<timestamp>.<payload>'))."""
    signed = f"{delivery_id}.{timestamp}.".encode() + payload
    expected = "v1," + base64.b64encode(hmac.new(secret.encode(), signed, hashlib.sha256).digest()).decode()
    return hmac.compare_digest(expected.encode(), signature.encode())


@bp.post("/mlflow")
def mlflow_event():
    """Verify the delivery, then wake the model holders if the production alias of our model moved."""
    settings = current_app.config["SETTINGS"]
    if not settings.webhook_secret:
        return {"error": "webhooks are off: set DOODLE_WEBHOOK_SECRET"}, 404
    headers = request.headers
    delivery, stamp = headers.get("X-MLflow-Delivery-Id", ""), headers.get("X-MLflow-Timestamp", "")
    payload = request.get_data(cache=False)
    if not signature_valid(settings.webhook_secret, delivery, stamp, payload, headers.get("X-MLflow-Signature", "")):
        return {"error": "bad or missing X-MLflow-Signature"}, 401
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    if not re.fullmatch(r"[0-9]{1,12}", stamp) or abs(time.time() - int(stamp)) > MAX_SKEW_SECONDS:
        return {"error": "X-MLflow-Timestamp is missing or too far from now"}, 401
    try:
        event = json.loads(payload)
        data = event.get("data") or {}
        ours = (event.get("entity"), data.get("name"), data.get("alias")) == (
            "model_version_alias", settings.model_name, settings.production_alias
        )
    except (ValueError, AttributeError, RecursionError):
        return {"error": "the payload is not an MLflow webhook event"}, 400
    if ours:
        current_app.extensions["model_holder"].notify()
    return {"accepted": ours}
