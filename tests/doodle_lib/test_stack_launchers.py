"""What the embedded stack's launchers (doodle_lib/stack.py) rely on in the libraries they start."""
from __future__ import annotations


def test_mlflow_server_still_spawns_its_server_through_the_function_the_launcher_replaces():
    """`python -m doodle_lib.stack mlflow` swaps mlflow.server._exec_cmd so the server process does not keep an idle
    ~190 MB parent; if an MLflow upgrade renames it, the swap silently does nothing: this test says so instead."""
    import inspect

    import mlflow.server

    assert callable(mlflow.server._exec_cmd)
    assert "_exec_cmd(" in inspect.getsource(mlflow.server._run_server)
