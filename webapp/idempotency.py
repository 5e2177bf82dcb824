"""Idempotency-Key on saves: a save sent again (its answer was lost) stores nothing new and gets the first answer."""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from flask import current_app
from pydantic import BaseModel

from doodle_lib import atomic

FOLDER = "idempotency"  # in the web app's shared state folder: one answer a key, and the lock
LOCK_FILE = ".lock"
KEEP_SECONDS = 24 * 3600  # as long as a key's answer is kept: a client retries within seconds or minutes
PRUNE_EVERY_SECONDS = 3600
REPLAYED = {"Idempotent-Replayed": "true"}  # on the answer to a save sent again
_last_prune = 0.0  # per process


def once(key: str | None, body: BaseModel, save: Callable[[], tuple]) -> tuple:
    """The answer of `save()` (a response tuple), which runs once per key: a save sent again with the key gets the
    first 201 answer as it was, wherever its drawing has gone since (training takes drawings away); the key with
    another body is a 422. Refusals are not kept: sent again, the body is judged again. Without a key, `save()`."""
    if key is None:
        return save()
    # Copies of a request arriving together on two workers: one stores, the others wait and replay its answer.
    # (The wait blocks a gevent worker, for one save's few ms at most.)
    answers, request_digest = folder(), digest(body)
    with atomic.exclusive(answers / LOCK_FILE):
        path = answers / f"{hashlib.sha256(key.encode()).hexdigest()}.json"  # never the client's text as a name
        kept = _read(path)
        if kept is not None:
            if kept["request_digest"] != request_digest:
                return {"error": "this Idempotency-Key came before with another drawing or label: send a new key "
                                 "for a new save"}, 422
            return kept["answer"], kept["status"], REPLAYED
        answer = save()
        if answer[1] == 201:
            # After the drawing is stored: a crash in between makes a retry store it again, never lose it.
            kept = {"request_digest": request_digest, "answer": answer[0], "status": 201}
            atomic.write_bytes(path, json.dumps(kept).encode())
            _prune()
        return answer


def folder() -> Path:
    return current_app.config["SETTINGS"].webapp_state_dir / FOLDER


def digest(body: BaseModel) -> str:
    """What a kept answer remembers of its request: a retry has the same, another save does not."""
    return hashlib.sha256(body.model_dump_json().encode()).hexdigest()


def _read(path: Path) -> dict | None:
    """A key's kept answer, or None when there is none or it has expired (by the file's time, as _prune goes)."""
    try:
        if time.time() - path.stat().st_mtime > KEEP_SECONDS:
            return None
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None


def _prune() -> None:
    """Delete expired answers, at most once an hour in each process (under the lock)."""
    global _last_prune
    now = time.time()
    if now - _last_prune < PRUNE_EVERY_SECONDS:
        return
    _last_prune = now
    with os.scandir(folder()) as entries:
        for entry in entries:
            if entry.name.endswith(".json") and now - entry.stat().st_mtime > KEEP_SECONDS:
                Path(entry.path).unlink(missing_ok=True)
