"""The doodle CNN: 28x28 grayscale in, one logit per category out, categories carried with the weights."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from torch import nn


class DoodleCNN(nn.Module):
    """Three conv blocks and a linear head; the head grows when a category is added."""

    def __init__(self, categories: list[str], width: int = 16, hidden: int = 128):
        super().__init__()
        self.categories = [str(name) for name in categories]  # plain str: checkpoints load weights-only
        self.width = width
        self.hidden = hidden

        def block(inputs: int, outputs: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(inputs, outputs, 3, padding=1, bias=False),
                nn.BatchNorm2d(outputs),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            )

        self.features = nn.Sequential(block(1, width), block(width, 2 * width), block(2 * width, 4 * width))
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(4 * width * 3 * 3, hidden), nn.ReLU(inplace=True), nn.Dropout(0.3))
        self.head = nn.Linear(hidden, len(self.categories))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits for images (N, 28, 28) with values 0..255 (white strokes on black)."""
        x = pixels.reshape(-1, 1, 28, 28).float() / 255.0
        return self.head(self.body(self.features(x)))

    def add_categories(self, names: list[str]) -> None:
        """Grow the head by one output per new name, keeping every old weight."""
        old = self.head
        self.head = nn.Linear(old.in_features, old.out_features + len(names))
        with torch.no_grad():
            self.head.weight[: old.out_features] = old.weight
            self.head.bias[: old.out_features] = old.bias
        self.categories += [str(name) for name in names]


@torch.inference_mode()
def predict_proba(model: DoodleCNN, bitmaps: np.ndarray) -> np.ndarray:
    """Class probabilities (N, C) for uint8 bitmaps (N, 28, 28)."""
    model.eval()
    return torch.softmax(model(torch.from_numpy(np.ascontiguousarray(bitmaps))), dim=1).numpy()


def predict_one(model: DoodleCNN, bitmap: np.ndarray) -> np.ndarray:
    """Class probabilities (C,) of one uint8 bitmap (28, 28), for serving: the model must already be in eval mode."""
    # No model.eval() here: it walks every module on each call, a third of a single forward's time.
    with torch.inference_mode():
        return torch.softmax(model(torch.from_numpy(bitmap)), dim=1)[0].numpy()


def checkpoint_bytes(model: DoodleCNN) -> bytes:
    """The model as a self-describing checkpoint: architecture, categories and weights, no pickled code."""
    buffer = io.BytesIO()
    torch.save(
        {"categories": model.categories, "width": model.width, "hidden": model.hidden, "state": model.state_dict()},
        buffer,
    )
    return buffer.getvalue()


def load_checkpoint(path: Path) -> DoodleCNN:
    """Rebuild a DoodleCNN from a checkpoint file written from checkpoint_bytes."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    model = DoodleCNN(saved["categories"], width=saved["width"], hidden=saved["hidden"])
    model.load_state_dict(saved["state"])
    return model.eval()
