"""Real runs of the retraining DAG with dag.test(): a real MLflow server, a real DVC remote, small data."""
from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path

import pytest

from doodle_lib import feedback, lineage, tracking, versioning
from tests.dags import world
from tests.dags.conftest import run_dag

pytestmark = pytest.mark.slow
STAGES = ["snapshot", "ingest", "version", "plan", "train[0]", "evaluate[0]", "choose", "register", "promote", "cleanup"]


def versions(settings) -> dict[str, dict]:
    found = tracking.client(settings).search_model_versions(f"name = '{settings.model_name}'")
    return {v.version: v.tags for v in found}


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_enough_good_feedback_is_promoted_and_its_dataset_checks_out(dagbag, retrain_world):
    settings = retrain_world
    before = tracking.production_version(settings).version
    keys = world.save_feedback(settings, 50)

    run, states = run_dag(dagbag.get_dag("retrain"), threshold=50)

    assert states == {"check_params": "success", "wait_for_feedback": "success", **{stage: "success" for stage in STAGES}}
    production = tracking.production_version(settings)
    assert production.version != before
    tags = production.tags
    assert tags["promoted"] == "true" and tags["promotion"].startswith("promoted:"), tags["promotion"]
    assert tags["airflow_run_id"] == run.run_id and tags["kind"] == "fine-tune"
    assert tags["dataset_version"] == versioning.dataset_hash(settings.data_dir / "dataset.dvc")
    assert "production" in tags["promotion"] and "candidate" in tags["promotion"]
    inputs = {i.dataset.name: i.dataset for i in tracking.client(settings).get_run(production.run_id).inputs.dataset_inputs}
    assert sorted(inputs) == ["evaluation", "feedback", "replay"]  # fine-tuned: the batch and the old drawings apart
    assert json.loads(inputs["feedback"].profile)["features_shape"] == [50, 28, 28]
    # Every drawing is in exactly one dataset batch, none waits, the batch folder is gone.
    assert sorted(world.dataset_keys(settings)) == sorted(keys)
    assert feedback.count(settings.feedback_dir) == 0
    assert not any(settings.batches_dir.iterdir())

    # Lineage: the model version's dataset, restored from the DVC remote, is the dataset it was trained on.
    restored = lineage.checkout_model_dataset(settings, production.version)
    assert file_hashes(restored) == file_hashes(settings.dataset_dir)
    stored = versioning.stored_files(settings.dvc_remote_dir, tags["dataset_version"])
    assert {path: md5 for path, md5 in file_hashes(restored).items()} == stored


def test_three_candidates_train_under_one_parent_run_and_only_the_best_is_registered(dagbag, retrain_world):
    settings = retrain_world
    world.save_feedback(settings, 30)

    run, states = run_dag(
        dagbag.get_dag("retrain"), threshold=30, epochs=1, kinds=["fine-tune", "scratch"], learning_rates=[3e-3], widths=[8, 16],
    )

    assert set(states.values()) == {"success"}
    assert {task for task in states if task.startswith("train[")} == {"train[0]", "train[1]", "train[2]"}
    client = tracking.client(settings)
    experiment = client.get_experiment_by_name(settings.experiment)
    [parent] = client.search_runs([experiment.experiment_id], f"tags.airflow_run_id = '{run.run_id}' and tags.role = 'candidates'")
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.data.tags["candidate"] for c in children) == ["0-fine-tune-lr0.003", "1-scratch-lr0.003-w8", "2-scratch-lr0.003-w16"]
    assert all(c.info.status == "FINISHED" and "eval_accuracy" in c.data.metrics for c in children)
    best = max(children, key=lambda c: (c.data.metrics["eval_accuracy"], -c.data.metrics["eval_loss"]))
    assert parent.data.tags["chosen_run_id"] == best.info.run_id
    assert parent.data.tags["choice"].startswith(f"chose {best.data.tags['candidate']},")

    [registered] = [v for v in client.search_model_versions(f"name = '{settings.model_name}'") if v.tags.get("airflow_run_id") == run.run_id]
    assert registered.run_id == best.info.run_id and registered.tags["candidate"] == best.data.tags["candidate"]
    assert "Candidates: chose" in registered.description


def test_shuffled_labels_are_registered_but_not_promoted(dagbag, retrain_world):
    settings = retrain_world
    before = tracking.production_version(settings).version
    world.save_feedback(settings, 50, shuffled=True)

    run, states = run_dag(dagbag.get_dag("retrain"), threshold=50)

    assert set(states.values()) == {"success"}
    assert tracking.production_version(settings).version == before
    candidate = [tags for tags in versions(settings).values() if tags.get("airflow_run_id") == run.run_id]
    assert len(candidate) == 1
    assert candidate[0]["promoted"] == "false"
    assert "worse on the evaluation set" in candidate[0]["promotion"], candidate[0]["promotion"]


def test_too_little_feedback_ends_skipped(dagbag, retrain_world):
    settings = retrain_world
    keys = world.save_feedback(settings, 10)

    run, states = run_dag(dagbag.get_dag("retrain"), threshold=50, wait_minutes=0.02)  # defers, then 1.2 s passes

    assert run.state == "success"
    assert states.pop("check_params") == "success" and set(states.values()) == {"skipped"}, states
    assert sorted(ref.key for ref in feedback.complete(settings.feedback_dir)) == sorted(keys)
    assert len(versions(settings)) == 1


@pytest.mark.parametrize(
    "dag_id, conf",
    [
        # 3 rates x 3 widths: 9 candidates, one more than a run trains; the form cannot express the product's limit.
        ("retrain", {"kinds": ["scratch"], "learning_rates": [1e-3, 2e-3, 3e-3], "widths": [8, 16, 32]}),
        ("retrain", {"epoch": 1}),  # a typo: the run would train with the default epochs
        ("retrain_from_scratch", {"kinds": ["fine-tune"]}),  # a key of the other DAG's form: its kinds are fixed
    ],
)
def test_bad_params_fail_the_run_before_it_waits_or_any_drawing_moves(dagbag, retrain_world, dag_id, conf):
    settings = retrain_world
    keys = world.save_feedback(settings, 30)
    threshold = {"threshold": 30} if dag_id == "retrain" else {}

    run, states = run_dag(dagbag.get_dag(dag_id), **threshold, **conf)

    first = {"retrain": "wait_for_feedback", "retrain_from_scratch": "take_waiting"}[dag_id]
    assert run.state == "failed" and states["check_params"] == "failed" and states[first] == "upstream_failed", states
    assert sorted(ref.key for ref in feedback.complete(settings.feedback_dir)) == sorted(keys)  # all still waiting
    assert not settings.batches_dir.exists() and not (settings.dataset_dir / "feedback").exists()


def test_whole_floats_for_integer_params_train_as_their_ints(dagbag, retrain_world):
    """JSON Schema's "integer" accepts 30.0, as REST and CLI callers send it; torch would refuse the float epochs and
    width, after the batch was ingested."""
    settings = retrain_world
    keys = world.save_feedback(settings, 30)

    run, states = run_dag(dagbag.get_dag("retrain"), threshold=30.0, epochs=1.0, kinds=["fine-tune", "scratch"], widths=[8.0])

    assert set(states.values()) == {"success"}, states
    assert sorted(world.dataset_keys(settings)) == sorted(keys)
    client = tracking.client(settings)
    experiment = client.get_experiment_by_name(settings.experiment)
    trained = client.search_runs([experiment.experiment_id], f"tags.airflow_run_id = '{run.run_id}' and tags.role = 'candidate'")
    assert sorted((r.data.tags["candidate"], r.data.params["epochs"], r.data.params["width"]) for r in trained) == [
        ("0-fine-tune", "1", "16"), ("1-scratch-w8", "1", "8"),
    ]


def test_a_run_whose_drawings_the_weekly_run_took_first_ends_skipped(dagbag, retrain_world, monkeypatch):
    """Between the sensor's count and the snapshot, the weekly DAG takes every counted drawing: nothing to train on."""
    settings = retrain_world
    keys = world.save_feedback(settings, 30)
    real_lock = feedback.moves_lock

    @contextlib.contextmanager
    def weekly_run_moves_first(data_dir):
        feedback.move([feedback.DrawingRef.parse(key) for key in keys], settings.feedback_dir, settings.batches_dir / "weekly")
        with real_lock(data_dir):
            yield

    monkeypatch.setattr(feedback, "moves_lock", weekly_run_moves_first)
    run, states = run_dag(dagbag.get_dag("retrain"), threshold=30)

    assert run.state == "success"
    assert [states.pop(task) for task in ("check_params", "wait_for_feedback")] == ["success", "success"]
    assert set(states.values()) == {"skipped"}, states
    assert len(versions(settings)) == 1
    assert [folder.name for folder in settings.batches_dir.iterdir()] == ["weekly"]  # no empty batch left behind


def test_a_run_whose_every_drawing_ingest_rejects_ends_skipped(dagbag, retrain_world):
    settings = retrain_world
    for key in world.save_feedback(settings, 30):
        ref = feedback.DrawingRef.parse(key)
        (settings.feedback_dir / ref.category / f"{ref.id}.json").write_text(json.dumps({"label": "not its folder"}))

    run, states = run_dag(dagbag.get_dag("retrain"), threshold=30)

    assert run.state == "success"
    assert [states.pop(task) for task in ("check_params", "wait_for_feedback", "snapshot")] == ["success"] * 3
    assert set(states.values()) == {"skipped"}, states
    assert len(versions(settings)) == 1 and not any(settings.batches_dir.iterdir())
    assert len(list(settings.rejected_dir.rglob("*.reason.txt"))) == 30  # each one kept, with why


def test_retried_snapshot_takes_exactly_the_counted_drawings(dagbag, retrain_world, monkeypatch):
    """The first try dies halfway through the move while new drawings arrive; the retry finishes the same batch."""
    settings = retrain_world
    counted = world.save_feedback(settings, 30)
    late: list[str] = []
    real_move = feedback.move

    def move_half_then_fail(refs, source, destination):
        if not late:
            real_move(refs[: len(refs) // 2], source, destination)
            late.extend(world.save_feedback(settings, 5, start=100))
            raise OSError("disk hiccup in the middle of the snapshot")
        return real_move(refs, source, destination)

    monkeypatch.setattr(feedback, "move", move_half_then_fail)
    run, states = run_dag(dagbag.get_dag("retrain"), threshold=30, epochs=1)

    assert set(states.values()) == {"success"}
    assert sorted(world.dataset_keys(settings)) == sorted(counted)
    assert sorted(ref.key for ref in feedback.complete(settings.feedback_dir)) == sorted(late)


def test_weekly_retrain_from_scratch_takes_what_waits_and_the_gate_still_decides(dagbag, retrain_world):
    settings = retrain_world
    before = tracking.production_version(settings).version
    keys = world.save_feedback(settings, 12)

    run, states = run_dag(dagbag.get_dag("retrain_from_scratch"), epochs=1)  # one epoch: a weak candidate

    assert set(states.values()) == {"success"}
    assert sorted(world.dataset_keys(settings)) == sorted(keys)
    [candidate] = [tags for tags in versions(settings).values() if tags.get("airflow_run_id") == run.run_id]
    assert candidate["kind"] == "scratch" and candidate["promoted"] == "false"
    assert tracking.production_version(settings).version == before
