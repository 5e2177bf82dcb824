"""`make up`'s decisions: whether to train a first model (asked of the running MLflow server over its REST API), MLflow's
webhook settings, where the web app is checked, and whether a stack already runs."""
from __future__ import annotations

import os
import subprocess
from urllib.parse import urlparse

import pytest
from mlflow import MlflowClient

from doodle_lib import stack
from tests.services import free_port


def test_has_production_model_follows_the_registry(settings, mlflow_url):
    local = settings.model_copy(update={"host": "127.0.0.1", "mlflow_port": urlparse(mlflow_url).port})
    registry = MlflowClient(mlflow_url, registry_uri=mlflow_url)
    assert not stack.has_production_model(local), "no registered model yet"

    registry.create_registered_model(local.model_name)
    assert not stack.has_production_model(local), "a registered model without the production alias"

    run_id = registry.create_run("0").info.run_id
    registry.log_text(run_id, "a stand-in for a checkpoint", "model/checkpoint.txt")
    version = registry.create_model_version(local.model_name, f"runs:/{run_id}/model", run_id)
    registry.set_registered_model_alias(local.model_name, local.production_alias, version.version)
    assert stack.has_production_model(local)


def test_has_production_model_names_an_unreachable_registry(settings):
    nowhere = settings.model_copy(update={"host": "127.0.0.1", "mlflow_port": free_port()})
    with pytest.raises(stack.StackError, match="could not reach the model registry"):
        stack.has_production_model(nowhere)


def test_mlflow_may_call_the_webhook_only_with_a_secret_and_always_has_the_same_key(settings, tmp_path):
    from cryptography.fernet import Fernet

    off = stack.environment(settings.model_copy(update={"storage_dir": tmp_path}))
    assert "MLFLOW_WEBHOOK_ALLOWED_SCHEMES" not in off and "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS" not in off
    on = stack.environment(settings.model_copy(update={"storage_dir": tmp_path, "webhook_secret": "s3cret"}))
    assert on["MLFLOW_WEBHOOK_ALLOWED_SCHEMES"] == "http,https" and on["MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS"] == "true"
    key = on["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"]
    assert Fernet(key.encode()).decrypt(Fernet(key.encode()).encrypt(b"x")) == b"x"  # a valid Fernet key
    # The same key at every start, secret or not: a webhook stored once stays readable.
    assert off["MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY"] == key


def test_the_web_app_is_checked_where_it_listens(settings):
    """DOODLE_WEBAPP_BIND, not DOODLE_HOST, is the web app's address; bound to every interface, it answers on loopback."""
    urls = {s.name: s.url() for s in stack.services(settings.model_copy(update={"webapp_bind": "127.0.0.2:8123"}))}
    assert urls["webapp"] == "http://127.0.0.2:8123" and urls["mlflow"] == f"http://{settings.host}:{settings.mlflow_port}"
    anywhere = stack.services(settings.model_copy(update={"webapp_bind": "0.0.0.0:8123"}))
    assert next(s for s in anywhere if s.name == "webapp").url() == "http://127.0.0.1:8123"


def test_status_names_a_port_another_program_holds_and_exits_1(settings, tmp_path):
    import socket
    import sys
    from pathlib import Path

    ports = {"mlflow_port": free_port(), "airflow_port": free_port(), "prometheus_port": free_port()}
    idle = settings.model_copy(update={"host": "127.0.0.1", "storage_dir": tmp_path,
                                       "webapp_bind": f"127.0.0.1:{free_port()}", **ports})
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", ports["airflow_port"]))
        squatter.listen()  # answers no health check: not this platform's Airflow
        states = {name: state for name, _, state in stack.status(idle)}
        assert states["airflow"] == f"down; port {ports['airflow_port']} is taken by another program"
        assert states["mlflow"] == states["webapp"] == "down"
        env = {**os.environ, "DOODLE_STORAGE_DIR": str(tmp_path), "DOODLE_HOST": "127.0.0.1",
               "DOODLE_WEBAPP_BIND": idle.webapp_bind, **{f"DOODLE_{k.upper()}": str(v) for k, v in ports.items()}}
        shown = subprocess.run([str(Path(sys.executable).parent / "doodle"), "stack", "status"], env=env,
                               capture_output=True, text=True, timeout=60)
    assert shown.returncode == 1 and "stack: not running" in shown.stdout, shown.stdout + shown.stderr
    assert "taken by another program" in shown.stdout


def test_a_pid_file_left_by_a_stack_that_died_does_not_block_the_next_start(settings):
    """After a crash and a reboot another process may hold the recorded pid: the start time tells them apart."""
    settings.storage_dir.mkdir(parents=True, exist_ok=True)
    stack.write_pid_file(settings, honcho_pid=1)
    assert stack.running_pid(settings) == os.getpid()
    pid, honcho, identity = stack.pid_file(settings).read_text().split()
    boot, started = identity.split("/")
    stack.pid_file(settings).write_text(f"{pid} {honcho} {boot}/{int(started) - 100}\n")  # same pid, another process
    assert stack.running_pid(settings) is None
    stack.pid_file(settings).write_text(f"{pid} {honcho} other-boot/{started}\n")
    assert stack.running_pid(settings) is None
    ended = subprocess.Popen(["true"])
    ended.wait()
    stack.pid_file(settings).write_text(f"{ended.pid} {honcho} {identity}\n")
    assert stack.running_pid(settings) is None
    for garbled in ("", f"{pid} {honcho}\n", "x y z\n"):  # cut short by a crash, or not written by this version
        stack.pid_file(settings).write_text(garbled)
        assert stack.running_pid(settings) is None


HONCHO_KILLED = """
import json, os, signal, subprocess, sys, time
import psutil
from doodle_lib import stack
if sys.argv[1] == "adopt":
    assert stack.adopt_orphans()
# A stand-in for honcho: a shell in its own session with two services that would outlive it.
service = "sleep 300 </dev/null >/dev/null 2>&1 &"  # no pipe of this test's held open by a leftover
honcho = subprocess.Popen(["sh", "-c", f"{service} {service} echo up; wait"], start_new_session=True, stdout=subprocess.PIPE, text=True)
honcho.stdout.readline()
services = psutil.Process(honcho.pid).children()
os.kill(honcho.pid, signal.SIGKILL)
honcho.wait()
stack.stop_group(honcho)
print(json.dumps({"services": [s.pid for s in services], "left": [s.pid for s in services if s.is_running() and s.status() != "zombie"]}))
"""


@pytest.mark.parametrize("adopt", [True, False])
def test_services_a_killed_honcho_leaves_behind_are_stopped_with_the_stack(adopt):
    """`make up` adopts orphaned descendants, so when honcho itself is killed its services still stop with the stack."""
    import json
    import sys

    done = subprocess.run([sys.executable, "-c", HONCHO_KILLED, "adopt" if adopt else "no"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    for pid in result["left"]:
        os.kill(pid, 9)
    assert len(result["services"]) == 2
    assert result["left"] == ([] if adopt else result["services"])  # without adopting, they outlive the stack


ADOPTED_ZOMBIES = """
import psutil, subprocess, time
from doodle_lib import stack
assert stack.adopt_orphans()
subprocess.run(["sh", "-c", "sleep 0.2 </dev/null >/dev/null 2>&1 &"], check=True)  # its sleep is orphaned, then ends
time.sleep(1)
before = [p.status() for p in psutil.Process().children()]
stack.reap_orphans(keep=-1)
print(before, [p.status() for p in psutil.Process().children()])
"""


def test_adopted_descendants_that_end_are_reaped():
    import sys

    done = subprocess.run([sys.executable, "-c", ADOPTED_ZOMBIES], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["['zombie']", "[]"]


def test_a_stop_ends_the_running_step_at_once_and_quietly(tmp_path):
    """`make down` signals `doodle stack up` only: the step it runs (the first model's training) must end with it."""
    import sys
    import threading
    import time

    import psutil

    pid_file = tmp_path / "step.pid"
    sleeper = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    asked = threading.Event()
    threading.Timer(2.0, asked.set).start()
    said, started = [], time.monotonic()
    stack.run_step("a long step", [sys.executable, "-c", sleeper], {}, said.append, asked.is_set)
    assert time.monotonic() - started < 15
    assert said == ["==> a long step", "==> stopped: a long step"]
    assert not psutil.pid_exists(int(pid_file.read_text()))


def test_a_step_that_fails_unasked_is_an_error_naming_it():
    import sys

    with pytest.raises(stack.StackError, match=r"a failing step failed \(exit 3\)"):
        stack.run_step("a failing step", [sys.executable, "-c", "raise SystemExit(3)"], {}, lambda line: None)
