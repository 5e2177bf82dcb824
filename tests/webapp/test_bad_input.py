"""Malformed requests get a 4xx naming the problem, never a 5xx, and never write a file."""
from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import pytest
from PIL import Image

from doodle_lib.drawing import MAX_POINTS
from tests.conftest import fixture_drawings

STROKES = fixture_drawings()[5][2]
TRICKS = ["../../etc/passwd", "cat/../cat", "..", ".hidden", "cat\x00", "/tmp/x", "C:\\temp\\x", "cat\n", "%2e%2e%2f"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image_bytes(fmt: str, side: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (side, side), 255).save(buffer, format=fmt, **({"compress_level": 0} if fmt == "PNG" else {}))
    return buffer.getvalue()


def broken_second_chunk() -> bytes:
    """A PNG whose second IDAT chunk has a garbage type: Pillow opens it, then raises SyntaxError while decoding."""
    data = image_bytes("PNG", side=400)  # uncompressed: 160 kB, so several IDAT chunks
    second = data.index(b"IDAT", data.index(b"IDAT") + 4)
    return data[:second] + b"\xcd\xb4\xd3A" + data[second + 4:]


def truncated_header() -> bytes:
    """A PNG whose IHDR chunk is 5 bytes long instead of 13 (Pillow: ValueError)."""
    chunk = b"IHDR" + bytes(5)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 5) + chunk + struct.pack(">I", zlib.crc32(chunk))


FEEDBACK = {"strokes": STROKES, "label": "cat", "predicted_label": "fish", "model_version": "1"}
PROPOSAL = {"strokes": STROKES, "name": "dog", "predicted_label": "fish", "model_version": "1"}
CASES = [
    # (path, json body or (raw bytes, content type), status, words in the message)
    ("/api/predict", {"strokes": "abc"}, 422, "strokes"),
    ("/api/predict", {"strokes": [[["a"], [1]]]}, 422, "strokes.0.0.0"),
    ("/api/predict", {"strokes": [[[False], [0]]]}, 422, "strokes.0.0.0"),  # schemathesis found it
    ("/api/predict", {"strokes": [[[1], ["2.5"]]]}, 422, "strokes.0.1.0"),
    ("/api/predict", {"strokes": STROKES, "k": "three"}, 422, "k"),
    ("/api/predict", {"strokes": STROKES, "k": 0}, 422, "k"),
    *[("/api/predict", {"strokes": STROKES, "k": k}, 422, "k") for k in (True, "2", 2.0)],
    ("/api/predict", {}, 422, "exactly one of 'strokes' or 'image'"),
    ("/api/predict", {"strokes": STROKES, "image": b64(image_bytes("PNG"))}, 422, "exactly one"),
    ("/api/predict", {"strokes": STROKES, "extra": 1}, 422, "extra"),
    ("/api/predict", {"strokes": []}, 422, "strokes"),
    ("/api/predict", {"strokes": [[[], []]]}, 400, "stroke 0 is empty"),
    ("/api/predict", {"strokes": [[[1, 2], [1]]]}, 400, "2 x values but 1 y values"),
    ("/api/predict", {"strokes": [[[1, 2], [1, 2], [0]]]}, 400, "stroke 0 has 2 points but 1 times"),
    ("/api/predict", {"strokes": [[[1, 2], [1, 2]]] * 513}, 422, "strokes: too many: 513 (at most 512)"),
    ("/api/feedback", (json.dumps({"strokes": [[[0] * 65_536] * 2] * 50, "label": "cat"}, separators=(",", ":")),
                       "application/json"), 413,
     "values: a drawing has at most 65536 points"),
    ("/api/predict", ('{"strokes": [[[1, NaN], [1, 2]]]}', "application/json"), 422, "finite number"),
    ("/api/predict", ('{"strokes": [[[1, Infinity], [1, 2]]]}', "application/json"), 422, "finite number"),
    ("/api/predict", ('{"strokes": [[[1, 2], [1, 2]]', "application/json"), 400, "not valid JSON: Expecting"),
    ("/api/predict", (b'{"strokes": "\xff"}', "application/json"), 400, "not valid JSON: 'utf-8' codec"),
    ("/api/predict", ("[1, 2]", "application/json"), 400, "JSON object"),
    ("/api/predict", ('{"strokes": ' + "[" * 50_000 + "]" * 50_000 + "}", "application/json"), 400, "nested too deeply"),
    ("/api/feedback", ("[" * 50_000 + "]" * 50_000, "application/json"), 400, "nested too deeply"),
    ("/api/predict", ('"text"', "application/json"), 400, "JSON object"),
    ("/api/predict", (json.dumps({"strokes": STROKES}), "text/plain"), 415, "application/json"),
    ("/api/predict", (json.dumps({"strokes": STROKES}), None), 415, "application/json"),
    ("/api/predict", ("strokes=1", "application/x-www-form-urlencoded"), 415, "application/json"),
    ("/api/predict", (json.dumps({"strokes": STROKES}).encode("latin-1"), "application/json; charset=ISO-8859-1"), 415,
     "send the JSON as UTF-8 (the Content-Type says charset='iso-8859-1')"),
    ("/api/predict", ("--x\r\n\r\n--x--", "multipart/form-data; boundary=x"), 415, "application/json"),
    ("/api/predict", ("x" * (17 * 1024 * 1024), "application/json"), 413, "large"),
    ("/api/predict", {"image": "not base64!"}, 400, "base64"),
    ("/api/predict", {"image": b64(b"<svg xmlns='http://www.w3.org/2000/svg'/>")}, 400, "no image format Pillow knows"),
    ("/api/predict", {"image": b64(b"\x89PNG\r\n\x1a\n broken")}, 400, "not a readable PNG or JPEG"),
    ("/api/predict", {"image": b64(image_bytes("PNG")[:40])}, 400, "not a readable PNG or JPEG"),
    ("/api/predict", {"image": b64(broken_second_chunk())}, 400, "not a readable PNG or JPEG image (SyntaxError: "),
    ("/api/predict", {"image": b64(truncated_header())}, 400, "not a readable PNG or JPEG image (ValueError: "),
    ("/api/predict", {"image": b64(image_bytes("GIF"))}, 400, "unsupported image format"),
    ("/api/predict", {"image": b64(image_bytes("PNG"))}, 400, "blank"),
    ("/api/predict", {"image": "data:image/png;base64," + b64(b"../../etc/passwd")}, 400, "not a readable"),
    ("/api/feedback", {**FEEDBACK, "label": "dog"}, 400, "unknown label 'dog'"),
    ("/api/feedback", {**FEEDBACK, "label": "c\u0430t"}, 400, "characters outside ASCII"),  # a Cyrillic a
    ("/api/feedback", {**FEEDBACK, "label": 7}, 422, "label"),
    ("/api/feedback", {**FEEDBACK, "label": ""}, 422, "label"),
    ("/api/feedback", {**FEEDBACK, "label": "x" * 500}, 422, "label"),
    ("/api/feedback", {**FEEDBACK, "predicted_label": "dog"}, 400, "unknown predicted_label"),
    ("/api/feedback", {**FEEDBACK, "model_version": "1; rm -rf /"}, 422, "model_version"),
    ("/api/feedback", {**FEEDBACK, "strokes": [[[1, 2], [1]]]}, 400, "1 y values"),
    ("/api/feedback", {"strokes": [[[0, 10], [0, 10], [1, 2, 3, 4, 5]]], "label": "cat"}, 400,
     "stroke 0 has 2 points but 5 times"),
    ("/api/feedback", {key: v for key, v in FEEDBACK.items() if key != "strokes"}, 422, "strokes"),
    ("/api/feedback", {**FEEDBACK, "id": "../../x"}, 422, "id"),
    ("/api/feedback", ("label=cat", "text/plain"), 415, "application/json"),
    *[("/api/feedback", {**FEEDBACK, "label": trick}, 400, "unknown label") for trick in TRICKS],
    *[("/api/feedback", {**FEEDBACK, "predicted_label": trick}, 400, "unknown predicted_label") for trick in TRICKS],
    *[("/api/feedback", {**FEEDBACK, "model_version": trick}, 422, "model_version") for trick in TRICKS],
    ("/api/proposals", {**PROPOSAL, "name": ""}, 422, "name"),
    ("/api/proposals", {**PROPOSAL, "name": 7}, 422, "name"),
    ("/api/proposals", {**PROPOSAL, "name": "x" * 101}, 422, "name"),
    ("/api/proposals", {key: v for key, v in PROPOSAL.items() if key != "name"}, 422, "name"),
    ("/api/proposals", {**PROPOSAL, "label": "dog"}, 422, "label"),
    ("/api/proposals", {**PROPOSAL, "predicted_label": "dog"}, 400, "unknown predicted_label"),
    ("/api/proposals", {**PROPOSAL, "strokes": [[[1, 2], [1]]]}, 400, "1 y values"),
    ("/api/proposals", {**PROPOSAL, "strokes": [[[1, 2], [1, 2], [0, 1, 2]]]}, 400, "2 points but 3 times"),
    ("/api/proposals", ("name=dog", "text/plain"), 415, "application/json"),
    ("/api/proposals", {**PROPOSAL, "name": "   "}, 400, "empty"),
    ("/api/proposals", {**PROPOSAL, "name": "x" * 41}, 400, "2 to 40 characters"),
    ("/api/proposals", {**PROPOSAL, "name": "d"}, 400, "2 to 40 characters"),
    ("/api/proposals", {**PROPOSAL, "name": "?!..."}, 400, "letters a-z, digits and spaces"),
    ("/api/proposals", {**PROPOSAL, "name": "42"}, 400, "at least one letter"),
    ("/api/proposals", {**PROPOSAL, "name": "\u202edog"}, 400, "U+202E"),
    ("/api/proposals", {**PROPOSAL, "name": "do\u200bg"}, 400, "U+200B"),
    ("/api/proposals", {**PROPOSAL, "name": "dog \U0001f436"}, 400, "letters a-z"),
    ("/api/proposals", {**PROPOSAL, "name": "собака"}, 400, "letters a-z"),
    # "cat\n" is not among them: trimmed, it is the known "cat", a safe normalised form (tests/webapp/test_proposals.py)
    *[("/api/proposals", {**PROPOSAL, "name": trick}, 400, "category name") for trick in TRICKS if trick != "cat\n"],
]


@pytest.fixture(scope="module")
def served(logged_models, mlflow_url, tmp_path_factory):
    """One app for the whole module (cases are many): a model in production, an empty feedback folder."""
    from doodle_lib.settings import Settings
    from webapp import create_app
    from tests.webapp.serving import register

    root = tmp_path_factory.mktemp("bad-input")
    settings = Settings(MLFLOW_TRACKING_URI=mlflow_url, data_dir=root / "data", storage_dir=root / "storage",
                        model_name="doodle-bad-input", model_poll_seconds=60)
    register(settings, logged_models)
    app = create_app({"SETTINGS": settings, "TESTING": True})
    yield app, settings
    app.extensions["model_holder"].stop()


@pytest.fixture
def client(served):
    return served[0].test_client()


@pytest.fixture
def settings(served):
    return served[1]


@pytest.fixture
def app(served):
    return served[0]


@pytest.mark.parametrize("path, body, status, words", CASES)
def test_bad_request_is_refused_with_a_message(client, settings, path, body, status, words):
    if isinstance(body, dict):
        answer = client.post(path, json=body)
    else:
        data, content_type = body
        answer = client.post(path, data=data, content_type=content_type)
    assert answer.status_code == status, answer.get_data(as_text=True)[:300]
    assert words in answer.json["error"]
    assert written(settings) == []


@pytest.mark.parametrize("method, path, status", [("GET", "/api/predict", 405), ("PUT", "/api/feedback", 405),
                                                  ("GET", "/api/../etc/passwd", 404), ("GET", "/nothing", 404),
                                                  ("POST", "/api/predict/", 404)])
def test_wrong_method_or_path_is_json(client, method, path, status):
    answer = client.open(path, method=method)
    assert answer.status_code == status and answer.json["error"]
    if status == 404:  # the path as received, and where the right ones are
        assert "nothing at '/" in answer.json["error"] and "/openapi/openapi.json" in answer.json["error"]
    if status == 405:  # which methods would do, in the header HTTP asks for and in the message
        assert "POST" in answer.headers["Allow"] and "use" in answer.json["error"] and "POST" in answer.json["error"]


def test_the_largest_drawing_passes_the_count_of_values(client):
    xs = [float(i % 256) for i in range(MAX_POINTS)]
    answer = client.post("/api/predict", json={"strokes": [[xs, xs, [1e12 + i for i in range(MAX_POINTS)]]]})
    assert answer.status_code != 413, answer.json  # refused for its ink, if at all, not for its size


def test_a_made_up_method_is_refused_and_adds_no_metric_series(client):
    for method in ("FOO1", "XYZZY", "get"):
        answer = client.open("/api/predict", method=method)
        assert answer.status_code == 400 and f"{method!r} is not an HTTP method" in answer.json["error"]
    exported = client.get("/metrics").get_data(as_text=True)
    assert 'method="FOO1"' not in exported and 'method="get"' not in exported
    assert 'method="GET"' in exported  # the exporter still counts real methods, the /metrics request included


def test_a_body_with_a_content_encoding_is_refused_by_name(client, settings):
    import gzip

    answer = client.post("/api/feedback", data=gzip.compress(json.dumps(FEEDBACK).encode()),
                         content_type="application/json", headers={"Content-Encoding": "gzip"})
    assert answer.status_code == 415 and "Content-Encoding 'gzip'" in answer.json["error"]
    assert written(settings) == []


def test_an_unknown_key_is_named_briefly(client):
    answer = client.post("/api/predict", json={"strokes": STROKES, "k" * 100_000: 1})
    assert answer.status_code == 422 and len(answer.json["error"]) < 200, len(answer.json["error"])


@pytest.mark.parametrize("wrap", [
    lambda text: "\n".join(text[i:i + 76] for i in range(0, len(text), 76)),  # MIME's line-wrapped base64
    lambda text: text.replace("+", "-").replace("/", "_"),  # the URL-safe alphabet
    lambda text: "data:image/png;name=doodle.png;base64," + text,  # a data URL with a parameter
])
def test_base64_in_its_common_variants_is_read(client, wrap):
    ink = Image.new("L", (64, 64), 255)
    for x in range(10, 54):
        ink.putpixel((x, x), 0)  # a dark diagonal on white, dense enough in "+" and "/" when encoded
    buffer = io.BytesIO()
    ink.save(buffer, format="PNG")
    answer = client.post("/api/predict", json={"image": wrap(b64(buffer.getvalue()))})
    assert answer.status_code == 200, answer.json


def test_schemathesis_negative_cases(app, settings):
    """At least 3,000 generated requests that break the OpenAPI document: all 4xx with a message, no file."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings as hypothesis_settings
    from schemathesis.generation.modes import GenerationMode

    schema = schemathesis.openapi.from_wsgi("/openapi/openapi.json", app)
    seen = {"count": 0, "statuses": set()}
    for path in ("/api/predict", "/api/feedback", "/api/proposals"):
        operation = schema[path]["POST"]

        @hypothesis_settings(max_examples=1000, deadline=None, database=None,
                             suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy(GenerationMode.NEGATIVE))
        def check(case):
            response = case.call()
            seen["count"] += 1
            seen["statuses"].add(response.status_code)
            assert 400 <= response.status_code < 500, (case.body, response.text[:300])
            assert response.json()["error"]

        check()
    assert seen["count"] >= 3000, seen
    assert written(settings) == []


def written(settings) -> list:
    """Files under the data folder: a refused request must leave none (feedback, proposals or anywhere else)."""
    return [path for path in settings.data_dir.rglob("*") if path.is_file()] if settings.data_dir.exists() else []


def test_webhook_refuses_unsigned_stale_and_malformed_deliveries(app, settings, monkeypatch):
    """The receiver checks the signature and its time before reading the payload, and names what is wrong."""
    import hashlib
    import hmac
    import time

    monkeypatch.setattr(settings, "webhook_secret", "s3cret")

    def post(payload: bytes, secret: str = "s3cret", age: float = 0, stamp: str | None = None):
        stamp = str(int(time.time() - age)) if stamp is None else stamp
        digest = hmac.new(secret.encode(), f"d1.{stamp}.".encode() + payload, hashlib.sha256).digest()
        headers = {"X-MLflow-Delivery-Id": "d1", "X-MLflow-Timestamp": stamp,
                   "X-MLflow-Signature": "v1," + b64(digest)}
        return app.test_client().post("/webhooks/mlflow", data=payload, headers=headers, content_type="application/json")

    event = json.dumps({"entity": "model_version_alias", "data": {"name": "other-model", "alias": "production"}})
    assert post(event.encode()).json == {"accepted": False}  # signed, but about another model
    assert post(event.encode(), secret="guess").status_code == 401
    assert post(event.encode(), age=3600).status_code == 401  # a replay of an old delivery
    for stamp in ("\u00b2", "1" * 5000, "", "-5"):  # signed, but no time: "²" passes str.isdigit(), not int()
        answer = post(event.encode(), stamp=stamp)
        assert answer.status_code == 401 and "X-MLflow-Timestamp" in answer.json["error"], stamp[:10]
    for payload in (b"not json", b"[1, 2]", b"[" * 50_000 + b"]" * 50_000):
        answer = post(payload)
        assert answer.status_code == 400 and "not an MLflow webhook event" in answer.json["error"]
