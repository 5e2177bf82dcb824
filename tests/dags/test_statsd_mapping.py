"""The statsd-exporter mapping parses and turns the names Airflow 3.3 and the pipeline send into labelled series."""
from __future__ import annotations

import re

import pytest
import yaml

from doodle_lib.settings import PROJECT_ROOT

MAPPINGS = yaml.safe_load((PROJECT_ROOT / "monitoring" / "statsd_mapping.yml").read_text())["mappings"]


def exported(metric: str) -> tuple[str, dict[str, str]] | None:
    """statsd-exporter's rule, simplified: the first mapping that matches (glob '*' is one dot-free part)."""
    for mapping in MAPPINGS:
        if mapping.get("match_type") == "regex":
            pattern = mapping["match"]
        else:
            pattern = re.escape(mapping["match"]).replace(r"\*", "([^.]+)")
        found = re.fullmatch(pattern, metric)
        if found:
            expand = lambda text: re.sub(r"\$(\d)", lambda m: found.group(int(m.group(1))), str(text))  # noqa: E731
            return expand(mapping["name"]), {k: expand(v) for k, v in (mapping.get("labels") or {}).items()}
    return None


@pytest.mark.parametrize(
    "metric, name, labels",
    [
        ("airflow.doodle.retrain.candidate_eval_accuracy", None, None),  # unmapped: airflow_doodle_retrain_...
        ("airflow.doodle.retrain.promotions", None, None),
        ("airflow.dagrun.duration.success.retrain", "airflow_dagrun_duration_success", {"dag_id": "retrain"}),
        ("airflow.ti.finish.retrain.train.success", "airflow_ti_finish", {"dag_id": "retrain", "task_id": "train", "state": "success"}),
        ("airflow.dag.retrain.train.duration", "airflow_task_duration", {"dag_id": "retrain", "task_id": "train"}),
        ("airflow.operator_successes_FeedbackSensor", "airflow_operator_successes", {"operator": "FeedbackSensor"}),
    ],
)
def test_names_become_labelled_series(metric, name, labels):
    assert exported(metric) == (None if name is None else (name, labels))
