"""Airflow for DAG tests: a temporary AIRFLOW_HOME with a migrated SQLite DB, our dags and plugins folders.

The environment is set when this file is imported (collection time), before anything imports Airflow,
because Airflow reads its configuration once per process.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from doodle_lib.settings import PROJECT_ROOT, Settings
from tests.dags import world

AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="doodle-airflow-"))
AIRFLOW_ENV = {
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
    "DOODLE_TORCH_THREADS": "2",
    "DOODLE_RETRY_DELAY_SECONDS": "1",
    "DOODLE_FEEDBACK_POLL_SECONDS": "0.2",
}
os.environ.update(AIRFLOW_ENV)
if str(PROJECT_ROOT / "plugins") not in sys.path:
    sys.path.append(str(PROJECT_ROOT / "plugins"))


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """`airflow db migrate` once per session (in a subprocess, like a deployment would)."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "db", "migrate"], capture_output=True, text=True, env=os.environ
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return AIRFLOW_HOME


@pytest.fixture(scope="session")
def base_world(tmp_path_factory) -> tuple[Settings, str, Path]:
    """Base data + evaluation set versioned in DVC, and the cached base model: (settings, dataset hash, checkpoint)."""
    root = tmp_path_factory.mktemp("base-world")
    settings = Settings(data_dir=root / "data", storage_dir=root / "storage", eval_per_category=world.EVAL_PER_CATEGORY)
    version = world.prepare_base(settings)
    return settings, version, world.base_checkpoint(settings)


@pytest.fixture
def retrain_world(settings, base_world) -> Settings:
    """This test's own copy of the base world, with the base model registered and in production."""
    from doodle_lib import tracking

    source, dataset_version, checkpoint = base_world
    world.copy_world(source, settings)
    tracking.set_production(settings, world.register_base(settings, checkpoint, dataset_version))
    return settings


@pytest.fixture(scope="session")
def dagbag(airflow_db):
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(PROJECT_ROOT / "dags"))
    assert bag.import_errors == {}
    return bag


DEFAULT_PARAMS: dict[str, dict] = {}


def run_dag(dag, **conf):
    """dag.test() with a run conf; returns (dag run, {task_id: state}), mapped instances as `task_id[map_index]`."""
    # Every run states each param: dag.test() leaves a run's conf in the params its tasks hold, where a later run of
    # the same DAG object would find it. The defaults are read before the DAG's first run in this session.
    defaults = DEFAULT_PARAMS.setdefault(dag.dag_id, copy.deepcopy(dag.params.dump()))
    run = dag.test(run_conf={**defaults, **conf})
    states = {
        ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]": getattr(ti.state, "value", ti.state)
        for ti in run.get_task_instances()
    }
    return run, states
