"""The first dataset version and base models: prepare the split, train, register, promote, evaluate."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from doodle_lib import dataset, versioning
from doodle_lib.retraining import DATASET_FOLDER
from doodle_lib.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class TrainedVersion:
    """A registered model version and how it did on the evaluation set."""

    version: str
    run_id: str
    accuracy: float
    promoted: bool


def prepare(
    settings: Settings,
    source_dir: Path | None = None,
    categories: list[str] | None = None,
    max_per_category: int | None = None,
    force: bool = False,
) -> str:
    """Write the base training data and the fixed evaluation set, version them with DVC; returns the hash."""
    source = source_dir or settings.sample_dir
    chosen = base_categories(source, categories)
    if settings.evaluation_path.exists() and not force:
        log.info("the evaluation set exists (%s); keeping it and the base data", settings.evaluation_path)
    else:
        train, held = dataset.build_base(
            source, settings.dataset_dir, settings.evaluation_path, chosen, settings.eval_per_category, max_per_category
        )
        log.info("base data: %d training and %d evaluation drawings of %s", len(train), len(held), ", ".join(chosen))
    versioning.ensure_project(settings.data_dir, settings.dvc_remote_dir)
    version = versioning.commit(settings.data_dir, DATASET_FOLDER)
    log.info("dataset version %s", version)
    return version


def base_categories(source: Path, categories: list[str] | None = None) -> list[str]:
    """The categories to build the base data of: the chosen ones, else every one in `source`."""
    chosen = categories or dataset.categories_in(source)
    if not chosen:
        raise FileNotFoundError(f"no numpy_bitmap/*.npy files in {source}")
    return chosen


def current_dataset_version(settings: Settings) -> str:
    """The DVC hash of the dataset as last versioned, or a clear error when nothing is prepared."""
    pointer = settings.data_dir / f"{DATASET_FOLDER}.dvc"
    if not pointer.exists():
        raise FileNotFoundError(f"no dataset version in {settings.data_dir}: run `doodle data prepare` first")
    return versioning.dataset_hash(pointer)


def train_base(settings: Settings, config, promote: bool = False, run_name: str = "base") -> TrainedVersion:
    """Train from scratch on the versioned dataset, log and register the model; optionally promote it."""
    import mlflow

    from doodle_lib import retraining, tracking, training

    dataset_version = current_dataset_version(settings)
    # Categories users added since the base data stay: the production model has them, so a new base model must too.
    files = retraining.version_files(settings, dataset_version)
    train_split = retraining.scratch_training_data(files, set(retraining.production_categories(settings)))
    eval_split = dataset.read_split(settings.evaluation_path)
    categories = sorted(np.unique(train_split.y).tolist())
    with tracking.training_run(settings, run_name, {"dataset_version": dataset_version, "kind": "scratch"}) as run_id:
        mlflow.log_params(config.params())
        mlflow.log_params({"dataset_version": dataset_version, "train_size": len(train_split)})
        tracking.log_input(train_split, "training", "training", retraining.version_source(settings, dataset_version))
        tracking.log_input(eval_split, "evaluation", "evaluation", settings.evaluation_path)
        model, _ = training.train(train_split, categories, config, on_epoch=tracking.log_epoch)
        evaluation = training.evaluate(model, eval_split)
        tracking.log_evaluation(evaluation, eval_split)
        model_uri = tracking.log_model(model)
    reason = "promoted by the operator (doodle train --promote)" if promote else "not promoted: trained without --promote"
    version = tracking.register(
        settings,
        model_uri,
        run_id,
        tracking.version_tags(dataset_version, evaluation, {"promotion": reason}),
        description=f"{run_name}: from scratch on dataset {dataset_version}, eval accuracy {evaluation.accuracy:.2%}",
    )
    if promote:
        tracking.set_production(settings, version.version)
    log.info("registered version %s (eval accuracy %.2f%%); %s", version.version, 100 * evaluation.accuracy, reason)
    return TrainedVersion(version.version, run_id, evaluation.accuracy, promote)


def evaluate_version(settings: Settings, version: str | None = None):
    """Evaluate a registered version (default: production) on the fixed evaluation set."""
    from mlflow.exceptions import MlflowException

    from doodle_lib import tracking, training

    if version is None:
        production = tracking.production_version(settings)
        if production is None:
            raise LookupError(f"no version of {settings.model_name} is marked {settings.production_alias!r} yet")
        version = production.version
    try:  # looked up first: loading names a missing version only in a traceback, and takes "abc" for a stage
        tracking.registry_client(settings).get_model_version(settings.model_name, str(version))
    except MlflowException as error:
        raise LookupError(f"no version {version} of {settings.model_name}: {error.message}") from None
    model = tracking.load_version(settings, version)
    return version, training.evaluate(model, dataset.read_split(settings.evaluation_path))


def load_train_config(params_file: Path, section: str = "train", **overrides):
    """A TrainConfig from one section of a params file (params.yaml), with CLI overrides on top."""
    import yaml

    from doodle_lib.training import TrainConfig

    values = {}
    if params_file:
        try:
            document = yaml.safe_load(params_file.read_text()) or {}  # an empty file sets nothing
        except yaml.YAMLError as error:
            raise ValueError(f"{params_file} is not valid YAML: {error}") from None
        except UnicodeDecodeError:
            raise ValueError(f"{params_file} is not UTF-8 text: is it the params file?") from None
        values = (document.get(section) or {}) if isinstance(document, dict) else None
        if not isinstance(values, dict):
            raise ValueError(f"{params_file}: the {section} section must map parameter names to values")
    unknown = set(values) - set(TrainConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"{params_file}: unknown {section} parameters {sorted(unknown)}")
    try:
        return TrainConfig(**{**values, **{k: v for k, v in overrides.items() if v is not None}})
    except ValueError as error:
        raise ValueError(f"{params_file}: {error}" if params_file else str(error)) from None


def train_checkpoint(data_dir: Path, checkpoint: Path, config) -> None:
    """Train from scratch on `data_dir`'s base data and write the checkpoint (the DVC pipeline's train stage)."""
    from doodle_lib import atomic, training
    from doodle_lib.model import checkpoint_bytes

    split = dataset.read_split(data_dir / dataset.BASE_FILE)
    model, _ = training.train(split, sorted(np.unique(split.y).tolist()), config)
    atomic.write_bytes(checkpoint, checkpoint_bytes(model))


def evaluate_checkpoint(checkpoint: Path, evaluation_path: Path, metrics_file: Path | None = None):
    """Evaluate a checkpoint file on an evaluation set; optionally write the figures as JSON metrics."""
    import json

    from doodle_lib import atomic, training
    from doodle_lib.model import load_checkpoint

    try:
        model = load_checkpoint(checkpoint)
    except Exception as error:  # noqa: BLE001 - torch and pickle raise KeyError, EOFError, RuntimeError, ... on other files
        raise ValueError(f"{checkpoint} is not a model checkpoint ({error.__class__.__name__}: {error})") from None
    result = training.evaluate(model, dataset.read_split(evaluation_path))
    if metrics_file:
        figures = {"accuracy": result.accuracy, "loss": result.loss, "per_class": result.per_class}
        atomic.write_bytes(metrics_file, json.dumps(figures, indent=2, sort_keys=True).encode())
    return result
