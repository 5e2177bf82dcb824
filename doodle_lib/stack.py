"""The embedded stack: initialise what is missing, then run every service under honcho (make up)."""
from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from doodle_lib.settings import PROJECT_ROOT, Settings

VENV_BIN = Path(sys.executable).parent
PROCFILE = PROJECT_ROOT / "Procfile"


class StackError(RuntimeError):
    """The stack cannot start or stop; the message says what to do."""


@dataclass(frozen=True)
class Service:
    name: str  # the Procfile process
    host: str
    port: int
    health_path: str

    def url(self) -> str:
        """Where to reach it on this machine (a web app bound to every interface answers on loopback)."""
        return f"http://{'127.0.0.1' if self.host in ('0.0.0.0', '') else self.host}:{self.port}"


def services(settings: Settings) -> list[Service]:
    """The stack's services with their health endpoints; Prometheus only when it is installed."""
    webapp_host, _, webapp_port = settings.webapp_bind.rpartition(":")  # the web app has an address of its own
    found = [
        Service("mlflow", settings.host, settings.mlflow_port, "/health"),
        Service("airflow", settings.host, settings.airflow_port, "/api/v2/monitor/health"),
        Service("webapp", webapp_host, int(webapp_port), "/healthz"),
    ]
    if shutil.which("prometheus"):
        found.append(Service("prometheus", settings.host, settings.prometheus_port, "/-/ready"))
    return found


def airflow_home(settings: Settings) -> Path:
    return settings.storage_dir / "airflow"


def airflow_environment(settings: Settings, executor: str = "LocalExecutor") -> dict[str, str]:
    """Airflow's configuration for every process of the stack, tuned for a 2-core machine."""
    home = airflow_home(settings)
    api = f"http://{settings.host}:{settings.airflow_port}"
    return {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(PROJECT_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(PROJECT_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": executor,
        # LocalExecutor pre-forks one worker per slot: 4 slots instead of 32 saves ~0.4 GB.
        "AIRFLOW__CORE__PARALLELISM": str(settings.airflow_parallelism),
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__API__HOST": settings.host,
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__API__WORKERS": "1",
        # Tasks reach the execution API here; the default assumes localhost:8080.
        "AIRFLOW__API__BASE_URL": api,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api}/execution/",
        # A task's calls to that API: 5 s and 5 tries were too few here when the first model trained while Airflow
        # started (2 busy cores; the first run's sensor failed after a read timeout). A slow answer now waits.
        "AIRFLOW__WORKERS__EXECUTION_API_TIMEOUT": "30",
        "AIRFLOW__WORKERS__EXECUTION_API_RETRIES": "10",
        # Every process must sign and check task tokens with the same secret.
        "AIRFLOW__API_AUTH__JWT_SECRET": persistent_secret(home / "jwt_secret"),
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        # The parsing statistics table (a dozen lines every 30 s by default) hourly: the UI shows parse errors.
        "AIRFLOW__DAG_PROCESSOR__PRINT_STATS_INTERVAL": "3600",
        # Measured here: ~0.2 s between tasks instead of ~1 s, and no deferral race (DESIGN.md).
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.25",
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
    }


# The Airflow components of the stack, as `airflow` command lines (the Procfile's `airflow` process runs them all).
AIRFLOW_COMMANDS = (
    ("api-server", "--workers", "1"),
    ("scheduler", "--skip-serve-logs"),
    ("dag-processor",),
    ("triggerer", "--skip-serve-logs"),
)


def run_airflow() -> int:
    """Run each Airflow component in a child forked from this process after it imported Airflow once.

    Four separate `airflow` processes hold four copies of the same ~110 MB of imported modules; forked after the
    imports and a gc.freeze() (so the collector does not write to those objects), they share the pages they do not
    modify. Honcho prefixes every component's lines with `airflow`; Airflow's own lines name their logger.
    Returns the exit code of the first component to stop, after the others have stopped.
    """
    import gc

    import airflow.__main__
    import setproctitle
    # What the components go on to import, most of it in three or four of them (their sys.modules, measured):
    # imported here, it is shared too. The components' own jobs and servers, and what they pull in:
    import airflow.api_fastapi.app  # noqa: F401
    import airflow.dag_processing.manager  # noqa: F401
    import airflow.executors.local_executor  # noqa: F401
    import airflow.jobs.scheduler_job_runner  # noqa: F401
    import airflow.jobs.triggerer_job_runner  # noqa: F401
    import uvicorn  # noqa: F401
    # the database schema check at start, the DAGs' task classes, the plugins' dependencies
    import alembic.command  # noqa: F401
    import alembic.migration  # noqa: F401
    import airflow.providers.standard.decorators.python  # noqa: F401
    import airflow.sdk.bases.sensor  # noqa: F401
    import doodle_lib.feedback  # noqa: F401

    gc.freeze()
    stopping = False

    def note_stop(_signum, _frame):
        nonlocal stopping
        stopping = True  # honcho signals the whole process group: each component got the signal as well

    signal.signal(signal.SIGTERM, note_stop)
    signal.signal(signal.SIGINT, note_stop)
    children = {}
    for command in AIRFLOW_COMMANDS:
        pid = os.fork()
        if pid == 0:  # the component: it ends as `airflow <command>` would, its exit unwinding out of this function
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            setproctitle.setproctitle(f"airflow {command[0]}")  # what `ps` shows
            sys.argv = ["airflow", *command]
            airflow.__main__.main()
            sys.exit(0)
        children[pid] = command[0]
    pid, status = os.wait()
    first = os.waitstatus_to_exitcode(status)
    ended = children.pop(pid)
    if not stopping:  # a component ended on its own: stop the others so honcho stops the stack
        print(f"airflow {ended} ended (exit {first}): stopping the other Airflow components", file=sys.stderr)
        for other in children:
            os.kill(other, signal.SIGTERM)
    while children:
        children.pop(os.wait()[0], None)
    return first


def run_mlflow_server(args: list[str]) -> None:
    """`mlflow server`, except that the process becomes the uvicorn server it starts instead of waiting for it.

    `mlflow server` checks its options and initialises the stores, then spawns uvicorn and stays resident, with
    every module it imported (~190 MB PSS), only to forward signals. Exec'ing uvicorn keeps all of that logic and
    drops the idle parent; honcho's signals reach uvicorn directly. Should MLflow rename this private function,
    the assignment is a no-op and the server runs as it would alone, parent included.
    """
    import mlflow.server
    from mlflow.cli import cli

    def exec_server(command: list[str], extra_env: dict[str, str] | None = None, **_options) -> None:
        os.execvpe(command[0], command, {**os.environ, **(extra_env or {})})

    mlflow.server._exec_cmd = exec_server
    cli.main(["server", *args], prog_name="mlflow")


def persistent_secret(path: Path) -> str:
    """A random secret made once and kept in `path` (mode 600), so restarts keep sessions valid: 32 bytes in
    URL-safe base64, which is also the form of a Fernet key."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, draft = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # mode 600
        try:
            with os.fdopen(descriptor, "w") as handle:
                handle.write(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
                handle.flush()
                os.fsync(handle.fileno())
            os.link(draft, path)  # whole or not at all; a start racing this one keeps the secret made first
        except FileExistsError:
            pass
        finally:
            os.unlink(draft)
    return path.read_text().strip()


def webhook_environment(settings: Settings) -> dict[str, str]:
    """What MLflow's server needs to call the web app's webhook receiver (DOODLE_WEBHOOK_SECRET turns it on)."""
    # MLflow encrypts stored webhook secrets with this key; without one it makes a new key each start and can no longer
    # read a webhook stored before, even one from a start with a secret. So the key is there with or without one.
    key = {"MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": persistent_secret(settings.storage_dir / "mlflow" / "webhook-key")}
    if not settings.webhook_secret:
        return key
    return {
        **key,
        # The web app listens on plain HTTP on loopback, which MLflow refuses by default (only https, no private IPs).
        "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
        "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
        # The server caches its webhook list (a minute by default): a webhook registered at start acts at once.
        "MLFLOW_WEBHOOK_CACHE_TTL": "5",
    }


def environment(settings: Settings) -> dict[str, str]:
    """The environment every service of the stack runs with."""
    return {
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "PYTHONUNBUFFERED": "1",
        # glibc gives each thread that allocates its own malloc arena (up to 8 per core), and freed memory stays
        # in them: two arenas cut the threaded servers' resident memory (Airflow's api-server by ~50 MB).
        "MALLOC_ARENA_MAX": "2",
        "DOODLE_DATA_DIR": str(settings.data_dir),
        "DOODLE_STORAGE_DIR": str(settings.storage_dir),
        "DOODLE_HOST": settings.host,
        "DOODLE_MLFLOW_PORT": str(settings.mlflow_port),
        "DOODLE_AIRFLOW_PORT": str(settings.airflow_port),
        "DOODLE_PROMETHEUS_PORT": str(settings.prometheus_port),
        "DOODLE_WEBAPP_BIND": settings.webapp_bind,
        # One web app worker unless DOODLE_WEBAPP_WORKERS says otherwise: one local user; 40-85 MB less than two.
        "DOODLE_WEBAPP_WORKERS": str(settings.webapp_workers if "webapp_workers" in settings.model_fields_set else 1),
        "DOODLE_FEEDBACK_THRESHOLD": str(settings.feedback_threshold),
        "DOODLE_TORCH_THREADS": str(settings.training_threads),
        "MLFLOW_TRACKING_URI": f"http://{settings.host}:{settings.mlflow_port}",
        # MLflow's job runner serves GenAI features the platform does not use (~0.5 GB of consumers).
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "STACK_MLFLOW_BACKEND": f"sqlite:///{settings.storage_dir / 'mlflow' / 'mlflow.db'}",
        "STACK_MLFLOW_ARTIFACTS": str(settings.artifacts_dir),
        "STACK_PROMETHEUS_CONFIG": str(settings.storage_dir / "prometheus" / "prometheus.yml"),
        "STACK_PROMETHEUS_DATA": str(settings.storage_dir / "prometheus" / "data"),
        **airflow_environment(settings),
        **webhook_environment(settings),
    }


def check_ports(settings: Settings) -> None:
    """Fail with a clear message when a port the stack needs is taken."""
    for service in services(settings):
        if not port_free(service):
            raise StackError(
                f"port {service.port} ({service.name}) is already in use on {service.host}: "
                "stop what listens there (`make status` tells whether it is this platform) "
                "or choose another port in the environment (see the README's configuration table)"
            )


def run_step(
    description: str, command: list[str], env: dict[str, str], echo: Callable[[str], None],
    stopped: Callable[[], bool] = lambda: False,
) -> None:
    """Run one initialisation command, showing its output, and stop with a message if it fails; end it early, and
    quietly, once `stopped()` (a stop was asked: `make down` signals this process only, not the step's)."""
    echo(f"==> {description}")
    step = subprocess.Popen(command, env={**os.environ, **env}, cwd=PROJECT_ROOT)
    while (code := _exit_code(step, 0.5)) is None:
        if stopped():
            step.terminate()
            step.wait()
            break
    if stopped():  # a Ctrl-C also reaches the step, which then ends with an error of its own
        echo(f"==> stopped: {description}")
    elif code != 0:
        raise StackError(f"{description} failed (exit {code}); the output above says why")


def _exit_code(process: subprocess.Popen, timeout: float) -> int | None:
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def initialise(settings: Settings, echo: Callable[[str], None]) -> None:
    """Create what the services need and is missing, and only that: Airflow's database, the dataset."""
    env = environment(settings)
    if not (airflow_home(settings) / "airflow.db").exists():
        run_step("creating Airflow's database", [str(VENV_BIN / "airflow"), "db", "migrate"], env, echo)
    if not (settings.data_dir / "dataset.dvc").exists():
        run_step("preparing the dataset from the shipped sample", [str(VENV_BIN / "doodle"), "data", "prepare"], env, echo)
    write_prometheus_config(settings)


def ensure_model_served(
    settings: Settings, echo: Callable[[str], None], timeout: float = 120, stopped: Callable[[], bool] = lambda: False
) -> None:
    """Train, register and promote a first model if the registry has no production model yet, then wait until the
    web app serves the production model (on a restart too: the web app may have asked the registry before MLflow
    answered, and loads it at its next poll); gives up quietly once `stopped()`."""
    if not has_production_model(settings):
        command = [str(VENV_BIN / "doodle"), "train", "--promote"]
        # Into the store directly, not through the server: the first run creates the experiment, and created
        # locally its artifacts live in a plain folder (the one the server also serves), so the `doodle` command
        # reads every model without a server. Through the server they would be mlflow-artifacts:/ URIs that only a
        # server resolves.
        env = {**environment(settings), "MLFLOW_TRACKING_URI": "", "DOODLE_TORCH_THREADS": "0"}
        run_step("training the first model (about a minute)", command, env, echo, stopped)
    webapp = next(s for s in services(settings) if s.name == "webapp").url()
    deadline = time.monotonic() + timeout
    while not stopped() and not served_version(webapp):
        if time.monotonic() > deadline:
            raise StackError(f"the web app did not load the production model within {timeout:.0f}s; its log lines "
                             "are above")
        time.sleep(0.5)


def has_production_model(settings: Settings) -> bool:
    """Whether the registry has a production version, asked over MLflow's REST API: importing mlflow here would
    add seconds to every start."""
    query = urllib.parse.urlencode({"name": settings.model_name, "alias": settings.production_alias})
    url = f"http://{settings.host}:{settings.mlflow_port}/api/2.0/mlflow/registered-models/alias?{query}"
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return "model_version" in json.load(response)
    except urllib.error.HTTPError as error:
        body = error.read().decode(errors="replace")
        if error.code in (400, 404) and ("RESOURCE_DOES_NOT_EXIST" in body or "INVALID_PARAMETER_VALUE" in body):
            return False
        raise StackError(f"could not read the model registry ({error.code}): {body[-2000:]}") from None
    except OSError as error:
        raise StackError(f"could not reach the model registry at {url}: {error}") from None


def served_version(webapp: str) -> str | None:
    """The model version the web app serves, or None (none yet, or not answering)."""
    try:
        with urllib.request.urlopen(f"{webapp}/api/model", timeout=2) as response:
            return json.load(response).get("version")
    except (OSError, ValueError):
        return None


def write_prometheus_config(settings: Settings) -> None:
    """Prometheus scrapes the web app (and itself) on loopback in the embedded stack."""
    folder = settings.storage_dir / "prometheus"
    folder.mkdir(parents=True, exist_ok=True)
    rules = PROJECT_ROOT / "monitoring" / "prometheus" / "alerts.yml"
    config = {
        "global": {"scrape_interval": "5s", "evaluation_interval": "15s"},
        "rule_files": [str(rules)] if rules.exists() else [],
        "scrape_configs": [
            {"job_name": "webapp", "static_configs": [{"targets": [settings.webapp_bind]}]},
            {"job_name": "prometheus", "static_configs": [{"targets": [f"{settings.host}:{settings.prometheus_port}"]}]},
        ],
    }
    (folder / "prometheus.yml").write_text(json.dumps(config, indent=2))  # JSON is valid YAML


def pid_file(settings: Settings) -> Path:
    return settings.storage_dir / "stack.pid"


def process_identity(pid: int) -> str | None:
    """Process `pid` as no later process with the same pid can be: this boot's id and its start in clock ticks since
    boot (/proc; a wall-clock start time moves when the clock is stepped), or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    started = stat.rpartition(")")[2].split()[19]  # field 22 of proc(5); the fields after the name start at field 3
    return f"{Path('/proc/sys/kernel/random/boot_id').read_text().strip()}/{started}"


def write_pid_file(settings: Settings, honcho_pid: int) -> None:
    """Record this `doodle stack up` with its identity: after a crash and a reboot, another process may get the pid."""
    from doodle_lib import atomic  # here: the launchers that import this module do not need NumPy

    atomic.write_bytes(pid_file(settings), f"{os.getpid()} {honcho_pid} {process_identity(os.getpid())}\n".encode())


def running_pid(settings: Settings) -> int | None:
    """The pid of a running `doodle stack up`, or None (also when the pid file is left from one that died)."""
    path = pid_file(settings)
    try:
        pid, _, identity = path.read_text().split()
        pid = int(pid)
    except (FileNotFoundError, ValueError):  # none, or not one this version wrote: the port check still guards `up`
        return None
    return pid if process_identity(pid) == identity else None


def healthy(url: str) -> bool:
    """Whether `url` answers 200 within two seconds."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def airflow_password(settings: Settings) -> str | None:
    """The admin password Airflow's simple auth manager generated on first start."""
    path = airflow_home(settings) / "simple_auth_manager_passwords.json.generated"
    return json.loads(path.read_text()).get("admin") if path.exists() else None


def up(settings: Settings, echo: Callable[[str], None], ready_timeout: float = 180) -> int:
    """Initialise, start every service under honcho, add a first model if there is none, print where they are, and
    wait until stopped."""
    if pid := running_pid(settings):
        raise StackError(f"the stack already runs (pid {pid}); `make down` stops it")
    check_ports(settings)
    initialise(settings, echo)
    env_file = settings.storage_dir / "stack.env"
    env_file.unlink(missing_ok=True)  # made anew, readable by the owner only: it holds the stack's secrets
    with os.fdopen(os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as handle:
        handle.write("".join(f"{key}={value}\n" for key, value in environment(settings).items()))
    if not adopt_orphans():
        echo("==> could not adopt the services (prctl failed): should honcho be killed, they may outlive it")
    names = [service.name for service in services(settings)]  # the Procfile's processes, each with a health check
    command = [str(VENV_BIN / "honcho"), "start", "--no-colour", "-f", str(PROCFILE), "-d", str(PROJECT_ROOT),
               "-e", str(env_file), *names]
    echo("==> starting " + ", ".join(names))
    honcho = subprocess.Popen(command, cwd=PROJECT_ROOT, start_new_session=True)
    write_pid_file(settings, honcho.pid)
    stop_asked = False

    def forward(signum, _frame):
        nonlocal stop_asked
        stop_asked = True
        if honcho.poll() is None:
            os.killpg(honcho.pid, signal.SIGTERM)  # honcho stops every service, then exits

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    try:
        wait_until_ready(settings, honcho, ready_timeout)
        if honcho.poll() is None and settings.webhook_secret:
            run_step("registering the registry webhook", [str(VENV_BIN / "doodle"), "webhook"], environment(settings), echo,
                     lambda: stop_asked)
        if honcho.poll() is None:
            ensure_model_served(settings, echo, stopped=lambda: stop_asked)
        if honcho.poll() is None and not stop_asked:
            echo(banner(settings))
        # Adopted descendants that end are this process's to reap (nothing else waits for them); honcho is waited for.
        # No other subprocess of this one runs from here on, so no Popen loses its child's status to the handler.
        signal.signal(signal.SIGCHLD, lambda _signum, _frame: reap_orphans(honcho.pid))
        reap_orphans(honcho.pid)  # those that ended during the start
        code = honcho.wait()
        # Stopped as asked (Ctrl-C, `make down`): honcho's 143 for its SIGTERM would make `make up` report an error.
        return 0 if stop_asked else code
    finally:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        stop_group(honcho)
        pid_file(settings).unlink(missing_ok=True)


def wait_until_ready(settings: Settings, honcho: subprocess.Popen, timeout: float) -> None:
    """Wait for every health endpoint, or stop the stack and say which service did not come up."""
    deadline = time.monotonic() + timeout
    pending = services(settings)
    while pending and honcho.poll() is None:
        pending = [s for s in pending if not healthy(s.url() + s.health_path)]
        if pending and time.monotonic() > deadline:
            stop_group(honcho)
            names = ", ".join(s.name for s in pending)
            raise StackError(f"{names} did not become healthy within {timeout:.0f}s; their log lines are above")
        time.sleep(0.5)


PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h


def adopt_orphans() -> bool:
    """Become the parent of any descendant whose parent dies (Linux's child subreaper), instead of init: services
    that outlive a killed honcho are then still this process's children, for stop_group to find."""
    import ctypes

    return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def reap_orphans(keep: int) -> None:
    """Collect the exit status of adopted descendants that ended (nothing else waits for them), all but `keep`."""
    import psutil

    try:
        children = psutil.Process().children()
    except (psutil.Error, OSError) as problem:  # from a signal handler, an exception would stop the whole stack
        print(f"could not list this process's children to reap them: {problem!r}", file=sys.stderr)
        return
    for child in children:
        try:
            if child.pid != keep and child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)
        except (psutil.Error, ChildProcessError):
            pass


def stop_group(process: subprocess.Popen, timeout: float = 30) -> None:
    """Stop honcho (which stops each service's process group), then every descendant of this process left behind: a
    service that ignored its signal, or, after adopt_orphans, one whose honcho was killed."""
    import psutil

    try:
        tree = psutil.Process(process.pid).children(recursive=True)  # in case adopting failed
    except psutil.NoSuchProcess:
        tree = []
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    leftovers = list({*tree, *psutil.Process().children(recursive=True)})
    for _ in range(3):  # again for what a leftover forked while it was being stopped
        if not leftovers:
            return
        for leftover in leftovers:
            _signal(leftover, signal.SIGTERM)
        _, alive = psutil.wait_procs(leftovers, timeout=10)
        for leftover in alive:
            _signal(leftover, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5)
        leftovers = psutil.Process().children(recursive=True)


def _signal(process, signum: int) -> None:
    """Send a signal to a psutil.Process that may have ended meanwhile."""
    import psutil

    try:
        process.send_signal(signum)
    except psutil.NoSuchProcess:
        pass


def banner(settings: Settings) -> str:
    """Where everything is, and how to log in to Airflow."""
    urls = {s.name: s.url() for s in services(settings)}
    password = airflow_password(settings) or f"see {airflow_home(settings)}/simple_auth_manager_passwords.json.generated"
    lines = [
        "",
        "The doodle platform is up:",
        f"  draw and correct      {urls['webapp']}",
        f"  retraining runs       {urls['webapp']}/pipeline",
        f"  Airflow               {urls['airflow']}   (user admin, password {password})",
        f"  MLflow                {urls['mlflow']}",
    ]
    if "prometheus" in urls:
        lines.append(f"  Prometheus            {urls['prometheus']}")
    lines += ["Ctrl-C (or `make down` from another terminal) stops every process.", ""]
    return "\n".join(lines)


def down(settings: Settings, timeout: float = 60) -> bool:
    """Stop a running stack; returns False when none was running."""
    pid = running_pid(settings)
    if pid is None:
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while running_pid(settings) and time.monotonic() < deadline:
        time.sleep(0.3)
    if running_pid(settings):
        raise StackError(f"the stack (pid {pid}) did not stop within {timeout:.0f}s")
    return True


def status(settings: Settings) -> list[tuple[str, str, str]]:
    """Each service, its URL and its state: healthy; not answering (the stack runs); down; or its port taken by
    another program (the stack does not run, yet something listens there)."""
    running = running_pid(settings) is not None
    states = []
    for service in services(settings):
        if healthy(service.url() + service.health_path):
            state = "healthy"
        elif running:
            state = "not answering"
        else:
            state = "down" if port_free(service) else f"down; port {service.port} is taken by another program"
        states.append((service.name, service.url(), state))
    return states


def port_free(service: Service) -> bool:
    """Whether nothing listens on the service's address (binding it works)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((service.host, service.port))
        except OSError:
            return False
    return True


if __name__ == "__main__":  # the Procfile's `airflow` and `mlflow` processes
    if sys.argv[1:2] == ["airflow"]:
        sys.exit(run_airflow())
    if sys.argv[1:2] == ["mlflow"]:
        run_mlflow_server(sys.argv[2:])
    sys.exit("usage: python -m doodle_lib.stack airflow | mlflow [mlflow server options]")
