"""Blocking work that is not network I/O, kept off a gevent worker's event loop."""
from __future__ import annotations

import sys
from typing import Callable, TypeVar

Result = TypeVar("Result")


def blocking(function: Callable[..., Result], *args) -> Result:
    """function(*args) on gevent's thread pool where gevent patched the process (gunicorn's gevent worker), so the
    worker serves other requests while it waits on the disk or computes; called here anywhere else."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None and monkey.is_module_patched("threading"):
        from gevent import get_hub

        result, error = get_hub().threadpool.apply(_outcome, (function, args))
        if error is not None:
            raise error
        return result
    return function(*args)


def _outcome(function: Callable[..., Result], args: tuple) -> tuple[Result | None, Exception | None]:
    """function's result or exception as a value: gevent's pool prints the traceback of any exception raised in it,
    and a refused upload is no server error worth a traceback in the log."""
    try:
        return function(*args), None
    except Exception as error:  # noqa: BLE001 - raised again in the caller
        return None, error
