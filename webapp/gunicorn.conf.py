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
from webapp.turns import Turns  # noqa: E402

# Move everything imported so far out of the garbage collector's reach: its passes would otherwise write to every
# object's header in each worker and turn the shared pages private (measured: 509 -> 376 MB PSS, master and 2 workers).
gc.freeze()

wsgi_app = "webapp:create_app()"
bind = [settings.webapp_bind]
# gevent: each worker serves its keep-alive connections from one event loop, one request after another, with no
# hand-off between threads. Requests are CPU-bound, so that is all the concurrency a worker can use; the hand-offs
# were a fifth of a trivial request's cost under gthread. Chosen by measurement (bench/serve.py's cells on 2 cores;
# wrk with 16 keep-alive connections posting the golden drawings; a machine shared with other jobs, so pairs ran
# back to back; BENCHMARKS.md has them):
#   gevent, 2 workers, yield after each request  1,050-1,380 req/s, 1.35-1.8 ms CPU a request, p99 23-31 ms
#   gthread, 2 workers x 4 threads               910-1,160 req/s, 1.6-2.0 ms CPU a request, p99 38-45 ms
#   gevent without the yield (post_request)      1,000-1,490 req/s, p99 0.7-1.1 s: a few connections took the worker
#   a trivial view (/healthz)                    gevent 2,940 req/s, gthread 2,320: the framework's own floor
#   sync, 2 workers, no keep-alive               the same req/s, p99 19-25 ms (one accept queue, first come first
#                                                served), but one slow upload or pipeline-page view holds a worker
# At concurrency 1, p50 1.6 ms (gevent) against 2.0-2.3 ms (gthread). The worker count is the core count: a third
# worker costs ~40 MB PSS and competes with the load generator for the same cores. gevent patches the standard
# library in each worker. Disk writes still block the loop: a feedback post's two fsyncs hold the worker's other
# requests for ~2 ms. A model's load (tens of ms of CPU) runs on gevent's thread pool (webapp/offload.py).
workers = settings.webapp_workers
worker_class = "gevent"
worker_connections = settings.webapp_connections
# Each worker gets its own listening socket (SO_REUSEPORT) and the kernel spreads new connections over them:
# with one shared socket, long keep-alive connections stay with whichever worker accepted them first, and one
# worker could hold all of them while the other idles. The kernel picks a socket by hashing the connection, so a
# few long-lived connections (a proxy's pool) can still split unevenly: four land on one worker one time in eight.
# Caveat: a second server started on the same port by the same user joins silently instead of failing with
# "address in use".
reuse_port = True
keepalive = 30
backlog = 2048
timeout = 60  # a worker stuck this long is restarted; loads happen off the request path, never in a request
graceful_timeout = 20
# No control socket (gunicornc): every master would otherwise take the same per-user path, ~/.gunicorn/gunicorn.ctl,
# so a second instance (tests, a benchmark beside `make up`) takes it over from the first.
control_socket_disable = True
accesslog = None
errorlog = "-"
loglevel = "info"


def when_ready(server):
    # With reuse_port the master holds no listening socket, so gunicorn's own "Listening at:" line names no address.
    server.log.info("web app listening on %s", ", ".join(f"http://{address}" for address in server.cfg.bind))


def post_fork(server, worker):
    # Two cores: one intra-op thread per worker, so workers do not fight over cores.
    torch.set_num_threads(1)
    # The same for NumPy's BLAS (the serving forward's matrix products): with its default of a thread per core, each
    # worker's OpenBLAS threads spin waiting for work while the other worker needs the core (measured at concurrency
    # 16: 90 req/s and 10 ms of CPU a request, against 1,050 req/s and 1.7 ms with one thread).
    threadpoolctl.threadpool_limits(1)


# Fairness between one worker's connections: each waits its turn after its response (webapp/turns.py), first come,
# first served. Against gevent.idle() as the wait (8 interleaved pairs at 16 connections, bench/serve.py's bodies): the
# same CPU a request, p99 22.7 against 25.7 ms and p99.9 32 against 39 ms (medians). The bound on each wait keeps a
# connection from waiting on a loop that never falls idle.
TURN_WAIT_SECONDS = 0.05
turns = Turns(TURN_WAIT_SECONDS)  # one queue a worker: each forked worker starts with its own, empty copy


def post_request(worker, req, environ, resp):
    if worker.cfg.worker_class_str == "gevent":
        turns.take()


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def on_exit(server):
    shutil.rmtree(_metrics_dir, ignore_errors=True)
