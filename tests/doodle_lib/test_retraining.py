"""The retraining stages without Airflow: batch names, snapshot, ingest, the gate, registration, clean-up."""
from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import numpy as np
import pytest

from doodle_lib import atomic, dataset, feedback, proposals, retraining, tracking, versioning
from doodle_lib.drawing import strokes_to_bitmap
from doodle_lib.model import load_checkpoint
from tests.conftest import fixture_drawings


def save(settings, count: int, start: int = 0) -> list[str]:
    keys = []
    for category, _, strokes in fixture_drawings()[start : start + count]:
        ref = feedback.save(settings.feedback_dir, category, strokes_to_bitmap(strokes, raw=False), {"strokes": strokes, "simplified": True})
        keys.append(ref.key)
    return keys


def live_files(settings) -> dict:
    """The dataset folder's files as they are now, in the form training reads a dataset version."""
    folder = settings.dataset_dir
    return {path.relative_to(folder).as_posix(): path for path in sorted(folder.rglob("*.npz"))}


@pytest.fixture
def local(tmp_path, monkeypatch):
    """Settings on temporary folders, no MLflow needed."""
    from doodle_lib.settings import Settings

    return Settings(data_dir=tmp_path / "data", storage_dir=tmp_path / "storage")


@pytest.mark.parametrize(
    "run_id, name",
    [
        ("manual__2026-11-23T06:47:34.571409+00:00", "manual__2026-11-23T06_47_34.571409_00_00-9c5505800d8f"),
        ("scheduled__2026/../x", "scheduled__2026_.._x-8d45cc2c80fa"),
        ("..hidden", "hidden-27b2a250c550"),
        ("run-1", "run-1"),
        ("r" * 150, "r" * 87 + "-455052763905"),
    ],
)
def test_batch_name_is_one_safe_path_component(run_id, name):
    assert retraining.batch_name(run_id) == name


def test_run_ids_that_differ_only_in_unsafe_characters_get_different_batches():
    names = {retraining.batch_name(run_id) for run_id in ("x:1", "x+1", "x 1", "x_1", "r" * 101, "r" * 102)}
    assert len(names) == 6


def test_snapshot_moves_exactly_the_counted_drawings_and_a_retry_is_a_no_op(local):
    counted = save(local, 6)
    late = save(local, 2, start=30)
    first = retraining.snapshot(local, "run-1", counted)
    again = retraining.snapshot(local, "run-1", counted)  # a retried task
    assert first == again == {"batch": "run-1", "count": 6, "proposals": []}
    assert sorted(r.key for r in feedback.complete(local.feedback_dir)) == sorted(late)
    assert sorted(r.key for r in feedback.complete(local.batches_dir / "run-1")) == sorted(counted)
    assert retraining.batch_keys(local, "run-1") == counted


def test_snapshot_leaves_out_drawings_another_run_took_first(local):
    counted = save(local, 4)
    feedback.move([feedback.DrawingRef.parse(counted[0])], local.feedback_dir, local.batches_dir / "weekly")
    assert retraining.snapshot(local, "run-2", counted)["count"] == 3
    assert retraining.batch_keys(local, "run-2") == counted[1:]


def test_a_snapshot_that_needs_drawings_and_finds_none_left_leaves_no_batch(local):
    counted = save(local, 3)
    feedback.move([feedback.DrawingRef.parse(key) for key in counted], local.feedback_dir, local.batches_dir / "weekly")
    with pytest.raises(retraining.NothingToTrain, match="another run or an operator"):
        retraining.snapshot(local, "run-1", counted, allow_empty=False)
    assert not (local.batches_dir / "run-1").exists()
    assert retraining.snapshot(local, "weekly-2", [])["count"] == 0  # the weekly DAG retrains on an empty batch too


def test_a_retry_that_finds_nothing_left_removes_the_first_try_s_manifest(local):
    counted = save(local, 2)
    plan = {"run_id": "run-1", "keys": counted, "proposals": {}}  # the first try stopped after its manifest
    atomic.write_bytes(local.batches_dir / "run-1" / retraining.MANIFEST, json.dumps(plan).encode())
    feedback.move([feedback.DrawingRef.parse(key) for key in counted], local.feedback_dir, local.batches_dir / "weekly")
    with pytest.raises(retraining.NothingToTrain, match="none of the 2 drawings"):
        retraining.snapshot(local, "run-1", counted, allow_empty=False)
    assert not (local.batches_dir / "run-1").exists()


def test_a_batch_ingest_rejects_whole_leaves_nothing_to_train_on_only_when_drawings_are_needed(local):
    keys = save(local, 4)
    for name in ("run-1", "run-2"):
        retraining.snapshot(local, name, keys[:2] if name == "run-1" else keys[2:])
        for key in retraining.batch_keys(local, name):
            ref = feedback.DrawingRef.parse(key)
            (local.batches_dir / name / ref.category / f"{ref.id}.json").write_text(json.dumps({"label": "not its folder"}))
    with pytest.raises(retraining.NothingToTrain, match="rejected all 2 drawings"):
        retraining.ingest(local, "run-1", allow_empty=False)
    assert not (local.batches_dir / "run-1").exists() and len(list((local.rejected_dir / "run-1").rglob("*.reason.txt"))) == 2
    assert sorted(p.name for p in local.batches_dir.iterdir()) == ["run-2"]
    with pytest.raises(retraining.NothingToTrain, match="rejected every drawing"):  # the task cleared and run again
        retraining.ingest(local, "run-1", allow_empty=False)
    assert retraining.ingest(local, "run-2")["ingested"] == 0  # the weekly DAG goes on: it retrains on all data


def test_a_retry_after_another_run_took_some_drawings_takes_the_rest(local):
    counted = save(local, 6)
    weekly_plan = {"run_id": "weekly", "keys": counted, "proposals": {}}  # its first try stopped after the manifest
    atomic.write_bytes(local.batches_dir / "weekly" / retraining.MANIFEST, json.dumps(weekly_plan).encode())
    assert retraining.snapshot(local, "run-1", counted[:4])["count"] == 4  # the continuous run, meanwhile
    assert retraining.snapshot(local, "weekly", counted)["count"] == 2  # the retry: the rest, nothing raised
    assert retraining.batch_keys(local, "weekly") == counted[4:] and feedback.count(local.feedback_dir) == 0


def test_moves_of_drawings_take_turns(local):
    """A second process cannot take the moves lock while the first holds it."""
    import subprocess
    import sys

    script = (f"import fcntl; handle = open({str(local.data_dir / feedback.MOVES_LOCK)!r}, 'a'); "
              "fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)")
    with feedback.moves_lock(local.data_dir):
        held = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert held.returncode != 0 and "BlockingIOError" in held.stderr
    assert subprocess.run([sys.executable, "-c", script]).returncode == 0


def propose(settings, name: str, count: int, start: int = 0) -> list[str]:
    """`count` golden drawings stored as proposals of `name`, as the web app stores them."""
    keys = []
    for _, _, strokes in fixture_drawings()[start : start + count]:
        ref, _ = proposals.save(settings, name, name, strokes_to_bitmap(strokes, raw=False), {"strokes": strokes, "simplified": True})
        keys.append(ref.key)
    return keys


def test_snapshot_takes_ready_proposals_and_ingest_holds_back_a_share_of_each(local):
    local = local.model_copy(update={"proposal_min_drawings": 10})
    dataset.build_base(local.sample_dir, local.dataset_dir, local.evaluation_path, ["cat", "fish"], 10, 30)
    counted = save(local, 3)
    ready = propose(local, "hot air balloon", 10)
    waiting = propose(local, "kite", 9, start=20)  # one short of the minimum: stays
    taken = retraining.snapshot(local, "run-1", counted)
    assert taken == {"batch": "run-1", "count": 13, "proposals": ["hot air balloon"]}
    assert retraining.batch_keys(local, "run-1") == counted + ready
    assert [r.key for r in proposals.drawings(local, "kite")] == waiting and not proposals.drawings(local, "hot air balloon")
    assert "hot air balloon" in proposals.names(local)  # its state stays: a failed attempt keeps collecting

    assert retraining.ingest(local, "run-1")["ingested"] == 13
    assert sorted(retraining.read_batch(live_files(local), "run-1").y.tolist()) == sorted(k.split("/")[0] for k in counted)
    with np.load(retraining.proposals_file(local, "run-1")) as data:
        assert data["keys"].tolist() == ready and set(data["y"].tolist()) == {"hot air balloon"}
        assert data["held_back"].sum() == 2  # 20% of 10
    # Training sees the proposal's other drawings only while it is being added or once accepted, never its judges.
    files = live_files(local)
    old, new = retraining.training_parts(files, "run-1", accepted=set(), adding={"hot air balloon"})
    assert (new.y == "hot air balloon").sum() == 8 and "hot air balloon" not in old.y
    old, new = retraining.training_parts(files, "run-1", accepted=set(), adding=set())
    assert "hot air balloon" not in np.concatenate([old.y, new.y])
    old, _ = retraining.training_parts(files, "run-2", accepted={"hot air balloon"}, adding=set())
    assert (old.y == "hot air balloon").sum() == 8
    judges = retraining.proposal_drawings(files, {"hot air balloon"}, judge=True)
    assert len(judges) == 2
    # Training from scratch (`doodle train`) keeps an accepted category, without its judges, and no other.
    assert (retraining.scratch_training_data(files, {"hot air balloon"}).y == "hot air balloon").sum() == 8
    assert "hot air balloon" not in retraining.scratch_training_data(files, set()).y


def test_held_back_is_a_fixed_share_chosen_by_content_not_by_order():
    images = [np.full((28, 28), i, dtype=np.uint8) for i in range(25)]
    flags = retraining.held_back(images, 0.2)
    assert flags.sum() == 5 and (retraining.held_back(images[::-1], 0.2)[::-1] == flags).all()
    assert retraining.held_back([image.copy() for image in images], 0.2).tolist() == flags.tolist()
    assert retraining.held_back(images[:3], 0.2).sum() == 1  # always at least one judge


def test_ingest_keeps_good_drawings_rerenders_a_broken_png_and_sets_bad_ones_aside(local):
    keys = save(local, 5)
    retraining.snapshot(local, "run-1", keys)
    folder = local.batches_dir / "run-1"
    broken, mislabelled, blank = (feedback.DrawingRef.parse(k) for k in keys[:3])
    (folder / broken.category / f"{broken.id}.png").write_bytes(b"not a png")
    record = folder / mislabelled.category / f"{mislabelled.id}.json"
    record.write_text(json.dumps({**json.loads(record.read_text()), "label": "../etc"}))
    blank_record = folder / blank.category / f"{blank.id}.json"
    (folder / blank.category / f"{blank.id}.png").unlink()
    blank_record.write_text(json.dumps({"label": blank.category}))  # no PNG, no strokes

    result = retraining.ingest(local, "run-1")

    assert result["ingested"] == 3 and sorted(result["rejected"]) == sorted([mislabelled.key, blank.key])
    split = retraining.read_batch(live_files(local), "run-1")
    assert split.x.shape == (3, 28, 28) and split.x.dtype == np.uint8
    category, _, strokes = fixture_drawings()[0]
    assert (split.x[0] == strokes_to_bitmap(strokes, raw=False)).all()  # re-rendered from the strokes
    reason = (local.rejected_dir / "run-1" / mislabelled.category / f"{mislabelled.id}.reason.txt").read_text()
    assert "does not match its folder" in reason
    assert (local.rejected_dir / "run-1" / mislabelled.category / f"{mislabelled.id}.png").exists()
    assert retraining.ingest(local, "run-1") == result  # a retry writes the same file again


def figures(c_eval, p_eval, c_new=None, p_new=None, c_eval_loss=0.3, p_eval_loss=0.3, count=50):
    def part(acc, loss):
        return None if acc is None else {"accuracy": acc, "loss": loss, "count": count}

    return {
        "candidate": {"eval": part(c_eval, c_eval_loss), "feedback": part(*(c_new or (None, None)))},
        "production": None if p_eval is None else {"eval": part(p_eval, p_eval_loss), "feedback": part(*(p_new or (None, None)))},
        "feedback_count": count if c_new else 0,
    }


def adding(case: dict, accuracy: float, count: int = 5) -> dict:
    """The figures of a run that adds the category 'dog', recognised on `accuracy` of its held-back drawings."""
    return {**case, "new_categories": ["dog"], "held_back": {"dog": {"candidate": accuracy, "production": None, "count": count}}}


@pytest.mark.parametrize(
    "case, promote, says",
    [
        (figures(0.90, None, (0.8, 0.5)), True, "no production model yet"),
        (figures(0.930, 0.934, (0.9, 0.3), (0.8, 0.5)), True, "promoted: not worse"),  # -0.4 points: tolerated
        (figures(0.925, 0.934, (0.9, 0.3), (0.8, 0.5)), False, "worse on the evaluation set"),  # -0.9 points
        (figures(0.94, 0.93, (0.8, 0.5), (0.8, 0.5)), False, "not better on the new feedback"),
        (figures(0.94, 0.93, (1.0, 0.05), (1.0, 0.09)), True, "better on the new feedback"),  # tie: lower loss wins
        (figures(0.94, 0.93, (0.9, None), (0.8, 0.5)), True, "better on the new feedback"),
        (figures(0.94, 0.93), True, "better on the evaluation set (no new feedback)"),
        (figures(0.93, 0.93), False, "not better on the evaluation set"),
        # A run that adds a category: recognised on its held-back drawings at the bar, old ones within tolerance.
        (adding(figures(0.930, 0.934), 0.8), True, "learns the new category 'dog'"),
        (adding(figures(0.930, 0.934), 0.4), False, "does not recognise 'dog' well enough"),
        (adding(figures(0.920, 0.934), 0.8), False, "worse on the evaluation set"),
        (adding(figures(0.95, None), 0.4), False, "does not recognise 'dog'"),  # even with nothing to beat
        (adding(figures(0.930, 0.934), 0.8, count=0), False, "does not recognise 'dog'"),  # no judges, no promotion
        # Better everywhere, but without a category production serves (added by the other DAG during training).
        ({**figures(0.95, 0.93, (0.9, 0.3), (0.8, 0.5)), "dropped_categories": ["dog"]}, False,
         "lacks categories production serves: 'dog'"),
    ],
)
def test_gate(case, promote, says):
    decision = retraining.decide(case, tolerance_points=0.5, bar=0.6)
    assert decision.promote is promote
    assert says in decision.reason
    if case["production"]:
        assert "production" in decision.reason and "candidate" in decision.reason  # both models' numbers


@pytest.mark.parametrize(
    "params, kinds, names",
    [
        (None, None, ["0-fine-tune"]),
        ({"kinds": ["fine-tune", "scratch"]}, None, ["0-fine-tune", "1-scratch"]),
        ({"learning_rates": [0.001, 0.003], "widths": [16, 32]}, ["scratch"],
         ["0-scratch-lr0.001-w16", "1-scratch-lr0.001-w32", "2-scratch-lr0.003-w16", "3-scratch-lr0.003-w32"]),
        # Widths only vary from-scratch candidates; a repeated value is one candidate.
        ({"kinds": ["fine-tune", "scratch"], "learning_rates": [0.001, 0.001], "widths": [8, 24]}, None,
         ["0-fine-tune-lr0.001", "1-scratch-lr0.001-w8", "2-scratch-lr0.001-w24"]),
    ],
)
def test_plan_candidates_is_the_grid_of_the_params(params, kinds, names):
    planned = retraining.plan_candidates(params, kinds)
    assert [retraining.Candidate(**c).name for c in planned] == names
    assert [c["index"] for c in planned] == list(range(len(names)))


@pytest.mark.parametrize(
    "params, says",
    [
        ({"kinds": ["transfer"]}, "unknown candidate kinds ['transfer']"),
        ({"kinds": ["scratch"], "learning_rates": [1e-4, 2e-4, 3e-4], "widths": [8, 16, 32]}, "9 candidates asked for"),
        ({"epochs": 2.5}, "epochs must be a whole number, not 2.5"),
        ({"kinds": ["scratch"], "widths": [8, 16.5]}, "widths must be a whole number, not 16.5"),
    ],
)
def test_plan_candidates_refuses_unknown_kinds_oversized_grids_and_fractions(params, says):
    with pytest.raises(ValueError, match=re.escape(says)):
        retraining.plan_candidates(params)


def test_whole_floats_plan_the_candidates_their_ints_would(local):
    """JSON Schema's "integer" accepts 3.0, as REST and CLI callers send it: torch would refuse it deep in training."""
    from doodle_lib import training

    floats = retraining.plan_candidates({"kinds": ["fine-tune", "scratch"], "epochs": 3.0, "widths": [8.0, 16.0]})
    ints = retraining.plan_candidates({"kinds": ["fine-tune", "scratch"], "epochs": 3, "widths": [8, 16]})
    assert [retraining.Candidate(**c).name for c in floats] == ["0-fine-tune", "1-scratch-w8", "2-scratch-w16"]
    assert [(type(c["epochs"]), type(c["width"])) for c in floats] == [(int, type(None)), (int, int), (int, int)]
    assert floats == ints
    for candidate in floats:  # TrainConfig's own check of every field, which candidate_config's assignments bypass
        config = retraining.candidate_config(local, retraining.Candidate(**candidate), None, adding=False)
        training.TrainConfig(**config.params())


def test_an_emptied_field_of_the_form_means_the_default():
    emptied = {"kinds": ["scratch"], "epochs": None, "learning_rates": None, "widths": None}
    assert retraining.plan_candidates(emptied) == retraining.plan_candidates({"kinds": ["scratch"]})
    assert retraining.plan_candidates(emptied)[0] == {"index": 0, "kind": "scratch", "learning_rate": None, "width": None, "epochs": None}


FORM = ["epochs", "kinds", "learning_rates", "new_category_bar", "threshold", "tolerance", "wait_minutes", "widths"]


@pytest.mark.parametrize(
    "conf, kinds, says",
    [
        ({"epoch": 5}, None, f"unknown parameters ['epoch']; the form's are {FORM}"),
        ({"learning_rate": 0.01, "Threshold": 5, "epochs": 2}, None, "unknown parameters ['Threshold', 'learning_rate']"),
        ({"kinds": ["fine-tune"]}, ["scratch"], "unknown parameters ['kinds']"),  # the weekly DAG's form has no kinds
        ({"kinds": ["scratch"], "learning_rates": [1e-4, 2e-4, 3e-4], "widths": [8, 16, 32]}, None, "9 candidates asked for"),
    ],
)
def test_check_params_refuses_keys_the_form_lacks_and_what_plan_would_refuse(conf, kinds, says):
    form = [name for name in FORM if kinds is None or name != "kinds"]
    with pytest.raises(ValueError, match=re.escape(says)):
        retraining.check_params(conf, conf, form, kinds)


def test_check_params_passes_a_good_conf_and_returns_the_candidates():
    conf = {"threshold": 30, "epochs": 2.0, "kinds": ["scratch"], "widths": [8, 16]}
    assert retraining.check_params({**conf, "tolerance": 0.5}, conf, FORM) == retraining.plan_candidates(conf)
    assert retraining.check_params({}, None, FORM) == retraining.plan_candidates({})  # a scheduled run: no conf


def evaluated(name: str, accuracy: float, loss: float) -> dict:
    result = {"accuracy": accuracy, "loss": loss, "count": 100}
    return {
        "trained": {"candidate": name, "mlflow_run_id": f"run-{name}"},
        "figures": {"candidate": {"eval": result, "feedback": None}, "production": None, "production_version": None, "feedback_count": 0},
    }


def test_choose_takes_the_best_on_the_evaluation_set_and_records_why_on_the_parent_run(settings):
    candidates = retraining.plan_candidates({"learning_rates": [1e-3, 2e-3, 3e-3]})
    run_id = f"manual__{settings.model_name}"  # the MLflow server is shared by the session's tests
    experiment = retraining.start_experiment(settings, run_id, "batch", "abc", candidates)
    assert retraining.start_experiment(settings, run_id, "batch", "abc", candidates) == experiment  # a retry reuses it
    chosen = retraining.choose_candidate(
        settings, experiment, [evaluated("a", 0.90, 0.3), evaluated("b", 0.92, 0.4), evaluated("c", 0.92, 0.2)]
    )
    assert chosen["trained"]["candidate"] == "c"  # tied on accuracy with b, lower loss
    assert chosen["choice"].startswith("chose c,") and chosen["choice"].index("c eval") < chosen["choice"].index("a eval")
    parent = tracking.client(settings).get_run(experiment["parent_run_id"])
    assert parent.data.tags["chosen_candidate"] == "c" and parent.data.tags["chosen_run_id"] == "run-c"
    assert parent.data.tags["choice"] == chosen["choice"] and parent.info.status == "FINISHED"
    assert parent.data.metrics["best_eval_accuracy"] == 0.92


def test_cleanup_removes_a_batch_only_once_the_remote_holds_it(local):
    train, _ = dataset.build_base(
        local.sample_dir, local.dataset_dir, local.evaluation_path, ["cat", "fish"], eval_per_category=10, max_per_category=30
    )
    versioning.ensure_project(local.data_dir, local.dvc_remote_dir)
    old_version = versioning.commit(local.data_dir, "dataset")  # a version from before this batch
    keys = save(local, 4)
    retraining.snapshot(local, "run-1", keys)
    retraining.ingest(local, "run-1")
    with pytest.raises(versioning.VersioningError):
        retraining.cleanup(local, "run-1", old_version)
    assert (local.batches_dir / "run-1").is_dir()
    version = retraining.version_dataset(local)["dataset_version"]
    assert retraining.cleanup(local, "run-1", version) == {"batch": "run-1", "removed": True}
    assert retraining.cleanup(local, "run-1", version) == {"batch": "run-1", "removed": False}
    assert "feedback/run-1.npz" in versioning.stored_files(local.dvc_remote_dir, version)
    # The finished run cleared and rerun: its snapshot may not take newer drawings under the same batch name.
    ingested = retraining.feedback_file(local, "run-1").read_bytes()
    newer = save(local, 3, start=20)
    with pytest.raises(retraining.RunFinished, match="ingested and cleaned up by an earlier try"):
        retraining.snapshot(local, "run-1", newer)
    assert retraining.feedback_file(local, "run-1").read_bytes() == ingested
    assert sorted(ref.key for ref in feedback.complete(local.feedback_dir)) == sorted(newer)  # still waiting


def test_a_run_reads_its_dataset_version_not_batches_ingested_since(local):
    """The other DAG may ingest a batch between this run's version and train stages: the run must not train on it."""
    dataset.build_base(local.sample_dir, local.dataset_dir, local.evaluation_path, ["cat", "fish"], 10, 30)
    versioning.ensure_project(local.data_dir, local.dvc_remote_dir)
    retraining.snapshot(local, "run-1", save(local, 4))
    retraining.ingest(local, "run-1")
    version = retraining.version_dataset(local)["dataset_version"]
    retraining.snapshot(local, "weekly", save(local, 3, start=10))
    retraining.ingest(local, "weekly")

    files = retraining.version_files(local, version)
    assert sorted(files) == ["base.npz", "feedback/run-1.npz"]
    old, new = retraining.training_parts(files, "run-1", accepted=set(), adding=set())
    live_old, live_new = retraining.training_parts(live_files(local), "run-1", accepted=set(), adding=set())
    assert len(new) == len(live_new) == 4
    assert len(old) == 40 and len(live_old) == 43  # the live folder has the weekly batch too
    assert len(retraining.scratch_training_data(files, set())) == 44
    with pytest.raises(versioning.VersioningError, match="does not hold dataset version"):
        retraining.version_files(local, "0" * 32 + ".dir")


@pytest.mark.slow
def test_train_evaluate_register_twice_gives_one_version(settings):
    dataset.build_base(settings.sample_dir, settings.dataset_dir, settings.evaluation_path, ["cat", "fish"], 20, 80)
    keys = save(settings, 4, start=50)  # cat drawings
    retraining.snapshot(settings, "run-1", keys)
    retraining.ingest(settings, "run-1")
    version = retraining.version_dataset(settings)["dataset_version"]
    retraining.snapshot(settings, "weekly", save(settings, 3, start=10))  # the other DAG ingests a batch meanwhile
    retraining.ingest(settings, "weekly")
    [candidate] = retraining.plan_candidates({"epochs": 1})
    trained = retraining.train_candidate(settings, "run-1", "run-1", version, candidate)
    assert trained["kind"] == "scratch"  # fine-tuning asked for, but there is no production model yet
    params = tracking.client(settings).get_run(trained["mlflow_run_id"]).data.params
    assert (params["old_count"], params["feedback_count"]) == ("120", "4")  # the version's data, without "weekly"
    results = retraining.evaluate_candidate(settings, "run-1", trained)
    assert results["production"] is None and results["feedback_count"] == 4
    # MLflow records what the run read: the version's drawings from the DVC remote, the evaluation set, by content.
    inputs = {(i.dataset.name, tags["mlflow.data.context"]): i.dataset
              for i in tracking.client(settings).get_run(trained["mlflow_run_id"]).inputs.dataset_inputs
              for tags in [{t.key: t.value for t in i.tags}]}
    assert set(inputs) == {("training", "training"), ("evaluation", "evaluation")}  # from scratch: one training set
    assert json.loads(inputs["training", "training"].source)["uri"].endswith(version[2:])
    assert json.loads(inputs["training", "training"].profile)["features_shape"] == [124, 28, 28]
    evaluation_set = dataset.read_split(settings.evaluation_path)
    assert inputs["evaluation", "evaluation"].digest == tracking.split_digest(evaluation_set)
    changed = evaluation_set.x.copy()
    changed[-1, -1, -1] ^= 1  # one pixel of the last drawing, far past the first 10,000 values MLflow's digest reads
    assert tracking.split_digest(dataset.Split(changed, evaluation_set.y)) != inputs["evaluation", "evaluation"].digest
    first = retraining.register_candidate(settings, "run-1", trained, results)
    second = retraining.register_candidate(settings, "run-1", trained, results)
    assert first == second
    promoted = retraining.promote_candidate(settings, first, results, 0.5, trained)
    assert promoted["promoted"] and "beats nothing" in promoted["reason"]
    production = tracking.production_version(settings)
    assert production.version == first["version"] and production.tags["promoted"] == "true"
    assert production.tags["dataset_version"] == version
    assert retraining.promote_candidate(settings, first, results, 0.5)["promoted"]  # a retry of the same promotion
    # Another run's candidate, evaluated while there was no production model: production has moved since.
    other = retraining.register_candidate(settings, "run-2", trained, results)
    late = retraining.promote_candidate(settings, other, results, 0.5)
    assert not late["promoted"] and "production moved from version None to " + first["version"] in late["reason"]
    assert tracking.production_version(settings).version == first["version"]
    # Production gains a category (the other DAG added 'dog') after this candidate trained: it may not replace it.
    served = load_checkpoint(Path(trained["checkpoint"]))
    served.add_categories(["dog"])
    with tracking.training_run(settings, "with dog") as dog_run:
        uri = tracking.log_model(served)
    with_dog = tracking.register(settings, uri, dog_run, {"categories": json.dumps(served.categories)})
    tracking.set_production(settings, with_dog.version)
    judged = retraining.evaluate_candidate(settings, "run-1", trained)
    assert judged["dropped_categories"] == ["dog"] and judged["production_version"] == with_dog.version
    refused = retraining.promote_candidate(settings, retraining.register_candidate(settings, "run-3", trained, judged), judged, 0.5)
    assert not refused["promoted"] and "lacks categories production serves: 'dog'" in refused["reason"]
    assert tracking.production_version(settings).version == with_dog.version
    # Two promotions at once: the second waits for the first, then finds production moved and judges nothing.
    racing = retraining.register_candidate(settings, "run-4", trained, judged)
    outcome = {}
    with atomic.exclusive(settings.data_dir / retraining.PROMOTION_LOCK):  # the other run's promotion, under way
        waiting = threading.Thread(target=lambda: outcome.update(retraining.promote_candidate(settings, racing, judged, 0.5)))
        waiting.start()
        waiting.join(2)
        assert waiting.is_alive() and not outcome  # blocked on the lock
        tracking.set_production(settings, first["version"])
    waiting.join(60)
    assert not outcome["promoted"] and f"production moved from version {with_dog.version} to {first['version']}" in outcome["reason"]


@pytest.mark.slow
def test_a_proposal_whose_every_drawing_ingest_rejects_is_not_a_category_the_run_adds(settings):
    settings = settings.model_copy(update={"proposal_min_drawings": 3})
    dataset.build_base(settings.sample_dir, settings.dataset_dir, settings.evaluation_path, ["cat", "fish"], 20, 80)
    proposed = propose(settings, "kite", 3, start=20)
    retraining.snapshot(settings, "run-1", save(settings, 4, start=50))
    for key in proposed:  # no PNG and no strokes: nothing ingest can use
        ref = feedback.DrawingRef.parse(key)
        (settings.batches_dir / "run-1" / ref.category / f"{ref.id}.png").unlink()
        (settings.batches_dir / "run-1" / ref.category / f"{ref.id}.json").write_text(json.dumps({"label": "kite"}))
    assert sorted(retraining.ingest(settings, "run-1")["rejected"]) == sorted(proposed)
    version = retraining.version_dataset(settings)["dataset_version"]
    [candidate] = retraining.plan_candidates({"epochs": 1})
    trained = retraining.train_candidate(settings, "run-1", "run-1", version, candidate)
    # Claiming it would let the gate skip the feedback comparison ("learns the new category") and close the proposal.
    assert load_checkpoint(Path(trained["checkpoint"])).categories == ["cat", "fish"] and trained["new_categories"] == []


def test_a_proposal_an_operator_rejects_or_renames_during_the_run_is_not_promoted(settings):
    from doodle_lib.model import DoodleCNN

    settings = settings.model_copy(update={"proposal_min_drawings": 3})
    propose(settings, "kite", 3)
    propose(settings, "kyte", 3, start=3)
    propose(settings, "hat", 3, start=6)
    retraining.snapshot(settings, "run-1", [])
    assert retraining.withdrawn_proposals(settings, "run-1", ["hat", "kite", "kyte"]) == []
    proposals.reject(settings, "kite", "not a category we want")
    propose(settings, "kite", 1, start=9)  # a user proposes it again: a new proposal, not the one the run took
    proposals.rename(settings, "kyte", "kite flyer", [])
    assert retraining.withdrawn_proposals(settings, "run-1", ["hat", "kite", "kyte"]) == ["kite", "kyte"]

    candidate = DoodleCNN(["cat", "fish", "hat", "kite"])
    with tracking.training_run(settings, "candidate") as run_id:
        uri = tracking.log_model(candidate)
    registered = {"version": tracking.register(settings, uri, run_id, {"categories": json.dumps(candidate.categories)}).version}
    figures = {"candidate": {"eval": {"accuracy": 0.9, "loss": 0.3}, "feedback": None}, "production": None,
               "production_version": None, "feedback_count": 0, "new_categories": ["hat", "kite"], "held_back": {}}
    refused = retraining.promote_candidate(settings, registered, figures, 0.5, batch="run-1")
    assert not refused["promoted"] and "rejected or renamed the proposed 'kite' after this run" in refused["reason"]
    assert tracking.production_version(settings) is None and "hat" in proposals.names(settings)
    # Without the withdrawn one the candidate passes, and the proposal it learned closes.
    promoted = retraining.promote_candidate(settings, registered, {**figures, "new_categories": ["hat"]}, 0.5, batch="run-1")
    assert promoted["promoted"] and tracking.production_version(settings).version == registered["version"]
    assert "hat" not in proposals.names(settings) and "kite" in proposals.names(settings)
    # A retry of that promotion finds its own version served and its proposal closed: still promoted.
    assert retraining.promote_candidate(settings, registered, {**figures, "new_categories": ["hat"]}, 0.5, batch="run-1")["promoted"]
