"""Benchmark: full training on the shipped sample's training split; time, peak memory, accuracy."""
from __future__ import annotations

import argparse
import os
import platform
import resource
import time
from datetime import date

import numpy as np
import torch

from doodle_lib.dataset import Split, categories_in, load_bitmaps, split_category
from doodle_lib.settings import get_settings
from doodle_lib.training import TrainConfig, evaluate, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--repeats", type=int, default=2, help="trainings to time (same seed: same result)")
    args = parser.parse_args()

    settings = get_settings()
    names = categories_in(settings.sample_dir)
    parts = {name: split_category(load_bitmaps(settings.sample_dir, name), settings.eval_per_category) for name in names}
    train_split = Split(np.concatenate([parts[n][0] for n in names]), np.repeat(names, [len(parts[n][0]) for n in names]))
    eval_split = Split(np.concatenate([parts[n][1] for n in names]), np.repeat(names, [len(parts[n][1]) for n in names]))
    config = TrainConfig(threads=args.threads)

    times, accuracies = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        model, _ = train(train_split, names, config)
        times.append(time.perf_counter() - start)
        accuracies.append(evaluate(model, eval_split).accuracy)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    print(f"## Training (bench/train.py), {date.today()}")
    print(f"machine: {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}, torch {torch.__version__}")
    print(f"config: {config.params()}")
    print(f"data: {len(train_split)} training drawings, {len(eval_split)} evaluation drawings, {len(names)} categories")
    print("| run | time (s) | eval accuracy |")
    print("|---|---|---|")
    for i, (seconds, accuracy) in enumerate(zip(times, accuracies), 1):
        print(f"| {i} | {seconds:.1f} | {accuracy:.2%} |")
    print(f"peak memory (max RSS of the process): {peak_mb:.0f} MB; identical accuracy across runs: {len(set(accuracies)) == 1}")


if __name__ == "__main__":
    main()
