"""Real services of the distributed stack for tests, on loopback and temporary folders (Debian's packages):
a PostgreSQL cluster, a redis-server without persistence, Airflow components and Celery workers, Prometheus.

Every starter is a context manager that stops what it started, also when the test fails; processes run in
their own session, so a stop reaches their children too.
"""
from __future__ import annotations

import glob
import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from tests.services import VENV_BIN, free_port, wait_for_http

WORKER_NAME_VARIABLE = "DOODLE_TEST_WORKER_NAME"
# docker-compose.yaml's MLFLOW_BACKEND_STORE_URI driver: with psycopg 3 (SQLAlchemy 2.1's default for postgresql://)
# MLflow 3.17 cannot move a stage ("operator does not exist: integer <> character varying", mlflow/mlflow#24592).
MLFLOW_POSTGRES_DRIVER = "postgresql+psycopg2"


def worker_hostname() -> str:
    """Airflow's `[core] hostname_callable` for test workers: the name the test gave the worker process.

    Two Celery workers on one machine report the same FQDN, so each gets its own name to tell them apart in the
    task instances' `hostname` (what a real deployment gets from its containers' host names).
    """
    return os.environ[WORKER_NAME_VARIABLE]


# --- processes --------------------------------------------------------------------------------------------------


def pg_binary(name: str) -> str:
    """A PostgreSQL server program: on PATH, or in Debian's versioned folder (not on PATH by default)."""
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    if found is None:
        import pytest

        pytest.fail(f"{name} is missing: apt-get install postgresql (Debian 12) provides it; .ci/run installs it")
    return found


def system_binary(name: str, package: str) -> str:
    """A program from a Debian package; a clear failure (never a skip) when it is missing."""
    found = shutil.which(name)
    if found is None:
        import pytest

        pytest.fail(f"{name} is missing: apt-get install {package} (Debian 12) provides it; .ci/run installs it")
    return found


def start(command: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen:
    """Start a process in its own session with its output in `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as output:
        return subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env=env, cwd=cwd,
        )


def kill_tree(process: subprocess.Popen, first: signal.Signals = signal.SIGTERM, timeout: float = 30) -> None:
    """Stop a process started by `start` and everything it started: its session first, then stragglers by pid."""
    import psutil

    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    if process.poll() is None:
        try:
            os.killpg(process.pid, first)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    process.wait()
    _, alive = psutil.wait_procs(tree, timeout=5)
    for leftover in alive:  # a child that left the session
        try:
            leftover.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=10)


def wait_until(check: Callable[[], object], timeout: float, what: str, every: float = 0.5, log: Path | None = None):
    """Poll `check` until it returns something truthy (returned), or fail saying what did not happen."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception as error:  # a service still starting up
            value, last_error = None, error
        if value:
            return value
        time.sleep(every)
    tail = f"\n--- {log} ---\n{log.read_text()[-3000:]}" if log and log.exists() else ""
    raise TimeoutError(f"not within {timeout:.0f}s: {what} (last error: {last_error!r}){tail}")


# --- PostgreSQL ---------------------------------------------------------------------------------------------------


@dataclass
class Postgres:
    """A running cluster: superuser `postgres` with a password, TCP on 127.0.0.1:port only."""

    port: int
    password: str

    def url(self, user: str, password: str, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://{user}:{password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str, owner: str, password: str) -> None:
        """A role with a password and a database it owns (what docker/postgres/create-mlflow-db.sh does)."""
        import psycopg2
        from psycopg2 import sql

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", password=self.password, dbname="postgres")
        connection.autocommit = True
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(owner)), [password])
                cursor.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(owner)))
        finally:
            connection.close()


def _server_user() -> pwd.struct_passwd | None:
    """initdb and postgres refuse to run as root: as root, run them as Debian's `postgres` user (or nobody)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a postgres nor a nobody user exists to run PostgreSQL")


@contextmanager
def postgres_cluster(logs: Path) -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster (initdb in a temporary folder, a free port, durability off for speed)."""
    user = _server_user()
    # Outside pytest's tmp_path: that folder is private to root, and the server's user must own its data dir.
    root = Path(tempfile.mkdtemp(prefix="doodle-postgres-"))
    data, sockets = root / "data", root / "sockets"
    sockets.mkdir()
    password = secrets.token_urlsafe(16)
    (root / "pwfile").write_text(password + "\n")
    as_user: list[str] = []
    if user is not None:
        for path in (root, sockets, root / "pwfile"):
            os.chown(path, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", user.pw_name, "--"]
    port = free_port()
    log = logs / "postgres.log"
    process = None
    try:
        done = subprocess.run(
            [*as_user, pg_binary("initdb"), "-D", str(data), "-U", "postgres", f"--pwfile={root / 'pwfile'}",
             "--auth=scram-sha-256", "--encoding=UTF8", "--no-instructions"],
            capture_output=True, text=True, timeout=180,
        )
        assert done.returncode == 0, f"initdb failed: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        settings = {
            "listen_addresses": "127.0.0.1", "port": str(port), "unix_socket_directories": str(sockets),
            "max_connections": "200", "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
        }
        options = [arg for key, value in settings.items() for arg in ("-c", f"{key}={value}")]
        # In the foreground under our control (not pg_ctl's daemon), so stopping the test stops it.
        process = start([*as_user, pg_binary("postgres"), "-D", str(data), *options], log)
        cluster = Postgres(port, password)

        def ready() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f"postgres exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            done = subprocess.run([pg_binary("pg_isready"), "-h", "127.0.0.1", "-p", str(port)], capture_output=True)
            return done.returncode == 0

        wait_until(ready, 60, "PostgreSQL accepts connections", log=log)
        yield cluster
    finally:
        if process is not None:
            kill_tree(process, first=signal.SIGINT)  # SIGINT: PostgreSQL's fast shutdown
        shutil.rmtree(root, ignore_errors=True)


# --- Redis --------------------------------------------------------------------------------------------------------


@contextmanager
def redis_server(logs: Path) -> Iterator[str]:
    """redis-server on a free loopback port with a password and no persistence; yields its redis:// URL (db 0)."""
    port, password = free_port(), secrets.token_urlsafe(16)
    folder = Path(tempfile.mkdtemp(prefix="doodle-redis-"))
    config = folder / "redis.conf"  # the password in a file, not on a command line every user can read
    config.write_text(
        f"bind 127.0.0.1\nport {port}\nrequirepass {password}\nsave \"\"\nappendonly no\ndir {folder}\n"
        "daemonize no\nprotected-mode yes\n"
    )
    process = start([system_binary("redis-server", "redis-server"), str(config)], logs / "redis.log")
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port, password=password)
        wait_until(lambda: process.poll() is None and client.ping(), 30, "redis answers PING", log=logs / "redis.log")
        client.close()
        yield f"redis://:{password}@127.0.0.1:{port}/0"
    finally:
        kill_tree(process)
        shutil.rmtree(folder, ignore_errors=True)


# --- Airflow on Celery --------------------------------------------------------------------------------------------

COMPONENTS = {
    "api-server": ["api-server"],
    "scheduler": ["scheduler", "--skip-serve-logs"],
    "dag-processor": ["dag-processor"],
    "triggerer": ["triggerer", "--skip-serve-logs"],
}


def celery_environment(sql_alchemy_conn: str, result_backend: str, broker_url: str, concurrency: int = 1) -> dict[str, str]:
    """The keys docker-compose.yaml sets for the CeleryExecutor, with this test's database and broker."""
    return {
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": sql_alchemy_conn,
        "AIRFLOW__CELERY__RESULT_BACKEND": result_backend,
        "AIRFLOW__CELERY__BROKER_URL": broker_url,
        "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(concurrency),
    }


@dataclass
class Worker:
    name: str
    process: subprocess.Popen
    log: Path


@dataclass
class AirflowCluster:
    """Airflow's components and Celery workers started with one environment; stop() ends them all."""

    env: dict[str, str]
    logs: Path
    api_url: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    workers: dict[str, Worker] = field(default_factory=dict)

    def run(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """An `airflow` command with the cluster's environment (like `airflow db migrate`); fails on error."""
        done = subprocess.run([str(VENV_BIN / "airflow"), *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"airflow {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        return done

    def start_components(self, timeout: float = 240) -> None:
        """api-server, scheduler, dag-processor and triggerer; waits until the health endpoint says all are healthy."""
        for name, args in COMPONENTS.items():
            self.processes[name] = start([str(VENV_BIN / "airflow"), *args], self.logs / f"{name}.log", self.env)
        wait_for_http(f"{self.api_url}/api/v2/monitor/health", timeout, self.processes["api-server"], self.logs / "api-server.log")

        def healthy() -> bool:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"airflow {name} exited:\n{(self.logs / f'{name}.log').read_text()[-3000:]}")
            with urllib.request.urlopen(f"{self.api_url}/api/v2/monitor/health", timeout=5) as response:
                health = json.load(response)
            return all(part.get("status") == "healthy" for part in health.values())

        wait_until(healthy, timeout, "every Airflow component healthy", every=1)

    def start_worker(self, name: str, concurrency: int = 1) -> Worker:
        """`airflow celery worker` with its own Celery node name and the name its tasks report as hostname."""
        env = {**self.env, WORKER_NAME_VARIABLE: name, "AIRFLOW__CORE__HOSTNAME_CALLABLE": f"{__name__}.worker_hostname"}
        command = [
            str(VENV_BIN / "airflow"), "celery", "worker", "--celery-hostname", f"{name}@127.0.0.1",
            "--concurrency", str(concurrency), "--skip-serve-logs",  # two log servers would fight over one port
            "--pid", str(self.logs / f"{name}.pid"),
        ]
        log = self.logs / f"{name}.log"
        worker = Worker(name, start(command, log, env), log)
        self.workers[name] = worker
        return worker

    def wait_for_workers(self, timeout: float = 180) -> None:
        """Until every started worker answers a Celery ping through the broker."""
        from celery import Celery

        app = Celery(broker=self.env["AIRFLOW__CELERY__BROKER_URL"])
        try:
            def all_answer() -> bool:
                for worker in self.workers.values():
                    if worker.process.poll() is not None:
                        raise RuntimeError(f"{worker.name} exited:\n{worker.log.read_text()[-3000:]}")
                answered = {name for reply in app.control.ping(timeout=2) for name in reply}
                return answered >= {f"{name}@127.0.0.1" for name in self.workers}

            wait_until(all_answer, timeout, f"Celery workers {sorted(self.workers)} answer a ping", every=1)
        finally:
            app.close()

    def kill_worker(self, name: str) -> None:
        """SIGKILL a worker and every process it started (the Celery pool, the task supervisor, the task): a lost host."""
        kill_tree(self.workers[name].process, first=signal.SIGKILL, timeout=10)

    def stop(self) -> None:
        """Workers first (they hold tasks), then the components; nothing is left running."""
        for worker in self.workers.values():
            kill_tree(worker.process, timeout=20)
        for process in self.processes.values():
            kill_tree(process, timeout=30)


@contextmanager
def airflow_cluster(env: dict[str, str], logs: Path, api_url: str) -> Iterator[AirflowCluster]:
    """A place to start Airflow's processes; every one of them is stopped on the way out."""
    cluster = AirflowCluster({**os.environ, **env}, logs, api_url)
    logs.mkdir(parents=True, exist_ok=True)
    try:
        yield cluster
    finally:
        cluster.stop()


# --- Prometheus ---------------------------------------------------------------------------------------------------


@contextmanager
def prometheus_server(config: dict, root: Path, port: int | None = None) -> Iterator[str]:
    """A real Prometheus with `config` (written as YAML) on a loopback port (a free one by default); yields its URL."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    path = root / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = port or free_port()
    command = [
        system_binary("prometheus", "prometheus"), f"--config.file={path}", f"--storage.tsdb.path={root / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    log = root / "prometheus.log"
    process = start(command, log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/-/ready", 90, process, log)
        yield url
    finally:
        kill_tree(process)


@contextmanager
def node_exporter(logs: Path) -> Iterator[str]:
    """Debian's prometheus-node-exporter on a free loopback port; yields its host:port."""
    port = free_port()
    log = logs / "node-exporter.log"
    process = start([system_binary("prometheus-node-exporter", "prometheus-node-exporter"),
                     f"--web.listen-address=127.0.0.1:{port}"], log)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/metrics", 60, process, log)
        yield f"127.0.0.1:{port}"
    finally:
        kill_tree(process)
