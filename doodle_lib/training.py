"""Train, fine-tune and evaluate the doodle CNN on CPU, seeded and deterministic."""
from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from doodle_lib.dataset import Split, encode
from doodle_lib.model import DoodleCNN

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """How a model is trained; every field is logged to MLflow as a parameter."""

    epochs: int = 15  # passes over the training data
    batch_size: int = 128  # images per optimiser step
    learning_rate: float = 2e-3  # Adam's step size (peak of the one-cycle schedule)
    weight_decay: float = 1e-4  # L2 penalty, AdamW style
    width: int = 16  # channels of the first conv block; the others are 2x and 4x
    max_shift: int = 2  # random translation in pixels, so a shifted drawing keeps its label
    seed: int = 0  # the only source of randomness
    limit_per_class: int | None = None  # train on at most this many images a class (quick dry runs)
    replay_ratio: float = 2.0  # fine-tuning: old images drawn per new image, so old categories stay
    feedback_repeats: int = 6  # fine-tuning: how often each new image is seen per epoch (see docs/retraining.md)
    threads: int = 0  # torch intra-op threads; 0 keeps torch's default

    def __post_init__(self) -> None:
        """Refuse a value training cannot use, naming the field: a params file's values are whatever YAML made."""
        for item in fields(self):
            name, value, least = item.name, getattr(self, item.name), LEAST[item.name]
            if value is None and item.default is None:  # limit_per_class: no limit
                continue
            whole = not isinstance(item.default, float)
            number = isinstance(value, int) or (not whole and isinstance(value, float) and math.isfinite(value))
            if isinstance(value, bool) or not number or (least is not None and value < least):
                kind = "a whole number" if whole else "a finite number"
                raise ValueError(f"{name} must be {kind}{'' if least is None else f' of at least {least}'}, not {value!r}")
        if self.learning_rate == 0:
            raise ValueError("learning_rate must be above 0")

    def params(self) -> dict:
        """The config as flat MLflow parameters."""
        return asdict(self)


# The least value of each TrainConfig field (None: any); limit_per_class may also be None.
LEAST = {
    "epochs": 0, "batch_size": 1, "learning_rate": 0, "weight_decay": 0, "width": 1, "max_shift": 0, "seed": None,
    "limit_per_class": 1, "replay_ratio": 0, "feedback_repeats": 1, "threads": 0,
}


@dataclass
class EpochStats:
    epoch: int
    loss: float
    accuracy: float


@dataclass
class Evaluation:
    """How a model does on one labelled set."""

    accuracy: float  # top-1, as a fraction
    loss: float  # mean cross-entropy of the true labels
    per_class: dict[str, float]
    confusion: list[list[int]]  # rows: true category, columns: predicted, in `categories` order
    categories: list[str]
    count: int
    predictions: list[int] = field(repr=False, default_factory=list)

    def summary(self) -> dict:
        """The figures without the per-sample predictions."""
        data = asdict(self)
        data.pop("predictions")
        return data


def seed_everything(seed: int, threads: int = 0) -> torch.Generator:
    """Seed torch and return the generator that orders batches, for runs that repeat exactly."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True)
    if threads:
        torch.set_num_threads(threads)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def limit_per_class(split: Split, limit: int | None) -> Split:
    """At most `limit` images of each label, keeping their order (for dry runs)."""
    if limit is None:
        return split
    keep = np.concatenate([np.flatnonzero(split.y == label)[:limit] for label in np.unique(split.y)])
    keep.sort()
    return Split(split.x[keep], split.y[keep])


def shift_batch(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to `max_shift` pixels (zero fill), the augmentation for position."""
    if max_shift == 0:
        return images
    n = len(images)
    padded = F.pad(images, (max_shift,) * 4)
    dx, dy = (torch.randint(0, 2 * max_shift + 1, (n,), generator=generator) for _ in range(2))
    rows = (torch.arange(28).view(1, 28) + dy.view(n, 1)).view(n, 28, 1)
    cols = (torch.arange(28).view(1, 28) + dx.view(n, 1)).view(n, 1, 28)
    return padded[torch.arange(n).view(n, 1, 1), rows, cols]


def train_one_epoch(
    model: DoodleCNN,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    generator: torch.Generator,
    progress: tqdm | None = None,
) -> tuple[float, float]:
    """One pass over (x, y) in shuffled batches; returns mean loss and accuracy."""
    model.train()
    order = torch.randperm(len(y), generator=generator)
    total_loss, correct = 0.0, 0
    for start in range(0, len(order), config.batch_size):
        index = order[start : start + config.batch_size]
        images, labels = shift_batch(x[index], config.max_shift, generator), y[index]
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(index)
        correct += (logits.argmax(1) == labels).sum().item()
        if progress is not None:
            progress.update(len(index))
    return total_loss / len(y), correct / len(y)


def fit(
    model: DoodleCNN,
    split: Split,
    config: TrainConfig,
    on_epoch: Callable[[EpochStats], None] | None = None,
    sample: Callable[[torch.Generator], Split] | None = None,
    epoch_size: int | None = None,
) -> list[EpochStats]:
    """Train `model` in place for config.epochs; `sample` may draw a fresh epoch set of `epoch_size` (replay mixes)."""
    generator = seed_everything(config.seed, config.threads)
    if config.epochs == 0:
        return []
    steps_per_epoch = -(-(epoch_size if sample else len(split)) // config.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=steps_per_epoch * config.epochs
    )
    history = []
    interactive = sys.stderr.isatty()
    for epoch in range(1, config.epochs + 1):
        data = sample(generator) if sample else split
        x, y = torch.from_numpy(data.x), torch.from_numpy(encode(data.y, model.categories))
        with tqdm(total=len(y), desc=f"epoch {epoch}/{config.epochs}", unit="img", disable=not interactive, leave=False) as bar:
            loss, accuracy = train_one_epoch(model, optimizer, scheduler, x, y, config, generator, bar)
        stats = EpochStats(epoch, loss, accuracy)
        log.info("epoch %d/%d: loss %.4f, accuracy %.4f", epoch, config.epochs, loss, accuracy)
        history.append(stats)
        if on_epoch:
            on_epoch(stats)
    return history


def train(
    split: Split, categories: list[str], config: TrainConfig, on_epoch: Callable[[EpochStats], None] | None = None
) -> tuple[DoodleCNN, list[EpochStats]]:
    """A new model trained from scratch on `split`."""
    seed_everything(config.seed, config.threads)
    model = DoodleCNN(categories, width=config.width)
    history = fit(model, limit_per_class(split, config.limit_per_class), config, on_epoch)
    return model, history


def fine_tune(
    model: DoodleCNN,
    new: Split,
    old: Split,
    config: TrainConfig,
    on_epoch: Callable[[EpochStats], None] | None = None,
) -> list[EpochStats]:
    """Continue training `model` on new images mixed with a replay of old ones; new labels grow the head."""
    seed_everything(config.seed, config.threads)  # the new head rows are random too: the same seed, the same model
    added = sorted(set(new.y.tolist()) - set(model.categories))
    if added:
        model.add_categories(added)
    old = limit_per_class(old, config.limit_per_class)
    repeated = Split(np.tile(new.x, (config.feedback_repeats, 1, 1)), np.tile(new.y, config.feedback_repeats))
    replay_count = min(len(old), max(1, int(len(new) * config.replay_ratio * config.feedback_repeats)))

    def sample(generator: torch.Generator) -> Split:
        # A fresh replay draw each epoch covers more of the old data than one fixed subset.
        pick = torch.randperm(len(old), generator=generator)[:replay_count].numpy()
        return Split(np.concatenate([repeated.x, old.x[pick]]), np.concatenate([repeated.y, old.y[pick]]))

    return fit(model, new, config, on_epoch, sample, epoch_size=len(repeated) + replay_count)


@torch.inference_mode()
def evaluate(model: DoodleCNN, split: Split, batch_size: int = 1024) -> Evaluation:
    """Accuracy, loss, per-class accuracy and the confusion matrix of `model` on `split`."""
    model.eval()
    categories = model.categories
    labels = torch.from_numpy(encode(split.y, categories))
    # torch.tensor copies each batch: split.x may be a read-only view (a loaded dataset), which from_numpy warns about.
    logits = torch.cat([model(torch.tensor(split.x[i : i + batch_size])) for i in range(0, len(split.x), batch_size)])
    predicted = logits.argmax(1)
    confusion = torch.zeros(len(categories), len(categories), dtype=torch.int64)
    confusion.index_put_((labels, predicted), torch.ones_like(labels), accumulate=True)
    counts = confusion.tolist()
    per_class = {name: counts[i][i] / sum(counts[i]) for i, name in enumerate(categories) if sum(counts[i]) > 0}
    return Evaluation(
        accuracy=int((predicted == labels).sum()) / len(labels),
        loss=float(F.cross_entropy(logits, labels)),
        per_class=per_class,
        confusion=counts,
        categories=list(categories),
        count=len(labels),
        predictions=predicted.tolist(),
    )
