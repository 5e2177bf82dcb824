"""The serving form of the CNN: the trained model's function, one drawing at a time, the model left as it was."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from doodle_lib.dataset import Split, load_bitmaps
from doodle_lib.model import ServingCNN, predict_proba
from doodle_lib.training import TrainConfig, train
from tests.conftest import CATEGORIES, SAMPLE


@pytest.fixture(scope="module")
def trained():
    """A model trained briefly on real drawings (BatchNorm statistics far from their initial 0 and 1), and others."""
    rows = {category: load_bitmaps(SAMPLE, category) for category in CATEGORIES}
    x = np.concatenate([rows[category][:200] for category in CATEGORIES])
    model, _ = train(Split(x, np.repeat(CATEGORIES, 200)), CATEGORIES, TrainConfig(epochs=1, seed=5, threads=2))
    return model, np.concatenate([rows[category][-20:] for category in CATEGORIES])


def test_serving_cnn_gives_the_models_probabilities(trained):
    model, images = trained
    model.train()  # folding reads the running statistics whatever the mode, and changes nothing
    before = {name: value.clone() for name, value in model.state_dict().items()}
    serving = ServingCNN(model)
    assert model.training
    assert all(torch.equal(value, before[name]) for name, value in model.state_dict().items())
    expected = predict_proba(model, images)  # eval mode: running statistics, no dropout
    found = np.stack([serving.probabilities(image) for image in images])
    assert found.shape == expected.shape and serving.categories == model.categories
    np.testing.assert_allclose(found, expected, rtol=0, atol=1e-5)  # float32 rounding only (up to ~1e-6)
    assert (found.argmax(axis=1) == expected.argmax(axis=1)).all()


def test_serving_cnn_handles_other_widths_and_blank_images(trained):
    model, images = trained
    narrow = type(model)(model.categories, width=8, hidden=32)
    with torch.no_grad():  # running statistics away from 0 and 1, as after training
        for norm in (m for m in narrow.modules() if isinstance(m, nn.BatchNorm2d)):
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.5, 2)
    narrow.eval()
    serving = ServingCNN(narrow)
    for batch in (images[:10], np.zeros((1, 28, 28), np.uint8), np.full((1, 28, 28), 255, np.uint8)):
        found = np.stack([serving.probabilities(image) for image in batch])
        np.testing.assert_allclose(found, predict_proba(narrow, batch), rtol=0, atol=1e-5)


def test_serving_cnn_follows_a_grown_head(trained):
    model, images = trained
    model = copy.deepcopy(model)
    model.add_categories(["zebra"])
    grown = ServingCNN(model)
    assert grown.categories == model.categories and grown.categories[-1] == "zebra"
    np.testing.assert_allclose(np.stack([grown.probabilities(image) for image in images[:10]]),
                               predict_proba(model, images[:10]), rtol=0, atol=1e-5)


def test_serving_cnn_refuses_a_changed_architecture(trained):
    model, _ = trained
    changed = type(model)(model.categories)
    changed.features[1][1] = nn.Identity()
    with pytest.raises(TypeError, match="mirrors DoodleCNN"):
        ServingCNN(changed)
