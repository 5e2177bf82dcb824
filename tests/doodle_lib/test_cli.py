"""The `doodle` command end to end on a temporary data dir, against the real MLflow server."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from doodle_lib import dataset, tracking, versioning

DOODLE = str(Path(sys.executable).parent / "doodle")


def doodle(*args: str, env: dict, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([DOODLE, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_prepare_train_evaluate_checkout(settings):
    env = {**os.environ}
    prepared = doodle("data", "prepare", "--max-per-category", "300", env=env)
    assert prepared.returncode == 0, prepared.stderr
    dataset_version = prepared.stdout.strip().splitlines()[-1]
    assert dataset_version.endswith(".dir")
    assert (settings.dvc_remote_dir / "files" / "md5").is_dir()

    again = doodle("data", "prepare", env=env)  # the fixed evaluation set is never rebuilt by accident
    assert again.returncode == 0 and again.stdout.strip().splitlines()[-1] == dataset_version
    ignored = doodle("data", "prepare", "--categories", "cat", env=env)  # it would change nothing: said, not ignored
    assert ignored.returncode == 2 and "--categories would change nothing. Add --force" in ignored.stderr, ignored.stderr

    trained = doodle("train", "--epochs", "1", "--promote", env=env)
    assert trained.returncode == 0, trained.stderr
    assert "version 1 (production)" in trained.stdout
    run = tracking.client(settings).get_run(tracking.production_version(settings).run_id)
    inputs = {i.dataset.name: i.dataset for i in run.inputs.dataset_inputs}
    assert json.loads(inputs["training"].source)["uri"].endswith(dataset_version[2:])  # the version in the DVC remote
    assert json.loads(inputs["evaluation"].profile)["features_shape"] == [600, 28, 28]

    evaluated = doodle("evaluate", env=env)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "on 600 drawings" in evaluated.stdout and "fish" in evaluated.stdout

    for outside in ("/tmp/elsewhere", "../../elsewhere"):
        refused = doodle("data", "checkout", "--model-version", "1", "--dest", outside, env=env)
        assert refused.returncode != 0 and "is not a folder inside" in refused.stderr, refused.stderr
    for inside in ("dataset", "dataset/old", "feedback/cat", "evaluation/v1"):  # a copy there would be trained on
        refused = doodle("data", "checkout", "--model-version", "1", "--dest", inside, env=env)
        assert refused.returncode == 1 and "which the platform reads and writes" in refused.stderr, refused.stderr
    assert not (settings.dataset_dir / "old").exists() and not (settings.data_dir / "feedback").exists()
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
    unsigned = doodle("webhook", env={**env, "DOODLE_WEBHOOK_SECRET": ""})
    assert unsigned.returncode != 0 and "set DOODLE_WEBHOOK_SECRET" in unsigned.stderr
    serverless = doodle("webhook", env={**env, "DOODLE_WEBHOOK_SECRET": "s", "MLFLOW_TRACKING_URI": ""})
    assert serverless.returncode != 0 and "only an MLflow server delivers webhooks" in serverless.stderr
    unused = doodle("train", "--data-dir", ".", env=env)  # it goes with --checkpoint
    assert unused.returncode == 2 and "--data-dir goes with --checkpoint" in unused.stderr
    stray = doodle("evaluate", "--metrics-file", "m.json", env=env)  # it goes with --checkpoint
    assert stray.returncode == 2 and "--metrics-file go with --checkpoint" in stray.stderr
    for args, says in (
        (("train", "--dry-run", "--promote"), "not with --dry-run or --checkpoint"),  # a wiring check in production
        (("train", "--checkpoint", "m.pt", "--promote"), "not with --dry-run or --checkpoint"),
        (("train", "--dry-run", "--epochs", "5"), "--dry-run trains one epoch"),
        (("evaluate", "--checkpoint", __file__, "--model-version", "3"), "give one"),
        (("evaluate", "--model-version", " 1"), "' 1' is not a registered version"),  # the registry took it for 1
        (("evaluate", "--model-version", "abc"), "'abc' is not a registered version"),  # MLflow took it for a stage
        (("data", "checkout", "--model-version", "1.0"), "'1.0' is not a registered version"),
    ):
        refused = doodle(*args, env=env)
        assert refused.returncode == 2 and says in refused.stderr, (args, refused.stderr)
    absent = doodle("evaluate", "--model-version", "42", env=env)
    assert absent.returncode == 1 and "no version 42 of" in absent.stderr, absent.stderr
    missing = doodle("data", "checkout", "--model-version", "42", env=env)
    assert missing.returncode != 0 and "no version 42" in missing.stderr
    bad = doodle("data", "download", "--categories", "../etc", "--base-url", "http://127.0.0.1:9", env=env)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "invalid category name" in bad.stderr
    a_file = settings.data_dir / "a-file"
    a_file.parent.mkdir(parents=True, exist_ok=True)
    a_file.write_text("")
    not_a_folder = doodle("data", "download", "--categories", "cat", "--dest", str(a_file), "--base-url",
                          "http://127.0.0.1:9", env=env)
    assert not_a_folder.returncode == 1 and "Traceback" not in not_a_folder.stderr, not_a_folder.stderr
    assert f"Not a directory: {a_file}" in not_a_folder.stderr, not_a_folder.stderr
    empty = doodle("data", "prepare", "--output-dir", "", env=env, cwd=settings.data_dir)  # was: wrote into the cwd
    assert empty.returncode == 2 and "an empty path would mean the current folder" in empty.stderr, empty.stderr
    assert sorted(p.name for p in settings.data_dir.iterdir()) == ["a-file"]
    params = settings.data_dir.parent / "params.yaml"
    params.write_text("train:\n  epochs: 0\n")
    untrained = doodle("train", "--params-file", str(params), "--checkpoint", "m.pt", env=env, cwd=settings.data_dir)
    assert untrained.returncode == 1 and "epochs must be at least 1 to train a model" in untrained.stderr
    params.write_bytes(b"\xff\xfe")
    binary = doodle("train", "--params-file", str(params), env=env)
    assert binary.returncode == 1 and f"{params} is not UTF-8 text" in binary.stderr, binary.stderr
    no_source = doodle("data", "prepare", "--output-dir", str(settings.data_dir / "out"), "--source",
                       str(settings.data_dir), env=env)
    assert no_source.returncode == 1 and f"no numpy_bitmap/*.npy files in {settings.data_dir}" in no_source.stderr
    not_finite = doodle("train", "--learning-rate", "nan", env=env)
    assert not_finite.returncode == 1 and "Error: learning_rate must be a finite number" in not_finite.stderr


def test_proposals_commands(settings):
    from doodle_lib import feedback, proposals

    env = {**os.environ, "DOODLE_PROPOSAL_MIN_DRAWINGS": "2", "DOODLE_PROPOSALS_REQUIRE_APPROVAL": "true"}
    bitmap = np.zeros((28, 28), dtype=np.uint8)
    bitmap[5:20, 5:20] = 255
    for name, typed in [("dog", "Dog"), ("dog", "dogs"), ("kitty", "kitty"), ("pup", "pup"), ("spam", "spam")]:
        proposals.save(settings, name, typed, bitmap, {"source": "test"})

    listed = doodle("proposals", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "4 proposals; a proposal is ready with 2 drawings and approval" in listed.stdout
    assert re.search(r"dog +2 drawings +pending +not ready", listed.stdout), listed.stdout
    approved = doodle("proposals", "approve", "DOG", env=env)
    assert approved.returncode == 0 and "approved 'dog': 2 of 2 drawings" in approved.stdout
    assert re.search(r"dog +2 drawings +approved +ready", doodle("proposals", "list", env=env).stdout)

    renamed = doodle("proposals", "rename", "kitty", "Cats", env=env)  # no model served: the sample's categories
    assert renamed.returncode == 0, renamed.stderr
    assert "'kitty' is now the known category 'cat'; drawings moved: 1" in renamed.stdout
    assert [ref.category for ref in feedback.complete(settings.feedback_dir)] == ["cat"]
    merged = doodle("proposals", "merge", "pup", "dog", env=env)
    assert merged.returncode == 0 and "into the proposal 'dog'; drawings moved: 1" in merged.stdout
    rejected = doodle("proposals", "reject", "spam", "--reason", "not a drawing", env=env)
    assert rejected.returncode == 0 and "rejected 'spam'" in rejected.stdout
    [note] = (settings.rejected_dir / "proposals" / "spam").glob("rejected-*.json")
    assert "not a drawing" in note.read_text()
    assert [(p.name, p.count) for p in proposals.list_all(settings)] == [("dog", 3)]

    for args, words in [(("approve", "wolf"), "no proposal named 'wolf'; proposals: dog"),
                        (("reject", "../dog"), "letters a-z, digits and spaces"),
                        (("merge", "dog", "owl"), "neither a proposal nor a known category"),
                        (("rename", "dog", "!!"), "letters a-z")]:
        refused = doodle("proposals", *args, env=env)
        assert refused.returncode != 0 and words in refused.stderr and "Traceback" not in refused.stderr, refused.stderr


def test_prepare_takes_a_repeated_category_once(tmp_path):
    env = {**os.environ, "DOODLE_DATA_DIR": str(tmp_path / "data"), "DOODLE_STORAGE_DIR": str(tmp_path / "storage")}
    out = tmp_path / "base"
    prepared = doodle("data", "prepare", "--output-dir", str(out), "--categories", "cat, cat,fish",
                      "--max-per-category", "30", "--eval-per-category", "10", env=env)
    assert prepared.returncode == 0, prepared.stderr
    for name, per_category in (("base.npz", 20), ("evaluation.npz", 10)):
        labels = dataset.read_split(out / name).y.tolist()
        assert labels == ["cat"] * per_category + ["fish"] * per_category, name
    for command in (("prepare", "--output-dir", str(out)), ("download", "--base-url", "http://127.0.0.1:9")):
        empty = doodle("data", *command, "--categories", " , ", env=env)
        assert empty.returncode == 2 and "no category name in ' , '" in empty.stderr, empty.stderr


def test_evaluate_names_a_file_that_is_not_a_checkpoint_or_an_evaluation_set(tmp_path):
    from doodle_lib.model import DoodleCNN, checkpoint_bytes

    env = {**os.environ, "DOODLE_DATA_DIR": str(tmp_path / "data"), "DOODLE_STORAGE_DIR": str(tmp_path / "storage")}
    model, text, empty = tmp_path / "model.pt", tmp_path / "notes.txt", tmp_path / "empty.pt"
    model.write_bytes(checkpoint_bytes(DoodleCNN(["cat"])))
    text.write_text("hi")
    empty.touch()
    evaluation = tmp_path / "evaluation.npz"
    np.savez(evaluation, x=np.zeros((2, 28, 28), np.uint8), y=np.array(["cat", "fish"]))
    for checkpoint, against, says in [
        (text, evaluation, "notes.txt is not a model checkpoint"),
        (empty, evaluation, "empty.pt is not a model checkpoint"),
        (model, text, "notes.txt is not a dataset file"),
        (model, model, "model.pt is not a dataset file"),  # the arguments swapped
        (model, evaluation, "labels not among the model's categories: ['fish']"),
    ]:
        refused = doodle("evaluate", "--checkpoint", str(checkpoint), "--evaluation", str(against), env=env)
        assert refused.returncode == 1 and says in refused.stderr and "Traceback" not in refused.stderr, refused.stderr


def test_train_names_missing_data_instead_of_a_traceback(tmp_path):
    env = {**os.environ, "DOODLE_DATA_DIR": str(tmp_path / "data"), "DOODLE_STORAGE_DIR": str(tmp_path / "storage")}
    (tmp_path / "empty").mkdir()
    nothing = doodle("train", "--data-dir", str(tmp_path / "empty"), "--checkpoint", str(tmp_path / "m.pt"), env=env)
    assert nothing.returncode == 1 and "base.npz" in nothing.stderr and "Traceback" not in nothing.stderr, nothing.stderr

    prepared = doodle("data", "prepare", "--max-per-category", "30", "--eval-per-category", "10", env=env)
    assert prepared.returncode == 0, prepared.stderr
    moved = {**env, "DOODLE_STORAGE_DIR": str(tmp_path / "elsewhere")}  # a storage dir whose remote lacks the version
    unstored = doodle("train", "--dry-run", env=moved)
    assert unstored.returncode == 1 and "does not hold dataset version" in unstored.stderr, unstored.stderr
    assert "Traceback" not in unstored.stderr


def test_a_bad_setting_is_named_by_its_variable_not_a_traceback(tmp_path):
    env = {**os.environ, "DOODLE_DATA_DIR": str(tmp_path), "DOODLE_EVAL_PER_CATEGORY": "many"}
    for args in (("data", "prepare"), ("proposals", "list"), ("stack", "status")):
        refused = doodle(*args, env=env)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert "bad setting: DOODLE_EVAL_PER_CATEGORY='many': Input should be a valid integer" in refused.stderr
    # Each of these failed only after training, or turned the current folder into the data dir.
    for variable, value, says in (("DOODLE_MODEL_NAME", "", "at least 1 character"),
                                  ("DOODLE_PRODUCTION_ALIAS", "bad alias/x", "should match pattern"),
                                  ("DOODLE_EXPERIMENT", "", "at least 1 character"),
                                  ("DOODLE_TORCH_THREADS", "-3", "greater than or equal to 0"),
                                  ("DOODLE_DATA_DIR", "", "must not be empty"),
                                  ("MLFLOW_TRACKING_URI", "garbage", "must be a URI"),
                                  ("DOODLE_WEBHOOK_SECRET", "s3cret\n", "at its start or end")):  # was "no version 1 of ..."
        refused = doodle("data", "prepare", env={**os.environ, variable: value}, cwd=tmp_path)
        assert refused.returncode == 1 and f"bad setting: {variable}={value!r}: " in refused.stderr, refused.stderr
        assert says in refused.stderr and list(tmp_path.iterdir()) == [], refused.stderr


def test_an_mlflow_server_that_does_not_answer_is_named_at_once(tmp_path):
    from tests.services import free_port

    nowhere = f"http://127.0.0.1:{free_port()}"
    env = {**os.environ, "DOODLE_DATA_DIR": str(tmp_path / "data"), "DOODLE_STORAGE_DIR": str(tmp_path / "storage"),
           "MLFLOW_TRACKING_URI": nowhere}
    for args in (("evaluate",), ("train", "--dry-run"), ("data", "checkout", "--model-version", "1"),
                 ("proposals", "merge", "kitty", "cat")):
        # MLflow's own client retries for about four minutes before its traceback.
        refused = subprocess.run([DOODLE, *args], env=env, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert f"the MLflow server at {nowhere} does not answer" in refused.stderr, refused.stderr


def test_reading_an_empty_local_registry_names_it_and_creates_nothing(tmp_path):
    storage = tmp_path / "storage"
    env = {**os.environ, "DOODLE_DATA_DIR": str(tmp_path / "data"), "DOODLE_STORAGE_DIR": str(storage),
           "MLFLOW_TRACKING_URI": ""}
    for args in (("evaluate",), ("evaluate", "--model-version", "3"), ("data", "checkout", "--model-version", "1")):
        refused = doodle(*args, env=env)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
        assert f"no model registry yet at {storage / 'mlflow' / 'mlflow.db'}" in refused.stderr, refused.stderr
    assert not storage.exists()  # MLflow's local store would have created its database
