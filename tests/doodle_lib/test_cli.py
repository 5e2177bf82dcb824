"""The `doodle` command end to end on a temporary data dir, against the real MLflow server."""
import os
import subprocess
import sys
from pathlib import Path

from doodle_lib import versioning

DOODLE = str(Path(sys.executable).parent / "doodle")


def doodle(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([DOODLE, *args], env=env, capture_output=True, text=True, timeout=600)


def test_prepare_train_evaluate_checkout(settings):
    env = {**os.environ}
    prepared = doodle("data", "prepare", "--max-per-category", "300", env=env)
    assert prepared.returncode == 0, prepared.stderr
    dataset_version = prepared.stdout.strip().splitlines()[-1]
    assert dataset_version.endswith(".dir")
    assert (settings.dvc_remote_dir / "files" / "md5").is_dir()

    again = doodle("data", "prepare", env=env)  # the fixed evaluation set is never rebuilt by accident
    assert again.returncode == 0 and again.stdout.strip().splitlines()[-1] == dataset_version

    trained = doodle("train", "--dry-run", "--promote", env=env)
    assert trained.returncode == 0, trained.stderr
    assert "version 1 (production)" in trained.stdout

    evaluated = doodle("evaluate", env=env)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "on 600 drawings" in evaluated.stdout and "fish" in evaluated.stdout

    checked_out = doodle("data", "checkout", "--model-version", "1", env=env)
    assert checked_out.returncode == 0, checked_out.stderr
    restored = Path(checked_out.stdout.strip())
    assert (restored / "base.npz").read_bytes() == (settings.dataset_dir / "base.npz").read_bytes()
    versioning.dvc(settings.data_dir, "add", "--quiet", str(restored.relative_to(settings.data_dir)))
    assert versioning.dataset_hash(restored.with_suffix(".dvc")) == dataset_version


def test_errors_are_messages_not_tracebacks(settings):
    env = {**os.environ}
    untrained = doodle("train", "--dry-run", env=env)
    assert untrained.returncode != 0 and "run `doodle data prepare` first" in untrained.stderr
    assert "Traceback" not in untrained.stderr
    nothing = doodle("evaluate", env=env)
    assert nothing.returncode != 0 and "Traceback" not in nothing.stderr
    missing = doodle("data", "checkout", "--model-version", "42", env=env)
    assert missing.returncode != 0 and "no version 42" in missing.stderr
    bad = doodle("data", "download", "--categories", "../etc", "--base-url", "http://127.0.0.1:9", env=env)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
