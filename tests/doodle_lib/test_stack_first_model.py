"""`make up` asks the running MLflow server, over its REST API, whether a first model must be trained."""
from __future__ import annotations

from urllib.parse import urlparse

import pytest
from mlflow import MlflowClient

from doodle_lib import stack
from tests.services import free_port


def test_has_production_model_follows_the_registry(settings, mlflow_url):
    local = settings.model_copy(update={"host": "127.0.0.1", "mlflow_port": urlparse(mlflow_url).port})
    registry = MlflowClient(mlflow_url, registry_uri=mlflow_url)
    assert not stack.has_production_model(local), "no registered model yet"

    registry.create_registered_model(local.model_name)
    assert not stack.has_production_model(local), "a registered model without the production alias"

    run_id = registry.create_run("0").info.run_id
    registry.log_text(run_id, "a stand-in for a checkpoint", "model/checkpoint.txt")
    version = registry.create_model_version(local.model_name, f"runs:/{run_id}/model", run_id)
    registry.set_registered_model_alias(local.model_name, local.production_alias, version.version)
    assert stack.has_production_model(local)


def test_has_production_model_names_an_unreachable_registry(settings):
    nowhere = settings.model_copy(update={"host": "127.0.0.1", "mlflow_port": free_port()})
    with pytest.raises(stack.StackError, match="could not reach the model registry"):
        stack.has_production_model(nowhere)
