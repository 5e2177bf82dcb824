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

        return get_hub().threadpool.apply(function, args)
    return function(*args)
