"""Scale-out on the real engine: Airflow with the CeleryExecutor on PostgreSQL and Redis, two Celery workers, MLflow
on PostgreSQL; the retraining DAG, triggered through the REST API with feedback waiting, runs on the workers (its two
candidates train at once, one on each), and survives one worker being killed in the middle of training (the task
is retried on the other), losing nothing.

Configuration is the embedded stack's (doodle_lib.stack.environment and airflow_environment) with the keys
docker-compose.yaml sets for Celery and PostgreSQL; the entry points are the ones compose runs.
"""
from __future__ import annotations

import json
import secrets
from datetime import datetime, timedelta, timezone
import urllib.parse
import urllib.request
from contextlib import ExitStack

import pytest

from doodle_lib import feedback, stack, tracking
from doodle_lib.settings import PROJECT_ROOT, Settings
from tests.dags import world
from tests.services import free_port, mlflow_server
from tests.stack.services import MLFLOW_POSTGRES_DRIVER, airflow_cluster, celery_environment, postgres_cluster, redis_server, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

THRESHOLD = 20
COUNTED = THRESHOLD + 4  # the sensor hands on every complete drawing once at least THRESHOLD wait
LATE = 5  # drawings that arrive while the run trains: they must wait for the next run
EPOCHS = 40  # long enough to kill the train task in the middle, short enough to run it twice
LEARNING_RATES = [3e-4, 1e-3]  # two fine-tuning candidates, trained as two mapped task instances
WORKERS = ("doodle-worker-1", "doodle-worker-2")
HEARTBEAT_TIMEOUT = 30  # seconds without a heartbeat before the scheduler fails a task (default 300)
RUN_TIMEOUT = 420


class AirflowApi:
    """Airflow's REST API v2 with a JWT from the simple auth manager."""

    def __init__(self, url: str, password: str):
        self.url = url
        self.token = self.call("POST", "/auth/token", {"username": "admin", "password": password})["access_token"]

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(
            f"{self.url}{path}", method=method, data=None if body is None else json.dumps(body).encode()
        )
        request.add_header("Content-Type", "application/json")
        if getattr(self, "token", None):
            request.add_header("Authorization", f"Bearer {self.token}")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")

    def run_path(self, dag_id: str, run_id: str) -> str:
        return f"/api/v2/dags/{dag_id}/dagRuns/{urllib.parse.quote(run_id, safe='')}"

    def trigger(self, dag_id: str, conf: dict, run_after: datetime | None = None) -> dict:
        body = {"logical_date": None, "conf": conf}
        if run_after is not None:
            body["run_after"] = run_after.isoformat()
        return self.call("POST", f"/api/v2/dags/{dag_id}/dagRuns", body)

    def set_paused(self, dag_id: str, paused: bool) -> dict:
        return self.call("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": paused})

    def runs(self, dag_id: str) -> list[dict]:
        return self.call("GET", f"/api/v2/dags/{dag_id}/dagRuns?limit=100")["dag_runs"]

    def run(self, dag_id: str, run_id: str) -> dict:
        return self.call("GET", self.run_path(dag_id, run_id))

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict]:
        """The run's task instances by task id; a mapped task's as `task_id[map_index]`."""
        found = self.call("GET", f"{self.run_path(dag_id, run_id)}/taskInstances")["task_instances"]
        return {ti["task_id"] if ti["map_index"] < 0 else f"{ti['task_id']}[{ti['map_index']}]": ti for ti in found}

    def tries(self, dag_id: str, run_id: str, task_id: str, map_index: int = -1) -> list[dict]:
        mapped = "" if map_index < 0 else f"/{map_index}"
        return self.call("GET", f"{self.run_path(dag_id, run_id)}/taskInstances/{task_id}{mapped}/tries")["task_instances"]


def training_started(settings: Settings, run_id: str) -> bool:
    """Whether a try of the run's train task has logged its first epoch to MLflow."""
    client = tracking.client(settings)
    experiment = client.get_experiment_by_name(settings.experiment)
    if experiment is None:
        return False
    runs = client.search_runs([experiment.experiment_id], f"tags.airflow_run_id = '{run_id}'")
    return any(run.data.metrics.get("train_loss") is not None for run in runs)


def test_retraining_runs_on_celery_workers_and_survives_a_killed_worker(tmp_path):
    """Two candidates train at once, one on each worker; the worker of the first is killed mid-training."""
    logs = tmp_path / "logs"
    with ExitStack() as services:
        # PostgreSQL for Airflow's metadata and Celery's results, and for MLflow; Redis as the broker.
        postgres = services.enter_context(postgres_cluster(logs))
        airflow_password, mlflow_password = secrets.token_urlsafe(12), secrets.token_urlsafe(12)
        postgres.create_database("airflow", "airflow", airflow_password)
        postgres.create_database("mlflow", "mlflow", mlflow_password)
        broker_url = services.enter_context(redis_server(logs))
        mlflow_port = free_port()
        mlflow_url = services.enter_context(
            mlflow_server(tmp_path / "mlflow", port=mlflow_port, backend_uri=postgres.url("mlflow", mlflow_password, "mlflow", MLFLOW_POSTGRES_DRIVER))
        )

        # The data dir as the stack has it: base data versioned with DVC, a production model in the registry.
        settings = Settings(
            data_dir=tmp_path / "data", storage_dir=tmp_path / "storage", MLFLOW_TRACKING_URI=mlflow_url,
            mlflow_port=mlflow_port, airflow_port=free_port(), eval_per_category=world.EVAL_PER_CATEGORY,
            # Scheduled (@continuous) runs wait for more than the test ever writes; the triggered run says 20.
            feedback_threshold=1000, training_threads=1,
        )
        dataset_version = world.prepare_base(settings)
        base_version = world.register_base(settings, world.base_checkpoint(settings), dataset_version)
        tracking.set_production(settings, base_version)

        env = {
            **stack.environment(settings),
            **stack.airflow_environment(settings, executor="CeleryExecutor"),
            **celery_environment(
                sql_alchemy_conn=postgres.url("airflow", airflow_password, "airflow", "postgresql+psycopg2"),
                result_backend=postgres.url("airflow", airflow_password, "airflow", "db+postgresql"),
                broker_url=broker_url,
            ),
            # Test only: the test starts the run (new DAGs stay paused until it unpauses retrain) ...
            "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
            # ... and a dead worker's task is failed, then retried, within seconds instead of minutes.
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "2",
            "DOODLE_RETRY_DELAY_SECONDS": "2",
            "PYTHONPATH": str(PROJECT_ROOT),  # the workers' hostname_callable lives in tests/stack/services.py
        }
        api_url = f"http://{settings.host}:{settings.airflow_port}"
        cluster = services.enter_context(airflow_cluster(env, logs, api_url))
        cluster.run("db", "migrate")
        cluster.start_components()
        for name in WORKERS:
            cluster.start_worker(name)
        cluster.wait_for_workers()

        api = AirflowApi(api_url, stack.airflow_password(settings))
        wait_until(lambda: api.call("GET", "/api/v2/dags/retrain")["is_paused"], 120, "the dag-processor to register retrain")

        counted = world.save_feedback(settings, COUNTED)  # feedback waits before the run is triggered
        # Unpausing also starts the @continuous schedule's run, and only one run is active at a time: queued runs
        # start in run_after order, so the triggered run is dated before any scheduled one to go first.
        conf = {"threshold": THRESHOLD, "wait_minutes": 5, "epochs": EPOCHS, "learning_rates": LEARNING_RATES}
        run_id = api.trigger("retrain", conf, run_after=datetime.now(timezone.utc) - timedelta(hours=1))["dag_run_id"]
        api.set_paused("retrain", False)

        # Both candidates train at once, one a worker (each runs one task at a time). Kill the first candidate's
        # worker once training is under way (an epoch is logged to MLflow).
        wait_until(lambda: training_started(settings, run_id), 240, "the first training epoch logged", log=logs / "scheduler.log")
        started = wait_until(lambda: (tis := api.task_instances("retrain", run_id)) and all(
            tis[f"train[{i}]"]["state"] == "running" for i in range(len(LEARNING_RATES))) and tis, 60, "both candidates training")
        assert {started[f"train[{i}]"]["hostname"] for i in range(len(LEARNING_RATES))} == set(WORKERS), started
        victim = started["train[0]"]["hostname"]
        survivor = next(name for name in WORKERS if name != victim)
        cluster.kill_worker(victim)
        late = world.save_feedback(settings, LATE, start=100)

        finished = wait_until(
            lambda: (run := api.run("retrain", run_id))["state"] in ("success", "failed") and run, RUN_TIMEOUT,
            "the triggered run to finish", log=logs / "scheduler.log",
        )
        # The schedule goes on with one worker: the next @continuous run waits for feedback in the triggerer.
        waiting = wait_until(lambda: next((
            ti for other in api.runs("retrain") if other["dag_run_id"] != run_id
            for ti in [api.task_instances("retrain", other["dag_run_id"]).get("wait_for_feedback")]
            if ti and ti["state"] == "deferred"), None), 120, "the next scheduled run's sensor deferred")
        api.set_paused("retrain", True)
        assert waiting["hostname"] == survivor
        instances = api.task_instances("retrain", run_id)
        train_tries = api.tries("retrain", run_id, "train", map_index=0)

        assert finished["state"] == "success", {task: ti["state"] for task, ti in instances.items()}
        # Every task ran on a Celery worker, from Celery's default queue; after the kill, only on the survivor.
        assert set(instances) >= {"wait_for_feedback", "snapshot", "ingest", "version", "plan", "train[0]", "train[1]",
                                  "evaluate[0]", "evaluate[1]", "choose", "register", "promote", "cleanup"}
        for task_id, ti in instances.items():
            assert ti["state"] == "success", (task_id, ti["state"])
            assert ti["hostname"] in WORKERS and ti["queue"] == "default", (task_id, ti["hostname"], ti["queue"])
        for task_id in ("train[0]", "evaluate[0]", "evaluate[1]", "choose", "register", "promote", "cleanup"):
            assert instances[task_id]["hostname"] == survivor, (task_id, instances[task_id]["hostname"])
        # The killed try was failed by the scheduler (no heartbeat) and retried, on the other worker.
        by_try = {t["try_number"]: t for t in train_tries}
        assert instances["train[0]"]["try_number"] >= 2 and by_try[1]["hostname"] == victim, train_tries
        assert by_try[instances["train[0]"]["try_number"]]["hostname"] == survivor

        # The new version is in the registry that MLflow keeps in PostgreSQL, with its lineage.
        client = tracking.client(settings)
        [registered] = client.search_model_versions(f"name = '{settings.model_name}' and tags.airflow_run_id = '{run_id}'")
        assert registered.version != base_version and registered.tags["dataset_version"]
        assert registered.tags["feedback_count"] == str(COUNTED)
        experiment = client.get_experiment_by_name(settings.experiment)
        statuses = sorted(r.info.status for r in client.search_runs([experiment.experiment_id], f"tags.airflow_run_id = '{run_id}'"))
        # The parent run and both candidates' runs finished; the killed try's run was closed by the retry.
        assert statuses == ["FINISHED", "FINISHED", "FINISHED", "KILLED"]
        import psycopg2

        with psycopg2.connect(postgres.url("mlflow", mlflow_password, "mlflow")) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT version FROM model_versions WHERE name = %s", [settings.model_name])
            assert str(registered.version) in {str(row[0]) for row in cursor.fetchall()}
        # Celery kept its task results in Airflow's PostgreSQL database (the result backend compose configures).
        with psycopg2.connect(postgres.url("airflow", airflow_password, "airflow")) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'")
            assert cursor.fetchone()[0] >= len(instances)

        # Nothing lost, nothing counted twice: each drawing is in exactly one dataset batch, or still waits.
        in_dataset = world.dataset_keys(settings)
        assert sorted(in_dataset) == sorted(counted) and len(set(in_dataset)) == len(in_dataset)
        assert sorted(ref.key for ref in feedback.complete(settings.feedback_dir)) == sorted(late)
        assert not (settings.batches_dir / world.batch_name(run_id)).exists()
