"""Quick, Draw! files, the fixed train/evaluation split, and the training data the pipeline grows."""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from doodle_lib import atomic

BASE_FILE = "base.npz"
FEEDBACK_FOLDER = "feedback"  # inside the dataset folder: one .npz per ingested batch


@dataclass(frozen=True)
class Split:
    """Images (N, 28, 28) uint8 with their labels as category names."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


def categories_in(source_dir: Path) -> list[str]:
    """Categories that have a numpy_bitmap file in a Quick, Draw! folder, sorted."""
    return sorted(p.stem for p in (source_dir / "numpy_bitmap").glob("*.npy"))


def load_bitmaps(source_dir: Path, category: str, limit: int | None = None) -> np.ndarray:
    """Rows of numpy_bitmap/<category>.npy as (N, 28, 28) uint8, memory-mapped until sliced."""
    path = source_dir / "numpy_bitmap" / f"{category}.npy"
    if not path.is_file():
        raise FileNotFoundError(f"no bitmaps for category {category!r}: {path} does not exist")
    rows = np.load(path, mmap_mode="r")
    if rows.ndim != 2 or rows.shape[1] != 784 or rows.dtype != np.uint8:
        raise ValueError(f"{path} is not a numpy_bitmap file: shape {rows.shape}, dtype {rows.dtype}")
    return np.asarray(rows[:limit]).reshape(-1, 28, 28)


def load_drawings(source_dir: Path, category: str, limit: int | None = None) -> list[dict]:
    """Drawings of simplified/<category>.ndjson (word, key_id, drawing as [[xs], [ys]] per stroke)."""
    path = source_dir / "simplified" / f"{category}.ndjson"
    drawings = []
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if limit is not None and len(drawings) >= limit:
                break
            if line.strip():
                drawings.append(json.loads(line))
    return drawings


def split_category(images: np.ndarray, eval_count: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed split: the last `eval_count` rows are for evaluation only, the rest for training."""
    if not 0 < eval_count < len(images):
        raise ValueError(f"cannot keep {eval_count} of {len(images)} drawings for evaluation")
    return images[:-eval_count], images[-eval_count:]


def build_base(
    source_dir: Path,
    dataset_dir: Path,
    evaluation_path: Path,
    categories: list[str],
    eval_per_category: int,
    max_per_category: int | None = None,
) -> tuple[Split, Split]:
    """Write the base training data and the fixed evaluation set from a Quick, Draw! folder."""
    train_x, train_y, eval_x, eval_y = [], [], [], []
    for category in categories:
        train, held = split_category(load_bitmaps(source_dir, category, max_per_category), eval_per_category)
        train_x.append(train)
        train_y += [category] * len(train)
        eval_x.append(held)
        eval_y += [category] * len(held)
    train_split = Split(np.concatenate(train_x), np.array(train_y))
    eval_split = Split(np.concatenate(eval_x), np.array(eval_y))
    atomic.write_npz(dataset_dir / BASE_FILE, x=train_split.x, y=train_split.y)
    atomic.write_npz(evaluation_path, x=eval_split.x, y=eval_split.y)
    return train_split, eval_split


def read_split(path: Path) -> Split:
    """Read a Split written by build_base or ingest (x and y arrays in an .npz); another file is a ValueError."""
    with path.open("rb") as handle:  # a missing file stays a FileNotFoundError
        if not zipfile.is_zipfile(handle):
            raise ValueError(f"{path} is not a dataset file: not an .npz archive")
    with np.load(path, allow_pickle=False) as data:
        if not {"x", "y"} <= set(data.files):
            raise ValueError(f"{path} is not a dataset file: it holds no x and y arrays")
        return Split(data["x"], data["y"])


def encode(labels: np.ndarray, categories: list[str]) -> np.ndarray:
    """Category names to class indices in the model's order; unknown names are an error."""
    index = {name: i for i, name in enumerate(categories)}
    unknown = sorted(set(labels.tolist()) - index.keys())
    if unknown:
        raise ValueError(f"labels not among the model's categories: {unknown}")
    return np.array([index[name] for name in labels.tolist()], dtype=np.int64)
