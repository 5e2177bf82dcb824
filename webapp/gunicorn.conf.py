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

import threadpoolctl  # noqa: E402
import torch  # noqa: E402
import mlflow  # noqa: E402,F401
import prometheus_client  # noqa: E402,F401
import cairocffi, flask, flask_openapi3, PIL.Image, prometheus_flask_exporter.multiprocess, pydantic  # noqa: E402,E401,F401

# Move everything imported so far out of the garbage collector's reach: its passes would otherwise write to every
# object's header in each worker and turn the shared pages private (measured: 509 -> 376 MB PSS, master and 2 workers).
gc.freeze()

wsgi_app = "webapp:create_app()"
bind = [settings.webapp_bind]
# Chosen by measurement (2 cores, wrk with 16 keep-alive connections posting the golden drawings, 3 rounds of
# 5 s on a machine shared with other jobs; req/s at concurrency 16, server CPU per request):
#   gthread 2 workers x 4 threads, reuse_port  934 / 919 / 784 req/s, 1.9-2.1 ms CPU, connections split evenly
#   gthread 2 x 4, one shared socket           856 / 931 / 748 req/s, same CPU; the split is luck (see 2 x 1)
#   sync, 2 workers                            790 / 764 / 544 req/s: no keep-alive, a new connection a request
#   gthread 2 x 1 and 2 x 2, shared socket     349-707 req/s: often one worker took all 16 connections
# At concurrency 1 all are alike (p50 ~2.0 ms there, under that load). Requests are CPU-bound, so the worker count
# is the core count; a third worker costs ~40 MB PSS and competes with the load generator for the same cores.
workers = settings.webapp_workers
worker_class = "gthread"  # keep-alive connections; threads let a slow client not block the worker
threads = settings.webapp_threads
# Each worker gets its own listening socket (SO_REUSEPORT) and the kernel spreads new connections over them:
# with one shared socket, long keep-alive connections stay with whichever worker accepted them first, and one
# worker could hold all of them while the other idles. Caveat: a second server started on the same port by the
# same user joins silently instead of failing with "address in use".
reuse_port = True
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
    # The same for NumPy's BLAS (the serving forward's matrix products): with its default of a thread per core, each
    # worker's OpenBLAS threads spin waiting for work while the other worker needs the core (measured at concurrency
    # 16: 90 req/s and 10 ms of CPU a request, against 1,050 req/s and 1.7 ms with one thread).
    threadpoolctl.threadpool_limits(1)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    shutil.rmtree(_metrics_dir, ignore_errors=True)
