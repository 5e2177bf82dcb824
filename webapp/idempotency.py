"""Idempotency-Key on saves: a save sent again (its answer was lost) stores nothing new and gets the first answer."""
from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

from flask import current_app
from pydantic import BaseModel

from doodle_lib import atomic, feedback

LOCK_FILE = ".idempotency.lock"  # in the data folder
REPLAYED = {"Idempotent-Replayed": "true"}  # on the answer to a save sent again


class KeyReused(Exception):
    """A key sent before with another body."""


def digest(body: BaseModel) -> str:
    """What a stored record keeps of the request that stored it: a retry has the same, another save does not."""
    return hashlib.sha256(body.model_dump_json().encode()).hexdigest()


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


def earlier(body: BaseModel, key: str | None) -> tuple[feedback.DrawingRef, dict, bool] | None:
    """The drawing an earlier request with this key stored, its record, and whether it is feedback (or a proposed
    category's), while it waits for training; KeyReused when that request's body was another."""
    if key is None:
        return None
    settings = current_app.config["SETTINGS"]
    for root, is_feedback in ((settings.feedback_dir, True), (settings.proposals_dir, False)):
        found = feedback.find(root, key)
        if found is None:
            continue
        if found[1].get("request_digest") != digest(body):
            raise KeyReused("this Idempotency-Key came before with another drawing or label: send a new key for a "
                            "new save")
        return (*found, is_feedback)
    return None
