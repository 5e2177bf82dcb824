"""DVC: the data folder is a DVC project (no git) whose local remote holds every dataset version."""
from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import yaml

from doodle_lib import atomic

log = logging.getLogger(__name__)
REMOTE_NAME = "storage"
VERSIONING_LOCK = ".versioning.lock"  # in the project folder


class VersioningError(RuntimeError):
    """A DVC command failed; the message carries DVC's own explanation."""


def dvc(project: Path, *args: str) -> str:
    """Run one DVC command in `project` and return its output, raising VersioningError on failure."""
    command = [sys.executable, "-m", "dvc", *args]
    done = subprocess.run(command, cwd=project, capture_output=True, text=True)
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip()).splitlines()
        reason = "\n".join(line for line in output if not line.startswith("Having any troubles?"))  # DVC's advert
        raise VersioningError(f"dvc {' '.join(args)} failed in {project}: {reason or 'no reason given'}")
    return done.stdout


def ensure_project(project: Path, remote: Path) -> None:
    """Make `project` a DVC project with `remote` as its default remote (idempotent)."""
    project.mkdir(parents=True, exist_ok=True)
    remote.mkdir(parents=True, exist_ok=True)
    with atomic.exclusive(project / VERSIONING_LOCK):  # DVC rewrites its config in place: not while another reads it
        if not (project / ".dvc").is_dir():
            dvc(project, "init", "--no-scm", "--quiet")
            dvc(project, "config", "core.analytics", "false")
        dvc(project, "remote", "add", "--default", "--force", REMOTE_NAME, str(remote))


def commit(project: Path, folder: str) -> str:
    """Version `folder` (relative to the project), push it to the remote and return its hash."""
    # One DVC command sequence at a time (both DAGs version the dataset): otherwise one could read the hash of the
    # other's `add` before that version is pushed, and DVC's own lock gives up after a few seconds.
    with atomic.exclusive(project / VERSIONING_LOCK):
        # Not --quiet: that silences DVC's errors too (a failed push said nothing). The output is only shown on failure.
        dvc(project, "add", folder)
        dvc(project, "push", f"{folder}.dvc")
        return dataset_hash(project / f"{folder}.dvc")


def dataset_hash(dvc_file: Path) -> str:
    """The content hash DVC recorded for the one output of a .dvc file."""
    outs = yaml.safe_load(dvc_file.read_text())["outs"]
    return outs[0]["md5"]


def checkout(project: Path, version: str, destination: str) -> Path:
    """Restore the dataset with hash `version` from the remote into `destination` (relative to the project)."""
    relative = Path(destination)  # "checkouts/v1/" as "checkouts/v1": the pointer is then v1.dvc beside it, not v1/.dvc
    target = project / relative
    if relative.is_absolute() or ".." in relative.parts or not target.resolve().is_relative_to(project.resolve()):
        raise VersioningError(f"{destination!r} is not a folder inside {project}")
    if target.exists():
        raise VersioningError(f"{target} already exists: choose another destination or remove it")
    pointer = target.with_name(f"{target.name}.dvc")
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.write_text(yaml.safe_dump({"outs": [{"md5": version, "path": target.name, "hash": "md5"}]}))
    try:
        with atomic.exclusive(project / VERSIONING_LOCK):
            # Not --quiet: that silences DVC's error too, and a version missing from the remote went unexplained.
            dvc(project, "pull", str(pointer.relative_to(project)))
    except VersioningError:
        pointer.unlink()  # a pointer to data that is not there would only be in the way of the next try
        raise
    return target


def stored_object(remote: Path, md5: str) -> Path:
    """Where the remote keeps the content with this md5 (DVC 3's content-addressed layout)."""
    return remote / "files" / "md5" / md5[:2] / md5[2:]


def stored_files(remote: Path, version: str) -> dict[str, str]:
    """Files (relative path -> md5) of a dataset version, after checking the remote holds each one's content."""
    import json

    listing = stored_object(remote, version)
    if not listing.is_file():
        raise VersioningError(f"the remote {remote} does not hold dataset version {version}")
    files = {entry["relpath"]: entry["md5"] for entry in json.loads(listing.read_text())}
    missing = sorted(path for path, md5 in files.items() if not stored_object(remote, md5).is_file())
    if missing:
        raise VersioningError(f"dataset version {version} is incomplete in {remote}: {missing[:5]} missing")
    return files


def version_files(remote: Path, version: str) -> dict[str, Path]:
    """The files of a dataset version (relative path -> the remote's copy): exactly what the version names, read in
    place, whatever was added to the live folder since."""
    return {path: stored_object(remote, md5) for path, md5 in stored_files(remote, version).items()}
