"""doodle_lib.versioning with the real DVC: a data folder, its local remote, checkouts of a version."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from doodle_lib import atomic, versioning


@pytest.fixture
def project(tmp_path: Path) -> tuple[Path, str]:
    """A DVC project with one dataset version pushed to its remote, and that version's hash."""
    data = tmp_path / "data"
    atomic.write_npz(data / "dataset" / "base.npz", x=np.zeros((2, 28, 28), np.uint8), y=np.array(["a", "b"]))
    versioning.ensure_project(data, tmp_path / "remote")
    return data, versioning.commit(data, "dataset")


def test_a_destination_with_a_trailing_slash_is_restored_beside_its_pointer(project) -> None:
    data, version = project
    target = versioning.checkout(data, version, "checkouts/v1/")  # as a shell's completion writes a folder

    assert target == data / "checkouts" / "v1"
    assert (target / "base.npz").read_bytes() == (data / "dataset" / "base.npz").read_bytes()
    assert (data / "checkouts" / "v1.dvc").is_file()


@pytest.mark.parametrize("outside", ["/tmp/elsewhere", "../elsewhere", "checkouts/../../elsewhere"])
def test_a_destination_outside_the_project_is_refused_and_nothing_is_written(project, outside: str) -> None:
    data, version = project
    with pytest.raises(versioning.VersioningError, match="is not a folder inside"):
        versioning.checkout(data, version, outside)
    assert not (data / "checkouts").exists() and not (data.parent / "elsewhere").exists()


def test_a_version_the_remote_lacks_is_explained_and_leaves_no_pointer(project) -> None:
    data, _ = project
    with pytest.raises(versioning.VersioningError, match="Missing cache files") as refused:
        versioning.checkout(data, "0123456789abcdef0123456789abcdef.dir", "checkouts/v9")
    assert "0123456789abcdef0123456789abcdef.dir" in str(refused.value)
    assert not (data / "checkouts" / "v9.dvc").exists() and not (data / "checkouts" / "v9").exists()


def test_a_push_that_fails_says_why(tmp_path: Path) -> None:
    data, remote = tmp_path / "data", tmp_path / "remote"
    atomic.write_npz(data / "dataset" / "base.npz", x=np.zeros((2, 28, 28), np.uint8), y=np.array(["a", "b"]))
    versioning.ensure_project(data, remote)
    remote.rmdir()
    remote.write_text("a file where the remote folder should be")
    with pytest.raises(versioning.VersioningError, match="dvc push .*Not a directory"):
        versioning.commit(data, "dataset")
