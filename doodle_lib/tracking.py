"""MLflow: log training runs, register versions of the classifier, move and read the production alias."""
from __future__ import annotations

import hashlib
import json
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np

from doodle_lib.settings import Settings

if TYPE_CHECKING:  # mlflow is imported inside functions: DAG files must parse without it
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.entities.webhook import Webhook

    from doodle_lib.dataset import Split
    from doodle_lib.model import DoodleCNN
    from doodle_lib.training import EpochStats, Evaluation

CHECKPOINT_FILE = "checkpoint.pt"
MODEL_ARTIFACT = "model"


def client(settings: Settings) -> "MlflowClient":
    """An MlflowClient for the configured store, with the experiment ready."""
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_uri)
    mlflow.set_registry_uri(settings.mlflow_uri)
    tracking = mlflow.MlflowClient()
    if tracking.get_experiment_by_name(settings.experiment) is None:
        # A local store needs an explicit artifact folder, or MLflow writes to ./mlruns of the cwd.
        location = None if settings.tracking_uri else settings.artifacts_dir.as_uri()
        if location:
            settings.artifacts_dir.mkdir(parents=True, exist_ok=True)
        tracking.create_experiment(settings.experiment, artifact_location=location)
    mlflow.set_experiment(settings.experiment)
    return tracking


@contextmanager
def training_run(
    settings: Settings, run_name: str, tags: dict[str, str] | None = None, parent_run_id: str | None = None
) -> Iterator[str]:
    """An active MLflow run for one training (nested under `parent_run_id` when given); yields its run id."""
    import mlflow

    client(settings)
    with mlflow.start_run(run_name=run_name, tags=tags, parent_run_id=parent_run_id) as run:
        yield run.info.run_id


def log_epoch(stats: "EpochStats") -> None:
    """Per-epoch training loss and accuracy on the active run."""
    import mlflow

    mlflow.log_metrics({"train_loss": stats.loss, "train_accuracy": stats.accuracy}, step=stats.epoch)


def log_input(split: "Split", name: str, context: str, source: Path) -> None:
    """Record `split` as an input of the active run (MLflow's dataset tracking), read from `source`."""
    import mlflow.data
    import mlflow.exceptions
    from mlflow.data.dataset_source_registry import get_dataset_source_from_json

    digest = split_digest(split)
    # The source built as what it is, a local path: resolving a bare path, MLflow warns that two sources match it.
    origin = get_dataset_source_from_json(json.dumps({"uri": str(source)}), source_type="local")
    dataset = mlflow.data.from_numpy(split.x, targets=split.y, source=origin, name=name, digest=digest)
    for attempt in range(3):
        try:
            mlflow.log_input(dataset, context=context)
            return
        except mlflow.exceptions.MlflowException as error:
            # Candidates training at once log the same batch: the server looks the dataset up, then inserts it, so
            # two new ones race on its unique key (experiment, name, digest). The loser finds it stored next time.
            if attempt == 2 or "unique" not in str(error).lower():
                raise
            time.sleep(0.1 * (attempt + 1))


def split_digest(split: "Split") -> str:
    """md5 of every pixel and label in order (MLflow's own NumPy digest reads only the first 10,000 values)."""
    digest = hashlib.md5(np.ascontiguousarray(split.x).tobytes())
    digest.update("\n".join(map(str, split.y)).encode())
    return digest.hexdigest()


def log_evaluation(evaluation: "Evaluation", split: "Split", prefix: str = "eval") -> None:
    """Metrics, per-class accuracy, the confusion matrix (JSON and image) and misclassified samples."""
    import mlflow

    mlflow.log_metrics({f"{prefix}_accuracy": evaluation.accuracy, f"{prefix}_loss": evaluation.loss})
    mlflow.log_metrics({f"{prefix}_accuracy_{name}": value for name, value in evaluation.per_class.items()})
    mlflow.log_dict(evaluation.summary(), f"{prefix}/evaluation.json")
    mlflow.log_figure(confusion_figure(evaluation), f"{prefix}/confusion_matrix.png")
    mlflow.log_image(misclassified_grid(evaluation, split), f"{prefix}/misclassified.png")


def confusion_figure(evaluation: "Evaluation"):
    """A matplotlib figure of the confusion matrix with counts in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.array(evaluation.confusion)
    size = 1.5 + 0.6 * len(evaluation.categories)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(matrix, cmap="Blues")
    ticks = range(len(evaluation.categories))
    axes.set_xticks(ticks, evaluation.categories, rotation=45, ha="right")
    axes.set_yticks(ticks, evaluation.categories)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    for (row, col), count in np.ndenumerate(matrix):
        color = "white" if count > matrix.max() / 2 else "black"
        axes.text(col, row, str(count), ha="center", va="center", color=color, fontsize=8)
    axes.set_title(f"accuracy {evaluation.accuracy:.2%} on {evaluation.count}")
    figure.tight_layout()
    plt.close(figure)
    return figure


def misclassified_grid(evaluation: "Evaluation", split: "Split", limit: int = 48) -> np.ndarray:
    """Up to `limit` misclassified images, each upscaled 3x above a 'true>predicted' caption."""
    from PIL import Image, ImageDraw

    wrong = [i for i, p in enumerate(evaluation.predictions) if evaluation.categories[p] != split.y[i]][:limit]
    cell_w, cell_h, columns = 84, 100, 8
    rows = max(1, -(-len(wrong) // columns))
    sheet = Image.new("L", (columns * cell_w, rows * cell_h), 32)
    draw = ImageDraw.Draw(sheet)
    for n, i in enumerate(wrong):
        x, y = (n % columns) * cell_w, (n // columns) * cell_h
        sheet.paste(Image.fromarray(split.x[i]).resize((84, 84), Image.NEAREST), (x, y))
        caption = f"{split.y[i]}>{evaluation.categories[evaluation.predictions[i]]}"
        draw.text((x + 2, y + 86), caption[:14], fill=255)
    return np.asarray(sheet)


def log_model(model: "DoodleCNN") -> str:
    """Log the model (pt2 with signature and example, plus the doodle_lib checkpoint); returns its URI."""
    import mlflow
    import torch

    from doodle_lib.model import checkpoint_bytes

    # A batch of two keeps the exported batch dimension dynamic.
    example = np.zeros((2, 28, 28), dtype=np.float32)
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / CHECKPOINT_FILE
        checkpoint.write_bytes(checkpoint_bytes(model))
        model.eval()
        with torch.no_grad():
            info = mlflow.pytorch.log_model(
                model,
                name=MODEL_ARTIFACT,
                input_example=example,
                serialization_format="pt2",
                extra_files=[str(checkpoint)],
                metadata={"categories": model.categories},
                pip_requirements=["torch==2.13.0", "numpy"],
            )
    return info.model_uri


def register(
    settings: Settings, model_uri: str, run_id: str, tags: dict[str, str], description: str = ""
) -> "ModelVersion":
    """A new version of the registered model from a logged model, with its tags and description."""
    import mlflow

    tracking = client(settings)
    version = mlflow.register_model(model_uri, settings.model_name, tags={**tags, "run_id": run_id})
    if description:
        tracking.update_model_version(settings.model_name, version.version, description=description)
    return tracking.get_model_version(settings.model_name, version.version)


def version_tags(dataset_version: str, evaluation: "Evaluation", extra: dict[str, str] | None = None) -> dict[str, str]:
    """The tags every registered version carries."""
    return {
        "dataset_version": dataset_version,
        "eval_accuracy": f"{evaluation.accuracy:.6f}",
        "categories": json.dumps(evaluation.categories),
        **(extra or {}),
    }


def set_production(settings: Settings, version: str | int) -> None:
    """Point the production alias (and the deprecated Production stage) at `version`."""
    tracking = client(settings)
    tracking.set_registered_model_alias(settings.model_name, settings.production_alias, str(version))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stages still work in MLflow 3 but warn on every call
        tracking.transition_model_version_stage(
            settings.model_name, str(version), "Production", archive_existing_versions=True
        )


WEBHOOK_EVENTS = ["model_version_alias.created"]  # MLflow sends it whenever an alias is set, moved or not


def ensure_webhook(settings: Settings, url: str) -> "Webhook":
    """Register the web app's registry webhook at `url` with the configured secret, or update the one registered
    before (found by name, one per model name), so running this at every start never adds a second."""
    registry = registry_client(settings)
    name = f"{settings.model_name}-webapp"
    hooks, token = [], None
    while True:
        page = registry.list_webhooks(page_token=token)
        hooks += [hook for hook in page if hook.name == name]
        token = page.token
        if not token:
            break
    fields = {"url": url, "events": WEBHOOK_EVENTS, "secret": settings.webhook_secret}
    if hooks:
        return registry.update_webhook(hooks[0].webhook_id, status="ACTIVE", **fields)
    return registry.create_webhook(name=name, description="the doodle web app switches models at once", **fields)


def registry_client(settings: Settings) -> "MlflowClient":
    """A client for registry reads only: unlike client(), it creates and selects no experiment."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=settings.mlflow_uri, registry_uri=settings.mlflow_uri)


def production_version(settings: Settings, tracking: "MlflowClient | None" = None) -> "ModelVersion | None":
    """The version the production alias points at, or None when there is none yet."""
    from mlflow.exceptions import MlflowException

    tracking = tracking or client(settings)
    try:
        return tracking.get_model_version_by_alias(settings.model_name, settings.production_alias)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def load_version(settings: Settings, version: str | int) -> "DoodleCNN":
    """The DoodleCNN of a registered version, rebuilt from its checkpoint (no pickled code is loaded)."""
    from doodle_lib.model import load_checkpoint

    with tempfile.TemporaryDirectory() as folder:
        return load_checkpoint(download_checkpoint(settings, version, Path(folder)))


def download_checkpoint(settings: Settings, version: str | int, folder: Path) -> Path:
    """Download a registered version's checkpoint file into `folder`; returns its path."""
    import mlflow

    client(settings)
    return Path(mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{settings.model_name}/{version}/extra_files/{CHECKPOINT_FILE}", dst_path=str(folder)
    ))


def load_production(settings: Settings) -> "tuple[DoodleCNN, ModelVersion] | None":
    """The production model and its version, or None when no version is production yet."""
    version = production_version(settings)
    if version is None:
        return None
    return load_version(settings, version.version), version
