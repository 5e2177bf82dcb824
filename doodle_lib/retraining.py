"""The retraining pipeline's stages, one function each: Airflow tasks call them, tests call them directly.

check_params (before the run waits for feedback) -> snapshot -> ingest -> version_dataset -> plan_candidates +
start_experiment -> train_candidate and evaluate_candidate once per candidate (in parallel) -> choose_candidate ->
register_candidate -> promote_candidate -> cleanup. Every stage works from paths derived from the run's batch name and
returns a small JSON-able dict, so a retried stage redoes the same work and XCom carries little.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import shutil
import sys
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from doodle_lib import atomic, dataset, feedback, proposals, versioning
from doodle_lib.settings import Settings

if TYPE_CHECKING:  # torch is imported by the stages that train, not by the DAG files that import this module
    from doodle_lib.model import DoodleCNN
    from doodle_lib.training import TrainConfig

log = logging.getLogger(__name__)

DATASET_FOLDER = "dataset"  # the DVC-tracked folder inside the data dir
PROPOSALS_FOLDER = "proposals"  # inside the dataset folder: drawings of proposed categories, one .npz per batch
MANIFEST = "manifest.json"  # inside a batch folder: the drawings the run took
CANDIDATE = "candidate.pt"  # inside runs/<batch>/: the trained candidate's checkpoint
PROMOTION_LOCK = ".promotion.lock"  # in the data folder: one promotion at a time
STATS_PREFIX = "doodle.retrain"


# --- snapshot ---------------------------------------------------------------------------------


def batch_name(run_id: str) -> str:
    """The batch folder name of an Airflow run: the run id with every unsafe character as '_', plus a hash of the run
    id when that changed it, so that two runs (`x:1`, `x+1`) never share a batch, nor its file in the dataset."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", run_id).lstrip(".")
    if name != run_id or len(name) > 100:
        name = f"{name[:87]}-{hashlib.sha256(run_id.encode()).hexdigest()[:12]}"
    return feedback.check_folder_name(name)


def waiting(settings: Settings) -> list[str]:
    """Keys (`category/id`) of every complete drawing waiting in the feedback folder, oldest first."""
    return [ref.key for ref in feedback.complete(settings.feedback_dir)]


def production_categories(settings: Settings) -> list[str]:
    """The categories of the production model (its version's tag), or none when there is no production model."""
    from doodle_lib import tracking

    version = tracking.production_version(settings)
    return json.loads(version.tags.get("categories", "[]")) if version else []


class NothingToTrain(Exception):
    """A run that needs new drawings has none: others took what it counted, or ingest rejected every one."""


class RunFinished(Exception):
    """A snapshot asked of a run whose batch is already in the dataset: it cannot be taken again."""


def snapshot(settings: Settings, run_id: str, keys: list[str], allow_empty: bool = True) -> dict:
    """Move the counted drawings and every ready proposal's into the run's batch folder; a retry finishes the same move.

    Without `allow_empty`, a snapshot left with nothing to move raises NothingToTrain and leaves no batch behind.
    """
    batch = batch_name(run_id)
    folder = settings.batches_dir / batch
    with feedback.moves_lock(settings.data_dir):
        if (folder / MANIFEST).exists():  # a retry: the first try wrote down what it takes before moving anything
            plan = json.loads((folder / MANIFEST).read_text())
        elif feedback_file(settings, batch).exists() or proposals_file(settings, batch).exists():
            # The run finished and `cleanup` removed the batch: taking new drawings under its name would overwrite
            # the batch's dataset file, and with it drawings that only that file still holds.
            raise RunFinished(f"batch {batch} was ingested and cleaned up by an earlier try of this run: trigger a "
                              "new run to train on newer drawings")
        else:
            ready = proposals.ready(settings, production_categories(settings))
            taken = {p.name: [ref.key for ref in proposals.drawings(settings, p.name)] for p in ready}
            # Which proposal each name was when taken: one an operator rejects and a user proposes again is another.
            created = {proposal.name: proposal.created_at for proposal in ready}
            plan = {"run_id": run_id, "keys": keys, "proposals": taken, "proposals_created": created}
        plan = _still_there(settings, folder, plan)
        if not allow_empty and not plan["keys"] and not plan["proposals"]:
            shutil.rmtree(folder, ignore_errors=True)  # at most an earlier try's manifest: no drawing was moved
            raise NothingToTrain(f"none of the {len(keys)} drawings or the proposals this run counted is left: another run "
                                 "or an operator's merge or rejection took them first")
        atomic.write_bytes(folder / MANIFEST, json.dumps(plan).encode())
        feedback.move([feedback.DrawingRef.parse(key) for key in plan["keys"]], settings.feedback_dir, folder)
        for name, proposal_keys in plan["proposals"].items():
            feedback.move([feedback.DrawingRef.parse(key) for key in proposal_keys], settings.proposals_dir, folder)
    count = len(plan["keys"]) + sum(len(k) for k in plan["proposals"].values())
    log.info("snapshot: %d drawings moved to %s, proposed categories %s", count, folder, sorted(plan["proposals"]))
    emit_stats(gauges={"snapshot_drawings": count})
    return {"batch": batch, "count": count, "proposals": sorted(plan["proposals"])}


def _still_there(settings: Settings, folder: Path, plan: dict) -> dict:
    """The plan without drawings that have left for elsewhere since they were counted (or since a first try): another
    run took them, or an operator merged or rejected a proposal. They are there, not lost."""
    def here(key: str, source: Path) -> bool:
        return _anywhere(feedback.DrawingRef.parse(key), source, folder)

    kept = {
        "keys": [key for key in plan["keys"] if here(key, settings.feedback_dir)],
        "proposals": {
            name: [key for key in keys if here(key, settings.proposals_dir)] for name, keys in plan["proposals"].items()
        },
    }
    gone = [k for k in plan["keys"] if k not in kept["keys"]]
    gone += [k for name, keys in plan["proposals"].items() for k in keys if k not in kept["proposals"][name]]
    if gone:
        log.warning("snapshot: %d drawings were taken elsewhere first: %s", len(gone), gone)
    kept["proposals"] = {name: keys for name, keys in kept["proposals"].items() if keys}
    return {**plan, **kept}


def _anywhere(ref: feedback.DrawingRef, *folders: Path) -> bool:
    """Whether any file of the drawing is in one of the folders (a half-finished move counts)."""
    return any((f / ref.category / f"{ref.id}{suffix}").exists() for f in folders for suffix in (".png", ".json"))


def manifest(settings: Settings, batch: str) -> dict:
    """What the batch's snapshot took, as it wrote it down before moving anything."""
    return json.loads((settings.batches_dir / batch / MANIFEST).read_text())


def batch_keys(settings: Settings, batch: str) -> list[str]:
    """The drawings a batch holds, as its snapshot recorded them: feedback, then proposals' drawings."""
    plan = manifest(settings, batch)
    return plan["keys"] + [key for keys in plan.get("proposals", {}).values() for key in keys]


def batch_proposals(settings: Settings, batch: str) -> list[str]:
    """The proposed categories whose drawings the batch took."""
    return sorted(manifest(settings, batch).get("proposals", {}))


def withdrawn_proposals(settings: Settings, batch: str, names: list[str]) -> list[str]:
    """Those of the batch's proposals `names` an operator rejected, renamed or merged after the snapshot took them."""
    created = manifest(settings, batch).get("proposals_created", {})
    state = {proposal.name: proposal.created_at for proposal in proposals.list_all(settings)}
    return sorted(name for name in names if state.get(name) != created.get(name))


# --- ingest -----------------------------------------------------------------------------------


def batch_file(batch: str) -> str:
    """A batch's ingested feedback, relative to the dataset folder."""
    return f"{dataset.FEEDBACK_FOLDER}/{batch}.npz"


def feedback_file(settings: Settings, batch: str) -> Path:
    """Where a batch lives in the training data once ingested."""
    return settings.dataset_dir / batch_file(batch)


def checked_drawing(folder: Path, ref: feedback.DrawingRef) -> np.ndarray:
    """The 28x28 bitmap of a stored drawing after validation; re-rendered from its strokes if the PNG is bad."""
    from doodle_lib import drawing

    record = json.loads((folder / ref.category / f"{ref.id}.json").read_text())
    if record.get("label", ref.category) != ref.category:
        raise ValueError(f"label {record.get('label')!r} does not match its folder {ref.category!r}")
    feedback.check_folder_name(ref.category)
    strokes = record.get("strokes")
    try:
        bitmap, _ = feedback.read(folder, ref)
    except (OSError, ValueError) as problem:  # PIL raises both for unreadable images
        if strokes is None:
            raise ValueError(f"unreadable PNG and no strokes: {problem}") from None
        bitmap = drawing.strokes_to_bitmap(strokes, raw=not record.get("simplified", False))
    if strokes is not None:
        drawing.validate_strokes(strokes)
    if bitmap.shape != (28, 28) or bitmap.dtype != np.uint8:
        raise ValueError(f"bitmap is {bitmap.shape} {bitmap.dtype}, not (28, 28) uint8")
    if not bitmap.any():
        raise ValueError("blank bitmap")
    return bitmap


def proposals_file(settings: Settings, batch: str) -> Path:
    """Where a batch's drawings of proposed categories live once ingested (trained only once accepted)."""
    return settings.dataset_dir / PROPOSALS_FOLDER / f"{batch}.npz"


def held_back(images: list[np.ndarray], share: float) -> np.ndarray:
    """Which of a new category's drawings judge it instead of training it: a fixed share, picked by content hash.

    By the bitmap, not the drawing's id (random): the same drawings always split the same way, so a retraining
    run, and its verdict, can be repeated.
    """
    order = sorted(range(len(images)), key=lambda i: hashlib.sha256(images[i].tobytes()).hexdigest())
    flags = np.zeros(len(images), dtype=bool)
    flags[order[: max(1, round(len(images) * share))]] = True
    return flags


def ingest(settings: Settings, batch: str, allow_empty: bool = True) -> dict:
    """Validate the batch's drawings and merge them into the data (proposed categories apart); bad ones go aside.
    Without `allow_empty`, a batch with no usable drawing raises NothingToTrain instead, and its folder goes."""
    folder = settings.batches_dir / batch
    if not allow_empty and not folder.exists() and (settings.rejected_dir / batch).exists():  # a rerun of that case
        raise NothingToTrain(f"ingest rejected every drawing of the batch: why is in {settings.rejected_dir / batch}")
    proposed = set(batch_proposals(settings, batch))
    good: dict[bool, tuple[list, list, list]] = {False: ([], [], []), True: ([], [], [])}  # by "is a proposal"
    rejected = []
    for key in batch_keys(settings, batch):
        ref = feedback.DrawingRef.parse(key)
        try:
            image = checked_drawing(folder, ref)
        except (OSError, ValueError) as problem:
            reject(settings, batch, folder, ref, str(problem))
            rejected.append(key)
            continue
        images, labels, keys = good[ref.category in proposed]
        images.append(image), labels.append(ref.category), keys.append(key)
    if not allow_empty and not good[False][0] and not good[True][0]:
        # Every drawing of it has a copy in rejected/ with its reason. Renamed first, so the batch is gone at once.
        discarded = folder.with_name(f".{batch}.rejected")
        shutil.rmtree(discarded, ignore_errors=True)
        folder.rename(discarded)
        shutil.rmtree(discarded)
        raise NothingToTrain(f"ingest rejected all {len(rejected)} drawings of the batch: why is in {settings.rejected_dir / batch}")
    images, labels, keys = good[False]
    if images:
        atomic.write_npz(feedback_file(settings, batch), x=np.stack(images), y=np.array(labels), keys=np.array(keys))
    images, labels, keys = good[True]
    if images:
        flags = np.zeros(len(keys), dtype=bool)
        for name in proposed:  # each category's own share, so every new category has drawings to be judged on
            rows = [i for i, label in enumerate(labels) if label == name]
            flags[rows] = held_back([images[i] for i in rows], settings.new_category_holdout)
        atomic.write_npz(
            proposals_file(settings, batch), x=np.stack(images), y=np.array(labels), keys=np.array(keys), held_back=flags
        )
    log.info("ingest: %d drawings, %d of proposed categories %s, %d rejected %s",
             len(good[False][0]), len(good[True][0]), sorted(proposed), len(rejected), rejected)
    return {"batch": batch, "ingested": len(good[False][0]) + len(good[True][0]), "rejected": rejected}


def reject(settings: Settings, batch: str, folder: Path, ref: feedback.DrawingRef, reason: str) -> None:
    """Copy a drawing ingest cannot use to rejected/<batch>/ with the reason beside it (never delete it)."""
    log.warning("rejected %s: %s", ref.key, reason)
    target = settings.rejected_dir / batch / ref.category
    target.mkdir(parents=True, exist_ok=True)
    for suffix in (".png", ".json"):
        source = folder / ref.category / f"{ref.id}{suffix}"
        if source.exists():
            shutil.copy2(source, target / source.name)
    atomic.write_bytes(target / f"{ref.id}.reason.txt", reason.encode())


def empty_split() -> dataset.Split:
    return dataset.Split(np.zeros((0, 28, 28), np.uint8), np.array([], dtype=str))


def concat(*splits: dataset.Split) -> dataset.Split:
    """One split of several, in order."""
    return dataset.Split(np.concatenate([s.x for s in splits]), np.concatenate([s.y for s in splits]))


# Training and evaluation read the dataset as a mapping: relative path inside the dataset folder -> a readable copy.


def version_files(settings: Settings, dataset_version: str) -> dict[str, Path]:
    """The files of a stored dataset version, read from the DVC remote: what a run trains and judges on, so that a
    batch the other DAG ingests meanwhile is in neither the model nor the dataset version recorded with it."""
    return versioning.version_files(settings.dvc_remote_dir, dataset_version)


def version_source(settings: Settings, dataset_version: str) -> Path:
    """Where a dataset version's file listing lives in the DVC remote: the source MLflow records for its drawings."""
    return versioning.stored_object(settings.dvc_remote_dir, dataset_version)


def files_in(files: dict[str, Path], folder: str, leaving_out: str = "") -> list[Path]:
    """The .npz files of one subfolder (feedback, proposals), in name order, but the one named `leaving_out`."""
    return [
        path for name, path in sorted(files.items())
        if name.startswith(f"{folder}/") and name.endswith(".npz") and name != leaving_out
    ]


def read_base(files: dict[str, Path]) -> dataset.Split:
    """The base training split, or a clear error when the dataset has none."""
    if dataset.BASE_FILE not in files:
        raise FileNotFoundError(f"the dataset has no {dataset.BASE_FILE}: run `doodle data prepare` first")
    return dataset.read_split(files[dataset.BASE_FILE])


def read_batch(files: dict[str, Path], batch: str) -> dataset.Split:
    """The ingested feedback of a batch (empty when none was usable)."""
    path = files.get(batch_file(batch))
    return dataset.read_split(path) if path else empty_split()


def proposal_drawings(files: dict[str, Path], categories: set[str], judge: bool) -> dataset.Split:
    """Ingested drawings of these proposed categories, from every batch: the held-back ones (`judge`) or the others."""
    parts = [empty_split()]
    for path in files_in(files, PROPOSALS_FOLDER):
        with np.load(path, allow_pickle=False) as data:
            rows = np.isin(data["y"], sorted(categories)) & (data["held_back"] == judge)
            parts.append(dataset.Split(data["x"][rows], data["y"][rows]))
    return concat(*parts)


# --- version ----------------------------------------------------------------------------------


def version_dataset(settings: Settings) -> dict:
    """Version the dataset folder with DVC and push it to the remote; returns the hash."""
    versioning.ensure_project(settings.data_dir, settings.dvc_remote_dir)
    version = versioning.commit(settings.data_dir, DATASET_FOLDER)
    log.info("dataset version %s pushed to %s", version, settings.dvc_remote_dir)
    return {"dataset_version": version}


# --- train ------------------------------------------------------------------------------------


KINDS = ("fine-tune", "scratch")
MAX_CANDIDATES = 8  # a run's grid is trained at once: more would only queue on a small machine


@dataclass(frozen=True)
class Candidate:
    """One model a run trains: how (kind, learning rate, width, epochs; None means the default) and its name."""

    index: int
    kind: str
    learning_rate: float | None = None
    width: int | None = None  # from scratch only: fine-tuning keeps production's width
    epochs: int | None = None

    @property
    def name(self) -> str:
        """Unique within the run and safe as a folder name: `0-fine-tune`, `1-scratch-lr0.001-w32`."""
        parts = [str(self.index), self.kind]
        if self.learning_rate is not None:
            parts.append(f"lr{self.learning_rate:g}")
        if self.width is not None:
            parts.append(f"w{self.width}")
        return "-".join(parts)


def whole_number(name: str, value) -> int:
    """An integer param's value as an int, or a ValueError naming the param."""
    # JSON Schema's "integer" accepts 3.0, as REST and CLI callers send it, and torch refuses it deep in training; a
    # rendered template gives the text "3.0".
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not number.is_integer():
        raise ValueError(f"{name} must be a whole number, not {value!r}")
    return int(number)


def plan_candidates(params: dict | None, kinds: list[str] | None = None) -> list[dict]:
    """The run's candidates from its params: every kind x learning rate (x width, from scratch); null: the default."""
    params = params or {}
    kinds = list(dict.fromkeys(kinds or params.get("kinds") or ["fine-tune"]))
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        raise ValueError(f"unknown candidate kinds {unknown}: use {list(KINDS)}")
    rates = list(dict.fromkeys(params.get("learning_rates") or [None]))
    widths = list(dict.fromkeys([whole_number("widths", width) for width in params.get("widths") or []] or [None]))
    grid = [
        (kind, rate, width)
        for kind in kinds
        for rate in rates
        for width in (widths if kind == "scratch" else [None])
    ]
    if len(grid) > MAX_CANDIDATES:
        raise ValueError(f"{len(grid)} candidates asked for (kinds x learning_rates, x widths from scratch); at most "
                         f"{MAX_CANDIDATES} train in one run")
    epochs = None if params.get("epochs") is None else whole_number("epochs", params["epochs"])
    return [asdict(Candidate(i, kind, rate, width, epochs)) for i, (kind, rate, width) in enumerate(grid)]


def check_conf_keys(conf: dict | None, form: Iterable[str]) -> None:
    """A ValueError naming the keys of a run's conf that its DAG's `form` (its params) lacks."""
    # Airflow accepts any key in a conf and the tasks read only the form's: a typo (`epoch`) would run with defaults.
    form = sorted(form)
    unknown = sorted(set(conf or {}) - set(form))
    if unknown:
        raise ValueError(f"unknown parameters {unknown}; the form's are {form}")


def check_params(params: dict, conf: dict | None, form: Iterable[str], kinds: list[str] | None = None) -> list[dict]:
    """The run's candidates, or a ValueError saying what in the run's conf the `form` lacks or `plan` would refuse."""
    check_conf_keys(conf, form)
    candidates = plan_candidates(params, kinds)
    log.info("the run's parameters make %d candidates: %s", len(candidates), [Candidate(**c).name for c in candidates])
    return candidates


def start_experiment(settings: Settings, run_id: str, batch: str, dataset_version: str, candidates: list[dict]) -> dict:
    """The parent MLflow run of the Airflow run's candidates (a retry finds the first one)."""
    from doodle_lib import tracking

    client = tracking.client(settings)
    experiment = client.get_experiment_by_name(settings.experiment)
    found = client.search_runs(
        [experiment.experiment_id], f"tags.airflow_run_id = '{run_id}' and tags.role = 'candidates'"
    )
    if found:
        parent = found[0].info.run_id
    else:
        tags = {"airflow_run_id": run_id, "batch": batch, "dataset_version": dataset_version, "role": "candidates"}
        run = client.create_run(experiment.experiment_id, tags=tags, run_name=f"candidates {batch}")
        parent = run.info.run_id
        client.log_dict(parent, {"candidates": candidates}, "candidates.json")
    url = mlflow_url(settings, f"experiments/{experiment.experiment_id}/runs/{parent}")
    log.info("%d candidates under MLflow run %s: %s", len(candidates), parent, [Candidate(**c).name for c in candidates])
    return {"parent_run_id": parent, "mlflow_url": url}


def scratch_training_data(files: dict[str, Path], accepted: set[str]) -> dataset.Split:
    """Every training drawing: the base split, all ingested feedback, and the `accepted` proposed categories' drawings."""
    feedback_parts = [dataset.read_split(path) for path in files_in(files, dataset.FEEDBACK_FOLDER)]
    return concat(read_base(files), *feedback_parts, proposal_drawings(files, accepted, judge=False))


def training_parts(files: dict[str, Path], batch: str, accepted: set[str], adding: set[str]) -> tuple[dataset.Split, dataset.Split]:
    """(old, new): every training drawing but this batch's, with the `accepted` proposed categories; and this batch's,
    with every training drawing of the categories it is `adding` (this batch's and earlier attempts')."""
    others = [dataset.read_split(path) for path in files_in(files, dataset.FEEDBACK_FOLDER, leaving_out=batch_file(batch))]
    old = concat(read_base(files), *others, proposal_drawings(files, accepted - adding, judge=False))
    new = concat(read_batch(files, batch), proposal_drawings(files, adding, judge=False))
    return old, new


def mlflow_url(settings: Settings, path: str) -> str:
    """A browser link into the MLflow UI ('' when MLflow is a local file store)."""
    base = (settings.mlflow_ui_url or settings.tracking_uri).rstrip("/")
    return f"{base}/#/{path}" if base.startswith("http") else ""


def train_candidate(
    settings: Settings, run_id: str, batch: str, dataset_version: str, candidate: dict, parent_run_id: str | None = None
) -> dict:
    """Train one candidate: fine-tune production on old data plus the batch, or from scratch; one MLflow run."""
    import mlflow

    from doodle_lib import model as doodle_model
    from doodle_lib import tracking, training

    spec = Candidate(**candidate)
    accepted = set(production_categories(settings))
    adding = set(batch_proposals(settings, batch)) - accepted
    old, new = training_parts(version_files(settings, dataset_version), batch, accepted, adding)
    fine_tune = spec.kind == "fine-tune" and len(new) > 0
    production = tracking.load_production(settings) if fine_tune else None
    kind = "fine-tune" if production else "scratch"
    config = candidate_config(settings, spec, production[0] if production else None, bool(adding))
    epochs = config.epochs
    tags = {
        "airflow_run_id": run_id, "batch": batch, "kind": kind, "dataset_version": dataset_version,
        "candidate": spec.name, "role": "candidate", "new_categories": json.dumps(sorted(adding)),
    }
    end_abandoned_runs(settings, run_id, spec.name)
    started = time.monotonic()
    with tracking.training_run(settings, f"{spec.name} {batch}", tags, parent_run_id) as mlflow_run_id:
        mlflow.log_params(config.params())
        mlflow.log_params({"dataset_version": dataset_version, "feedback_count": len(new), "old_count": len(old)})
        source = version_source(settings, dataset_version)
        if production:
            candidate_model, version = production
            mlflow.set_tag("base_version", version.version)
            tracking.log_input(new, "feedback", "training", source)
            tracking.log_input(old, "replay", "training", source)
            training.fine_tune(candidate_model, new, old, config, on_epoch=tracking.log_epoch)
        else:
            everything = dataset.Split(np.concatenate([old.x, new.x]), np.concatenate([old.y, new.y]))
            tracking.log_input(everything, "training", "training", source)
            categories = sorted(np.unique(everything.y).tolist())
            candidate_model, _ = training.train(everything, categories, config, on_epoch=tracking.log_epoch)
        seconds = time.monotonic() - started
        mlflow.log_metric("train_seconds", seconds)
        model_uri = tracking.log_model(candidate_model)
        experiment_id = mlflow.active_run().info.experiment_id
    checkpoint = settings.runs_dir / batch / spec.name / CANDIDATE
    atomic.write_bytes(checkpoint, doodle_model.checkpoint_bytes(candidate_model))
    log.info("%s (%s) trained in %.1fs on %d old + %d new drawings: run %s", spec.name, kind, seconds, len(old), len(new), mlflow_run_id)
    return {
        "candidate": spec.name,
        "dataset_version": dataset_version,
        # Only those it learned: a proposal whose every drawing ingest rejected is in `adding` but not in the model.
        "new_categories": sorted(adding & set(candidate_model.categories)),
        "mlflow_run_id": mlflow_run_id,
        "model_uri": model_uri,
        "kind": kind,
        "epochs": epochs,
        "learning_rate": config.learning_rate,
        "width": config.width,
        "train_seconds": round(seconds, 3),
        "checkpoint": str(checkpoint),
        "mlflow_url": mlflow_url(settings, f"experiments/{experiment_id}/runs/{mlflow_run_id}"),
    }


def candidate_config(settings: Settings, spec: Candidate, production: DoodleCNN | None, adding: bool) -> TrainConfig:
    """How a candidate trains: fine-tuning `production` (gentler; longer, with more replay, when adding categories),
    or from scratch; the spec's values win over the defaults."""
    from doodle_lib import training

    config = training.TrainConfig(threads=settings.torch_threads)
    if production is not None:
        config.epochs = settings.new_category_epochs if adding else settings.fine_tune_epochs
        config.learning_rate = settings.fine_tune_learning_rate
        config.width = production.width
        if adding:  # a new output learns from a few drawings: many more old ones keep the old outputs in place
            config.replay_ratio = settings.new_category_replay_ratio
    else:
        config.epochs = settings.retrain_epochs
        config.width = spec.width or config.width
    config.epochs = spec.epochs or config.epochs
    config.learning_rate = spec.learning_rate or config.learning_rate
    return config


def end_abandoned_runs(settings: Settings, run_id: str, candidate: str) -> None:
    """Mark the MLflow runs a killed try of this candidate left RUNNING as KILLED (its siblings' runs go on)."""
    from doodle_lib import tracking

    client = tracking.client(settings)
    experiment = client.get_experiment_by_name(settings.experiment)
    for run in client.search_runs(
        [experiment.experiment_id],
        f"tags.airflow_run_id = '{run_id}' and tags.candidate = '{candidate}' and attributes.status = 'RUNNING'",
    ):
        log.warning("ending MLflow run %s left running by an earlier try", run.info.run_id)
        client.set_terminated(run.info.run_id, "KILLED")


# --- evaluate ---------------------------------------------------------------------------------


def score(model, split: dataset.Split) -> dict | None:
    """Accuracy and mean cross-entropy of `model` on `split`; drawings of categories it lacks count as wrong."""
    from doodle_lib import training

    if len(split) == 0:
        return None
    known = np.isin(split.y, model.categories)
    if not known.all():
        part = training.evaluate(model, dataset.Split(split.x[known], split.y[known])) if known.any() else None
        correct = part.accuracy * part.count if part else 0
        return {"accuracy": correct / len(split), "loss": None, "count": len(split)}
    result = training.evaluate(model, split)
    return {"accuracy": result.accuracy, "loss": result.loss, "count": result.count}


def evaluate_candidate(settings: Settings, batch: str, trained: dict) -> dict:
    """Candidate and current production on the fixed evaluation set, on the batch, and on the held-back drawings of
    every category the evaluation set lacks (the proposed ones); logged to the run."""
    import mlflow

    from doodle_lib import tracking, training
    from doodle_lib.model import load_checkpoint

    candidate = load_checkpoint(Path(trained["checkpoint"]))
    evaluation_set = dataset.read_split(settings.evaluation_path)
    files = version_files(settings, trained["dataset_version"])
    new = read_batch(files, batch)
    production = tracking.load_production(settings)
    full = training.evaluate(candidate, evaluation_set)
    figures = {
        "candidate": {"eval": score(candidate, evaluation_set), "feedback": score(candidate, new)},
        "production": None,
        "production_version": None,
        "feedback_count": len(new),
        "new_categories": trained.get("new_categories", []),
        "held_back": {},
    }
    if production:
        model, version = production
        figures["production"] = {"eval": score(model, evaluation_set), "feedback": score(model, new)}
        figures["production_version"] = version.version
        # A from-scratch candidate learns the categories production had when it started training: one the other DAG
        # added since is missing from it, and the evaluation set (which lacks added categories) would not show it.
        figures["dropped_categories"] = sorted(set(model.categories) - set(candidate.categories))
    judged = set(candidate.categories) - set(np.unique(evaluation_set.y).tolist())
    held = proposal_drawings(files, judged, judge=True)
    for category in sorted(judged):
        rows = dataset.Split(held.x[held.y == category], held.y[held.y == category])
        known = production and category in production[0].categories
        figures["held_back"][category] = {
            "candidate": score(candidate, rows)["accuracy"] if len(rows) else 0.0,
            "production": score(production[0], rows)["accuracy"] if known and len(rows) else None,
            "count": len(rows),
        }
    tracking.client(settings)
    with mlflow.start_run(run_id=trained["mlflow_run_id"]):
        tracking.log_input(evaluation_set, "evaluation", "evaluation", settings.evaluation_path)
        tracking.log_evaluation(full, evaluation_set)
        mlflow.log_metrics(flat_metrics(figures))
    log.info("evaluation: %s", json.dumps(figures))
    return figures


def flat_metrics(figures: dict) -> dict[str, float]:
    """The evaluation figures as MLflow metric names: candidate_eval_accuracy, production_feedback_loss, ..."""
    metrics = {"feedback_count": float(figures["feedback_count"])}
    for category, result in (figures.get("held_back") or {}).items():
        metrics[f"candidate_held_back_accuracy_{category}"] = float(result["candidate"])
    for who in ("candidate", "production"):
        for where, result in (figures.get(who) or {}).items():
            for name in ("accuracy", "loss"):
                if result and result[name] is not None:
                    metrics[f"{who}_{where}_{name}"] = float(result[name])
    return metrics


# --- choose ----------------------------------------------------------------------------------


def _eval_rank(item: dict) -> tuple[float, float]:
    """Sort key of an evaluated candidate: evaluation-set accuracy, then lower loss."""
    result = item["figures"]["candidate"]["eval"]
    return result["accuracy"], -(np.inf if result["loss"] is None else result["loss"])


def choose_candidate(settings: Settings, experiment: dict, evaluated: list[dict]) -> dict:
    """The best candidate on the evaluation set goes on; the ranking and why are recorded on the parent run."""
    from doodle_lib import tracking

    ranked = sorted(evaluated, key=_eval_rank, reverse=True)  # stable: a tie goes to the earlier candidate
    best = ranked[0]
    lines = [
        f"{item['trained']['candidate']} eval {_pct(item['figures']['candidate']['eval']['accuracy'])} "
        f"loss {_loss(item['figures']['candidate']['eval']['loss'])}"
        for item in ranked
    ]
    reason = (
        f"chose {best['trained']['candidate']}, the best evaluation-set accuracy (then loss) of {len(ranked)} "
        f"candidates: " + "; ".join(lines)
    )
    parent = experiment["parent_run_id"]
    client = tracking.client(settings)
    client.set_tag(parent, "chosen_candidate", best["trained"]["candidate"])
    client.set_tag(parent, "chosen_run_id", best["trained"]["mlflow_run_id"])
    client.set_tag(parent, "choice", reason[:5000])
    client.log_metric(parent, "best_eval_accuracy", best["figures"]["candidate"]["eval"]["accuracy"])
    client.log_dict(parent, {"ranked": [{**item["trained"], **flat_metrics(item["figures"])} for item in ranked]}, "choice.json")
    client.set_terminated(parent, "FINISHED")
    log.info(reason)
    return {"trained": best["trained"], "figures": best["figures"], "choice": reason, "mlflow_url": experiment["mlflow_url"]}


# --- the promotion gate -----------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def _loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def decide(figures: dict, tolerance_points: float, bar: float = 0.0) -> Decision:
    """The gate: every category the evaluation set lacks recognised on its held-back drawings at `bar`, not worse on
    the evaluation set (within tolerance), and better on the new feedback or able to tell the new categories."""
    candidate, production = figures["candidate"], figures["production"]
    c_eval = candidate["eval"]
    held = figures.get("held_back") or {}
    judged = "; ".join(
        f"held-back {name!r}: candidate {_pct(r['candidate'])} of {r['count']} drawings (bar {_pct(bar)})" for name, r in held.items()
    )
    weak = [name for name, r in held.items() if r["count"] == 0 or r["candidate"] < bar - 1e-12]
    if production is None:
        if weak:
            return Decision(False, f"not promoted: does not recognise {', '.join(map(repr, weak))} well enough; {judged}")
        return Decision(True, f"no production model yet: the candidate (eval {_pct(c_eval['accuracy'])}) beats nothing")
    p_eval = production["eval"]
    floor = p_eval["accuracy"] - tolerance_points / 100
    eval_ok = c_eval["accuracy"] >= floor - 1e-12
    numbers = (
        f"eval candidate {_pct(c_eval['accuracy'])} vs production {_pct(p_eval['accuracy'])} "
        f"(floor {_pct(floor)}, tolerance {tolerance_points:g} points)"
    )
    if judged:
        numbers += f"; {judged}"
    if weak:
        return Decision(False, f"not promoted: does not recognise {', '.join(map(repr, weak))} well enough; {numbers}")
    if figures.get("dropped_categories"):
        dropped = ", ".join(map(repr, figures["dropped_categories"]))
        return Decision(False, f"not promoted: lacks categories production serves: {dropped}; {numbers}")
    c_new, p_new = candidate["feedback"], production["feedback"]
    if figures.get("new_categories"):  # what the run adds is checked on held-back drawings above
        better = True
        what = f"learns the new {'categories' if len(figures['new_categories']) > 1 else 'category'} {', '.join(map(repr, figures['new_categories']))}"
    elif c_new is None:  # nothing new (a scheduled retrain with an empty batch): the evaluation set decides
        better = (c_eval["accuracy"], -(c_eval["loss"] or np.inf)) > (p_eval["accuracy"], -(p_eval["loss"] or np.inf))
        what = "better on the evaluation set (no new feedback)"
    else:
        numbers += (
            f"; feedback candidate {_pct(c_new['accuracy'])} loss {_loss(c_new['loss'])} "
            f"vs production {_pct(p_new['accuracy'])} loss {_loss(p_new['loss'])} on {c_new['count']} drawings"
        )
        c_loss = np.inf if c_new["loss"] is None else c_new["loss"]
        p_loss = np.inf if p_new["loss"] is None else p_new["loss"]
        better = c_new["accuracy"] > p_new["accuracy"] or (c_new["accuracy"] == p_new["accuracy"] and c_loss < p_loss)
        what = "better on the new feedback"
    if not eval_ok:
        return Decision(False, f"not promoted: worse on the evaluation set beyond the tolerance; {numbers}")
    if not better:
        return Decision(False, f"not promoted: not {what}; {numbers}")
    return Decision(True, f"promoted: not worse on the evaluation set and {what}; {numbers}")


# --- register and promote ---------------------------------------------------------------------


def register_candidate(settings: Settings, run_id: str, trained: dict, figures: dict, choice: str = "") -> dict:
    """Register the candidate as a new model version, once per Airflow run (a retry finds the first)."""
    from doodle_lib import tracking

    dataset_version = trained["dataset_version"]  # the version it was trained on (`version` may have run again since)

    client = tracking.client(settings)
    # The version of this run and this trained model: a cleared and retrained `train` makes a new one.
    existing = client.search_model_versions(
        f"name = '{settings.model_name}' and tags.airflow_run_id = '{run_id}' and tags.run_id = '{trained['mlflow_run_id']}'"
    )
    if existing:
        version = max(existing, key=lambda v: int(v.version))
        log.info("version %s was already registered for run %s", version.version, run_id)
    else:
        c_eval, c_new = figures["candidate"]["eval"], figures["candidate"]["feedback"]
        checkpoint_categories = _categories(trained["checkpoint"])
        tags = {
            "dataset_version": dataset_version,
            "eval_accuracy": f"{c_eval['accuracy']:.6f}",
            "eval_loss": f"{c_eval['loss']:.6f}",
            "feedback_accuracy": "" if c_new is None else f"{c_new['accuracy']:.6f}",
            "feedback_count": str(figures["feedback_count"]),
            "categories": json.dumps(checkpoint_categories),
            "airflow_run_id": run_id,
            "kind": trained["kind"],
            "candidate": trained.get("candidate", ""),
            "promotion": "pending: the promotion gate has not run yet",
        }
        description = (
            f"{trained['kind']} by Airflow run {run_id} on dataset {dataset_version}: "
            f"eval accuracy {_pct(c_eval['accuracy'])}. MLflow run: {trained['mlflow_url'] or trained['mlflow_run_id']}"
        )
        if choice:
            description += f"\nCandidates: {choice}"
        version = tracking.register(settings, trained["model_uri"], trained["mlflow_run_id"], tags, description)
        log.info("registered %s version %s", settings.model_name, version.version)
    return {"version": str(version.version), "mlflow_url": mlflow_url(settings, f"models/{settings.model_name}/versions/{version.version}")}


def _categories(checkpoint: str) -> list[str]:
    from doodle_lib.model import load_checkpoint

    return load_checkpoint(Path(checkpoint)).categories


def promote_candidate(
    settings: Settings, registered: dict, figures: dict, tolerance_points: float, trained: dict | None = None,
    bar: float | None = None, batch: str | None = None,
) -> dict:
    """Apply the gate; record the reason with both models' numbers on the version; move the alias if it passed.

    With the run's `batch`, a candidate that learned a proposed category an operator has since rejected or renamed is
    not promoted: the operator's later decision stands, and the next run trains what the proposals are now.
    """
    import mlflow

    from doodle_lib import tracking

    version = registered["version"]
    # Reading production, judging and moving the alias are one step: two runs promoting at once would otherwise both
    # pass the gate against the same production, and the later would replace the earlier without being compared to it.
    with atomic.exclusive(settings.data_dir / PROMOTION_LOCK):
        live = tracking.production_version(settings)
        live = None if live is None else str(live.version)
        compared = None if figures.get("production_version") is None else str(figures["production_version"])
        withdrawn = withdrawn_proposals(settings, batch, figures.get("new_categories", [])) if batch else []
        if live not in (compared, str(version)):  # the other DAG promoted meanwhile (this version itself: a retry)
            decision = Decision(False, f"not promoted: production moved from version {compared} to {live} after this "
                                       "candidate was evaluated; the next run compares against the new one")
        elif withdrawn and live != str(version):  # once promoted, its proposals are closed: a retry finds them gone
            decision = Decision(False, f"not promoted: an operator rejected or renamed the proposed "
                                       f"{', '.join(map(repr, withdrawn))} after this run took its drawings; the "
                                       "operator's decision stands")
        else:
            decision = decide(figures, tolerance_points, settings.new_category_bar if bar is None else bar)
        client = tracking.client(settings)
        client.set_model_version_tag(settings.model_name, version, "promotion", decision.reason)
        client.set_model_version_tag(settings.model_name, version, "promoted", str(decision.promote).lower())
        client.set_model_version_tag(settings.model_name, version, "gate_figures", json.dumps(figures))
        current = client.get_model_version(settings.model_name, version)
        description = (current.description or "").split("\nGate: ")[0]
        client.update_model_version(settings.model_name, version, description=f"{description}\nGate: {decision.reason}")
        if decision.promote:
            tracking.set_production(settings, version)
            close_proposals(settings, figures.get("new_categories", []))
    log.info("version %s: %s", version, decision.reason)
    if trained:
        with mlflow.start_run(run_id=trained["mlflow_run_id"]):
            mlflow.log_metric("promoted", float(decision.promote))
            mlflow.set_tags({"promotion": decision.reason[:5000], "model_version": version})
    emit_stats(
        gauges={
            "candidate_eval_accuracy": 100 * figures["candidate"]["eval"]["accuracy"],
            "production_eval_accuracy": 100 * (figures["production"] or {"eval": {"accuracy": 0}})["eval"]["accuracy"],
            "feedback_consumed": figures["feedback_count"],
            "promoted": int(decision.promote),
        },
        counters={"promotions" if decision.promote else "rejections": 1},
    )
    return {"version": version, "promoted": decision.promote, "reason": decision.reason}


def close_proposals(settings: Settings, categories: list[str]) -> None:
    """Proposals now served as categories end: drawings that arrived since the snapshot become their feedback."""
    for name in categories:
        if name in proposals.names(settings):
            _, moved = proposals.merge(settings, name, name, categories)
            log.info("proposal %r is a category now; %d drawings that arrived meanwhile moved to its feedback", name, moved)


# --- clean up ---------------------------------------------------------------------------------


def cleanup(settings: Settings, batch: str, dataset_version: str) -> dict:
    """Delete the batch folder, only once the remote holds a dataset version with the batch's file in it."""
    stored = versioning.stored_files(settings.dvc_remote_dir, dataset_version)
    for target in (feedback_file(settings, batch), proposals_file(settings, batch)):
        relative = target.relative_to(settings.dataset_dir).as_posix()
        if target.exists() and relative not in stored:
            raise versioning.VersioningError(f"dataset version {dataset_version} does not hold {relative}: keeping {batch}")
    folder = settings.batches_dir / batch
    removed = folder.exists()
    shutil.rmtree(folder, ignore_errors=True)
    shutil.rmtree(settings.runs_dir / batch, ignore_errors=True)
    log.info("cleanup: batch %s %s; dataset version %s holds %d files", batch, "removed" if removed else "already gone", dataset_version, len(stored))
    return {"batch": batch, "removed": removed}


# --- metrics ----------------------------------------------------------------------------------


def emit_stats(gauges: dict[str, float] | None = None, counters: dict[str, int] | None = None) -> None:
    """Send the pipeline's figures through Airflow's statsd client when running inside Airflow (else nothing)."""
    if "airflow.sdk" not in sys.modules:  # not inside an Airflow task: no statsd client to use
        return
    from airflow.sdk.observability import stats
    for name, value in (gauges or {}).items():
        stats.gauge(f"{STATS_PREFIX}.{name}", value)
    for name, count in (counters or {}).items():
        stats.incr(f"{STATS_PREFIX}.{name}", count)
