"""
### Manage proposed categories

Operators list, approve, rename, merge or reject the categories users proposed in the web app, from this
form (the same operations as `doodle proposals ...`). A proposal is trained by the next `retrain` run once it
has `DOODLE_PROPOSAL_MIN_DRAWINGS` drawings (25), and, with `DOODLE_PROPOSALS_REQUIRE_APPROVAL`, only after
it was approved. Rejected drawings are moved to `data/rejected/proposals/<name>/` with the reason, never
deleted. The task's return value (XCom) and log show the result: for `list`, every proposal with its count,
status and whether it is ready. A run whose conf holds a key the form lacks (a typo such as `nme`) fails and
changes nothing.
"""
from __future__ import annotations

from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowFailException

from doodle_lib.settings import get_settings

ACTIONS = ["list", "approve", "rename", "merge", "reject"]  # doodle_lib.proposals.ACTIONS, without importing it here


@dag(
    schedule=None,
    catchup=False,
    max_active_runs=1,
    tags=["doodle", "proposals"],
    doc_md=__doc__,
    default_args={"retries": 0},  # an operator's action: a refused one would be refused again
    params={
        "action": Param("list", type="string", enum=ACTIONS, description="What to do."),
        "name": Param("", type="string", maxLength=100, description="The proposal (any spelling users typed; not for list)."),
        "to": Param("", type="string", maxLength=100, description="rename: the new name; merge: the proposal or known category to merge into."),
        "reason": Param("rejected by an operator", type="string", minLength=1, maxLength=1000, description="reject: kept beside the drawings."),
    },
)
def manage_proposals():
    @task
    def apply(params=None, dag_run=None, dag=None) -> dict:
        from doodle_lib import dataset, proposals, retraining

        try:  # a mistyped key (`nme`) would otherwise act on the form's default, the empty name
            retraining.check_conf_keys(dag_run.conf, dag.params)
        except ValueError as problem:
            raise AirflowFailException(f"the run's parameters: {problem}") from None
        settings = get_settings()
        # As the web app and the CLI offer them: the base data's categories while no model is in production.
        known = retraining.production_categories(settings) or dataset.categories_in(settings.sample_dir)
        return proposals.apply(settings, params["action"], params["name"], params["to"], params["reason"], known)

    apply()


manage_proposals()
