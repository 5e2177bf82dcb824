"""Resumable, size-checked downloads of Google's Quick, Draw! files into the sample's folder layout."""
from __future__ import annotations

import io
import os
import re
import unicodedata
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http.client import HTTPException, HTTPResponse
from pathlib import Path
from typing import NamedTuple

import numpy as np
from numpy.lib import format as npy_format
from tqdm import tqdm

from doodle_lib import atomic
from doodle_lib.settings import get_settings

KINDS = {"numpy_bitmap": ".npy", "simplified": ".ndjson"}
PIXELS = 28 * 28  # one flattened bitmap row
CHUNK = 1 << 16
HEADER_PROBE = 4096  # Google's headers are 128 bytes; a header longer than this is not one of theirs
ATTEMPTS = 3  # transfers of one file per call: a dropped stream resumes at once from where it stopped
TIMEOUT = 60.0  # seconds of silence before a connect or read gives up


class DownloadError(RuntimeError):
    """A download that cannot be done; the message names the file and the problem."""


class _Corrupt(DownloadError):
    """The bytes cannot make a correct file; the .part is deleted so no rerun builds on them."""


class _Unsatisfiable(_Corrupt):
    """The server answered 416: the file is shorter than the byte range asked for."""

    def __init__(self, url: str, total: int | None):
        super().__init__(f"size mismatch: {url} holds only {total} bytes, fewer than asked for")
        self.total = total


class _Interrupted(DownloadError):
    """The stream stopped before the announced size; the .part stays so the next attempt resumes."""


@dataclass(frozen=True)
class _Job:
    """One file to fetch: which remote bytes follow which local prefix, and where they stop."""

    url: str
    category: str
    final: Path
    prefix: bytes = b""  # written before the remote bytes: the .npy header of a cut file
    start: int = 0  # first remote byte wanted
    stop: int | None = None  # one past the last remote byte wanted; None means the end of the file
    lines: int | None = None  # stop after this many complete lines (a cut .ndjson)

    @property
    def part(self) -> Path:
        return self.final.with_name(self.final.name + ".part")


def validate_category(category: str) -> str:
    """Return category if it is safe as a file name and URL segment, else raise DownloadError."""
    if not isinstance(category, str):
        raise DownloadError(f"invalid category name {category!r}: not a string")
    if not category.strip():
        raise DownloadError(f"invalid category name {category!r}: empty")
    if category != category.strip() or category.startswith("."):
        raise DownloadError(f"invalid category name {category!r}: leading or trailing space, or a leading dot")
    if "/" in category or "\\" in category or ".." in category:
        raise DownloadError(f"invalid category name {category!r}: contains a path separator or '..'")
    if any(unicodedata.category(ch) == "Cc" for ch in category):
        raise DownloadError(f"invalid category name {category!r}: contains control characters")
    return category


def category_url(base_url: str, kind: str, category: str) -> str:
    """The URL of one category's file of one kind under base_url."""
    return f"{base_url.rstrip('/')}/{kind}/{urllib.parse.quote(category, safe='')}{KINDS[kind]}"


def download(
    categories: Iterable[str],
    dest_dir: Path | str | None = None,
    base_url: str | None = None,
    kinds: Sequence[str] = tuple(KINDS),
    max_per_category: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Fetch several categories (see download_category); every name is checked, and every missing file asked for
    with a one-byte request, before the first transfer: a misspelt last name fails before hours of downloads."""
    names = list(dict.fromkeys(validate_category(c) for c in categories))
    files = [file for name in names for file in _plan(name, dest_dir, base_url, kinds, max_per_category)]
    missing = [file for file in files if not _already_done(file.final, file.kind, max_per_category)]
    for file in missing:
        file.final.parent.mkdir(parents=True, exist_ok=True)  # a bad destination fails before any request
        _open(file.url, 0, 1, file.category).close()
    for file in missing:
        _get(file, max_per_category, progress)
    return [file.final for file in files]


def download_category(
    category: str,
    dest_dir: Path | str | None = None,
    base_url: str | None = None,
    kinds: Sequence[str] = tuple(KINDS),
    max_per_category: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Fetch one category's files to dest_dir/<kind>/<category>.npy|.ndjson and return their paths."""
    files = _plan(category, dest_dir, base_url, kinds, max_per_category)
    for file in files:
        if not _already_done(file.final, file.kind, max_per_category):
            _get(file, max_per_category, progress)
    return [file.final for file in files]


class _File(NamedTuple):
    """One category's file of one kind: where it is on the server and where it goes."""

    url: str
    category: str
    kind: str
    final: Path


def _plan(
    category: str, dest_dir: Path | str | None, base_url: str | None, kinds: Sequence[str], max_per_category: int | None
) -> list[_File]:
    """Check the arguments and name each of category's files, one per kind."""
    validate_category(category)
    if dest_dir is None or base_url is None:
        settings = get_settings()
        dest_dir = settings.downloads_dir if dest_dir is None else dest_dir
        base_url = settings.quickdraw_url if base_url is None else base_url
    url_parts = urllib.parse.urlsplit(base_url)
    if url_parts.scheme not in ("http", "https") or not url_parts.netloc:
        raise DownloadError(f"base URL must be http(s)://host/...: {base_url!r}")
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise DownloadError(f"unknown kinds {unknown}; expected some of {list(KINDS)}")
    if max_per_category is not None and (
        isinstance(max_per_category, bool) or not isinstance(max_per_category, int) or max_per_category < 1
    ):
        raise DownloadError(f"max_per_category must be a positive integer or None, not {max_per_category!r}")
    return [
        _File(category_url(base_url, kind, category), category, kind, Path(dest_dir) / kind / f"{category}{KINDS[kind]}")
        for kind in kinds
    ]


def _get(file: _File, max_per_category: int | None, progress: bool) -> None:
    """Download one file the local files do not satisfy; one downloaded whole gets its marker."""
    file.final.parent.mkdir(parents=True, exist_ok=True)
    _whole_marker(file.final).unlink(missing_ok=True)
    _download_file(file.url, file.category, file.kind, file.final, max_per_category, progress)
    if max_per_category is None:
        _whole_marker(file.final).touch()


def _whole_marker(final: Path) -> Path:
    """The empty file beside one downloaded whole: a file cut to max_per_category reaches the same final name."""
    return final.with_name(final.name + ".whole")


def _already_done(final: Path, kind: str, limit: int | None) -> bool:
    """Whether final satisfies the request, judged from the local files alone (no request)."""
    if not final.exists():
        return False
    if limit is None:
        return _whole_marker(final).exists()
    if kind == "numpy_bitmap":
        try:
            with final.open("rb") as f:
                return _npy_header(f.read(HEADER_PROBE), str(final))[1] >= limit
        except DownloadError:
            return False
    return _count_lines(final, limit) >= limit


def _download_file(url: str, category: str, kind: str, final: Path, limit: int | None, progress: bool) -> None:
    """Plan, fetch, check and place one file; corrupt bytes never survive as a .part."""
    job = _Job(url, category, final)
    try:
        if limit is not None and kind == "numpy_bitmap":
            job = _cut_npy_job(job, limit)
        elif limit is not None:
            job = _Job(url, category, final, lines=limit)
        _fetch(job, progress)
    except _Corrupt:
        job.part.unlink(missing_ok=True)
        raise


def _cut_npy_job(job: _Job, limit: int) -> _Job:
    """Read the remote .npy header and plan a file of its first `limit` rows under a header of our own."""
    with _open(job.url, 0, HEADER_PROBE, job.category) as response:
        head = _read_up_to(response, HEADER_PROBE, job.url)
    header_len, rows = _npy_header(head, job.url)
    rows = min(rows, limit)
    header = io.BytesIO()
    npy_format.write_array_header_1_0(
        header, {"descr": npy_format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": (rows, PIXELS)}
    )
    return _Job(job.url, job.category, job.final, header.getvalue(), header_len, header_len + rows * PIXELS)


def _npy_header(head: bytes, source: str) -> tuple[int, int]:
    """Header length and row count of a Quick, Draw! bitmap file from its first bytes."""
    stream = io.BytesIO(head)
    readers = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}
    try:
        version = npy_format.read_magic(stream)
        if version not in readers:
            raise ValueError(f"unsupported .npy format version {version}")
        shape, fortran_order, dtype = readers[version](stream)
    except ValueError as exc:  # numpy's answer to a bad magic string, a cut header or an unparsable one
        raise _Corrupt(f"{source} is not a valid .npy file: {exc}") from None
    if dtype != np.uint8 or fortran_order or len(shape) != 2 or shape[1] != PIXELS:
        raise _Corrupt(f"{source} is not a Quick, Draw! bitmap file: {dtype} {shape}, expected uint8 (N, {PIXELS})")
    return stream.tell(), shape[0]


def _fetch(job: _Job, progress: bool) -> None:
    """Complete job's .part, resuming what it holds, then check it and move it into place."""
    for _ in range(ATTEMPTS):
        try:
            size = _transfer(job, _held(job), progress)
        except _Interrupted as exc:
            interrupted = exc
            continue
        _finish(job, size)
        return
    raise DownloadError(f"{interrupted} (tried {ATTEMPTS} times); run again to resume from {job.part}")


def _held(job: _Job) -> int | None:
    """Remote bytes the .part already holds, or None when it must start over (missing or not this job's)."""
    try:
        size = job.part.stat().st_size
        with job.part.open("rb") as f:
            prefix = f.read(len(job.prefix))
    except FileNotFoundError:
        return None
    held = size - len(job.prefix)
    # A different prefix or too many bytes means the .part was left by a run that asked for something else.
    if prefix != job.prefix or (job.stop is not None and job.start + held > job.stop):
        return None
    if job.lines is not None and _count_lines(job.part, job.lines + 1) > job.lines:
        return None
    return held


def _transfer(job: _Job, held: int | None, progress: bool) -> int:
    """Append the rest of job's bytes to its .part and return the size the finished .part must have."""
    if held is not None and (
        (job.stop is not None and job.start + held == job.stop)
        or (job.lines is not None and _count_lines(job.part, job.lines) == job.lines)
    ):
        return len(job.prefix) + held
    begin = job.start + (held or 0)
    try:
        response = _open(job.url, begin, job.stop, job.category)
    except _Unsatisfiable as exc:
        # A whole-file .part that already holds every byte (the last run stopped before the rename) is done.
        if job.stop is None and job.lines is None and held and exc.total == held:
            return held
        raise
    with response:
        if response.status == 206:
            first, last, total = _content_range(response.headers.get("Content-Range"), job.url)
            sent_from, sent_to = first, last + 1
        else:
            # The server ignored Range and sends the whole file: start the .part over cleanly.
            total = _int_or_none(response.headers.get("Content-Length"))
            held, begin, sent_from, sent_to = None, job.start, 0, total
        if total is None:
            raise DownloadError(f"{job.url}: the server announced no size, so a cut file could not be told apart")
        want = job.stop if job.stop is not None else total
        if total < want:
            raise _Corrupt(f"size mismatch: {job.url} holds {total} bytes but {want} are needed")
        if response.status == 206 and (sent_from, sent_to) != (begin, want):
            raise _Corrupt(f"{job.url}: the server sent bytes {sent_from}-{sent_to - 1}, not {begin}-{want - 1}")
        return _copy(job, response, held, begin - sent_from, begin, want, progress)


def _copy(job: _Job, response: HTTPResponse, held: int | None, skip: int, pos: int, want: int, progress: bool) -> int:
    """Stream response into the .part from remote offset pos up to want (or the wanted lines); return its size."""
    if len(_read_up_to(response, skip, job.url)) != skip:
        raise _Interrupted(f"{job.url}: the connection dropped before byte {skip}")
    lines = _count_lines(job.part) if held and job.lines is not None else 0
    with job.part.open("ab" if held is not None else "wb") as out, tqdm(
        total=None if job.lines is not None else want - job.start,  # a cut .ndjson's size is known only at the end
        initial=pos - job.start,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=f"{job.final.parent.name}/{job.final.name}",
        disable=None if progress else True,  # None: tqdm shows the bar only on a terminal
    ) as bar:
        if held is None:
            out.write(job.prefix)
        while pos < want:
            chunk = _read(response, min(CHUNK, want - pos), job.url)
            if not chunk:
                raise _Interrupted(f"{job.url}: the connection dropped after {pos} of {want} bytes")
            if job.lines is not None:
                chunk, done = _take_lines(chunk, job.lines - lines)
                lines += chunk.count(b"\n")
            out.write(chunk)
            pos += len(chunk)
            bar.update(len(chunk))
            if job.lines is not None and done:
                break
    return len(job.prefix) + pos - job.start


def _finish(job: _Job, size: int) -> None:
    """Check the .part's size (and .npy header), make it durable, then rename it to the final name."""
    actual = job.part.stat().st_size
    if actual != size:
        raise _Corrupt(f"size mismatch: {job.part} has {actual} bytes, expected {size}")
    if job.final.suffix == ".npy":
        with job.part.open("rb") as f:
            header_len, rows = _npy_header(f.read(HEADER_PROBE), job.url)
        if actual != header_len + rows * PIXELS:
            raise _Corrupt(
                f"size mismatch: {job.url} has {actual} bytes but its header says {rows} rows"
                f" ({header_len + rows * PIXELS} bytes)"
            )
    with job.part.open("rb+") as f:
        os.fsync(f.fileno())
    os.replace(job.part, job.final)
    atomic.fsync_dir(job.final.parent)


def _open(url: str, start: int, stop: int | None, category: str) -> HTTPResponse:
    """GET url from byte start (up to stop), or raise a DownloadError saying why not."""
    headers = {"Accept-Encoding": "identity"}  # sizes must be the file's own, not a compressed stream's
    if start or stop is not None:
        headers["Range"] = f"bytes={start}-{'' if stop is None else stop - 1}"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 404:
            raise DownloadError(f"no such category on the server: {category!r} ({url} answered 404)") from None
        if exc.code == 416:
            total = exc.headers.get("Content-Range", "").rpartition("/")[2]
            raise _Unsatisfiable(url, _int_or_none(total)) from None
        raise DownloadError(f"{url} answered HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError, HTTPException) as exc:
        raise DownloadError(f"cannot connect to {url}: {getattr(exc, 'reason', exc)}") from None


def _read(response: HTTPResponse, size: int, url: str) -> bytes:
    """Up to size bytes of the body; a network failure becomes an interruption to resume from."""
    try:
        return response.read(size)
    except (OSError, HTTPException) as exc:
        raise _Interrupted(f"{url}: the connection failed mid-transfer: {exc!r}") from None


def _read_up_to(response: HTTPResponse, size: int, url: str) -> bytes:
    """Exactly size bytes of the body, or fewer if it ends first."""
    chunks = []
    while size > 0 and (chunk := _read(response, min(CHUNK, size), url)):
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _content_range(value: str | None, url: str) -> tuple[int, int, int | None]:
    """First byte, last byte and total size from a 206 answer's Content-Range."""
    match = re.fullmatch(r"bytes (\d+)-(\d+)/(\d+|\*)", (value or "").strip())
    if not match:
        raise _Corrupt(f"{url}: unreadable Content-Range {value!r} in a 206 answer")
    return int(match[1]), int(match[2]), _int_or_none(match[3])


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _take_lines(chunk: bytes, wanted: int) -> tuple[bytes, bool]:
    """The chunk cut after its wanted-th newline, and whether it had that many."""
    end = -1
    for _ in range(wanted):
        end = chunk.find(b"\n", end + 1)
        if end < 0:
            return chunk, False
    return chunk[: end + 1], True


def _count_lines(path: Path, enough: int | None = None) -> int:
    """Newlines in path, counting no further than `enough`."""
    count = 0
    with path.open("rb") as f:
        while (chunk := f.read(CHUNK)) and (enough is None or count < enough):
            count += chunk.count(b"\n")
    return count
