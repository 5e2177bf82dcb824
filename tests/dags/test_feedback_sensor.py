"""The feedback trigger: fires within about a poll of the threshold-th drawing, never counts half-written files."""
from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from doodle_lib import feedback
from feedback_sensor import FeedbackSensor, FeedbackTrigger
from tests.dags import world


async def first_event(trigger: FeedbackTrigger):
    async for event in trigger.run():
        return event.payload, time.monotonic()


def test_fires_within_a_poll_of_the_threshold_th_drawing(settings):
    saved: list[tuple[str, float]] = []

    def web_app_writes_one_by_one():
        for i in range(12):
            time.sleep(0.15)
            saved.append((world.save_feedback(settings, 1, start=i)[0], time.monotonic()))

    writer = threading.Thread(target=web_app_writes_one_by_one)
    writer.start()
    trigger = FeedbackTrigger(str(settings.feedback_dir), threshold=10, poll_seconds=1.0, deadline=time.time() + 60)
    payload, fired = asyncio.run(first_event(trigger))
    writer.join()

    threshold_th = saved[9][1]
    assert payload["status"] == "ready"
    assert 10 <= len(payload["keys"]) <= 12 and payload["keys"][:10] == [key for key, _ in saved[:10]]
    assert 0 <= fired - threshold_th < 1.5, f"fired {fired - threshold_th:.2f}s after the 10th drawing"


def test_half_written_drawings_never_count(settings):
    world.save_feedback(settings, 4)
    folder = settings.feedback_dir / "cat"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "20260101T000000000000-aaaaaaaaaaaa.png").write_bytes(b"\x89PNG")  # its JSON is not written yet
    (folder / ".20260101T000000000001-bbbbbbbbbbbb.json.x1.tmp").write_text("{")  # atomic write in progress
    (folder / ".20260101T000000000002-cccccccccccc.json").write_text("{}")  # hidden name
    (folder / "20260101T000000000003-dddddddddddd.json").write_text("{}")  # a JSON whose PNG is missing

    trigger = FeedbackTrigger(str(settings.feedback_dir), threshold=5, poll_seconds=0.1, deadline=time.time() + 0.5)
    payload, _ = asyncio.run(first_event(trigger))
    assert payload == {"status": "timeout", "count": 4}
    assert feedback.count(settings.feedback_dir) == 4


def test_serializes_to_an_importable_classpath_with_an_absolute_deadline(settings):
    deadline = time.time() + 60
    classpath, kwargs = FeedbackTrigger(str(settings.feedback_dir), 3, 1.0, deadline).serialize()
    assert classpath == "feedback_sensor.FeedbackTrigger"
    assert kwargs["deadline"] == deadline and np.isclose(kwargs["poll_seconds"], 1.0)


def test_a_ready_proposal_fires_below_the_threshold(settings, monkeypatch):
    from doodle_lib import proposals
    from doodle_lib.drawing import strokes_to_bitmap

    monkeypatch.setenv("DOODLE_PROPOSAL_MIN_DRAWINGS", "3")
    settings = settings.model_copy(update={"proposal_min_drawings": 3})
    keys = world.save_feedback(settings, 2)
    strokes = world.fixture_drawings()[0][2]
    for _ in range(2):
        proposals.save(settings, "hot air balloon", "Hot air balloon", strokes_to_bitmap(strokes, raw=False), {"strokes": strokes})
    not_yet = FeedbackTrigger(str(settings.feedback_dir), threshold=10, poll_seconds=0.1, deadline=time.time() + 0.5)
    assert asyncio.run(first_event(not_yet))[0] == {"status": "timeout", "count": 2}

    proposals.save(settings, "hot air balloon", "balloon", strokes_to_bitmap(strokes, raw=False), {"strokes": strokes})
    trigger = FeedbackTrigger(str(settings.feedback_dir), threshold=10, poll_seconds=0.1, deadline=time.time() + 5)
    payload, _ = asyncio.run(first_event(trigger))
    assert payload == {"status": "ready", "keys": keys, "proposals": ["hot air balloon"]}

    # Once production knows the name, the snapshot would not take the proposal: it wakes no run.
    import json

    from doodle_lib import tracking

    registry = tracking.client(settings)
    run_id = registry.create_run(registry.get_experiment_by_name("Default").experiment_id).info.run_id
    registry.create_registered_model(settings.model_name)
    known = json.dumps(["apple", "hot air balloon"])
    version = registry.create_model_version(settings.model_name, f"runs:/{run_id}/model", run_id, tags={"categories": known})
    registry.set_registered_model_alias(settings.model_name, settings.production_alias, version.version)
    known_already = FeedbackTrigger(str(settings.feedback_dir), threshold=10, poll_seconds=0.1, deadline=time.time() + 0.5)
    assert asyncio.run(first_event(known_already))[0] == {"status": "timeout", "count": 2}


def test_the_sensor_takes_a_whole_float_threshold_as_its_int(settings):
    """A REST or CLI caller's threshold 3.0 passes the form's "integer" and renders as "3.0" in the sensor."""
    keys = world.save_feedback(settings, 3)
    assert sorted(FeedbackSensor(task_id="wait", threshold="3.0", wait_minutes="0").execute({})) == sorted(keys)
    with pytest.raises(ValueError, match="threshold must be a whole number, not '3.5'"):
        FeedbackSensor(task_id="wait", threshold="3.5", wait_minutes="0").execute({})
