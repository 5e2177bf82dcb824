"""A small but real world for retraining tests: base data in a DVC project, a trained production model, feedback."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np

from doodle_lib import feedback
from doodle_lib.drawing import strokes_to_bitmap
from doodle_lib.retraining import batch_name
from doodle_lib.settings import PROJECT_ROOT, Settings
from tests.conftest import fixture_drawings

MAX_PER_CATEGORY = 700  # 500 training and 200 evaluation drawings a category
EVAL_PER_CATEGORY = 200
BASE_EPOCHS = 8
CACHE = PROJECT_ROOT / "tests" / "artifacts"  # git-ignored


def prepare_base(settings: Settings, categories: list[str] | None = None) -> str:
    """Base data, evaluation set and the first DVC version in settings' folders (all sample categories unless
    given); returns the hash."""
    from doodle_lib import baseline

    settings = settings.model_copy(update={"eval_per_category": EVAL_PER_CATEGORY})  # the split the cached model saw
    return baseline.prepare(settings, categories=categories, max_per_category=MAX_PER_CATEGORY, force=True)


def base_checkpoint(settings: Settings) -> Path:
    """A production-quality-for-tests model trained on the base data, cached by the code and data it came from."""
    from doodle_lib import dataset, model, training

    split = dataset.read_split(settings.dataset_dir / dataset.BASE_FILE)
    key = hashlib.sha256()
    for name in ("model.py", "training.py", "dataset.py"):
        key.update((PROJECT_ROOT / "doodle_lib" / name).read_bytes())
    key.update(f"{MAX_PER_CATEGORY}/{EVAL_PER_CATEGORY}/{BASE_EPOCHS}/{sorted(set(split.y.tolist()))}".encode())
    path = CACHE / f"base-{key.hexdigest()[:16]}.pt"
    if not path.exists():
        trained, _ = training.train(split, sorted(np.unique(split.y).tolist()), training.TrainConfig(epochs=BASE_EPOCHS, threads=2))
        from doodle_lib import atomic

        atomic.write_bytes(path, model.checkpoint_bytes(trained))
    return path


def register_base(settings: Settings, checkpoint: Path, dataset_version: str) -> str:
    """Log and register the cached base model under settings.model_name; returns the version."""
    from doodle_lib import tracking, training
    from doodle_lib.dataset import read_split
    from doodle_lib.model import load_checkpoint

    model = load_checkpoint(checkpoint)
    evaluation = training.evaluate(model, read_split(settings.evaluation_path))
    with tracking.training_run(settings, "base (tests)", {"dataset_version": dataset_version}) as run_id:
        uri = tracking.log_model(model)
    version = tracking.register(settings, uri, run_id, tracking.version_tags(dataset_version, evaluation))
    return str(version.version)


def copy_world(source: Settings, target: Settings) -> None:
    """Copy a prepared data dir and DVC remote into another test's folders."""
    shutil.copytree(source.data_dir, target.data_dir, symlinks=True)
    shutil.copytree(source.dvc_remote_dir, target.dvc_remote_dir)


def save_feedback(settings: Settings, count: int, shuffled: bool = False, seed: int = 0, start: int = 0) -> list[str]:
    """Store `count` golden drawings as feedback (their strokes and rendered bitmaps); shuffled labels on request."""
    drawings = fixture_drawings()
    order = np.random.default_rng(seed).permutation(len(drawings))[start : start + count]
    labels = [drawings[i][0] for i in order]
    if shuffled:  # the batch's labels permuted among its drawings (about 80% end up wrong)
        labels = list(np.random.default_rng(seed + 1).permutation(labels))
    keys = []
    for i, label in zip(order, labels):
        strokes = drawings[i][2]
        bitmap = strokes_to_bitmap(strokes, raw=False)
        ref = feedback.save(settings.feedback_dir, str(label), bitmap, {"strokes": strokes, "simplified": True, "source": "test"})
        keys.append(ref.key)
    return keys


def dataset_keys(settings: Settings) -> list[str]:
    """Every drawing key in the ingested feedback batches of the current dataset folder (duplicates kept)."""
    keys = []
    for path in sorted((settings.dataset_dir / "feedback").glob("*.npz")):
        with np.load(path) as data:
            keys += data["keys"].tolist()
    return keys
