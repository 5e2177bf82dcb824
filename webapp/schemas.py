"""Request and response bodies of the JSON API, validated by pydantic and published in the OpenAPI document."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from doodle_lib.drawing import MAX_POINTS, MAX_STROKES

# Strict: JSON numbers only. Lax mode turned false and "1.5" into 0.0 and 1.5, which the schema does not allow.
Number = Annotated[float, Field(allow_inf_nan=False, strict=True)]
Axis = Annotated[list[Number], Field(max_length=MAX_POINTS)]
Stroke = Annotated[
    list[Axis], Field(min_length=2, max_length=3, description="[[xs], [ys]] or [[xs], [ys], [ts]], each as long as xs")
]
Strokes = Annotated[
    list[Stroke], Field(min_length=1, max_length=MAX_STROKES, description="Quick, Draw! strokes, coordinates of any scale within ±1e7")
]
Label = Annotated[str, Field(min_length=1, max_length=100, description="a category of the served model")]
Version = Annotated[str, Field(pattern=r"^[0-9]{1,9}$", description="a registered model version")]
MAX_IMAGE_CHARS = 14_000_000  # a 10 MB image in base64, with its data URL prefix


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class PredictRequest(Strict):
    """A drawing as strokes, or as an image (PNG or JPEG, base64 or a data: URL)."""

    strokes: Strokes | None = None
    image: Annotated[str, Field(min_length=1, max_length=MAX_IMAGE_CHARS)] | None = None
    k: Annotated[StrictInt, Field(ge=1, le=100)] | None = None  # true, "2" and 2.0 are not integers

    @model_validator(mode="after")
    def one_drawing(self):
        if (self.strokes is None) == (self.image is None):
            raise ValueError("send exactly one of 'strokes' or 'image'")
        return self


class Guess(BaseModel):
    label: str
    probability: float


class PredictResponse(BaseModel):
    model_version: str
    predictions: list[Guess] = Field(description="top-k labels, most probable first")
    bitmap: str = Field(description="the 28x28 uint8 image the model saw, row-major, base64")


class FeedbackRequest(Strict):
    """What the user said about a prediction: the correct label of a drawing."""

    strokes: Strokes
    label: Label
    predicted_label: Label | None = None
    model_version: Version | None = None


class SaveHeaders(BaseModel):
    """Headers of a request that stores a drawing."""

    idempotency_key: str | None = Field(
        None, alias="Idempotency-Key", pattern=r"^[A-Za-z0-9_-]{8,64}$",
        description="the client's own id of this save, 8-64 letters, digits, '-' or '_': sent again with the same "
                    "body (its answer was lost) within 24 hours, the drawing is not stored twice and the first "
                    "answer comes back, with Idempotent-Replayed: true",
    )


class FeedbackResponse(BaseModel):
    id: str = Field(description="<category>/<drawing id>")
    kind: Literal["confirmed", "correction", "unprompted"]


class ProposalRequest(Strict):
    """A drawing that none of the known categories fits, with the category name the user typed for it."""

    strokes: Strokes
    name: Annotated[str, Field(min_length=1, max_length=100, description="as typed; the server normalises it")]
    predicted_label: Label | None = None
    model_version: Version | None = None


class ProposalResponse(BaseModel):
    id: str = Field(description="<folder>/<drawing id>")
    name: str = Field(description="the normalised name, or the known category it matched")
    known: bool = Field(description="true: a known category, so the drawing is stored as its ordinary feedback")
    kind: Literal["proposal", "confirmed", "correction", "unprompted"]
    count: int = Field(description="drawings now stored under this name (waiting feedback for a known category)")


class Proposal(BaseModel):
    name: str
    display_name: str
    status: Literal["pending", "approved"]
    created_at: str
    count: int
    ready: bool = Field(description="the next retraining run may add it as a category")


class ProposalsResponse(BaseModel):
    min_drawings: int = Field(description="drawings a proposal needs before it is trained")
    require_approval: bool = Field(description="an operator must approve a proposal before it is trained")
    proposals: list[Proposal] = Field(description="most drawings first")


class ModelResponse(BaseModel):
    status: Literal["ok", "degraded", "no_model"]
    reason: str | None = Field(description="why the status is not ok, in words (null when it is)")
    version: str | None
    categories: list[str] = Field(description="the served model's; while none is served, the base data's (the "
                                              "labels feedback takes either way)")
    loaded_since: str | None
    registry_reachable: bool
    poll_seconds: float
    last_error: str


class ErrorResponse(BaseModel):
    error: str
