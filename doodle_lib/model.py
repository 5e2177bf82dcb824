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


class ServingCNN:
    """A DoodleCNN frozen for serving one drawing at a time: the same function as the model in eval mode, in NumPy.

    Inference only, built from a trained model that it leaves untouched. BatchNorm is folded into the convolution
    before it (eval mode uses the running statistics: a per-channel scale and shift) and the input's /255 into the
    first convolution; each convolution is one matrix product over the image's 3x3 patches (feature maps stay
    height x width x channels). Why NumPy and not torch: for one 28x28 image torch's per-operator dispatch costs
    more than the arithmetic, and inside a busy server, where its large code paths run with cold caches between
    requests, the difference grows (measured inside gunicorn: 0.16 ms a forward against torch's 0.30; in a loop 0.09
    against 0.11; see BENCHMARKS.md). Probabilities equal the module's within float32 rounding (about 1e-7).
    """

    BLOCK = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d)
    BODY = (nn.Flatten, nn.Linear, nn.ReLU, nn.Dropout)

    def __init__(self, model: DoodleCNN):
        layers = [tuple(map(type, block)) for block in model.features] + [tuple(map(type, model.body))]
        if layers != [self.BLOCK] * len(model.features) + [self.BODY]:
            raise TypeError("ServingCNN mirrors DoodleCNN's layers one by one: change it with the architecture")
        self.categories = list(model.categories)
        with torch.no_grad():
            blocks = list(model.features)
            self.convolutions = [_fold(*block[:2], scale=1 / 255 if block is blocks[0] else 1.0) for block in blocks]
            hidden, head = model.body[1], model.head
            # nn.Flatten reads channels first; the feature maps here are channels last: reorder the columns once.
            channels = self.convolutions[-1][0].shape[1]
            side = int(round((hidden.in_features // channels) ** 0.5))
            weight = hidden.weight.reshape(-1, channels, side, side).permute(0, 2, 3, 1).reshape(hidden.out_features, -1)
            self.hidden = (_array(weight.T), _array(hidden.bias))
            self.head = (_array(head.weight.T), _array(head.bias))

    def probabilities(self, bitmap: np.ndarray) -> np.ndarray:
        """Class probabilities (C,) of one uint8 bitmap (28, 28)."""
        x = bitmap.astype(np.float32)[:, :, None]
        for weight, bias in self.convolutions:
            height, width, channels = x.shape
            padded = np.zeros((height + 2, width + 2, channels), np.float32)
            padded[1:-1, 1:-1] = x
            rows, columns, depth = padded.strides
            # Each pixel's 3x3 neighbourhood as a view (the ndarray constructor: numpy's as_strided wrapper costs more
            # than the view itself), copied into one row per pixel by the reshape.
            patches = np.ndarray((height, width, 3, 3, channels), np.float32, padded, 0,
                                 (rows, columns, rows, columns, depth))
            y = (patches.reshape(height * width, -1) @ weight).reshape(height, width, -1)
            # Max pooling (2x2, odd edges dropped) before the bias and ReLU: both are the same for every pixel of a
            # channel and never decrease, so they commute with the maximum exactly, and run on a quarter of the values.
            h, w = height // 2 * 2, width // 2 * 2
            x = np.maximum(np.maximum(y[0:h:2, 0:w:2], y[0:h:2, 1:w:2]), np.maximum(y[1:h:2, 0:w:2], y[1:h:2, 1:w:2]))
            x += bias
            np.maximum(x, 0, out=x)
        (hidden_weight, hidden_bias), (head_weight, head_bias) = self.hidden, self.head
        features = x.reshape(-1) @ hidden_weight + hidden_bias
        logits = np.maximum(features, 0, out=features) @ head_weight + head_bias
        exp = np.exp(logits - logits.max())
        return exp / exp.sum()


def _fold(conv: nn.Conv2d, norm: nn.BatchNorm2d, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Matrix and bias of one convolution computing norm(conv(x * scale)) in eval mode, on 3x3 patches (conv has no bias).

    The matrix has one row per patch value in the patch's (row, column, channel) order and one column per output.
    """
    factor = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    weight = conv.weight * (factor * scale).reshape(-1, 1, 1, 1)
    bias = norm.bias - norm.running_mean * factor
    return _array(weight.permute(2, 3, 1, 0).reshape(-1, weight.shape[0])), _array(bias)


def _array(tensor: torch.Tensor) -> np.ndarray:
    """A contiguous float32 NumPy copy of a tensor."""
    return np.array(tensor.detach().numpy(), dtype=np.float32, order="C")


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
