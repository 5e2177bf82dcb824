"""The retraining stages as Airflow tasks, shared by the DAGs: each task calls one doodle_lib.retraining function."""
from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Param, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from mlflow_link import mlflow_task

from doodle_lib.settings import Settings, get_settings


def candidate_params(settings: Settings, kinds: bool) -> dict[str, Param]:
    """The Params form's fields that shape the candidates (`kinds` adds the fine-tune / scratch choice)."""
    params = {
        # "null" too: the form's JSON editor sends null for a cleared field, which the descriptions call empty.
        "learning_rates": Param([], type=["null", "array"], items={"type": "number", "exclusiveMinimum": 0, "maximum": 0.1},
                                uniqueItems=True,
                                description="Peak learning rates to try, one candidate each; empty: the default of the kind."),
        "widths": Param([], type=["null", "array"], items={"type": "integer", "minimum": 4, "maximum": 64}, uniqueItems=True,
                        description="Widths of from-scratch candidates (fine-tuning keeps production's); empty: 16."),
        "tolerance": Param(settings.promotion_tolerance, type="number", minimum=0, maximum=100,
                           description="Evaluation-set accuracy points (0.5: half a percentage point) the chosen candidate may lose and still be promoted."),
        "new_category_bar": Param(settings.new_category_bar, type="number", minimum=0, maximum=1,
                                  description="Accuracy, as a fraction (0.6: 60%), each proposed category must reach on its held-back drawings to be promoted."),
    }
    if kinds:
        # `examples` makes the form a multi-select (with only `items.enum`, it is a free text box, one kind a line).
        choices = ["fine-tune", "scratch"]
        params["kinds"] = Param(["fine-tune"], type="array", items={"type": "string", "enum": choices}, examples=choices,
                                minItems=1, uniqueItems=True,
                                description="Candidate kinds: fine-tune production on the batch plus replay, and/or train from scratch on all data.")
    return params


def retraining_stages(
    keys, kinds: list[str] | None = None, train_timeout: timedelta = timedelta(hours=2), needs_drawings: bool = False
) -> None:
    """check_params before the task whose output is the drawing keys; after it, snapshot -> ingest -> version -> plan
    -> train and evaluate each candidate (mapped) -> choose -> register -> promote -> cleanup. `kinds` fixes the
    candidates' kinds. With `needs_drawings`, a run left with no new drawing to train on (taken by others, or all
    rejected) ends skipped."""

    @task
    def check_params(params=None, dag_run=None, dag=None) -> None:
        # First, so a bad conf fails before the run waits and before any drawing moves: refused later, by `plan` or in
        # training, it would leave the batch in the dataset, never judged by a gate.
        from doodle_lib import retraining
        try:
            retraining.check_params(params, dag_run.conf, dag.params, kinds)
        except ValueError as problem:
            raise AirflowFailException(f"the run's parameters: {problem}") from None

    @task
    def snapshot(keys: list[str], run_id=None) -> dict:
        from doodle_lib import retraining
        try:
            return retraining.snapshot(get_settings(), run_id, keys, allow_empty=not needs_drawings)
        except retraining.NothingToTrain as nothing:
            raise AirflowSkipException(str(nothing)) from None
        except retraining.RunFinished as finished:
            raise AirflowFailException(str(finished)) from None

    @task
    def ingest(batch: dict) -> dict:
        from doodle_lib import retraining
        try:
            return retraining.ingest(get_settings(), batch["batch"], allow_empty=not needs_drawings)
        except retraining.NothingToTrain as nothing:
            raise AirflowSkipException(str(nothing)) from None

    @task
    def version(ingested: dict) -> str:
        from doodle_lib import retraining
        return retraining.version_dataset(get_settings())["dataset_version"]

    @task
    def plan(batch: dict, dataset_version: str, run_id=None, params=None) -> list[dict]:
        from doodle_lib import retraining
        candidates = retraining.plan_candidates(params, kinds)
        experiment = retraining.start_experiment(get_settings(), run_id, batch["batch"], dataset_version, candidates)
        return [{**candidate, "experiment": experiment} for candidate in candidates]

    @mlflow_task(execution_timeout=train_timeout)
    def train(candidate: dict, batch: dict, dataset_version: str, run_id=None) -> dict:
        from doodle_lib import retraining
        experiment = candidate.pop("experiment")
        trained = retraining.train_candidate(get_settings(), run_id, batch["batch"], dataset_version, candidate, experiment["parent_run_id"])
        return {**trained, "experiment": experiment}

    @task
    def evaluate(trained: dict, batch: dict) -> dict:
        from doodle_lib import retraining
        return {"trained": trained, "figures": retraining.evaluate_candidate(get_settings(), batch["batch"], trained)}

    @mlflow_task
    def choose(evaluated: list[dict]) -> dict:
        from doodle_lib import retraining
        evaluated = list(evaluated)
        return retraining.choose_candidate(get_settings(), evaluated[0]["trained"]["experiment"], evaluated)

    @mlflow_task
    def register(chosen: dict, run_id=None) -> dict:
        from doodle_lib import retraining
        return retraining.register_candidate(get_settings(), run_id, chosen["trained"], chosen["figures"], chosen["choice"])

    @task
    def promote(registered: dict, chosen: dict, batch: dict, params=None) -> dict:
        from doodle_lib import retraining
        return retraining.promote_candidate(
            get_settings(), registered, chosen["figures"], float(params["tolerance"]), chosen["trained"],
            float(params["new_category_bar"]), batch["batch"],
        )

    @task
    def cleanup(batch: dict, dataset_version: str, promoted: dict) -> dict:
        from doodle_lib import retraining
        return retraining.cleanup(get_settings(), batch["batch"], dataset_version)

    check_params() >> keys
    batch = snapshot(keys)
    dataset_version = version(ingest(batch))
    candidates = plan(batch, dataset_version)
    trained = train.partial(batch=batch, dataset_version=dataset_version).expand(candidate=candidates)
    chosen = choose(evaluate.partial(batch=batch).expand(trained=trained))
    promoted = promote(register(chosen), chosen, batch)
    cleanup(batch, dataset_version, promoted)
