"""The base model reproduced by `dvc repro` on a fresh clone, with small parameters to keep it quick."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from doodle_lib.settings import PROJECT_ROOT

BIN = Path(sys.executable).parent


def run(*command: str, cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


@pytest.fixture
def clone(tmp_path) -> Path:
    """A fresh clone of the committed project (what CI checks out), with quick parameters."""
    target = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(PROJECT_ROOT), str(target)], check=True)
    params = yaml.safe_load((target / "params.yaml").read_text())
    params["prepare"].update(max_per_category=300, eval_per_category=100)
    params["train"].update(epochs=2)
    (target / "params.yaml").write_text(yaml.safe_dump(params))
    run("git", "-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qam", "quick parameters", cwd=target)
    return target


def test_repro_builds_then_skips_then_reruns_only_what_changed(clone):
    first = run("dvc", "repro", cwd=clone)
    assert all(f"Running stage '{stage}'" in first for stage in ("prepare", "train", "evaluate"))
    assert (clone / "build" / "model" / "model.pt").is_file()
    metrics = json.loads((clone / "build" / "metrics.json").read_text())
    assert 0 < metrics["accuracy"] <= 1 and set(metrics["per_class"]) == {"apple", "bicycle", "cat", "diamond", "eye", "fish"}
    assert "build/metrics.json" in run("dvc", "metrics", "show", cwd=clone)

    again = run("dvc", "repro", cwd=clone)
    assert "Running stage" not in again and "up to date" in again

    params = yaml.safe_load((clone / "params.yaml").read_text())
    params["train"]["seed"] = 7
    (clone / "params.yaml").write_text(yaml.safe_dump(params))
    assert "train.seed" in run("dvc", "params", "diff", cwd=clone)
    third = run("dvc", "repro", cwd=clone)
    assert "Running stage 'prepare'" not in third
    assert "Running stage 'train'" in third and "Running stage 'evaluate'" in third


def test_same_parameters_same_metrics(clone):
    run("dvc", "repro", cwd=clone)
    first = (clone / "build" / "metrics.json").read_text()
    run("dvc", "repro", "--force", cwd=clone)
    assert (clone / "build" / "metrics.json").read_text() == first
