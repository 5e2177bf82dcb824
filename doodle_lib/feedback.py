"""The feedback folder: one PNG and one JSON per drawing under <root>/<category>/, the JSON written last."""
from __future__ import annotations

import glob
import io
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from doodle_lib import atomic


class FeedbackError(ValueError):
    """Feedback that cannot be stored; the message names the problem."""


@dataclass(frozen=True)
class DrawingRef:
    """One stored drawing: its category folder and its id (file stem)."""

    category: str
    id: str

    @property
    def key(self) -> str:
        """`<category>/<id>`: how XCom and logs name a drawing."""
        return f"{self.category}/{self.id}"

    @classmethod
    def parse(cls, key: str) -> "DrawingRef":
        category, _, drawing_id = key.partition("/")
        return cls(check_folder_name(category), check_folder_name(drawing_id))


def check_folder_name(name: str) -> str:
    """`name` if it is safe as one path component (1-100 characters, no separator, control character or leading dot)."""
    if (
        not isinstance(name, str)
        or not name
        or len(name) > 100
        or name.startswith(".")
        or any(c in name for c in "/\\")
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
    ):
        raise FeedbackError(f"not a safe name for a folder or file: {name!r}")
    return name


def new_id() -> str:
    """A time-sortable, unique drawing id."""
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:12]}"


def save(root: Path, category: str, bitmap: np.ndarray, record: dict) -> DrawingRef:
    """Store a drawing atomically: the PNG first, then its JSON, so a JSON always has its PNG."""
    from PIL import Image

    ref = DrawingRef(check_folder_name(category), new_id())
    folder = root / ref.category
    png = io.BytesIO()
    Image.fromarray(np.asarray(bitmap, dtype=np.uint8)).save(png, format="PNG")
    created = datetime.now(timezone.utc).isoformat()
    document = {"id": ref.id, "label": ref.category, "created_at": created, **record}
    atomic.write_bytes(folder / f"{ref.id}.png", png.getvalue())
    atomic.write_bytes(folder / f"{ref.id}.json", json.dumps(document).encode())
    return ref


def complete(root: Path, category: str | None = None) -> list[DrawingRef]:
    """Every drawing whose JSON (written last) is in place (of one category, or all), oldest first; temporary files
    never count."""
    if not root.is_dir():
        return []
    refs = [
        DrawingRef(path.parent.name, path.stem)
        for path in root.glob(f"{glob.escape(check_folder_name(category)) if category else '*'}/*.json")
        if not path.name.startswith(".") and path.with_suffix(".png").is_file()
    ]
    return sorted(refs, key=lambda ref: (ref.id, ref.category))


def count(root: Path) -> int:
    """How many complete drawings wait in `root`."""
    return len(complete(root))


MOVES_LOCK = ".drawing-moves.lock"  # in the data folder


@contextmanager
def moves_lock(data_dir: Path) -> Iterator[None]:
    """One process at a time moves drawings between folders: the snapshots of both DAGs, proposal merges and
    rejections. Each checks where drawings are and then moves them, so another move in between must wait."""
    with atomic.exclusive(data_dir / MOVES_LOCK):
        yield


def move(refs: list[DrawingRef], source: Path, destination: Path) -> list[DrawingRef]:
    """Move drawings (PNG and JSON) from `source` to `destination`; ones already moved are kept as they are."""
    moved = []
    for ref in refs:
        folder = destination / ref.category
        folder.mkdir(parents=True, exist_ok=True)
        # PNG first, as save() writes them, so `destination` never holds a JSON without its PNG. A crash between the two
        # leaves the PNG alone there and the JSON alone in `source`: complete() counts the drawing in neither folder
        # until the same move runs again (a retried snapshot does) and moves the JSON.
        for suffix in (".png", ".json"):
            old, new = source / ref.category / f"{ref.id}{suffix}", folder / f"{ref.id}{suffix}"
            if old.exists():
                os.replace(old, new)
            elif not new.exists():
                raise FeedbackError(f"drawing {ref.key} is in neither {source} nor {destination}")
        moved.append(ref)
    return moved


def read(folder: Path, ref: DrawingRef) -> tuple[np.ndarray, dict]:
    """The bitmap and the record of a stored drawing."""
    from PIL import Image

    with Image.open(folder / ref.category / f"{ref.id}.png") as image:
        bitmap = np.asarray(image.convert("L"))
    return bitmap, json.loads((folder / ref.category / f"{ref.id}.json").read_text())
