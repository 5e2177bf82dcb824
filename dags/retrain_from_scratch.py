"""
### Weekly retrain from scratch (Sundays 03:00 UTC)

`take_waiting` -> `snapshot` -> `ingest` -> `version` -> `train` (from scratch) -> `evaluate` -> `register` -> `promote` -> `cleanup`

Once a week a new model is trained from scratch on all data: the base set, every batch of feedback
ingested so far, and whatever feedback waits right now (taken the same way as the sensor-driven
`retrain` DAG does, so no drawing is counted twice). Fine-tuning drifts a little with every batch; a
fresh model on everything resets that. The same gate decides: promoted only when not worse on the fixed
evaluation set (within `tolerance` points) and better on the new feedback, or, with no new feedback,
better on the evaluation set. Every stage is the same `doodle_lib.retraining` function as in `retrain`.
"""
from __future__ import annotations

from datetime import timedelta

from airflow.sdk import CronTriggerTimetable, Param, dag, task
from mlflow_link import mlflow_task

from doodle_lib.settings import get_settings

SETTINGS = get_settings()


@dag(
    # Sundays 03:00 UTC; no start date, so a new deployment waits for the next Sunday instead of retraining at once.
    schedule=CronTriggerTimetable("0 3 * * 0", timezone="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["doodle", "retraining", "scheduled"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=SETTINGS.retry_delay_seconds)},
    params={
        "epochs": Param(SETTINGS.retrain_epochs, type="integer", minimum=1, maximum=100, description="Training epochs."),
        "learning_rate": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=0.1, description="Peak learning rate; empty: the training default."),
        "tolerance": Param(SETTINGS.promotion_tolerance, type="number", minimum=0, maximum=100, description="Evaluation-set accuracy points the candidate may lose and still be promoted."),
    },
)
def retrain_from_scratch():
    @task
    def take_waiting() -> list[str]:
        from doodle_lib import retraining
        return retraining.waiting(get_settings())

    @task
    def snapshot(keys: list[str], run_id=None) -> dict:
        from doodle_lib import retraining
        return retraining.snapshot(get_settings(), run_id, keys)

    @task
    def ingest(batch: dict) -> dict:
        from doodle_lib import retraining
        return retraining.ingest(get_settings(), batch["batch"])

    @task
    def version(ingested: dict) -> str:
        from doodle_lib import retraining
        return retraining.version_dataset(get_settings())["dataset_version"]

    @mlflow_task(execution_timeout=timedelta(hours=4))
    def train(batch: dict, dataset_version: str, run_id=None, params=None) -> dict:
        from doodle_lib import retraining
        return retraining.train_candidate(get_settings(), run_id, batch["batch"], dataset_version, {**params, "from_scratch": True})

    @task
    def evaluate(batch: dict, trained: dict) -> dict:
        from doodle_lib import retraining
        return retraining.evaluate_candidate(get_settings(), batch["batch"], trained)

    @mlflow_task
    def register(trained: dict, dataset_version: str, figures: dict, run_id=None) -> dict:
        from doodle_lib import retraining
        return retraining.register_candidate(get_settings(), run_id, trained, dataset_version, figures)

    @task
    def promote(registered: dict, figures: dict, trained: dict, params=None) -> dict:
        from doodle_lib import retraining
        return retraining.promote_candidate(get_settings(), registered, figures, float(params["tolerance"]), trained)

    @task
    def cleanup(batch: dict, dataset_version: str, promoted: dict) -> dict:
        from doodle_lib import retraining
        return retraining.cleanup(get_settings(), batch["batch"], dataset_version)

    batch = snapshot(take_waiting())
    dataset_version = version(ingest(batch))
    trained = train(batch, dataset_version)
    figures = evaluate(batch, trained)
    promoted = promote(register(trained, dataset_version, figures), figures, trained)
    cleanup(batch, dataset_version, promoted)


retrain_from_scratch()
