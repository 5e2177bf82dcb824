"""The images' Dockerfiles and scripts, checked without a Docker engine; the scripts run for real where they can."""
from __future__ import annotations

import fnmatch
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from doodle_lib.settings import PROJECT_ROOT
from tests.stack.files import Dockerfile

DOCKER = PROJECT_ROOT / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
LOCK = dict(
    line.split("==", 1) for line in (PROJECT_ROOT / "requirements" / "lock.txt").read_text().splitlines()
    if "==" in line and not line.startswith("#")
)
LOCKED = {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in LOCK.items()}
SCRIPTS = sorted(DOCKER.rglob("*.sh"))


def test_one_dockerfile_per_image():
    assert {p.name for p in DOCKERFILES} == {"airflow.Dockerfile", "webapp.Dockerfile", "mlflow.Dockerfile"}


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.stem)
def test_base_images_are_pinned(path):
    for base in Dockerfile.read(path).all("FROM"):
        image = base.split()[0]
        name, _, tag = image.rpartition(":")
        assert name and re.search(r"\d+\.\d+\.\d+", tag), f"{path.name}: FROM {image} has no pinned version tag"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.stem)
def test_final_stage_runs_as_non_root_with_a_healthcheck(path):
    dockerfile = Dockerfile.read(path)
    users = dockerfile.all("USER", -1)
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{path.name} ends as root"
    checks = dockerfile.all("HEALTHCHECK", -1)
    assert checks and "CMD" in checks[-1] and "NONE" not in checks[-1].upper(), f"{path.name} has no HEALTHCHECK"
    assert dockerfile.all("CMD", -1) or path.stem == "airflow", f"{path.name} has no CMD"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.stem)
def test_apt_and_pip_leave_no_caches(path):
    for run in Dockerfile.read(path).all("RUN"):
        if "apt-get install" in run:
            assert "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists" in run, path.name
    env = " ".join(Dockerfile.read(path).all("ENV"))
    for run in Dockerfile.read(path).all("RUN"):
        if "pip install" in run:
            assert "--no-cache-dir" in run or "PIP_NO_CACHE_DIR=1" in env, f"{path.name}: pip keeps its cache"


def test_airflow_image_matches_the_locked_airflow_and_python():
    base = Dockerfile.read(DOCKER / "airflow.Dockerfile").all("FROM", -1)[0]  # the image shipped: the last stage
    python = re.search(r">=(\d+\.\d+)", tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["requires-python"])[1]
    assert base == f"apache/airflow:{LOCKED['apache-airflow']}-python{python}"
    for path in DOCKERFILES:
        for image in Dockerfile.read(path).all("FROM"):
            if image.startswith("python:"):
                assert image.split(":")[1].startswith(python + "."), f"{path.name}: {image} is not Python {python}"


@pytest.mark.parametrize("name", ["airflow", "webapp"])
def test_torch_is_the_locked_cpu_build_installed_first(name):
    runs = " && ".join(Dockerfile.read(DOCKER / f"{name}.Dockerfile").all("RUN"))
    installs = [part for part in re.split(r"&&", runs) if "pip install" in part]
    assert f"torch=={LOCKED['torch']}" in installs[0], f"{name}: torch is not installed first and pinned"
    assert "--index-url https://download.pytorch.org/whl/cpu" in installs[0], f"{name}: torch not from the CPU index"
    assert all("-c " in part and "lock.txt" in part for part in installs[1:]), f"{name}: later installs not locked"


def make_install_commands() -> list[str]:
    """The commands `make install` runs on a fresh clone (make's dry run; TORCH_INDEX as the Makefile sets it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TORCH_INDEX", "PYTHON", "MAKEFLAGS")}
    return subprocess.run(["make", "--dry-run", "--always-make", "install"], cwd=PROJECT_ROOT, env=env,
                          capture_output=True, text=True, check=True, timeout=60).stdout.splitlines()


def test_make_install_takes_torch_from_the_images_cpu_index():
    """PyPI's Linux wheel of torch is the CUDA build: `make install` (so `make up`, `make test` and CI) takes the CPU
    build from the index the images use (pip's own sources only when that index does not answer)."""
    image = [r for r in Dockerfile.read(DOCKER / "airflow.Dockerfile").all("RUN") if "torch==" in r][0]
    index = re.search(r"--index-url (\S+)", image)[1]
    commands = make_install_commands()
    [torch] = [c for c in commands if "pip install" in c and "torch==" in c]
    assert f"torch=={LOCKED['torch']}" in torch and '--index-url "$index"' in torch, torch
    assert any(line.startswith(f'index="{index}";') for line in commands), "\n".join(commands)


def test_ci_installs_what_make_install_needs_on_debian():
    """Debian splits the venv module and the headers (for doodle_lib/_simplify.c) out of its python3.11 package."""
    [create] = [c for c in make_install_commands() if " -m venv " in c]
    python = Path(create.split("||")[-1].split()[0]).name  # /usr/bin/python3.11 where Debian's is there
    script = (PROJECT_ROOT / ".ci" / "run").read_text()
    packages = set(re.search(r"^packages=\(([^)]*)\)", script, re.MULTILINE)[1].split())
    needed = {"make", f"{python}-venv", f"{python}-dev", "gcc", "libc6-dev"}
    assert needed <= packages, f".ci/run does not install {sorted(needed - packages)}"


def test_webapp_requirements_are_all_locked():
    names = [re.split(r"[=<>\[ ]", line)[0] for line in (DOCKER / "webapp-requirements.in").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    unlocked = [n for n in names if re.sub(r"[-_.]+", "-", n).lower() not in LOCKED]
    assert names and not unlocked, f"not in requirements/lock.txt: {unlocked}"


def requirement_lines(path: Path) -> list[str]:
    """The requirements of a .in file, comments dropped."""
    return [line.split("#")[0].strip() for line in path.read_text().splitlines() if line.split("#")[0].strip()]


def test_project_metadata_lists_base_in_and_every_direct_dependency_is_locked():
    requirements = PROJECT_ROOT / "requirements"
    base = requirement_lines(requirements / "base.in")
    assert tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["dependencies"] == base
    names = [re.split(r"[=<>\[ ]", line)[0] for line in base + requirement_lines(requirements / "dev.in")]
    unlocked = [n for n in names if re.sub(r"[-_.]+", "-", n).lower() not in LOCKED]
    assert not unlocked, f"not in requirements/lock.txt: {unlocked}"


def pip_requirements(command: str) -> list[str]:
    """The requirements a `pip install` command names, its options and their arguments left out."""
    words = command.split("pip install", 1)[1].split()
    takes_argument = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url", "--extra-index-url"}
    return [w for i, w in enumerate(words) if not w.startswith("-") and (i == 0 or words[i - 1] not in takes_argument)]


def installed_closure(requirements: list[str]) -> set[str]:
    """The distributions pip installs for `requirements` without extras, read from this venv's metadata (the image
    installs the same locked versions on the same Python)."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: set[str] = set()
    pending = [Requirement(r) for r in requirements]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in found:
            continue
        found.add(name)
        for dependency in map(Requirement, metadata.requires(name) or []):
            if dependency.marker is None or dependency.marker.evaluate({"extra": ""}):
                pending.append(dependency)
    return found


def test_mlflow_image_installs_what_its_prometheus_exporter_imports():
    """MLFLOW_EXPOSE_PROMETHEUS makes `mlflow server` import mlflow.server.prometheus_exporter, whose third-party
    imports (prometheus_flask_exporter) come only with mlflow's "extras": missing, the server dies at start."""
    import ast
    import importlib.util
    from importlib import metadata

    from mlflow.cli import server
    from packaging.utils import canonicalize_name

    dockerfile = Dockerfile.read(DOCKER / "mlflow.Dockerfile")
    [option] = [p for p in server.params if p.name == "expose_prometheus"]
    assert dockerfile.env().get(option.envvar), f"the image no longer sets {option.envvar}: this test checks nothing"
    exporter = Path(importlib.util.find_spec("mlflow.server.prometheus_exporter").origin)
    nodes = list(ast.walk(ast.parse(exporter.read_text())))
    modules = {alias.name for node in nodes if isinstance(node, ast.Import) for alias in node.names}
    modules |= {node.module for node in nodes if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    third_party = {m.split(".")[0] for m in modules} - set(sys.stdlib_module_names) - {"mlflow"}
    distributions = metadata.packages_distributions()
    needed = {canonicalize_name(d) for module in third_party for d in distributions[module]}
    assert needed, f"found no third-party import in {exporter}"
    [install] = [run for run in dockerfile.all("RUN", 0) if "pip install" in run]
    missing = needed - installed_closure(pip_requirements(install))
    assert not missing, f"mlflow.Dockerfile: {option.envvar} is set but `{install}` does not install {sorted(missing)}"


@pytest.mark.parametrize("name", ["airflow", "webapp"])
def test_images_that_render_have_cairo(name):
    assert "libcairo2" in " ".join(Dockerfile.read(DOCKER / f"{name}.Dockerfile").all("RUN"))


def dockerignore_includes(path: str) -> bool:
    """Whether the build context keeps `path`, by .dockerignore's last matching rule (Docker's semantics)."""
    kept = True
    for rule in (PROJECT_ROOT / ".dockerignore").read_text().splitlines():
        rule = rule.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern == "**" or any(fnmatch.fnmatchcase(p, pattern) for p in prefixes) or (
            pattern.startswith("**/") and any(fnmatch.fnmatchcase(part, pattern[3:]) for part in parts)
        ):
            kept = negate
    return kept


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.stem)
def test_copied_files_exist_and_are_in_the_build_context(path):
    for argument in Dockerfile.read(path).all("COPY"):
        words = [w for w in argument.split() if not w.startswith("--")]
        if "--from" in argument:
            continue
        for source in words[:-1]:
            source = source.rstrip("/")
            assert (PROJECT_ROOT / source).exists(), f"{path.name} copies missing {source}"
            files = [source] if (PROJECT_ROOT / source).is_file() else [
                str(f.relative_to(PROJECT_ROOT)) for f in (PROJECT_ROOT / source).rglob("*") if f.is_file()
                and "__pycache__" not in f.parts and f.suffix != ".so"]  # build products, left out on purpose
            excluded = [f for f in files if not dockerignore_includes(f)]
            assert files and not excluded, f"{path.name}: .dockerignore leaves out {excluded[:3]}"


@pytest.mark.parametrize("name", ["airflow", "webapp"])
def test_images_that_simplify_strokes_get_the_compiled_extension(name):
    # doodle_lib.drawing imports doodle_lib._simplify: a stage with a compiler builds it with setup.py, and the
    # final stage (no compiler) copies the built module beside doodle_lib's Python files, on PYTHONPATH.
    dockerfile = Dockerfile.read(DOCKER / f"{name}.Dockerfile")
    builds = [s for s in dockerfile.stages[:-1] if any("setup.py build_ext" in a for i, a in s if i == "RUN")]
    assert builds, f"{name}: no stage compiles doodle_lib/_simplify.c"
    stage = builds[0]
    name_of_stage = stage[0][1].split()[-1]  # FROM <image> AS <name>
    runs = " ".join(a for i, a in stage if i == "RUN")
    sources = " ".join(a for i, a in stage if i == "COPY")
    assert "gcc" in runs and "libc6-dev" in runs, f"{name}: no compiler in the stage that builds the extension"
    assert "setup.py" in sources and "doodle_lib/_simplify.c" in sources
    copies = [a.split() for a in dockerfile.all("COPY", -1) if f"--from={name_of_stage}" in a]
    assert copies, f"{name}: the final stage does not copy the compiled module"
    source, target = copies[0][-2:]
    assert source.endswith("doodle_lib/*.so") and target.rstrip("/") == dockerfile.env()["PYTHONPATH"] + "/doodle_lib"


def test_build_context_has_the_extension_source_and_no_host_build():
    assert dockerignore_includes("setup.py") and dockerignore_includes("doodle_lib/_simplify.c")
    assert not dockerignore_includes("doodle_lib/_simplify.cpython-311-x86_64-linux-gnu.so")


def test_dockerignore_keeps_secrets_and_state_out():
    for path in (".env", "storage/mlflow/mlflow.db", "data/feedback/cat/x.png", ".venv/bin/python", "tests/conftest.py"):
        assert not dockerignore_includes(path), f"{path} would be sent to the Docker daemon"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_valid_bash(script):
    assert os.access(script, os.X_OK), f"{script.name} is not executable"
    subprocess.run(["bash", "-n", str(script)], check=True)


def run_script(tmp_path: Path, script: str, command: str, **env: str) -> subprocess.CompletedProcess:
    """docker/`script` with only `env` (and this venv's python on PATH); `command` is a stub that records its
    arguments in tmp_path/`command`-calls."""
    stub = tmp_path / "bin"
    stub.mkdir(exist_ok=True)
    (stub / command).write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path}/{command}-calls\n")
    (stub / command).chmod(0o755)
    path = f"{stub}:{Path(sys.executable).parent}:/usr/bin:/bin"
    return subprocess.run(["bash", str(DOCKER / script)], env={"PATH": path, **env}, capture_output=True, text=True, timeout=60)


def run_init(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """docker/airflow-init.sh with `env`; airflow is a stub that records."""
    return run_script(tmp_path, "airflow-init.sh", "airflow", **env)


def good_init_env(tmp_path: Path) -> dict[str, str]:
    from cryptography.fernet import Fernet

    return {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql+psycopg2://airflow:pw@postgres/airflow",
        "AIRFLOW__CELERY__BROKER_URL": "redis://:pw@redis:6379/0",
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW__API_AUTH__JWT_SECRET": "q8Vd2-rT5mZx0pLw7Kc4",
        "AIRFLOW__API__SECRET_KEY": "h3Nf9-Ys1bGv6Ru2Qe8",
        "AIRFLOW_ADMIN_USER": "admin",
        "AIRFLOW_ADMIN_PASSWORD": 'pa"ss-Wq7Zr4Lx9',
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(tmp_path / "passwords.json"),
        "DOODLE_DATA_DIR": str(tmp_path / "data"),
        "DOODLE_STORAGE_DIR": str(tmp_path / "storage"),
    }


def test_airflow_init_refuses_missing_and_weak_secrets(tmp_path):
    result = run_init(tmp_path)
    assert result.returncode == 1
    for name in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW_ADMIN_PASSWORD"):
        assert f"{name} is not set" in result.stderr
    weak = {**good_init_env(tmp_path), "AIRFLOW_ADMIN_PASSWORD": "airflow", "AIRFLOW__CORE__FERNET_KEY": "not-a-key"}
    result = run_init(tmp_path, **weak)
    assert result.returncode == 1
    assert "AIRFLOW_ADMIN_PASSWORD is too short or a well-known value" in result.stderr
    assert "AIRFLOW__CORE__FERNET_KEY is not a Fernet key" in result.stderr
    assert not (tmp_path / "airflow-calls").exists(), "nothing may be migrated with bad secrets"


def test_airflow_init_migrates_and_writes_the_password_file(tmp_path):
    import json

    env = good_init_env(tmp_path)
    result = run_init(tmp_path, **env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "airflow-calls").read_text().split("\n")[0] == "db migrate"
    passwords = Path(env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
    assert json.loads(passwords.read_text()) == {"admin": env["AIRFLOW_ADMIN_PASSWORD"]}
    assert passwords.stat().st_mode & 0o077 == 0, "the password file must be private"
    for folder in ("data/feedback", "data/batches", "storage/dvc-remote", "storage/webapp"):
        assert (tmp_path / folder).is_dir()


def test_healthcheck_refuses_an_unknown_component():
    result = subprocess.run(["bash", str(DOCKER / "airflow-healthcheck.sh"), "nonsense"], capture_output=True, text=True)
    assert result.returncode == 1 and "unknown component 'nonsense'" in result.stderr


def run_mlflow_start(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """docker/mlflow-start.sh with `env`; mlflow is a stub that records."""
    return run_script(tmp_path, "mlflow-start.sh", "mlflow", **env)


def test_mlflow_start_refuses_a_missing_store_and_a_malformed_webhook_key(tmp_path):
    from cryptography.fernet import Fernet

    store = "postgresql+psycopg2://mlflow:pw@postgres:5432/mlflow"
    missing = run_mlflow_start(tmp_path, MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY=Fernet.generate_key().decode())
    assert missing.returncode != 0 and "set MLFLOW_BACKEND_STORE_URI" in missing.stderr
    for key in ({}, {"MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY": "not-a-key"}):
        refused = run_mlflow_start(tmp_path, MLFLOW_BACKEND_STORE_URI=store, **key)
        assert refused.returncode == 1 and "MLFLOW_WEBHOOK_ENCRYPTION_KEY in .env) is not set or not a Fernet key" in refused.stderr
    assert not (tmp_path / "mlflow-calls").exists(), "the server may not start with a key it cannot use"
    started = run_mlflow_start(tmp_path, MLFLOW_BACKEND_STORE_URI=store,
                               MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY=Fernet.generate_key().decode())
    assert started.returncode == 0, started.stderr
    assert (tmp_path / "mlflow-calls").read_text() == f"server --backend-store-uri {store}\n"
