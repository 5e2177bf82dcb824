"""The JSON API of proposed categories: a drawing under a name the user typed, and the list of proposals."""
from __future__ import annotations

from dataclasses import asdict

from flask import current_app
from flask_openapi3 import APIBlueprint, Tag

from doodle_lib import feedback, proposals
from doodle_lib.drawing import strokes_to_bitmap
from webapp import idempotency, metrics
from webapp.api import ERRORS, error, holder, require_json_object, save_feedback
from webapp.schemas import ProposalRequest, ProposalResponse, ProposalsResponse, SaveHeaders

api = APIBlueprint("proposals", __name__, url_prefix="/api", abp_tags=[Tag(name="proposals")])
api.before_request(require_json_object)


@api.post("/proposals", responses={201: ProposalResponse, **ERRORS})
def post_proposal(body: ProposalRequest, header: SaveHeaders):
    """Store a drawing none of the categories fits: as a proposal for the typed name, or as feedback if it is known."""
    return idempotency.once(header.idempotency_key, body, lambda: store_proposal(body))


def store_proposal(body: ProposalRequest):
    """post_proposal's work, once per idempotency key."""
    settings = current_app.config["SETTINGS"]
    known = holder().known_categories()
    if body.predicted_label is not None and body.predicted_label not in known:
        return error(400, f"unknown predicted_label {body.predicted_label[:40]!r}: expected one of {', '.join(known)}")
    try:
        bitmap = strokes_to_bitmap(body.strokes)
        where = proposals.target(settings, body.name, known)
    except ValueError as problem:  # DrawingError and ProposalError
        metrics.observe_proposal("refused")
        return error(400, str(problem))
    if where.known:
        ref, kind = save_feedback(body, where.name, bitmap, proposed_as=body.name)
        count = len(feedback.complete(settings.feedback_dir, where.name))
    else:
        record = {"strokes": body.strokes, "predicted_label": body.predicted_label,
                  "model_version": body.model_version, "source": "webapp"}
        ref, count = proposals.save(settings, where.name, body.name, bitmap, record)
        kind = "proposal"
    metrics.observe_proposal("known" if where.known else "proposal")
    return {"id": ref.key, "name": where.name, "known": where.known, "kind": kind, "count": count}, 201


@api.get("/proposals", responses={200: ProposalsResponse})
def list_proposals():
    """The proposed categories, their drawings and whether the next retraining may add them."""
    settings = current_app.config["SETTINGS"]
    return {
        "min_drawings": settings.proposal_min_drawings,
        "require_approval": settings.proposals_require_approval,
        "proposals": [asdict(p) for p in proposals.list_all(settings)],
    }
