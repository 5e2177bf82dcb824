"""Benchmark: how well the platform learns a category from its users' first 10, 25 and 50 drawings.

For each shipped category in turn, a base model is trained on the five others (the full sample's training split,
the default TrainConfig); then, as a retraining run that adds a proposed category does, the category's first N
drawings are split into training and held-back drawings (doodle_lib.retraining.held_back), and production is
fine-tuned with the run's config (retraining.candidate_config). Reported: the new category's accuracy on its 400
evaluation drawings (never trained on), the five old categories' change on theirs, and the gate's held-back view.
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import time
from datetime import date

import numpy as np
import torch

from doodle_lib import retraining
from doodle_lib.dataset import Split, categories_in, load_bitmaps, split_category
from doodle_lib.settings import get_settings
from doodle_lib.training import TrainConfig, evaluate, fine_tune, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--categories", nargs="*", help="the categories to teach, one at a time (default: every shipped one)")
    parser.add_argument("--sizes", nargs="*", type=int, default=[10, 25, 50], help="drawings users propose")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    args = parser.parse_args()

    settings = get_settings().model_copy(update={"torch_threads": args.threads})
    names = categories_in(settings.sample_dir)
    parts = {name: split_category(load_bitmaps(settings.sample_dir, name), settings.eval_per_category) for name in names}
    rows = []
    for new in args.categories or names:
        old = [n for n in names if n != new]
        old_train = Split(np.concatenate([parts[n][0] for n in old]), np.repeat(old, [len(parts[n][0]) for n in old]))
        old_eval = Split(np.concatenate([parts[n][1] for n in old]), np.repeat(old, [len(parts[n][1]) for n in old]))
        new_eval = Split(parts[new][1], np.array([new] * len(parts[new][1])))
        base, _ = train(old_train, old, TrainConfig(threads=args.threads))
        base_accuracy = evaluate(base, old_eval).accuracy
        for size in args.sizes:
            keys = [f"{new}/{i:06d}" for i in range(size)]
            judge = retraining.held_back(keys, settings.new_category_holdout)
            drawings = parts[new][0][:size]
            config = retraining.candidate_config(settings, retraining.Candidate(0, "fine-tune"), base, adding=True)
            model = copy.deepcopy(base)
            start = time.perf_counter()
            fine_tune(model, Split(drawings[~judge], np.array([new] * int((~judge).sum()))), old_train, config)
            seconds = time.perf_counter() - start
            held = evaluate(model, Split(drawings[judge], np.array([new] * int(judge.sum())))).accuracy
            rows.append((new, size, int((~judge).sum()), int(judge.sum()), held, evaluate(model, new_eval).accuracy,
                         evaluate(model, old_eval).accuracy - base_accuracy, base_accuracy, seconds))
            print(rows[-1], flush=True)

    print(f"\n## Learning a new category (bench/new_category.py), {date.today()}")
    print(f"machine: {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}, torch {torch.__version__}")
    print(f"fine-tuning config: {config.params()}; held back: {settings.new_category_holdout:.0%}, bar {settings.new_category_bar:.0%}")
    print("| new category | drawings | trained on | held back | held-back accuracy (gate) | accuracy on its 400 evaluation drawings | old five, change (points) | old five, base | fine-tune (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for new, size, trained, judges, held, accuracy, change, base_accuracy, seconds in rows:
        print(f"| {new} | {size} | {trained} | {judges} | {held:.0%} | {accuracy:.2%} | {100 * change:+.2f} | {base_accuracy:.2%} | {seconds:.1f} |")
    for size in args.sizes:
        mine = [r for r in rows if r[1] == size]
        print(f"mean over {len(mine)} categories with {size} drawings: new {np.mean([r[5] for r in mine]):.2%}, "
              f"old change {100 * np.mean([r[6] for r in mine]):+.2f} points")


if __name__ == "__main__":
    main()
