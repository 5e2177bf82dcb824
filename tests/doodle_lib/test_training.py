"""Training, fine-tuning and evaluation on small slices of the real sample."""
import re

import numpy as np
import pytest
import torch

from doodle_lib.baseline import load_train_config
from doodle_lib.dataset import Split
from doodle_lib.model import DoodleCNN, checkpoint_bytes, load_checkpoint, predict_proba
from doodle_lib.settings import PROJECT_ROOT
from doodle_lib.training import TrainConfig, evaluate, fine_tune, shift_batch, train

QUICK = TrainConfig(epochs=3, seed=3)


def test_same_seed_same_model(small_split):
    train_split, eval_split = small_split
    first, history_1 = train(train_split, sorted(set(train_split.y)), QUICK)
    second, history_2 = train(train_split, sorted(set(train_split.y)), QUICK)
    assert [h.loss for h in history_1] == [h.loss for h in history_2]
    assert evaluate(first, eval_split).summary() == evaluate(second, eval_split).summary()
    other, _ = train(train_split, sorted(set(train_split.y)), TrainConfig(epochs=2, seed=4))
    assert evaluate(other, eval_split).loss != evaluate(first, eval_split).loss


def test_evaluation_figures_agree(small_split):
    train_split, eval_split = small_split
    model, _ = train(train_split, sorted(set(train_split.y)), QUICK)
    result = evaluate(model, eval_split)
    confusion = np.array(result.confusion)
    assert confusion.sum() == len(eval_split) == result.count
    assert np.trace(confusion) / confusion.sum() == result.accuracy
    for i, name in enumerate(result.categories):
        assert result.per_class[name] == confusion[i, i] / confusion[i].sum()
    assert result.accuracy > 0.5  # three epochs on 1,200 drawings already learn something


def test_checkpoint_round_trip(small_split, tmp_path):
    train_split, eval_split = small_split
    model, _ = train(train_split, sorted(set(train_split.y)), QUICK)
    path = tmp_path / "model.pt"
    path.write_bytes(checkpoint_bytes(model))
    restored = load_checkpoint(path)
    assert restored.categories == model.categories
    np.testing.assert_array_equal(predict_proba(restored, eval_split.x[:50]), predict_proba(model, eval_split.x[:50]))


def test_fine_tune_adds_a_category_and_keeps_old_weights(small_split):
    train_split, eval_split = small_split
    old_names = ["apple", "bicycle", "cat", "diamond", "eye"]
    old_mask = train_split.y != "fish"
    model, _ = train(Split(train_split.x[old_mask], train_split.y[old_mask]), old_names, QUICK)
    before = model.head.weight.detach().clone()
    fish = train_split.y == "fish"
    new = Split(train_split.x[fish][:50], train_split.y[fish][:50])
    history = fine_tune(model, new, Split(train_split.x[old_mask], train_split.y[old_mask]), TrainConfig(epochs=0))
    assert history == [] and model.categories == old_names + ["fish"]
    torch.testing.assert_close(model.head.weight[:5], before)
    fine_tune(model, new, Split(train_split.x[old_mask], train_split.y[old_mask]), TrainConfig(epochs=3, seed=1))
    fish_eval = Split(eval_split.x[eval_split.y == "fish"], eval_split.y[eval_split.y == "fish"])
    assert evaluate(model, fish_eval).accuracy > 0.5


def test_fine_tune_adding_a_category_depends_on_its_seed_only(small_split):
    train_split, _ = small_split
    old_names = ["apple", "bicycle", "cat", "diamond", "eye"]
    old = Split(train_split.x[train_split.y != "fish"], train_split.y[train_split.y != "fish"])
    new = Split(train_split.x[train_split.y == "fish"][:20], train_split.y[train_split.y == "fish"][:20])
    base, _ = train(old, old_names, QUICK)
    heads = []
    for unrelated in (1, 2):  # whatever drew from torch's global generator before
        torch.manual_seed(unrelated)
        model = load_checkpoint_copy(base)
        fine_tune(model, new, old, TrainConfig(epochs=0, seed=5))
        heads.append(model.head.weight.detach().clone())
    torch.testing.assert_close(heads[0], heads[1])


def load_checkpoint_copy(model):
    import io

    return load_checkpoint(io.BytesIO(checkpoint_bytes(model)))


def test_shift_moves_pixels_without_wrapping():
    image = torch.zeros(1, 28, 28, dtype=torch.uint8)
    image[0, 0, 0] = 255
    generator = torch.Generator().manual_seed(0)
    shifted = [shift_batch(image, 2, generator) for _ in range(50)]
    assert all(s.sum() in (0, 255) for s in shifted)  # an edge pixel either moves inside or falls off
    assert any(s[0, 2, 2] == 255 for s in shifted) and any(s.sum() == 0 for s in shifted)
    assert all(s[0, 3:, :].sum() == 0 and s[0, :, 3:].sum() == 0 for s in shifted)  # never wraps to the far side


@pytest.mark.parametrize(
    "text, says",
    [
        ("train: [1, 2\n", "is not valid YAML"),
        ("- 1\n- 2\n", "the train section must map parameter names to values"),
        ("train: 5\n", "the train section must map parameter names to values"),
        ("train:\n  epochs: ten\n", "epochs must be a whole number of at least 0, not 'ten'"),
        ("train:\n  epochs: 2.5\n", "epochs must be a whole number"),
        ("train:\n  batch_size: 0\n", "batch_size must be a whole number of at least 1, not 0"),
        ("train:\n  learning_rate: .nan\n", "learning_rate must be a finite number"),
        ("train:\n  learning_rate: 0\n", "learning_rate must be above 0"),
        ("train:\n  limit_per_class: true\n", "limit_per_class must be a whole number"),
        ("train:\n  seed: '3'\n", "seed must be a whole number, not '3'"),
    ],
)
def test_a_params_file_training_cannot_use_is_refused_naming_the_file_and_field(tmp_path, text, says):
    params = tmp_path / "params.yaml"
    params.write_text(text)
    with pytest.raises(ValueError, match=f"^{re.escape(str(params))}.*{re.escape(says)}"):
        load_train_config(params)


def test_a_params_file_may_be_empty_or_leave_out_the_section(tmp_path):
    params = tmp_path / "params.yaml"
    for text in ("", "prepare:\n  eval_per_category: 5\n", "train:\n"):
        params.write_text(text)
        assert load_train_config(params, epochs=2) == TrainConfig(epochs=2)
    assert load_train_config(PROJECT_ROOT / "params.yaml").learning_rate == 0.002


def test_evaluate_takes_a_read_only_dataset_without_a_warning():
    """A loaded dataset can be a read-only view; torch warns about wrapping one (it then shows in every task log)."""
    import warnings

    x = np.zeros((10, 28, 28), np.uint8)
    x.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = evaluate(DoodleCNN(["a", "b"]), Split(x, np.array(["a"] * 10)))
    assert sum(map(sum, result.confusion)) == 10
