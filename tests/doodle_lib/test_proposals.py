"""The proposals store on a temporary folder: names, matching, operators' operations, nothing lost or escaped."""
from __future__ import annotations

import json

import numpy as np
import pytest

from doodle_lib import feedback, proposals
from doodle_lib.proposals import ProposalError, Target
from doodle_lib.settings import Settings

KNOWN = ["apple", "cat", "hot air balloon", "t-shirt"]


@pytest.fixture
def settings(tmp_path) -> Settings:
    """Settings whose data folder sits three levels down, so a path that climbs out would still land in tmp_path."""
    return Settings(data_dir=tmp_path / "a" / "b" / "data", storage_dir=tmp_path / "storage", proposal_min_drawings=3)


def square(offset: int = 0) -> np.ndarray:
    bitmap = np.zeros((28, 28), dtype=np.uint8)
    bitmap[8 + offset:16 + offset, 8:16] = 255
    return bitmap


def propose(settings: Settings, typed: str, offset: int = 0) -> Target:
    """What the web app does with a typed name: store the drawing where the name leads."""
    where = proposals.target(settings, typed, KNOWN)
    if where.known:
        feedback.save(settings.feedback_dir, where.name, square(offset), {"kind": "correction"})
    else:
        proposals.save(settings, where.name, typed, square(offset), {"source": "test"})
    return where


@pytest.mark.parametrize("typed, normalised", [
    ("Cat", "cat"), ("cat ", "cat"), ("  CAT\t", "cat"), ("cats", "cats"),
    ("Hot   Air-Balloon", "hot air balloon"), ("hot_air__balloon", "hot air balloon"), ("T-Shirt", "t shirt"),
    ("Café", "cafe"), ("naïve Façade", "naive facade"), ("straße", "strasse"), ("İstanbul", "istanbul"),
    ("ｃａｔ", "cat"), ("ﬁsh", "fish"), ("cat\u0301", "cat"), ("cat\n", "cat"), ("r2d2", "r2d2"),
    ("ox", "ox"), ("x" * 40, "x" * 40),
])
def test_normalise_accepts(typed, normalised):
    assert proposals.normalise(typed) == normalised


@pytest.mark.parametrize("typed, words", [
    ("", "empty"), ("   ", "empty"), ("-_-", "empty"),
    ("x", "2 to 40 characters"), ("x" * 41, "2 to 40 characters long, not 41"), ("x" * 101, "too long"),
    ("!!!", "not '!'"), ("?.,;:", "letters a-z, digits and spaces"), ("123", "at least one letter"),
    ("../etc", "not './'"), ("a/b", "not '/'"), ("..", "not '.'"), (".hidden", "not '.'"),
    ("C:\\temp", "not ':\\\\'"), ("%2e%2e%2f", "not '%'"), ("~root", "not '~'"),
    ("cat\x00", "U+0000"), ("c\x1bat", "U+001B"), ("cat\x7f", "U+007F"),
    ("c\u200bat", "U+200B"), ("\u202ecat", "U+202E"), ("\ufeffcat", "U+FEFF"), ("cat\u2066", "U+2066"),
    ("\ud800cat", "U+D800"), ("cat\ue000", "U+E000"),
    ("🐱", "letters a-z"), ("cat 🐱", "letters a-z"), ("кошка", "letters a-z"), ("caт", "letters a-z"),
    ("قطة", "letters a-z"), ("猫", "letters a-z"),
])
def test_normalise_refuses_with_a_message(typed, words):
    with pytest.raises(ProposalError, match="category name") as refused:
        proposals.normalise(typed)
    assert words in str(refused.value)


def test_normalise_refuses_non_text():
    with pytest.raises(ProposalError, match="must be text"):
        proposals.normalise(None)


def test_cat_cats_and_cat_space_end_in_one_place(settings):
    assert {propose(settings, typed) for typed in ("Cat", "cats", "cat ")} == {Target("cat", True)}
    first = propose(settings, "Dog")
    assert {propose(settings, typed, i) for i, typed in enumerate(("dogs", "dog ", "DOG"))} == {first}
    assert first == Target("dog", False)
    propose(settings, "glasses")  # and the other way round: the singular joins an existing plural
    assert proposals.target(settings, "Glass", KNOWN) == Target("glasses", False)
    assert [(p.name, p.count) for p in proposals.list_all(settings)] == [("dog", 4), ("glasses", 1)]


def test_matching_prefers_exact_names_and_known_categories():
    assert proposals.match("cats", [], {"cat", "cats"}) == Target("cats", False)
    assert proposals.match("cat", ["cat"], {"cat"}) == Target("cat", True)
    assert proposals.match("t shirt", KNOWN, set()) == Target("t-shirt", True)  # as the model spells it
    assert proposals.match("hot air balloons", KNOWN, set()) == Target("hot air balloon", True)
    assert proposals.match("catalogue", KNOWN, set()) == Target("catalogue", False)  # no stemming beyond s / es
    assert proposals.match("boxes", ["box"], set()) == Target("box", True)
    assert proposals.match("ca", ["cat"], set()) == Target("ca", False)


def test_save_writes_the_feedback_format_and_a_state(settings):
    ref, count = proposals.save(settings, "dog", "Dög ", square(), {"source": "test", "kind": "ignored"})
    assert (ref.category, count) == ("dog", 1)
    bitmap, record = feedback.read(settings.proposals_dir, ref)
    assert np.array_equal(bitmap, square())
    assert (record["label"], record["kind"], record["proposed_as"]) == ("dog", "proposal", "Dög ")
    assert record["source"] == "test"
    state = json.loads((settings.proposals_dir / "dog" / proposals.STATE_FILE).read_text())
    assert (state["display_name"], state["status"]) == ("Dög", "pending") and state["created_at"]
    assert proposals.save(settings, "dog", "dogs", square(1), {})[1] == 2
    assert proposals.read_state(settings, "dog")["display_name"] == "Dög"  # the first spelling stays
    stored = [feedback.read(settings.proposals_dir, ref)[0] for ref in proposals.drawings(settings, "dog")]
    assert np.array_equal(stored, [square(), square(1)])


@pytest.mark.parametrize("name", ["Dog", "../dog", "..", "dog/..", " dog", "dog\x00", ""])
def test_save_takes_only_normalised_names(settings, name):
    with pytest.raises(ProposalError):
        proposals.save(settings, name, name, square(), {})
    assert not settings.data_dir.exists()


def test_ready_needs_drawings_then_approval_when_required(settings):
    for i in range(3):
        propose(settings, "dog", i)
    propose(settings, "owl")
    assert [p.name for p in proposals.ready(settings, KNOWN)] == ["dog"]
    settings.proposals_require_approval = True
    assert proposals.ready(settings, KNOWN) == []
    approved = proposals.approve(settings, "DOG")
    assert (approved.status, approved.ready, approved.count) == ("approved", True, 3)
    assert [p.name for p in proposals.ready(settings, KNOWN)] == ["dog"]
    assert proposals.ready(settings, KNOWN + ["dogs"]) == []  # a category the model has since learned
    owl = proposals.approve(settings, "owl")
    assert (owl.status, owl.ready) == ("approved", False)  # one drawing of three


def test_rename_to_a_new_name_keeps_drawings_and_state(settings):
    for i in range(2):
        propose(settings, "kitty", i)
    proposals.approve(settings, "kitty")
    assert proposals.rename(settings, "kitty", "Snow Leopard", KNOWN) == (Target("snow leopard", False), 2)
    [renamed] = proposals.list_all(settings)
    assert (renamed.name, renamed.display_name, renamed.status, renamed.count) == (
        "snow leopard", "Snow Leopard", "approved", 2)
    assert not (settings.proposals_dir / "kitty").exists()
    records = [feedback.read(settings.proposals_dir, ref)[1] for ref in proposals.drawings(settings, "snow leopard")]
    assert {(r["label"], r["kind"], r["proposed_as"]) for r in records} == {("snow leopard", "proposal", "kitty")}


def test_rename_to_the_same_name_changes_only_the_spelling(settings):
    propose(settings, "dog")
    assert proposals.rename(settings, "dog", "DOG", KNOWN) == (Target("dog", False), 0)
    [dog] = proposals.list_all(settings)
    assert (dog.display_name, dog.count) == ("DOG", 1)


def test_rename_to_a_known_category_makes_ordinary_corrections(settings):
    for i in range(3):
        propose(settings, "kitty", i)
    assert proposals.rename(settings, "kitty", "Cats", KNOWN) == (Target("cat", True), 3)
    assert proposals.list_all(settings) == [] and not settings.proposals_dir.joinpath("kitty").exists()
    refs = feedback.complete(settings.feedback_dir)
    assert len(refs) == 3 and {ref.category for ref in refs} == {"cat"}
    bitmap, record = feedback.read(settings.feedback_dir, refs[0])
    assert np.array_equal(bitmap, square(0))
    assert (record["label"], record["kind"], record["proposed_as"]) == ("cat", "correction", "kitty")


def test_merge_into_a_proposal_or_a_known_category(settings):
    propose(settings, "pup")
    propose(settings, "dog", 1)
    propose(settings, "Hot Air Baloon", 2)
    assert proposals.merge(settings, "pup", "dogs", KNOWN) == (Target("dog", False), 1)
    assert [(p.name, p.count) for p in proposals.list_all(settings)] == [("dog", 2), ("hot air baloon", 1)]
    assert proposals.merge(settings, "hot air baloon", "Hot-Air Balloon", KNOWN) == (Target("hot air balloon", True), 1)
    assert [ref.category for ref in feedback.complete(settings.feedback_dir)] == ["hot air balloon"]
    assert proposals.merge(settings, "dog", "dog", KNOWN + ["dog"]) == (Target("dog", True), 2)  # learned since
    assert proposals.list_all(settings) == [] and len(feedback.complete(settings.feedback_dir)) == 3


@pytest.mark.parametrize("operation, words", [
    (lambda s: proposals.merge(s, "dog", "dog", KNOWN), "into itself"),
    (lambda s: proposals.merge(s, "dog", "owl", KNOWN), "neither a proposal nor a known category"),
    (lambda s: proposals.merge(s, "wolf", "dog", KNOWN), "no proposal named 'wolf'; proposals: dog"),
    (lambda s: proposals.rename(s, "wolf", "dog", KNOWN), "no proposal named 'wolf'"),
    (lambda s: proposals.rename(s, "dog", "../cat", KNOWN), "not './'"),
    (lambda s: proposals.approve(s, "../dog"), "not './'"),
    (lambda s: proposals.reject(s, "dogs", "plural"), "no proposal named 'dogs'"),  # operators name exactly
])
def test_operations_refuse_unknown_or_bad_names(settings, operation, words):
    propose(settings, "dog")
    before = sorted(settings.data_dir.rglob("*"))
    with pytest.raises(ProposalError) as refused:
        operation(settings)
    assert words in str(refused.value)
    assert sorted(settings.data_dir.rglob("*")) == before


def test_reject_sets_drawings_aside_with_the_reason(settings):
    for i in range(2):
        propose(settings, "scribble", i)
    aside = proposals.reject(settings, "Scribble", "not a thing")
    assert aside == settings.rejected_dir / "proposals" / "scribble"
    assert proposals.list_all(settings) == [] and not (settings.proposals_dir / "scribble").exists()
    kept = feedback.complete(settings.rejected_dir / "proposals")
    assert len(kept) == 2 and np.array_equal(feedback.read(aside.parent, kept[1])[0], square(1))
    propose(settings, "scribble", 5)  # proposed again, rejected again: both rejections kept
    proposals.reject(settings, "scribble", "still not")
    notes = [json.loads(p.read_text()) for p in sorted(aside.glob("rejected-*.json"))]
    assert [(n["reason"], len(n["drawings"])) for n in notes] == [("not a thing", 2), ("still not", 1)]
    assert {ref.id for ref in kept} == set(notes[0]["drawings"])
    assert len(feedback.complete(aside.parent)) == 3


def test_a_rejection_needs_a_reason(settings):
    propose(settings, "scribble")
    with pytest.raises(ProposalError, match="give a reason"):
        proposals.reject(settings, "scribble", "  ")
    assert [(p.name, p.count) for p in proposals.list_all(settings)] == [("scribble", 1)]


def test_nothing_is_written_outside_the_data_folder(settings, tmp_path):
    tricks = ["../../../escape", "../etc", "a/b", "..", ".", "/tmp/x", "C:\\x", "cat\x00", "\u202e..", "．．/x",
              "dog", "Dogs", "Café", "ｃａｔ", "x" * 200]
    for typed in tricks:
        try:
            propose(settings, typed)
        except ProposalError:
            continue
    for operation in (lambda: proposals.rename(settings, "dog", "..", KNOWN),
                      lambda: proposals.merge(settings, "cafe", "/etc", KNOWN)):
        with pytest.raises(ProposalError):
            operation()
    proposals.merge(settings, "cafe", "dog", KNOWN)
    proposals.reject(settings, "dog", "../../../reason")
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and all(p.is_relative_to(settings.data_dir) for p in written), written
    top = {p.relative_to(settings.data_dir).parts[0] for p in written}
    assert top == {"feedback", "rejected", feedback.MOVES_LOCK}  # the lock that keeps moves one at a time


@pytest.mark.parametrize("damage", ["{not json", '{"status": "approved"}', "[]", "\udcff"])
def test_a_damaged_state_file_counts_as_pending_and_is_named(settings, caplog, damage):
    """One state file edited by hand must not stop the listing (the web app's metrics and the pipeline read it too)."""
    propose(settings, "kite")
    propose(settings, "hot dog")
    state = settings.proposals_dir / "hot dog" / proposals.STATE_FILE
    state.write_bytes(damage.encode("utf-8", "surrogateescape"))
    listed = {p.name: p.status for p in proposals.list_all(settings)}
    assert listed == {"kite": "pending", "hot dog": "pending"}
    assert str(state) in caplog.text and "fix it or delete it" in caplog.text
    proposals.approve(settings, "hot dog")  # an operator's action writes a whole state again
    assert proposals.get(settings, "hot dog").status == "approved"
