"""Proposed categories: drawings users labelled with a name the model does not know, kept until trained or rejected.

A typed name becomes its normalised form (`normalise`): Unicode NFKC, casefold, accents dropped (NFKD without
combining marks, so "Café" is "cafe"), runs of spaces, underscores and hyphens made one space, trimmed; then only
ASCII letters a-z, digits and spaces may remain, with at least one letter and 2 to 40 characters. Anything else,
control and invisible characters included, is refused with a message, never repaired by guessing. A normalised
name is always one safe path component. Names match a known category or an existing proposal exactly, or else
by one plural rule: a trailing "s" or "es" added or removed ("cats" joins "cat" only when "cat" exists).

Layout under the data folder (drawings in the feedback format, doodle_lib.feedback):
  proposals/<name>/<id>.png, <id>.json     the drawings, labelled <name>
  proposals/<name>/proposal.json           state: display name, status (pending or approved), created_at
  rejected/proposals/<name>/               drawings of rejected proposals, one rejected-<time>.json per rejection
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import unicodedata
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from doodle_lib import atomic, feedback
from doodle_lib.settings import Settings

log = logging.getLogger(__name__)
MIN_LENGTH, MAX_LENGTH = 2, 40
MAX_TYPED = 100  # longest input looked at, before spaces collapse
STATE_FILE = "proposal.json"  # has no PNG beside it, so feedback.complete never counts it as a drawing
SEPARATORS = re.compile(r"[\s_-]+")
ALLOWED = set("abcdefghijklmnopqrstuvwxyz0123456789 ")
INVISIBLE = {"Cc", "Cf", "Cn", "Co", "Cs"}  # control, format (zero-width, bidi), unassigned, private, surrogates


class ProposalError(ValueError):
    """A name or an operation on proposals that cannot be used; the message names the problem."""


@dataclass(frozen=True)
class Target:
    """Where a typed name leads: a known category (`known`), or a proposal of that normalised name."""

    name: str
    known: bool


@dataclass(frozen=True)
class Proposal:
    """One proposed category as stored, with whether the next retraining may take it."""

    name: str
    display_name: str
    status: str  # pending | approved
    created_at: str
    count: int
    ready: bool


def normalise(name: str) -> str:
    """The canonical form of a typed category name (rules in the module docstring), or ProposalError."""
    if not isinstance(name, str):
        raise ProposalError("the category name must be text")
    if len(name) > MAX_TYPED:
        raise ProposalError(f"the category name is too long: at most {MAX_LENGTH} characters")
    text = unicodedata.normalize("NFKC", name)
    hidden = sorted({c for c in text if unicodedata.category(c) in INVISIBLE and not c.isspace()})
    if hidden:
        codes = ", ".join(f"U+{ord(c):04X}" for c in hidden)
        raise ProposalError(f"the category name contains control or invisible characters ({codes})")
    text = unicodedata.normalize("NFKD", text.casefold())
    text = SEPARATORS.sub(" ", "".join(c for c in text if not unicodedata.combining(c))).strip()
    if not text:
        raise ProposalError("the category name is empty")
    other = sorted(set(text) - ALLOWED)
    if other:
        raise ProposalError(
            f"the category name may hold only letters a-z, digits and spaces, not {''.join(other)!r}"
        )
    if not any(c.isalpha() for c in text):
        raise ProposalError("the category name needs at least one letter")
    if not MIN_LENGTH <= len(text) <= MAX_LENGTH:
        raise ProposalError(f"the category name must be {MIN_LENGTH} to {MAX_LENGTH} characters long, not {len(text)}")
    return text


def display(typed: str) -> str:
    """How an operator sees a name someone typed (already accepted by normalise): spacing tidied, case kept."""
    return " ".join(unicodedata.normalize("NFKC", typed).split())


def match(name: str, known_categories: list[str], proposed: set[str]) -> Target:
    """Where a normalised name belongs: exact matches first, known categories before proposals, then plurals."""
    known = {}
    for category in known_categories:
        try:
            known.setdefault(normalise(category), category)
        except ProposalError:  # a known name outside the charset can never equal a normalised one
            continue
    plurals = [name + "s", name + "es", *([name[:-1]] if name.endswith("s") else []),
               *([name[:-2]] if name.endswith("es") else [])]
    for candidate in [name, *plurals]:
        if candidate in known:
            return Target(known[candidate], True)
        if candidate in proposed:
            return Target(candidate, False)
    return Target(name, False)


def target(settings: Settings, typed: str, known_categories: list[str]) -> Target:
    """Where a drawing labelled with the typed name goes (ProposalError when the name is unusable)."""
    return match(normalise(typed), known_categories, set(names(settings)))


def names(settings: Settings) -> list[str]:
    """Names of the stored proposals, sorted."""
    root = settings.proposals_dir
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) if root.is_dir() else []


def save(
    settings: Settings, name: str, typed: str, bitmap: np.ndarray, record: dict
) -> tuple[feedback.DrawingRef, int]:
    """Store a drawing under proposal `name` (from `target`), creating the proposal; returns its ref and count."""
    if normalise(name) != name:  # only normalised names ever become folders
        raise ProposalError(f"not a normalised category name: {name!r}")
    if not (settings.proposals_dir / name / STATE_FILE).exists():
        write_state(settings, name, {"display_name": display(typed), "status": "pending", "created_at": now()})
    record = {**record, "kind": "proposal", "proposed_as": typed}
    ref = feedback.save(settings.proposals_dir, name, bitmap, record)
    return ref, len(drawings(settings, name))


def drawings(settings: Settings, name: str) -> list[feedback.DrawingRef]:
    """The complete drawings of a proposal, oldest first; read one with feedback.read(settings.proposals_dir, ref)."""
    return feedback.complete(settings.proposals_dir, name)


def list_all(settings: Settings) -> list[Proposal]:
    """Every proposal, most drawings first."""
    counts: dict[str, int] = {}
    for ref in feedback.complete(settings.proposals_dir):
        counts[ref.category] = counts.get(ref.category, 0) + 1
    found = []
    for name in names(settings):
        state, count = read_state(settings, name), counts.get(name, 0)
        approved = state["status"] == "approved" or not settings.proposals_require_approval
        found.append(Proposal(name, state["display_name"], state["status"], state["created_at"], count,
                              ready=approved and count >= settings.proposal_min_drawings))
    return sorted(found, key=lambda p: (-p.count, p.name))


def ready(settings: Settings, known_categories: list[str]) -> list[Proposal]:
    """Proposals the next retraining should add: enough drawings, approved if required, not already known."""
    return [p for p in list_all(settings) if p.ready and not match(p.name, known_categories, set()).known]


def get(settings: Settings, typed: str) -> Proposal:
    """The proposal of exactly this name (after normalisation), or ProposalError listing the ones there are."""
    name = normalise(typed)
    for proposal in list_all(settings):
        if proposal.name == name:
            return proposal
    raise ProposalError(f"no proposal named {name!r}; proposals: {', '.join(names(settings)) or 'none'}")


def approve(settings: Settings, typed: str) -> Proposal:
    """Mark a proposal approved, so it is trained once it has enough drawings even when approval is required."""
    proposal = get(settings, typed)
    write_state(settings, proposal.name, {**read_state(settings, proposal.name), "status": "approved"})
    return get(settings, proposal.name)


def rename(settings: Settings, typed: str, new: str, known_categories: list[str]) -> tuple[Target, int]:
    """Give a proposal a new name; if that name is a known category or another proposal, merge into it instead."""
    proposal = get(settings, typed)
    others = set(names(settings)) - {proposal.name}
    destination = match(normalise(new), known_categories, others)
    if not destination.known and destination.name not in others:  # a new name, or this one spelled differently
        write_state(settings, destination.name, {**read_state(settings, proposal.name), "display_name": display(new)})
        if destination.name == proposal.name:
            return destination, 0
    return destination, move_drawings(settings, proposal.name, destination)


def merge(settings: Settings, typed: str, into: str, known_categories: list[str]) -> tuple[Target, int]:
    """Move a proposal's drawings into another proposal (whose state stays) or a known category (as its feedback).

    Merging a proposal into itself once the model knows its name hands its drawings over as that category's feedback.
    """
    proposal = get(settings, typed)
    others = set(names(settings)) - {proposal.name}
    destination = match(normalise(into), known_categories, others)
    if destination == Target(proposal.name, False):
        raise ProposalError(f"cannot merge {proposal.name!r} into itself")
    if not destination.known and destination.name not in others:
        raise ProposalError(f"{normalise(into)!r} is neither a proposal nor a known category; use rename")
    return destination, move_drawings(settings, proposal.name, destination)


def reject(settings: Settings, typed: str, reason: str) -> Path:
    """Move a proposal's drawings to rejected/proposals/<name>/ with the reason beside them; nothing is deleted."""
    if not reason.strip():
        raise ProposalError("give a reason: it is kept beside the rejected drawings")
    proposal = get(settings, typed)
    aside = settings.rejected_dir / "proposals"
    with feedback.moves_lock(settings.data_dir):  # not while a snapshot takes these drawings
        refs = feedback.move(drawings(settings, proposal.name), settings.proposals_dir, aside)
    note = {**read_state(settings, proposal.name), "name": proposal.name, "reason": reason, "rejected_at": now(),
            "drawings": [ref.id for ref in refs]}
    atomic.write_bytes(aside / proposal.name / f"rejected-{feedback.new_id()}.json", json.dumps(note).encode())
    remove(settings, proposal.name)
    return aside / proposal.name


def move_drawings(settings: Settings, name: str, destination: Target) -> int:
    """Move a proposal's drawings to `destination`, relabelled, PNG first and JSON last; returns how many."""
    if destination == Target(name, False):
        raise ProposalError(f"cannot move {name!r} into itself")
    root = settings.feedback_dir if destination.known else settings.proposals_dir
    kind = "correction" if destination.known else "proposal"
    with feedback.moves_lock(settings.data_dir):  # not while a snapshot takes these drawings
        refs = drawings(settings, name)
        for ref in refs:
            old, new = settings.proposals_dir / name, root / destination.name
            record = json.loads((old / f"{ref.id}.json").read_text())
            new.mkdir(parents=True, exist_ok=True)
            os.replace(old / f"{ref.id}.png", new / f"{ref.id}.png")
            relabelled = {**record, "label": destination.name, "kind": kind}
            atomic.write_bytes(new / f"{ref.id}.json", json.dumps(relabelled).encode())
            (old / f"{ref.id}.json").unlink()  # its content now lives, relabelled, at the destination
    remove(settings, name)
    return len(refs)


def remove(settings: Settings, name: str) -> None:
    """Drop an emptied proposal's state and folder; a drawing that arrived meanwhile keeps the folder, as a proposal."""
    folder = settings.proposals_dir / name
    (folder / STATE_FILE).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


def read_state(settings: Settings, name: str) -> dict:
    """A proposal's state; a folder without one (its first save raced an operation) counts as pending, and so does one
    whose state file was damaged by hand: one bad file must not stop the listing, the web app and the pipeline."""
    path = settings.proposals_dir / name / STATE_FILE
    if path.is_file():
        try:
            state = json.loads(path.read_text())
            if isinstance(state, dict) and {"display_name", "status", "created_at"} <= state.keys():
                return state
            problem = "it lacks display_name, status or created_at"
        except (ValueError, UnicodeDecodeError) as error:
            problem = str(error)
        log.warning("proposal %r counts as pending: its state file %s is damaged (%s); fix it or delete it",
                    name, path, problem)
    created = datetime.fromtimestamp(path.parent.stat().st_mtime, timezone.utc).isoformat()
    return {"display_name": name, "status": "pending", "created_at": created}


def write_state(settings: Settings, name: str, state: dict) -> None:
    path = settings.proposals_dir / feedback.check_folder_name(name) / STATE_FILE
    atomic.write_bytes(path, json.dumps(state).encode())


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


ACTIONS = ("list", "approve", "rename", "merge", "reject")


def apply(settings: Settings, action: str, name: str, other: str, reason: str, known_categories: list[str]) -> dict:
    """One operator action (the Airflow form's), as a JSON-able summary; ProposalError when it cannot be done."""
    if action == "approve":
        approve(settings, name)
    elif action in ("rename", "merge"):
        destination, moved = (rename if action == "rename" else merge)(settings, name, other, known_categories)
        return {"action": action, "name": normalise(name), "into": destination.name, "known": destination.known, "moved": moved}
    elif action == "reject":
        return {"action": action, "name": normalise(name), "kept_in": str(reject(settings, name, reason))}
    elif action != "list":
        raise ProposalError(f"unknown action {action!r}: use one of {', '.join(ACTIONS)}")
    return {"action": action, "proposals": [asdict(p) for p in list_all(settings)]}
