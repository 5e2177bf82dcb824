"""The manage_proposals DAG's form does what `doodle proposals` does, through a real dag.test() run."""
from __future__ import annotations

from doodle_lib import proposals
from doodle_lib.drawing import strokes_to_bitmap
from tests.conftest import fixture_drawings
from tests.dags.conftest import run_dag


def propose(settings, typed: str, count: int) -> None:
    for _, _, strokes in fixture_drawings()[:count]:
        proposals.save(settings, proposals.normalise(typed), typed, strokes_to_bitmap(strokes, raw=False), {"strokes": strokes})


def result(run) -> dict:
    [ti] = run.get_task_instances()
    return ti.xcom_pull(task_ids="apply")


def test_approve_then_reject_from_the_form(dagbag, settings):
    propose(settings, "Hot-air balloon", 3)
    dag = dagbag.get_dag("manage_proposals")

    run, states = run_dag(dag, action="approve", name=" Hot_Air  balloon")
    assert states == {"apply": "success"}
    assert proposals.get(settings, "hot air balloon").status == "approved"

    run, _ = run_dag(dag, action="list")
    [listed] = result(run)["proposals"]
    assert (listed["name"], listed["display_name"], listed["count"], listed["status"]) == ("hot air balloon", "Hot-air balloon", 3, "approved")

    run, states = run_dag(dag, action="reject", name="Hot air balloon", reason="not in our game")
    assert states == {"apply": "success"}
    assert proposals.names(settings) == []
    kept = settings.rejected_dir / "proposals" / "hot air balloon"
    assert len(list(kept.glob("*.png"))) == 3 and "not in our game" in next(kept.glob("rejected-*.json")).read_text()


def test_a_refused_operation_fails_the_task_and_changes_nothing(dagbag, settings):
    propose(settings, "kite", 2)
    run, states = run_dag(dagbag.get_dag("manage_proposals"), action="rename", name="kite", to="../etc")
    assert states == {"apply": "failed"}
    assert [(p.name, p.count) for p in proposals.list_all(settings)] == [("kite", 2)]


def test_merge_into_a_base_category_while_no_model_is_in_production(dagbag, settings):
    """The categories the web app and the CLI offer before a first model is promoted: the base data's."""
    propose(settings, "kitty", 2)
    run, states = run_dag(dagbag.get_dag("manage_proposals"), action="merge", name="kitty", to="cat")
    assert states == {"apply": "success"}
    assert proposals.names(settings) == [] and len(list((settings.feedback_dir / "cat").glob("*.png"))) == 2


def test_a_key_the_form_lacks_fails_the_run_and_changes_nothing(dagbag, settings):
    """A typo would otherwise run the action with the form's default for the key it meant: here, the reason."""
    propose(settings, "kite", 2)
    run, states = run_dag(dagbag.get_dag("manage_proposals"), action="reject", name="kite", reasn="spam")
    assert states == {"apply": "failed"}
    assert [(p.name, p.count, p.status) for p in proposals.list_all(settings)] == [("kite", 2, "pending")]
