"""
### Retrain on feedback

`check_params` -> `wait_for_feedback` -> `snapshot` -> `ingest` -> `version` -> `plan` -> `train` x N -> `evaluate` x N
-> `choose` -> `register` -> `promote` -> `cleanup`

`check_params` fails a run whose form asks for what `plan` would refuse (more than 8 candidates) or holds a key the
form lacks (a typo), before the run waits and before any drawing moves.

Corrections from the web app collect in `data/feedback/<category>/`. The deferrable **FeedbackSensor**
waits in the triggerer (no worker slot) until at least `threshold` complete drawings are there and hands
their keys on; `snapshot` moves exactly those into `data/batches/<run>/`, so later drawings wait for the
next run. The batch is merged into the training data and versioned with DVC (pushed to `storage/dvc-remote`).

`plan` turns the form's `kinds` x `learning_rates` (x `widths` from scratch) into candidates, each trained
and evaluated as its own mapped task instance, in parallel, as one MLflow run under a parent run for this
DAG run. By default there is one: the production model fine-tuned on the batch plus a replay of old data.
`choose` takes the best on the fixed evaluation set and records the ranking on the parent run. The chosen
one is registered; the gate promotes it only when it is not worse on the evaluation set (within `tolerance`
points) and better on the new feedback, and records why on the model version. The batch folder is removed
only after the dataset version holding it is stored.

Runs back to back (`@continuous`, one at a time); a run that finds too little feedback within
`wait_minutes` ends skipped, and so does one left with no new drawing: the weekly run took the counted
ones first, or ingest rejected every one. Trigger it by hand with the form. The train, choose and register
tasks link to their MLflow runs and model version.
"""
from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag
from feedback_sensor import FeedbackSensor
from retraining_tasks import candidate_params, retraining_stages

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
        "epochs": Param(None, type=["null", "integer"], minimum=1, maximum=100, description=f"Training epochs; empty: {SETTINGS.fine_tune_epochs} to fine-tune ({SETTINGS.new_category_epochs} when adding a category), {SETTINGS.retrain_epochs} from scratch."),
        **candidate_params(SETTINGS, kinds=True),
    },
)
def retrain():
    counted = FeedbackSensor(task_id="wait_for_feedback", threshold="{{ params.threshold }}", wait_minutes="{{ params.wait_minutes }}", retries=0)
    # With no new drawing to fine-tune on (the weekly DAG took the counted ones, or all were rejected) the run skips.
    retraining_stages(counted.output, needs_drawings=True)


retrain()
