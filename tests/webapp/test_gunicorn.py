"""The web app under real gunicorn: concurrent feedback writes, hot swap by polling, multiprocess metrics."""
from __future__ import annotations

import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from doodle_lib import tracking
from tests.conftest import fixture_drawings
from tests.webapp.load import Load
from tests.webapp.serving import app_env, get_json, gunicorn_app
from tests.webapp.test_api import samples

pytestmark = pytest.mark.slow
STROKES = fixture_drawings()[40][2]
POLL_SECONDS = 0.5
BODY_TIMEOUT_SECONDS = 3


@pytest.fixture
def served(settings, versions, tmp_path):
    env = {**app_env(settings, POLL_SECONDS), "DOODLE_WEBAPP_BODY_TIMEOUT": str(BODY_TIMEOUT_SECONDS)}
    with gunicorn_app(env, tmp_path) as url:
        yield url


def test_the_log_says_where_the_web_app_listens(served, tmp_path):
    port = served.rsplit(":", 1)[1]
    assert f"web app listening on http://127.0.0.1:{port}" in (tmp_path / f"gunicorn-{port}.log").read_text()


def post_many(url: str, count: int, label: str, errors: list) -> None:
    """`count` feedback posts on one keep-alive connection."""
    port = int(url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = json.dumps({"strokes": STROKES, "label": label, "predicted_label": "cat", "model_version": "1"})
    for _ in range(count):
        connection.request("POST", "/api/feedback", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        if response.status != 201:
            errors.append(response.status)
    connection.close()


def check_folder(root: Path) -> tuple[int, list[str]]:
    """Complete pairs and problems seen by a reader that trusts a JSON only (it is written last)."""
    problems, complete = [], 0
    for document in root.glob("*/*.json"):
        if document.name.startswith("."):
            continue
        png = document.with_suffix(".png")
        try:
            record = json.loads(document.read_text())
            with Image.open(png) as image:
                image.load()
                size = image.size
        except FileNotFoundError as error:
            if document.exists():  # not moved away meanwhile: a JSON without its PNG
                problems.append(f"{document.name}: {error}")
            continue
        except (ValueError, OSError) as error:
            problems.append(f"{document.name}: {error}")
            continue
        if size != (28, 28) or record["label"] != document.parent.name or not record["strokes"]:
            problems.append(f"{document.name}: wrong content")
        complete += 1
    return complete, problems


def test_8_threads_x_500_feedback_posts_leave_4000_complete_pairs(served, settings):
    errors, problems, polls = [], [], [0]
    done = threading.Event()

    def reader():
        while not done.is_set():
            problems.extend(check_folder(settings.feedback_dir)[1])
            polls[0] += 1

    watcher = threading.Thread(target=reader, daemon=True)
    watcher.start()
    labels = ["apple", "bicycle", "cat", "diamond", "eye", "fish", "cat", "apple"]
    posters = [threading.Thread(target=post_many, args=(served, 500, label, errors)) for label in labels]
    for poster in posters:
        poster.start()
    for poster in posters:
        poster.join(300)
    done.set()
    watcher.join(60)
    assert errors == [] and problems == []
    assert polls[0] >= 3  # the reader really watched during the writes
    complete, problems = check_folder(settings.feedback_dir)
    assert complete == 4000 and problems == []
    assert len(list(settings.feedback_dir.glob("*/*.png"))) == 4000
    assert list(settings.feedback_dir.glob("*/.*")) == []  # no temporary file left behind
    metrics = samples(urllib.request.urlopen(f"{served}/metrics").read().decode())
    assert metrics[("doodle_feedback_waiting", ())] == 4000
    posted = sum(v for (name, _), v in metrics.items() if name == "doodle_feedback_total")
    assert posted == 4000  # counted across both workers (multiprocess mode)


def test_alias_move_switches_version_within_poll_interval_without_failures(served, settings, versions):
    assert get_json(f"{served}/api/model")["version"] == versions[0]
    with Load(served, "/api/predict", {"strokes": STROKES}, threads=4) as load:
        time.sleep(2)
        tracking.set_production(settings, versions[1])
        moved = time.monotonic()
        deadline = moved + 15
        while time.monotonic() < deadline and not load.first_time_all_serve(versions[1], moved):
            time.sleep(0.2)
        time.sleep(2)  # keep the load on after the switch
    switched = load.first_time_all_serve(versions[1], moved)
    assert load.failures() == []
    assert switched is not None, "never served only the new version"
    # Polling interval, plus loading the new checkpoint in the background (seconds under this load).
    assert switched - moved < POLL_SECONDS + 5
    assert len(load.answers) > 200
    workers = samples(urllib.request.urlopen(f"{served}/metrics").read().decode())
    serving = {k: v for k, v in workers.items() if k[0] == "doodle_serving_model_version"}
    assert len(serving) == 2 and set(serving.values()) == {float(versions[1])}
    reloads = {dict(k[1])["result"]: v for k, v in workers.items() if k[0] == "doodle_model_reloads_total"}
    # Each worker loaded the new version once (start-up loads are not reloads); none failed.
    assert reloads == {"success": 2.0, "failure": 0.0}


def raw_exchange(url: str, head: bytes, body: bytes, half_close: bool = False) -> bytes:
    """Send a request as bytes (optionally ending the sending side early, as a client that gave up), read the answer."""
    import socket

    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(head + body)
        if half_close:
            connection.shutdown(socket.SHUT_WR)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = connection.recv(65536)
            if not chunk:
                break
            answer += chunk
    return answer


def test_a_body_cut_short_or_chunked_past_the_limit_is_refused_not_stored(served, settings):
    """gunicorn hands the app a body as far as it came: a truncated one or the first 16 MB of a longer chunked one
    would parse as complete JSON and be stored."""
    from webapp import MAX_BODY_BYTES

    document = json.dumps({"strokes": STROKES, "label": "cat"}).encode()
    head = b"POST /api/feedback HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
    short = raw_exchange(served, head + b"Content-Length: %d\r\n\r\n" % (len(document) + 100), document, half_close=True)
    assert short.startswith(b"HTTP/1.1 400") and b"ended after" in short, short[:300]
    padded = document + b" " * (MAX_BODY_BYTES - len(document)) + b"and then some more"
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(padded[i:i + 2**20]), padded[i:i + 2**20]) for i in range(0, len(padded), 2**20))
    chunked = raw_exchange(served, head + b"Transfer-Encoding: chunked\r\n\r\n", chunks + b"0\r\n\r\n")
    assert chunked.startswith(b"HTTP/1.1 413") and b"too large" in chunked, chunked[:300]
    assert not settings.feedback_dir.exists() or not any(settings.feedback_dir.rglob("*.json"))
    whole = raw_exchange(served, head + b"Transfer-Encoding: chunked\r\n\r\n", b"%x\r\n%s\r\n0\r\n\r\n" % (len(document), document))
    assert whole.startswith(b"HTTP/1.1 201"), whole[:300]  # a chunked body within the limit is fine


def test_a_body_that_stops_arriving_is_a_408(served, settings):
    import socket

    document = json.dumps({"strokes": STROKES, "label": "cat"}).encode()
    head = b"POST /api/feedback HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    port = int(served.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=BODY_TIMEOUT_SECONDS + 30) as stalled:
        stalled.sendall(head % len(document) + document[:40])  # then nothing more, the connection left open
        started = time.monotonic()
        for _ in range(4):  # the workers answer others meanwhile
            assert get_json(f"{served}/api/model")["version"] == "1"
        answer = b""
        while not answer.rstrip().endswith(b"}") and (chunk := stalled.recv(65536)):
            answer += chunk
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408"), answer[:300]
    assert b"the request body stopped arriving: nothing came for 3 s" in answer
    assert BODY_TIMEOUT_SECONDS - 0.5 < waited < BODY_TIMEOUT_SECONDS + 20
    assert not settings.feedback_dir.exists() or not any(settings.feedback_dir.rglob("*.json"))


def test_a_refused_image_is_a_400_without_a_traceback_in_the_log(served, tmp_path):
    import base64
    import io

    gif = io.BytesIO()
    Image.new("L", (40, 40), 255).save(gif, format="GIF")
    body = json.dumps({"image": base64.b64encode(gif.getvalue()).decode()}).encode()
    request = urllib.request.Request(f"{served}/api/predict", body, {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=30)
    assert refused.value.code == 400 and "GIF" in json.loads(refused.value.read())["error"]
    port = served.rsplit(":", 1)[1]
    assert "Traceback" not in (tmp_path / f"gunicorn-{port}.log").read_text()  # gevent's pool printed one a refusal
