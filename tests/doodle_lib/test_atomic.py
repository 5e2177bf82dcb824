"""Atomic writes: the whole file or the old one, created as open() would create it."""
import os

from doodle_lib import atomic


def test_a_written_file_takes_the_umask_not_0600_and_leaves_no_temporary_file(tmp_path):
    # The web app writes drawings that an Airflow worker running as another user reads.
    previous = os.umask(0o022)
    try:
        atomic.write_bytes(tmp_path / "drawing.json", b"{}")
        atomic.write_bytes(tmp_path / "drawing.json", b"[]")  # replaced whole
    finally:
        os.umask(previous)
    assert (tmp_path / "drawing.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "drawing.json").read_bytes() == b"[]"
    assert [p.name for p in tmp_path.iterdir()] == ["drawing.json"]
