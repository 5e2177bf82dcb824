"""Behaviour of a fully trained model: the accuracy bar and invariance to small shifts."""
import numpy as np
import pytest

from doodle_lib.dataset import Split, categories_in, load_bitmaps, split_category
from doodle_lib.model import predict_proba
from doodle_lib.training import TrainConfig, evaluate, train
from tests.conftest import SAMPLE

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained():
    """The default configuration trained on the sample's full training split (what `doodle train` does)."""
    names = categories_in(SAMPLE)
    parts = {name: split_category(load_bitmaps(SAMPLE, name), 400) for name in names}
    train_split = Split(np.concatenate([parts[n][0] for n in names]), np.repeat(names, 2000))
    eval_split = Split(np.concatenate([parts[n][1] for n in names]), np.repeat(names, 400))
    model, _ = train(train_split, names, TrainConfig())
    return model, eval_split


def test_accuracy_on_the_evaluation_split(trained):
    model, eval_split = trained
    result = evaluate(model, eval_split)
    assert result.accuracy >= 0.95, result.per_class
    assert min(result.per_class.values()) >= 0.90, result.per_class


@pytest.mark.parametrize("dy,dx", [(2, 0), (-2, 0), (0, 2), (0, -2), (2, 2)])
def test_a_drawing_shifted_by_two_pixels_keeps_its_label(trained, dy, dx):
    model, eval_split = trained
    predicted = predict_proba(model, eval_split.x).argmax(1)
    correct = predicted == np.searchsorted(model.categories, eval_split.y)
    images = eval_split.x[correct]
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    shifted = padded[:, 2 - dy : 30 - dy, 2 - dx : 30 - dx]  # moved by (dy, dx), black fill, no wrap
    kept = predict_proba(model, shifted).argmax(1) == predicted[correct]
    assert kept.mean() >= 0.97, f"only {kept.mean():.1%} kept their label after a ({dy}, {dx}) shift"
