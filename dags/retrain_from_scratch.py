"""
### Weekly retrain from scratch (Sundays 03:00 UTC)

`check_params` -> `take_waiting` -> `snapshot` -> `ingest` -> `version` -> `plan` -> `train` x N (from scratch)
-> `evaluate` x N -> `choose` -> `register` -> `promote` -> `cleanup`

Once a week a new model is trained from scratch on all data: the base set, every batch of feedback
ingested so far, and whatever feedback waits right now (taken the same way as the sensor-driven
`retrain` DAG does, so no drawing is counted twice). Fine-tuning drifts a little with every batch; a
fresh model on everything resets that. `learning_rates` x `widths` in the form make a grid of candidates
trained in parallel; the best on the evaluation set goes on. The same gate decides: promoted only when not
worse on the fixed evaluation set (within `tolerance` points) and better on the new feedback, or, with no
new feedback, better on the evaluation set. Every stage is the same task as in `retrain`.
"""
from __future__ import annotations

from datetime import timedelta

from airflow.sdk import CronTriggerTimetable, Param, dag, task
from retraining_tasks import candidate_params, retraining_stages

from doodle_lib.settings import get_settings

SETTINGS = get_settings()


@dag(
    # Sundays 03:00 UTC; no start date, so a new deployment waits for the next Sunday instead of retraining at once.
    # run_immediately=timedelta(0): with False, Airflow 3.3 still runs the last slot when deployed within 16.8 hours
    # (a tenth of the week) after it.
    schedule=CronTriggerTimetable("0 3 * * 0", timezone="UTC", run_immediately=timedelta(0)),
    catchup=False,
    max_active_runs=1,
    tags=["doodle", "retraining", "scheduled"],
    doc_md=__doc__,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=SETTINGS.retry_delay_seconds)},
    params={
        "epochs": Param(SETTINGS.retrain_epochs, type=["null", "integer"], minimum=1, maximum=100,
                        description=f"Training epochs; empty: {SETTINGS.retrain_epochs}."),
        **candidate_params(SETTINGS, kinds=False),
    },
)
def retrain_from_scratch():
    @task
    def take_waiting() -> list[str]:
        from doodle_lib import retraining
        return retraining.waiting(get_settings())

    retraining_stages(take_waiting(), kinds=["scratch"], train_timeout=timedelta(hours=4))


retrain_from_scratch()
