"""Idempotency-Key on saves: a save sent again (its answer was lost) stores nothing new and gets the first answer."""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from flask import current_app
from pydantic import BaseModel

from doodle_lib import atomic, feedback

LOCK_FILE = ".idempotency.lock"  # in the data folder
REPLAYED = {"Idempotent-Replayed": "true"}  # on the answer to a save sent again


def digest(body: BaseModel) -> str:
    """What a stored record keeps of the request that stored it: a retry has the same, another save does not."""
    return hashlib.sha256(body.model_dump_json().encode()).hexdigest()


def record_fields(body: BaseModel, key: str | None) -> dict:
    """The fields a keyed save adds to its drawing's record, for replay() to tell a retry from another save."""
    return {"request_digest": digest(body)} if key else {}


@contextmanager
def claimed(key: str | None) -> Iterator[None]:
    """Hold the lock of keyed saves while one looks for its earlier self and stores, so that two copies of a request
    arriving together on two workers store one drawing. (The wait blocks a gevent worker, for one save's few ms at
    most.) A save without a key never waits."""
    if key is None:
        yield
        return
    with atomic.exclusive(current_app.config["SETTINGS"].data_dir / LOCK_FILE):
        yield


def replay(body: BaseModel, key: str | None, answer: Callable[[feedback.DrawingRef, dict, bool], dict]) -> tuple | None:
    """The response to a save sent again while its drawing waits for training: the first answer, built by `answer`
    from the stored drawing, its record and whether it is feedback (or a proposed category's); a 422 for a key that
    came with another body; None for a new save."""
    if key is None:
        return None
    settings = current_app.config["SETTINGS"]
    for root, is_feedback in ((settings.feedback_dir, True), (settings.proposals_dir, False)):
        found = feedback.find(root, key)
        if found is None:
            continue
        ref, record = found
        if record.get("request_digest") != digest(body):
            return {"error": "this Idempotency-Key came before with another drawing or label: send a new key for a "
                             "new save"}, 422
        return answer(ref, record, is_feedback), 201, REPLAYED
    return None
