"""docker-compose.yaml validated without a Docker engine: structure, health, ports, volumes, settings, secrets."""
from __future__ import annotations

import ctypes
import os
import re
import subprocess
import sys

import pytest

from doodle_lib.settings import PROJECT_ROOT, Settings
from tests.stack.services import MLFLOW_POSTGRES_DRIVER
from tests.stack.files import (
    DESIGN, ENV_EXAMPLE, Dockerfile, MissingVariable, compose, env_file, environment, raw_compose, variables,
)

DESIGNED_SERVICES = {
    "postgres", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
    "airflow-triggerer", "airflow-worker", "flower", "mlflow", "webapp", "prometheus", "grafana",
    "statsd-exporter", "node-exporter",
}
# DESIGN.md's names for the services whose ports it gives.
DESIGN_NAMES = {
    "webapp": "webapp", "Airflow api-server": "airflow-apiserver", "MLflow": "mlflow", "Prometheus": "prometheus",
    "Grafana": "grafana", "Flower": "flower", "PostgreSQL": "postgres", "Redis": "redis",
}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|_KEY$|TOKEN")
# Empty turns the web app's webhook receiver off, so its default is no secret at all.
OPTIONAL_SECRETS = {"DOODLE_WEBHOOK_SECRET"}
# Settings only the embedded stack (doodle_lib/stack.py) uses, and the one gunicorn's config sets itself.
NOT_FOR_COMPOSE = {"host", "mlflow_port", "airflow_port", "prometheus_port", "airflow_parallelism",
                   "training_threads", "prometheus_multiproc_dir"}


def filled_env() -> dict[str, str]:
    """.env.example with every empty secret given a random-looking value, as a user's .env would be."""
    env = env_file(ENV_EXAMPLE)
    return {key: value or f"{key.lower()}-Xk29fQ7vLm3" for key, value in env.items()}


def required_secrets_only() -> dict[str, str]:
    """Only the variables compose cannot start without: everything else takes its fallback."""
    return {name: "x" * 16 for name, op, _ in variables(raw_compose()) if op == ":?"}


@pytest.fixture(scope="module")
def stack() -> dict:
    return compose(filled_env())


@pytest.fixture(scope="module")
def services(stack) -> dict:
    return stack["services"]


def built_from(service: dict, name: str) -> bool:
    return (service.get("build") or {}).get("dockerfile") == f"docker/{name}.Dockerfile"


def project_services(services: dict) -> dict[str, dict]:
    """Services that run the project's code (doodle_lib): built from the airflow or webapp Dockerfile."""
    return {n: s for n, s in services.items() if built_from(s, "airflow") or built_from(s, "webapp")}


def test_every_designed_service_is_there(services):
    assert DESIGNED_SERVICES <= services.keys(), f"missing: {sorted(DESIGNED_SERVICES - services.keys())}"


def test_every_service_has_a_healthcheck(services):
    for name, service in services.items():
        check = service.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), f"{name}: healthcheck test must start with CMD or CMD-SHELL"


def test_every_image_is_pinned_or_built(services):
    for name, service in services.items():
        if "build" in service:
            assert (PROJECT_ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file(), name
            continue
        image = service.get("image", "")
        tag = image.rsplit(":", 1)[1] if ":" in image.split("/")[-1] else ""
        assert re.search(r"\d+\.\d+", tag) and tag != "latest", f"{name}: image {image!r} has no pinned version tag"


def test_depends_on_waits_for_health_or_completion(services):
    one_shot = {name for name, s in services.items() if s.get("restart") == "no"}
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        assert isinstance(depends, dict), f"{name}: depends_on must name a condition for each service"
        for target, rule in depends.items():
            assert target in services, f"{name} depends on unknown {target}"
            condition = (rule or {}).get("condition")
            expected = "service_completed_successfully" if target in one_shot else "service_healthy"
            assert condition == expected, f"{name} -> {target}: condition {condition!r}, expected {expected}"


def design_ports() -> dict[str, int]:
    """Service name -> default port, from the 'Ports (defaults)' section of DESIGN.md."""
    if not DESIGN.is_file():
        pytest.fail(f"{DESIGN} is missing: check the repository out beside shared/")
    section = DESIGN.read_text().split("## Ports (defaults)", 1)[1].split("##", 1)[0]
    ports = {DESIGN_NAMES[name.strip().removeprefix("and ")]: int(port) for name, port in re.findall(r"([A-Za-z][A-Za-z -]*?) (\d{4})", section)}
    assert len(ports) == len(DESIGN_NAMES), f"DESIGN.md's ports section changed: {ports}"
    return ports


def test_every_designed_port_is_published():
    defaults = compose(required_secrets_only())
    for name, port in design_ports().items():
        published = [str(p) for p in defaults["services"][name].get("ports", [])]
        assert any(p.endswith(f":{port}:{port}") or p == f"{port}:{port}" for p in published), (
            f"{name} should publish {port} by default (DESIGN.md), publishes {published}"
        )


def test_scaled_worker_has_no_fixed_name_or_host_port(services):
    worker = services["airflow-worker"]
    assert "container_name" not in worker and "ports" not in worker and "hostname" not in worker
    assert worker["command"] == "celery worker"


def test_data_and_storage_are_shared_volumes(stack, services):
    declared = set(stack["volumes"])
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            assert source.startswith(("./", "/")) or source in declared, f"{name}: volume {source} is not declared"
            if source.startswith("./"):
                assert (PROJECT_ROOT / source).exists(), f"{name} mounts {source}, which does not exist"
    for name, service in project_services(services).items():
        env = {**Dockerfile.read(PROJECT_ROOT / service["build"]["dockerfile"]).env(), **environment(service)}
        mounts = dict(v.split(":")[1::-1] for v in service["volumes"])
        assert mounts.get(env["DOODLE_DATA_DIR"]) == "doodle-data", f"{name}: data/ is not the shared volume"
        assert mounts.get(env["DOODLE_STORAGE_DIR"]) == "doodle-storage", f"{name}: storage/ is not the shared volume"
    mlflow = services["mlflow"]
    artifacts = environment(mlflow)["MLFLOW_ARTIFACTS_DESTINATION"]
    assert any(v.startswith("doodle-storage:") and artifacts.startswith(v.split(":")[1]) for v in mlflow["volumes"])
    for name, source in [("statsd-exporter", "./monitoring/statsd_mapping.yml"), ("prometheus", "./monitoring/prometheus"),
                         ("grafana", "./monitoring/grafana/provisioning"), ("grafana", "./monitoring/grafana/dashboards"),
                         ("postgres", "./docker/postgres/create-mlflow-db.sh")]:
        assert any(v.startswith(source + ":") for v in services[name]["volumes"]), f"{name} does not mount {source}"


def settings_variables() -> dict[str, list[str]]:
    """Field -> the environment variables that set it, derived from doodle_lib/settings.py."""
    names = {}
    for field_name, info in Settings.model_fields.items():
        alias = info.validation_alias
        names[field_name] = list(alias.choices) if alias is not None else [f"DOODLE_{field_name.upper()}"]
    return names


def test_every_setting_is_defined_for_every_project_service(services):
    assert {"webapp", "airflow-worker", "airflow-triggerer", "airflow-scheduler"} <= project_services(services).keys()
    for name, service in project_services(services).items():
        env = {**Dockerfile.read(PROJECT_ROOT / service["build"]["dockerfile"]).env(), **environment(service)}
        for field_name, choices in settings_variables().items():
            if field_name in NOT_FOR_COMPOSE:
                assert not set(choices) & env.keys(), f"{name} sets {choices}, which the distributed stack must not"
            else:
                assert set(choices) & env.keys(), f"{name} does not define {' or '.join(choices)}"


def test_compose_fallbacks_are_the_settings_defaults():
    """A setting left out of .env gets the same value as in the embedded mode."""
    defaults = compose(required_secrets_only())
    env = environment(defaults["services"]["webapp"])
    container_specific = {"data_dir", "storage_dir", "sample_dir", "tracking_uri", "mlflow_ui_url", "webapp_bind",
                          "airflow_url", "airflow_password"}
    composed = Settings(**{f: env[choices[0]] for f, choices in settings_variables().items()
                           if f not in NOT_FOR_COMPOSE | container_specific})
    for field_name in settings_variables().keys() - NOT_FOR_COMPOSE - container_specific:
        assert getattr(composed, field_name) == Settings.model_fields[field_name].default, field_name


def test_no_secret_has_a_default():
    for name, op, _ in variables(raw_compose()):
        if SECRET_NAME.search(name) and name not in OPTIONAL_SECRETS:
            assert op == ":?", f"${{{name}}} must be ${{{name}:?message}}: a default secret would reach production"
        if name in OPTIONAL_SECRETS:
            assert op == ":-" and not _, f"{name} may only default to empty"


def test_missing_secrets_stop_start_up_with_a_message():
    required = {name for name, op, _ in variables(raw_compose()) if op == ":?"}
    assert {"POSTGRES_PASSWORD", "AIRFLOW_FERNET_KEY", "GRAFANA_ADMIN_PASSWORD"} <= required
    with pytest.raises(MissingVariable) as raised:
        compose(env_file(ENV_EXAMPLE))  # .env.example as shipped: every secret empty
    for name in required:
        assert f"{name}: set {name} in .env" in str(raised.value)


def test_filled_env_resolves_everything(stack):
    text = repr(stack)
    assert "${" not in text and "-Xk29fQ7vLm3" in text


def test_env_example_documents_every_variable():
    documented = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.MULTILINE))
    used = {name for name, _, _ in variables(raw_compose())}
    assert used <= documented, f"not in .env.example: {sorted(used - documented)}"


def test_airflow_init_gets_every_variable_it_requires(services):
    script = (PROJECT_ROOT / "docker" / "airflow-init.sh").read_text()
    required = re.search(r"required=\(([^)]*)\)", script).group(1).split()
    env = {**Dockerfile.read(PROJECT_ROOT / "docker" / "airflow.Dockerfile").env(), **environment(services["airflow-init"])}
    assert required and not set(required) - env.keys(), f"airflow-init lacks {set(required) - env.keys()}"
    assert "DOODLE_DATA_DIR" in env and "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" in env


def test_a_training_task_takes_one_core():
    """A worker runs AIRFLOW_WORKER_CONCURRENCY tasks at once; torch_threads 0 (the settings' default) would let each
    training task's torch take every core."""
    for env in (required_secrets_only(), filled_env()):
        worker = environment(compose(env)["services"]["airflow-worker"])
        [variable] = settings_variables()["torch_threads"]
        assert Settings(torch_threads=worker[variable]).torch_threads == 1, f"{variable}={worker[variable]!r}"


# The live check stands a file the process may not write in for the read-only mount: open(..., "a+") fails either way
# (EACCES instead of EROFS). Root writes through file modes, so the child loses that power (CAP_DAC_OVERRIDE) first.
PR_CAPBSET_DROP, CAP_DAC_OVERRIDE = 24, 1


def without_permission_override() -> None:
    if os.geteuid() == 0 and ctypes.CDLL(None, use_errno=True).prctl(PR_CAPBSET_DROP, CAP_DAC_OVERRIDE, 0, 0, 0):
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")


SIMPLE_AUTH_MANAGER_START = """
import os, sys, traceback
from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager
SimpleAuthManager().init()  # the file as airflow-init writes it, writable: starts
os.chmod(os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"], 0o400)
try:
    SimpleAuthManager().init()
except OSError as error:
    sys.exit(f"{type(error).__name__} in {traceback.extract_tb(error.__traceback__)[-1].name}()")
"""


def test_the_api_server_can_write_the_simple_auth_managers_password_file(services, tmp_path):
    """SimpleAuthManager.init(), which the api-server runs at start, opens the passwords file with "a+" and catches
    only BlockingIOError: on a read-only mount the open fails with EROFS and the api-server exits."""
    from airflow.configuration import conf

    runs_simple_auth = {name for name, s in services.items() if built_from(s, "airflow") and s["command"] == "api-server"
                        and "AIRFLOW__CORE__AUTH_MANAGER" not in environment(s)}
    assert conf.get_default_value("core", "auth_manager").endswith(".SimpleAuthManager") and runs_simple_auth
    for name in runs_simple_auth:
        folder = os.path.dirname(environment(services[name])["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
        mounts = [v.split(":") for v in services[name]["volumes"] if v.split(":")[1] == folder]
        assert mounts, f"{name} does not mount {folder}, where airflow-init writes the passwords"
        options = mounts[0][2].split(",") if len(mounts[0]) > 2 else []  # SOURCE:TARGET[:OPTIONS]
        assert "ro" not in options, f"{name} mounts {folder} read-only"

    passwords = tmp_path / "passwords.json"
    passwords.write_text('{"admin": "Wq7Zr4Lx9-pass"}\n')  # what airflow-init writes
    passwords.chmod(0o600)
    env = {"PATH": os.environ["PATH"], "AIRFLOW_HOME": str(tmp_path / "home"),
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords)}
    result = subprocess.run([sys.executable, "-c", SIMPLE_AUTH_MANAGER_START], env=env, capture_output=True,
                            text=True, timeout=120, preexec_fn=without_permission_override)
    assert result.returncode == 1 and result.stderr.endswith("PermissionError in init()\n"), result.stderr[-2000:]


def test_mlflow_gets_its_backend_store(services):
    dockerfile = Dockerfile.read(PROJECT_ROOT / "docker" / "mlflow.Dockerfile")
    start = (PROJECT_ROOT / "docker" / "mlflow-start.sh").read_text()
    needed = set(re.findall(r"\$\{(\w+):\?", start)) | set(re.findall(r'os\.environ\["(\w+)"\]', start))
    assert dockerfile.all("CMD", -1) == ['["mlflow-start"]']
    env = {**dockerfile.env(), **environment(services["mlflow"])}
    assert needed and needed <= env.keys()
    # The driver the live test (test_celery_scale_out.py) proves: the image has psycopg2, and MLflow 3.17 fails on psycopg 3.
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith(f"{MLFLOW_POSTGRES_DRIVER}://mlflow:")
    assert "mlflow:5000" in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(","), "other containers reach MLflow as mlflow:5000"


def test_mlflow_may_call_the_web_app_that_bootstrap_registers(services, tmp_path):
    """The webhook path as the embedded stack sets it up (doodle_lib/stack.py), with compose's names and a key from .env."""
    from doodle_lib import stack

    env = environment(services["mlflow"])
    embedded = stack.webhook_environment(Settings(webhook_secret="s", storage_dir=tmp_path))
    assert {k: env[k] for k in embedded if k != "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"} == {
        k: v for k, v in embedded.items() if k != "MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"}
    assert env["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"] == filled_env()["MLFLOW_WEBHOOK_ENCRYPTION_KEY"]
    registered = re.search(r"doodle webhook --url (\S+)", (PROJECT_ROOT / "docker" / "bootstrap.sh").read_text())[1]
    host, port = re.match(r"http://([\w-]+):(\d+)/webhooks/mlflow$", registered).groups()
    assert host == "webapp" and environment(services["webapp"])["DOODLE_WEBAPP_BIND"].endswith(f":{port}")


def test_airflow_commands_are_real_cli_commands(services):
    """The compose commands parse with Airflow's own CLI, the same entry points as the embedded stack."""
    from airflow.cli.cli_parser import get_parser

    parser = get_parser()
    commands = {s["command"] for n, s in services.items() if built_from(s, "airflow") and isinstance(s["command"], str)}
    assert {"api-server", "scheduler", "dag-processor", "triggerer", "celery worker", "celery flower"} <= commands
    for command in commands:
        parser.parse_args(command.split())
    check = (PROJECT_ROOT / "docker" / "airflow-healthcheck.sh").read_text()
    for job_type in re.findall(r"--job-type (\w+)", check):
        parser.parse_args(["jobs", "check", "--job-type", job_type, "--hostname", "h"])


def test_in_stack_addresses_name_real_services(services):
    env = environment(services["airflow-scheduler"])
    for key in ("AIRFLOW__CORE__EXECUTION_API_SERVER_URL", "MLFLOW_TRACKING_URI", "AIRFLOW__CELERY__BROKER_URL",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__METRICS__STATSD_HOST"):
        host = re.sub(r"^\w[\w+]*://([^@/]*@)?", "", env[key]).split(":")[0].split("/")[0]
        assert host in services, f"{key} points at {host}, which is no service"


def test_the_live_scale_out_test_runs_the_executor_database_and_broker_keys_compose_sets(services):
    """tests/stack/test_celery_scale_out.py configures Airflow with celery_environment: the same keys as compose."""
    from tests.stack.services import celery_environment

    compose_keys = {
        key for key in environment(services["airflow-scheduler"])
        if key == "AIRFLOW__CORE__EXECUTOR" or key.startswith(("AIRFLOW__CELERY__", "AIRFLOW__DATABASE__"))
    }
    assert set(celery_environment("db", "backend", "broker")) == compose_keys
