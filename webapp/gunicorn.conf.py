"""gunicorn settings for the web app: `gunicorn -c webapp/gunicorn.conf.py` (bind and workers from settings)."""
import os
import shutil
import tempfile

from doodle_lib.settings import get_settings

settings = get_settings()

# prometheus_client picks its multiprocess mode when imported, so the folder exists before any import of it;
# a fresh one per start, so counters of an earlier run never leak into this one.
_metrics_dir = tempfile.mkdtemp(prefix="doodle-webapp-metrics-")
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir

# Libraries load once in the master; workers share those pages copy-on-write (PSS, not RSS, per worker). The web
# app itself is not preloaded: each worker creates it, with its own model holder thread and metrics files.
import gc  # noqa: E402

import torch  # noqa: E402
import mlflow  # noqa: E402,F401
import prometheus_client  # noqa: E402,F401
import cairocffi, flask, flask_openapi3, PIL.Image, prometheus_flask_exporter.multiprocess, pydantic  # noqa: E402,E401,F401

# Move everything imported so far out of the garbage collector's reach: its passes would otherwise write to every
# object's header in each worker and turn the shared pages private (measured: 509 -> 376 MB PSS, master and 2 workers).
gc.freeze()

wsgi_app = "webapp:create_app()"
bind = [settings.webapp_bind]
workers = settings.webapp_workers
worker_class = "gthread"  # keep-alive connections; threads let a slow client not block the worker
threads = settings.webapp_threads
keepalive = 30
backlog = 2048
timeout = 60  # a worker stuck this long is restarted; loads happen in a background thread, never in a request
graceful_timeout = 20
accesslog = None
errorlog = "-"
loglevel = "info"


def post_fork(server, worker):
    # Two cores: one intra-op thread per worker, so workers do not fight over cores.
    torch.set_num_threads(1)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    shutil.rmtree(_metrics_dir, ignore_errors=True)
