"""The canvas page."""
from __future__ import annotations

from flask import Blueprint, current_app, render_template

bp = Blueprint("pages", __name__)
# The page's own script and style only, never in a frame: injected markup could run nothing, and no other site can
# lay the page under its own to steer the buttons.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
}


@bp.after_request
def secure(response):
    response.headers.update(SECURITY_HEADERS)
    return response


@bp.get("/")
def index():
    """Draw, see the top 3, confirm or correct."""
    return render_template("index.html", model=current_app.extensions["model_holder"].describe())
