"""MLflow against a real tracking server: log, register, move the production alias, load it back."""
import json

import mlflow
import numpy as np

from doodle_lib import tracking
from doodle_lib.model import predict_proba
from doodle_lib.training import TrainConfig, evaluate, train


def log_tiny_model(settings, split, seed):
    """Train one quick model under an MLflow run; returns (run id, model uri, evaluation)."""
    train_split, eval_split = split
    with tracking.training_run(settings, f"tiny-{seed}") as run_id:
        config = TrainConfig(epochs=1, seed=seed)
        mlflow.log_params(config.params())
        model, _ = train(train_split, sorted(set(train_split.y)), config, on_epoch=tracking.log_epoch)
        result = evaluate(model, eval_split)
        tracking.log_evaluation(result, eval_split)
        uri = tracking.log_model(model)
    return run_id, uri, result, model


def test_register_promote_and_load(settings, small_split):
    assert tracking.production_version(settings) is None
    run_id, uri, result, model = log_tiny_model(settings, small_split, seed=1)

    run = tracking.client(settings).get_run(run_id)
    assert run.data.params["epochs"] == "1"
    assert run.data.metrics["eval_accuracy"] == result.accuracy
    history = tracking.client(settings).get_metric_history(run_id, "train_loss")
    assert [m.step for m in history] == [1]
    artifacts = {a.path for a in tracking.client(settings).list_artifacts(run_id, "eval")}
    assert {"eval/confusion_matrix.png", "eval/misclassified.png", "eval/evaluation.json"} <= artifacts

    first = tracking.register(settings, uri, run_id, tracking.version_tags("md5-one.dir", result), "first")
    assert first.tags["dataset_version"] == "md5-one.dir"
    assert json.loads(first.tags["categories"]) == model.categories
    assert float(first.tags["eval_accuracy"]) == round(result.accuracy, 6)
    tracking.set_production(settings, first.version)
    assert tracking.production_version(settings).version == first.version

    run_2, uri_2, result_2, model_2 = log_tiny_model(settings, small_split, seed=2)
    second = tracking.register(settings, uri_2, run_2, tracking.version_tags("md5-two.dir", result_2))
    tracking.set_production(settings, second.version)

    loaded, version = tracking.load_production(settings)
    assert version.version == second.version
    sample = small_split[1].x[:32]
    np.testing.assert_allclose(predict_proba(loaded, sample), predict_proba(model_2, sample), rtol=1e-5, atol=1e-6)
    stages = {v.version: v.current_stage for v in tracking.client(settings).search_model_versions(f"name='{settings.model_name}'")}
    assert stages == {first.version: "Archived", second.version: "Production"}


def test_the_logged_pt2_model_serves_through_pyfunc(settings, small_split):
    run_id, uri, result, model = log_tiny_model(settings, small_split, seed=5)
    pyfunc = mlflow.pyfunc.load_model(uri)
    sample = small_split[1].x[:3].astype(np.float32)
    logits = pyfunc.predict(sample)
    assert np.asarray(logits).shape == (3, len(model.categories))
    assert np.argmax(logits, 1).tolist() == predict_proba(model, small_split[1].x[:3]).argmax(1).tolist()


def test_runs_logging_the_same_dataset_at_once_all_record_it(settings, tmp_path):
    """Candidates train in parallel and log the same batch: the server's insert of a new dataset races (a unique key
    on experiment, name and digest), and the run that lost the race failed before (seen on PostgreSQL)."""
    import threading

    from doodle_lib.dataset import Split

    runs, errors = [], []
    for attempt in range(3):  # a new dataset each time: the race is on its first insert
        split = Split(np.full((4, 28, 28), attempt, np.uint8), np.array(["cat", "fish", "cat", "fish"]))
        barrier = threading.Barrier(6)

        def log_at_once(index: int) -> None:
            try:
                with tracking.training_run(settings, f"same-data-{attempt}-{index}") as run_id:
                    runs.append(run_id)
                    barrier.wait(timeout=60)
                    tracking.log_input(split, "feedback", "training", tmp_path)
            except Exception as error:  # noqa: BLE001 - collected and reported below
                errors.append(error)

        threads = [threading.Thread(target=log_at_once, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert not errors, errors[:1]
    client = tracking.client(settings)
    assert all([i.dataset.name for i in client.get_run(r).inputs.dataset_inputs] == ["feedback"] for r in runs)
