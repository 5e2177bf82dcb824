"""doodle_lib.download against a real local HTTP server that serves the shipped sample as Google would."""
from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from doodle_lib.download import DownloadError, download, download_category
from doodle_lib.settings import PROJECT_ROOT

SAMPLE = PROJECT_ROOT / "data" / "quickdraw-sample"
CATEGORIES = ("apple", "fish")
NPY_HEADER = 128  # the sample's (and Google's) .npy v1.0 header length


@dataclass
class Served:
    """One request as the server saw it."""

    path: str
    range: str | None
    status: int
    sent: int  # body bytes written (before the client may hang up)


class FakeGoogle(ThreadingHTTPServer):
    """Serves root like storage.googleapis.com; can ignore Range and cut responses short."""

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.url = f"http://127.0.0.1:{self.server_address[1]}/quickdraw"
        self.ignore_range = False
        self.cuts: list[int | None] = []  # per coming request: send only this many body bytes, then hang up
        self.log: list[Served] = []

    def sent(self) -> int:
        return sum(r.sent for r in self.log)


class _Handler(BaseHTTPRequestHandler):
    server: FakeGoogle

    def do_GET(self) -> None:
        srv = self.server
        relative = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).removeprefix("/quickdraw/")
        path = (srv.root / relative).resolve()
        cut = srv.cuts.pop(0) if srv.cuts else None
        wanted = self.headers.get("Range")
        if not path.is_relative_to(srv.root) or not path.is_file():
            srv.log.append(Served(self.path, wanted, 404, 0))
            self.send_error(404)
            return
        data = path.read_bytes()
        status, body, headers = 200, data, {}
        if wanted and not srv.ignore_range:
            match = re.fullmatch(r"bytes=(\d+)-(\d*)", wanted)
            assert match, wanted
            first = int(match[1])
            last = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
            if first >= len(data):
                srv.log.append(Served(self.path, wanted, 416, 0))
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status, body = 206, data[first : last + 1]
            headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
        sent = body if cut is None else body[:cut]
        srv.log.append(Served(self.path, wanted, status, len(sent)))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))  # the full length even when cutting: a dropped link
        self.send_header("Accept-Ranges", "bytes")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(sent)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading once it had enough (a cut file, a header probe)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # urllib would send even 127.0.0.1 through a proxy named in the environment.
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def server(tmp_path: Path):
    root = tmp_path / "remote"
    for kind, suffix in (("numpy_bitmap", ".npy"), ("simplified", ".ndjson")):
        (root / kind).mkdir(parents=True)
        for category in CATEGORIES:
            shutil.copy(SAMPLE / kind / f"{category}{suffix}", root / kind)
    httpd = FakeGoogle(root.resolve())
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)  # quick shutdown
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "downloads"


def files_under(folder: Path) -> list[Path]:
    """Data files and leftovers (.part); not the empty markers beside files downloaded whole."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix != ".whole") if folder.exists() else []


def test_full_download_equals_the_source_byte_for_byte(server: FakeGoogle, dest: Path) -> None:
    paths = download(CATEGORIES, dest, server.url, progress=False)

    assert paths == [dest / k / f"{c}{s}" for c in CATEGORIES for k, s in (("numpy_bitmap", ".npy"), ("simplified", ".ndjson"))]
    for path in paths:
        assert path.read_bytes() == (server.root / path.parent.name / path.name).read_bytes()
    assert files_under(dest) == sorted(paths)  # no .part left behind
    assert [r.range for r in server.log] == ["bytes=0-0"] * 4 + [None] * 4  # each file probed first, then fetched


def test_max_per_category_fetches_only_the_first_rows_and_lines(server: FakeGoogle, dest: Path) -> None:
    npy, ndjson = download_category("apple", dest, server.url, max_per_category=10, progress=False)

    rows = np.load(npy)
    assert rows.shape == (10, 784) and rows.dtype == np.uint8
    np.testing.assert_array_equal(rows, np.load(SAMPLE / "numpy_bitmap" / "apple.npy")[:10])
    lines = ndjson.read_bytes().splitlines(keepends=True)
    assert lines == (SAMPLE / "simplified" / "apple.ndjson").read_bytes().splitlines(keepends=True)[:10]
    assert all(json.loads(line)["word"] == "apple" for line in lines)
    # The .npy came from a header probe and exactly 10 rows, not the whole 1.8 MB file.
    probe, rows_request = server.log[:2]
    assert probe.range == "bytes=0-4095"
    assert rows_request.range == f"bytes={NPY_HEADER}-{NPY_HEADER + 10 * 784 - 1}" and rows_request.sent == 10 * 784


def test_max_per_category_larger_than_the_file_keeps_every_row(server: FakeGoogle, dest: Path) -> None:
    npy, ndjson = download_category("fish", dest, server.url, max_per_category=100_000, progress=False)

    np.testing.assert_array_equal(np.load(npy), np.load(SAMPLE / "numpy_bitmap" / "fish.npy"))
    assert ndjson.read_bytes() == (SAMPLE / "simplified" / "fish.ndjson").read_bytes()


def test_a_dropped_transfer_resumes_with_range(server: FakeGoogle, dest: Path) -> None:
    source = (server.root / "numpy_bitmap" / "apple.npy").read_bytes()
    server.cuts = [100_000]

    (path,) = download_category("apple", dest, server.url, kinds=["numpy_bitmap"], progress=False)

    assert path.read_bytes() == source
    assert [(r.range, r.sent) for r in server.log] == [(None, 100_000), ("bytes=100000-", len(source) - 100_000)]
    assert server.sent() == len(source)


def test_a_rerun_continues_from_the_part_file(server: FakeGoogle, dest: Path) -> None:
    source = (server.root / "simplified" / "fish.ndjson").read_bytes()
    part = dest / "simplified" / "fish.ndjson.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(source[:3000])

    (path,) = download_category("fish", dest, server.url, kinds=["simplified"], progress=False)

    assert path.read_bytes() == source and not part.exists()
    assert [(r.range, r.sent) for r in server.log] == [("bytes=3000-", len(source) - 3000)]


def test_a_part_holding_every_byte_is_finished_without_a_body(server: FakeGoogle, dest: Path) -> None:
    source = (server.root / "simplified" / "fish.ndjson").read_bytes()
    part = dest / "simplified" / "fish.ndjson.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(source)  # as if the last run stopped between the last byte and the rename

    (path,) = download_category("fish", dest, server.url, kinds=["simplified"], progress=False)

    assert path.read_bytes() == source and not part.exists()
    assert [(r.range, r.status) for r in server.log] == [(f"bytes={len(source)}-", 416)]


def test_cut_files_resume_too(server: FakeGoogle, dest: Path) -> None:
    server.cuts = [None, 3000, None, 500]  # the probe and each resume pass; the rows and the lines are cut

    npy, ndjson = download_category("apple", dest, server.url, max_per_category=10, progress=False)

    np.testing.assert_array_equal(np.load(npy), np.load(SAMPLE / "numpy_bitmap" / "apple.npy")[:10])
    assert ndjson.read_bytes().splitlines() == (SAMPLE / "simplified" / "apple.ndjson").read_bytes().splitlines()[:10]
    ranges = [r.range for r in server.log]
    assert ranges[:3] == ["bytes=0-4095", f"bytes={NPY_HEADER}-{NPY_HEADER + 7839}", f"bytes={NPY_HEADER + 3000}-{NPY_HEADER + 7839}"]
    assert ranges[3:] == [None, "bytes=500-"]


@pytest.mark.parametrize("max_per_category", [None, 10])
def test_a_server_that_ignores_range_still_gives_correct_files(
    server: FakeGoogle, dest: Path, max_per_category: int | None
) -> None:
    server.ignore_range = True
    server.cuts = [50_000] if max_per_category is None else [None, 3000]  # a drop, then a resume the server ignores
    stale = dest / "simplified" / "apple.ndjson.part"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"not the start of the file")  # must be thrown away, not resumed from

    npy, ndjson = download_category("apple", dest, server.url, max_per_category=max_per_category, progress=False)

    source_rows = np.load(SAMPLE / "numpy_bitmap" / "apple.npy")
    source_lines = (SAMPLE / "simplified" / "apple.ndjson").read_bytes().splitlines(keepends=True)
    if max_per_category is None:
        assert npy.read_bytes() == (SAMPLE / "numpy_bitmap" / "apple.npy").read_bytes()
        assert ndjson.read_bytes() == b"".join(source_lines)
    else:
        np.testing.assert_array_equal(np.load(npy), source_rows[:10])
        assert ndjson.read_bytes() == b"".join(source_lines[:10])
    assert all(r.status == 200 for r in server.log)
    assert files_under(dest) == [npy, ndjson]


def test_an_unknown_category_names_it_and_leaves_no_file(server: FakeGoogle, dest: Path) -> None:
    with pytest.raises(DownloadError, match="no such category on the server: 'hot air balloon'"):
        download(["hot air balloon"], dest, server.url, progress=False)

    assert files_under(dest) == []
    assert server.log[0].path == "/quickdraw/numpy_bitmap/hot%20air%20balloon.npy"


def test_names_with_spaces_are_quoted_in_the_url_and_kept_in_the_file_name(server: FakeGoogle, dest: Path) -> None:
    shutil.copy(server.root / "numpy_bitmap" / "apple.npy", server.root / "numpy_bitmap" / "hot air balloon.npy")

    (path,) = download_category("hot air balloon", dest, server.url, kinds="numpy_bitmap", progress=False)

    assert path == dest / "numpy_bitmap" / "hot air balloon.npy"
    assert path.read_bytes() == (SAMPLE / "numpy_bitmap" / "apple.npy").read_bytes()


def test_a_refused_connection_is_a_clear_error(dest: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port once the probe socket is closed.
    with pytest.raises(DownloadError, match=f"cannot connect to http://127.0.0.1:{port}/.*refused"):
        download_category("apple", dest, f"http://127.0.0.1:{port}", progress=False)
    assert files_under(dest) == []


@pytest.mark.parametrize("max_per_category", [None, 200])
def test_a_size_mismatch_leaves_neither_part_nor_file(server: FakeGoogle, dest: Path, max_per_category: int | None) -> None:
    # The header promises 2400 rows; the file holds 100.
    source = (server.root / "numpy_bitmap" / "apple.npy").read_bytes()
    (server.root / "numpy_bitmap" / "apple.npy").write_bytes(source[: NPY_HEADER + 100 * 784])

    with pytest.raises(DownloadError, match="size mismatch"):
        download_category("apple", dest, server.url, kinds=["numpy_bitmap"], max_per_category=max_per_category, progress=False)

    assert files_under(dest) == []


@pytest.mark.parametrize("max_per_category", [None, 10])
def test_a_file_that_is_not_npy_is_rejected(server: FakeGoogle, dest: Path, max_per_category: int | None) -> None:
    (server.root / "numpy_bitmap" / "apple.npy").write_bytes(b"<html>Service Unavailable</html>\n" * 200)

    with pytest.raises(DownloadError, match="not a valid .npy file"):
        download_category("apple", dest, server.url, kinds=["numpy_bitmap"], max_per_category=max_per_category, progress=False)

    assert files_under(dest) == []


def test_a_link_that_keeps_dropping_keeps_the_part_for_the_next_run(server: FakeGoogle, dest: Path) -> None:
    source = (server.root / "numpy_bitmap" / "apple.npy").read_bytes()
    server.cuts = [100_000] * 3
    part = dest / "numpy_bitmap" / "apple.npy.part"

    with pytest.raises(DownloadError, match="dropped after 300000 of .*run again to resume"):
        download_category("apple", dest, server.url, kinds=["numpy_bitmap"], progress=False)

    assert files_under(dest) == [part] and part.read_bytes() == source[:300_000]
    (path,) = download_category("apple", dest, server.url, kinds=["numpy_bitmap"], progress=False)
    assert path.read_bytes() == source and server.log[-1].range == "bytes=300000-"


@pytest.mark.parametrize(
    "name", ["", "   ", "..", "../apple", "a/b", "a\\b", "cat\n", "cat\x00", "c\x1bat", ".hidden", " apple", None]
)
def test_bad_names_are_rejected_before_any_request(server: FakeGoogle, dest: Path, name: object) -> None:
    with pytest.raises(DownloadError, match="invalid category name"):
        download(["apple", name], dest, server.url, progress=False)  # type: ignore[list-item]
    with pytest.raises(DownloadError, match="invalid category name"):
        download_category(name, dest, server.url, progress=False)  # type: ignore[arg-type]

    assert server.log == [] and files_under(dest) == []


@pytest.mark.parametrize("max_per_category", [None, 10])
def test_a_rerun_skips_complete_files_without_a_request(
    server: FakeGoogle, dest: Path, max_per_category: int | None
) -> None:
    first = download(CATEGORIES, dest, server.url, max_per_category=max_per_category, progress=False)
    stamps = [p.stat().st_mtime_ns for p in first]
    server.log.clear()

    again = download(CATEGORIES, dest, server.url, max_per_category=max_per_category, progress=False)

    assert again == first and [p.stat().st_mtime_ns for p in again] == stamps
    assert server.log == []


def test_a_whole_download_after_a_cut_one_fetches_the_rest(server: FakeGoogle, dest: Path) -> None:
    download_category("apple", dest, server.url, max_per_category=10, progress=False)

    npy, ndjson = download_category("apple", dest, server.url, progress=False)

    for path in (npy, ndjson):
        assert path.read_bytes() == (server.root / path.parent.name / path.name).read_bytes()


def test_a_larger_max_refetches_a_cut_file(server: FakeGoogle, dest: Path) -> None:
    download_category("apple", dest, server.url, max_per_category=10, progress=False)

    npy, ndjson = download_category("apple", dest, server.url, max_per_category=20, progress=False)

    assert np.load(npy).shape == (20, 784) and len(ndjson.read_bytes().splitlines()) == 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kinds": ["bitmaps"]}, "unknown kinds"),
        ({"max_per_category": 0}, "max_per_category"),
        ({"base_url": "file:///etc"}, "base URL"),
    ],
)
def test_bad_arguments_are_rejected_before_any_request(
    server: FakeGoogle, dest: Path, kwargs: dict, message: str
) -> None:
    with pytest.raises(DownloadError, match=message):
        download_category("apple", dest, **{"base_url": server.url, **kwargs}, progress=False)
    assert server.log == []


def test_an_unknown_later_category_fails_before_any_transfer(server: FakeGoogle, dest: Path) -> None:
    with pytest.raises(DownloadError, match="no such category on the server: 'dgo'"):
        download(["apple", "fish", "dgo"], dest, server.url, progress=False)

    assert files_under(dest) == []
    assert server.sent() <= 4  # one-byte probes of apple's and fish's files, nothing more
    assert [r.path for r in server.log][-1] == "/quickdraw/numpy_bitmap/dgo.npy"
