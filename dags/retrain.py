"""
### Retrain on feedback

`wait_for_feedback` -> `snapshot` -> `ingest` -> `version` -> `train` -> `evaluate` -> `register` -> `promote` -> `cleanup`

Corrections from the web app collect in `data/feedback/<category>/`. The deferrable **FeedbackSensor**
waits in the triggerer (no worker slot) until at least `threshold` complete drawings are there and hands
their keys on; `snapshot` moves exactly those into `data/batches/<run>/`, so later drawings wait for the
next run. The batch is merged into the training data, versioned with DVC (pushed to `storage/dvc-remote`),
and the production model is fine-tuned on old data plus the batch (or trained from scratch when asked).
The candidate is registered in MLflow either way; the gate promotes it only when it is not worse on the
fixed evaluation set (within `tolerance` points) and better on the new feedback, and records why on the
model version. The batch folder is removed only after the dataset version holding it is stored.

Runs back to back (`@continuous`, one at a time); a run that finds too little feedback within
`wait_minutes` ends skipped. Trigger it by hand with the form to change threshold, epochs, learning rate,
from scratch, tolerance. The train and register tasks link to their MLflow run and model version.
"""
from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task
from feedback_sensor import FeedbackSensor
from mlflow_link import mlflow_task

from doodle_lib.settings import get_settings

SETTINGS = get_settings()


@dag(
    schedule="@continuous",
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["doodle", "retraining"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=SETTINGS.retry_delay_seconds)},
    params={
        "threshold": Param(SETTINGS.feedback_threshold, type="integer", minimum=1, maximum=100_000, description="Complete drawings that start the run."),
        "wait_minutes": Param(SETTINGS.feedback_wait_minutes, type="number", minimum=0, maximum=1440, description="How long to wait for them before the run ends skipped (0: look once)."),
        "epochs": Param(None, type=["null", "integer"], minimum=1, maximum=100, description=f"Training epochs; empty: {SETTINGS.fine_tune_epochs} to fine-tune, {SETTINGS.retrain_epochs} from scratch."),
        "learning_rate": Param(None, type=["null", "number"], exclusiveMinimum=0, maximum=0.1, description="Peak learning rate; empty: the default of the training kind."),
        "from_scratch": Param(False, type="boolean", description="Train a new model on all data instead of fine-tuning production."),
        "tolerance": Param(SETTINGS.promotion_tolerance, type="number", minimum=0, maximum=100, description="Evaluation-set accuracy points the candidate may lose and still be promoted."),
    },
)
def retrain():
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

    @mlflow_task(execution_timeout=timedelta(hours=2))
    def train(batch: dict, dataset_version: str, run_id=None, params=None) -> dict:
        from doodle_lib import retraining
        return retraining.train_candidate(get_settings(), run_id, batch["batch"], dataset_version, params)

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

    counted = FeedbackSensor(task_id="wait_for_feedback", threshold="{{ params.threshold }}", wait_minutes="{{ params.wait_minutes }}", retries=0)
    batch = snapshot(counted.output)
    dataset_version = version(ingest(batch))
    trained = train(batch, dataset_version)
    figures = evaluate(batch, trained)
    promoted = promote(register(trained, dataset_version, figures), figures, trained)
    cleanup(batch, dataset_version, promoted)


retrain()
