"""Proposing a category through the JSON API: typed names, one place per name, known names as feedback."""
from __future__ import annotations

import numpy as np

from doodle_lib import feedback, proposals
from doodle_lib.drawing import strokes_to_bitmap
from tests.conftest import CATEGORIES, fixture_drawings
from tests.webapp.test_api import samples

DRAWINGS = fixture_drawings()
TYPED = ["Dog", "dogs", "dog ", "DOG", "  Dogs\t", "ｄｏｇ", "Dög"]  # how people type one sixth category


def test_25_drawings_of_a_sixth_category_arrive_as_one_proposal(client, settings, versions):
    answers = []
    for i, (_, _, strokes) in enumerate(DRAWINGS[:25]):
        name = TYPED[i % len(TYPED)]
        body = {"strokes": strokes, "name": name, "predicted_label": "cat", "model_version": versions[0]}
        answer = client.post("/api/proposals", json=body)
        assert answer.status_code == 201, answer.json
        answers.append(answer.json)
    assert {(a["name"], a["known"], a["kind"]) for a in answers} == {("dog", False, "proposal")}
    assert [a["count"] for a in answers] == list(range(1, 26))
    refs = proposals.drawings(settings, "dog")
    assert sorted(ref.key for ref in refs) == sorted(a["id"] for a in answers)
    bitmap, record = feedback.read(settings.proposals_dir, refs[0])
    assert np.array_equal(bitmap, strokes_to_bitmap(DRAWINGS[0][2]))
    assert (record["label"], record["proposed_as"], record["predicted_label"]) == ("dog", "Dog", "cat")
    assert feedback.count(settings.feedback_dir) == 0  # proposals never wait as feedback of a known category
    listed = client.get("/api/proposals").json
    assert listed["min_drawings"] == 25 and not listed["require_approval"]
    assert [(p["name"], p["display_name"], p["count"], p["status"], p["ready"]) for p in listed["proposals"]] == [
        ("dog", "Dog", 25, "pending", True)]
    assert [p.name for p in proposals.ready(settings, CATEGORIES)] == ["dog"]


def test_a_known_category_typed_is_stored_as_ordinary_feedback(client, settings, versions):
    _, _, strokes = DRAWINGS[30]
    answer = client.post("/api/proposals", json={"strokes": strokes, "name": " CATS", "predicted_label": "fish",
                                                 "model_version": versions[0]})
    assert answer.status_code == 201, answer.json
    assert answer.json | {"id": None} == {"id": None, "name": "cat", "known": True, "kind": "correction", "count": 1}
    [ref] = feedback.complete(settings.feedback_dir)
    assert answer.json["id"] == ref.key and ref.category == "cat"
    record = feedback.read(settings.feedback_dir, ref)[1]
    assert (record["label"], record["kind"], record["proposed_as"]) == ("cat", "correction", " CATS")
    assert proposals.list_all(settings) == [] and client.get("/api/proposals").json["proposals"] == []


def test_accented_fullwidth_and_untrimmed_names_get_a_safe_normalised_form(client, settings):
    _, _, strokes = DRAWINGS[31]
    answers = [client.post("/api/proposals", json={"strokes": strokes, "name": name}).json
               for name in ("Café", "ｆｉｓｈ", "cat\n")]
    assert [(a["name"], a["known"]) for a in answers] == [("cafe", False), ("fish", True), ("cat", True)]
    assert sorted(p.relative_to(settings.data_dir).parts[:2] for p in settings.data_dir.rglob("*.png")) == [
        ("feedback", "cat"), ("feedback", "fish"), ("proposals", "cafe")]


def test_approval_setting_shows_in_the_listing(client, settings):
    settings.proposals_require_approval = True
    settings.proposal_min_drawings = 1
    client.post("/api/proposals", json={"strokes": DRAWINGS[32][2], "name": "owl"})
    [owl] = client.get("/api/proposals").json["proposals"]
    assert (owl["count"], owl["ready"]) == (1, False)
    proposals.approve(settings, "owl")
    assert client.get("/api/proposals").json["proposals"][0]["ready"] is True


def test_page_offers_none_of_these_with_a_name_box(client):
    page = client.get("/").data.decode()
    assert '<option id="name-it" value="">none of these: name it</option>' in page
    assert 'id="new-label"' in page and 'maxlength="40"' in page
    script = client.get("/static/app.js").data.decode()
    assert '"/api/proposals"' in script


def test_openapi_document_lists_the_proposals_api(client):
    paths = client.get("/openapi/openapi.json").json["paths"]
    assert {"get", "post"} <= paths["/api/proposals"].keys()
    assert "requestBody" in paths["/api/proposals"]["post"]


def test_metrics_count_proposals_by_outcome_only(client, settings):
    settings.proposal_min_drawings = 1
    before = samples(client.get("/metrics").data.decode())
    for name in ("Dog", "cat", "../etc"):
        client.post("/api/proposals", json={"strokes": DRAWINGS[33][2], "name": name})
    after = samples(client.get("/metrics").data.decode())
    found = {key: value - before.get(key, 0) for key, value in after.items()}
    for outcome in ("proposal", "known", "refused"):
        assert found[("doodle_proposed_drawings_total", (("outcome", outcome),))] == 1
    assert after[("doodle_proposals_ready", ())] == 1
    # Typed names never become label values (only this test's series: the registry is the process's, shared by tests).
    assert not any("dog" in str(labels) for (_, labels), change in found.items() if change)
