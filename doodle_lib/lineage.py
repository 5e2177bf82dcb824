"""Which data made which model: restore a model version's dataset from the DVC remote."""
from __future__ import annotations

from pathlib import Path

from doodle_lib import tracking, versioning
from doodle_lib.settings import Settings


def checkout_model_dataset(settings: Settings, model_version: str, destination: str | None = None) -> Path:
    """Restore the dataset a registered version was trained on into the data dir; returns its folder."""
    from mlflow.exceptions import MlflowException

    try:
        version = tracking.client(settings).get_model_version(settings.model_name, str(model_version))
    except MlflowException as error:
        raise LookupError(f"no version {model_version} of {settings.model_name}: {error.message}") from None
    dataset_version = version.tags.get("dataset_version")
    if not dataset_version:
        raise LookupError(f"version {model_version} records no dataset_version tag")
    destination = destination or f"checkouts/v{model_version}"
    target = (settings.data_dir / destination).resolve()
    # Restored into a folder the platform reads (the dataset, feedback), a copy would be trained on twice.
    working = (settings.dataset_dir, settings.feedback_dir, settings.proposals_dir, settings.evaluation_path.parent,
               settings.batches_dir, settings.rejected_dir, settings.downloads_dir)
    for folder in working:
        if target.is_relative_to(folder.resolve()):
            raise ValueError(f"{destination!r} is inside {folder.name}/, which the platform reads and writes: restore "
                             "elsewhere in the data dir (default: checkouts/v<N>)")
    return versioning.checkout(settings.data_dir, dataset_version, destination)
