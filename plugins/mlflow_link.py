"""An extra link from a task to the MLflow run or model version its return value names (`mlflow_url`)."""
from __future__ import annotations

from airflow.providers.standard.decorators.python import _PythonDecoratedOperator
from airflow.sdk import BaseOperatorLink
from airflow.sdk.bases.decorator import task_decorator_factory


class MlflowLink(BaseOperatorLink):
    """'MLflow' button on the task: the worker stores the URL in XCom when the task ends, the UI reads it."""

    name = "MLflow"

    def get_link(self, operator, *, ti_key) -> str:
        from airflow.sdk.execution_time.xcom import XCom  # the configured backend, in the worker

        value = XCom.get_value(ti_key=ti_key, key="return_value")
        return value.get("mlflow_url", "") if isinstance(value, dict) else ""


class MlflowDecoratedOperator(_PythonDecoratedOperator):
    """A TaskFlow task that carries the MLflow link."""

    operator_extra_links = (MlflowLink(),)


def mlflow_task(python_callable=None, **kwargs):
    """Like @task, plus an 'MLflow' extra link to the URL in the returned dict's `mlflow_url`."""
    return task_decorator_factory(
        python_callable=python_callable, decorated_operator_class=MlflowDecoratedOperator, **kwargs
    )
