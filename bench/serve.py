"""Benchmark /api/predict (strokes in, top-k out) against the designs it replaces, with wrk.

Side by side, one run: (a) the raw in-process forward of the model, (b) `mlflow models serve` of the same
registered model, (c) a thin Flask proxy in front of (b) (bench/proxy.py), (d) the issue's yardstick, a plain Flask
app serving the model in-process under 2 sync workers (bench/plain_flask.py), and the web app under gunicorn with
webapp/gunicorn.conf.py; req/s, p50 and p99 at each concurrency, the servers' CPU time per request (the figure that
holds on a machine shared with other jobs), the web app's PSS. Writes the "## Serving (bench/serve.py)" section of
BENCHMARKS.md.

Run from the project root: `.venv/bin/python -m bench.serve` (about 9 minutes).
"""
from __future__ import annotations

import argparse
import json
import os
import platform as host
import re
import shlex
import shutil
import subprocess
import tempfile
import time
from contextlib import ExitStack, contextmanager
from datetime import date
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import psutil

from doodle_lib.settings import PROJECT_ROOT, Settings
from tests.conftest import CATEGORIES, SAMPLE, fixture_drawings
from tests.services import VENV_BIN, free_port, mlflow_server, stop, wait_for_http
from tests.webapp.serving import GUNICORN_CONF, app_env, gunicorn_app

LUA = PROJECT_ROOT / "bench" / "post_bodies.lua"
SECTION = "## Serving (bench/serve.py)"
TARGETS = ("web app", "mlflow models serve", "Flask proxy -> mlflow", "plain Flask app")
# The figures from its reference machine (2 cores): (b), (c) and (d) in req/s. Each target's ratio to its
# figure tells how this machine compares; the web app's to (d) holds across machines better than its ratios to (b)
# and (c), which run on different servers (uvicorn, the two hops) that machines speed up unequally.
REFERENCE = {TARGETS[1]: 550, TARGETS[2]: 400, TARGETS[3]: 2000}


def train_and_register(settings: Settings, epochs: int):
    """The production model: default architecture, trained briefly on the shipped sample, registered, promoted."""
    from doodle_lib import tracking
    from doodle_lib.dataset import Split, load_bitmaps
    from doodle_lib.training import TrainConfig, train

    x = np.concatenate([load_bitmaps(SAMPLE, c)[:1000] for c in CATEGORIES])
    model, _ = train(Split(x, np.repeat(CATEGORIES, 1000)), CATEGORIES, TrainConfig(epochs=epochs, threads=2))
    with tracking.training_run(settings, "bench-serve") as run_id:
        uri = tracking.log_model(model)
    version = tracking.register(settings, uri, run_id, {"bench": "serve"}).version
    tracking.set_production(settings, version)
    return model.eval()


def time_in_process(model, repeats: int = 3000) -> dict[str, float]:
    """(a) One image's forward through the model as trained (nn.Module), and the web app's whole work for one request
    without HTTP (its serving form of the model); median ms."""
    import threadpoolctl
    import torch

    from doodle_lib.drawing import strokes_to_bitmap
    from doodle_lib.model import ServingCNN

    torch.set_num_threads(1)  # as in each gunicorn worker, BLAS included
    threadpoolctl.threadpool_limits(1)
    serving = ServingCNN(model)  # what the web app runs
    drawings = [strokes for _, _, strokes in fixture_drawings()]
    bitmaps = [torch.from_numpy(strokes_to_bitmap(s)) for s in drawings]
    forward, work = [], []
    with torch.inference_mode():
        for i in range(repeats):
            start = time.perf_counter()
            model(bitmaps[i % len(bitmaps)])
            forward.append(time.perf_counter() - start)
    for i in range(repeats):
        start = time.perf_counter()
        serving.probabilities(strokes_to_bitmap(drawings[i % len(drawings)]))
        work.append(time.perf_counter() - start)
    skip = repeats // 10  # warm-up
    return {"forward_ms": float(np.median(forward[skip:])) * 1e3, "work_ms": float(np.median(work[skip:])) * 1e3}


def write_bodies(folder: Path) -> tuple[Path, Path]:
    """The 150 golden drawings as /api/predict bodies (strokes) and as /invocations bodies (rendered bitmaps)."""
    from doodle_lib.drawing import strokes_to_bitmap

    drawings = [strokes for _, _, strokes in fixture_drawings()]
    strokes = folder / "strokes.jsonl"
    strokes.write_text("".join(json.dumps({"strokes": s}, separators=(",", ":")) + "\n" for s in drawings))
    bitmaps = folder / "bitmaps.jsonl"
    bitmaps.write_text("".join(
        json.dumps({"inputs": strokes_to_bitmap(s)[None].astype(np.float32).tolist()}, separators=(",", ":")) + "\n"
        for s in drawings
    ))
    return strokes, bitmaps


@contextmanager
def process(command: list[str], env: dict[str, str], log: Path, health: str,
            timeout: float = 180) -> Iterator[subprocess.Popen]:
    """A server process in its own session, healthy before the body runs, stopped after."""
    with log.open("ab") as output:
        server = subprocess.Popen(command, cwd=PROJECT_ROOT, env={**os.environ, **env}, stdout=output,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_http(health, timeout, server, log)
        yield server
    finally:
        stop(server, timeout=30)


def wrk(url: str, bodies: Path, connections: int, seconds: float) -> dict:
    """One closed-loop wrk run (one thread: it shares the 2 cores with the servers); the Lua script's figures."""
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(LUA), url, "--",
               str(bodies)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    result = json.loads(output.strip().splitlines()[-1])
    result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
    result["errors"] = sum(result[k] for k in ("non_2xx", "connect_errors", "read_errors", "write_errors", "timeouts"))
    return result


def server_processes(port: int) -> list[psutil.Process]:
    """The gunicorn master listening on `port` and all its workers."""
    listening = next(c.pid for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port)
    master = psutil.Process(listening)  # psutil names one holder of a shared socket: maybe a worker
    while master.parent() is not None and "gunicorn" in " ".join(master.parent().cmdline()):
        master = master.parent()
    return [master, *master.children(recursive=True)]


def process_tree(pid: int) -> list[psutil.Process]:
    return [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]


def cpu_seconds(processes: list[psutil.Process]) -> float:
    """User and system CPU time used so far by the processes."""
    return sum(sum(p.cpu_times()[:2]) for p in processes)


def pss_mb(processes: list[psutil.Process]) -> float:
    return sum(p.memory_full_info().pss for p in processes) / 2**20


def measure(targets: dict[str, tuple[str, Path, Callable[[], list[psutil.Process]]]], levels: list[int],
            seconds: float, rounds: int) -> dict:
    """wrk against each target at each concurrency, and the CPU time its server processes spent per request.

    The cells run in rounds, every target once a round, and each figure is the median over the rounds: on a machine
    shared with other jobs a slow minute then slows every target alike instead of one, so the ratios hold still.
    """
    cells: dict[tuple[str, int], list[dict]] = {}
    for round_number in range(1, rounds + 1):
        for name, (url, bodies, servers) in targets.items():
            for connections in levels:
                wrk(url, bodies, connections, min(3.0, seconds))  # warm-up: connections, caches, worker threads
                processes = servers()
                before = cpu_seconds(processes)
                r = wrk(url, bodies, connections, seconds)
                r["cpu_ms"] = (cpu_seconds(processes) - before) / max(r["requests"], 1) * 1e3
                cells.setdefault((name, connections), []).append(r)
                print(f"round {round_number}/{rounds} {name:24} c={connections:<3} {r['rps']:7.0f} req/s  p50 "
                      f"{r['p50_us'] / 1e3:6.2f} ms  p99 {r['p99_us'] / 1e3:7.2f} ms  CPU {r['cpu_ms']:.2f} ms/request  "
                      f"errors {r['errors']}", flush=True)
    return {key: median_cell(runs) for key, runs in cells.items()}


def median_cell(runs: list[dict]) -> dict:
    """One cell's figures over its rounds: medians, the req/s range, and every error counted."""
    cell = {key: float(np.median([r[key] for r in runs])) for key in ("rps", "p50_us", "p99_us", "cpu_ms")}
    cell["rps_range"] = (min(r["rps"] for r in runs), max(r["rps"] for r in runs))
    cell["errors"] = sum(r["errors"] for r in runs)
    return cell


def report(results: dict, levels: list[int], in_process: dict, pss: float, workers: int, context: dict) -> str:
    """The BENCHMARKS.md section: setup, the table, and each target of issue 4 checked against the figures."""
    lines = [
        f"{SECTION}, {context['date']}", "",
        "`.venv/bin/python -m bench.serve`: a real `mlflow server` holds the registered model (default architecture,"
        f" width 16, trained {context['epochs']} epochs on the shipped sample; `models:/doodle-classifier@production`);"
        " every target answers the 150 golden drawings in turn (wrk, one thread, keep-alive, a Lua script posting"
        f" each body; {context['seconds']:g} s per cell after a 3 s warm-up). The cells run in {context['rounds']}"
        " rounds, every target once a round; each figure is the median over the rounds (req/s also shows the"
        " range), so that a slow minute of the shared machine slows every target alike.", "",
        f"- Machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, {host.platform()},"
        f" Python {host.python_version()}; wrk shares the cores with the servers. Load average before the run:"
        f" {context['load_before']}; after: {context['load_after']}.",
        f"- Web app: `{' '.join(['gunicorn -c webapp/gunicorn.conf.py', context['webapp_args']]).strip()}`"
        f" ({'overridden on the command line' if context['webapp_args'] else 'the production settings'}):"
        f" {context['webapp_settings']}; one torch and one BLAS thread a worker.",
        "- (b) `mlflow models serve -m models:/doodle-classifier@production --env-manager local` (uvicorn, its"
        " default 1 worker), posted the rendered bitmap as `{\"inputs\": [[[...]]]}`.",
        "- (c) bench/proxy.py under gunicorn (2 gthread workers x 4 threads): the same preprocessing, then the bitmap"
        " to (b)'s /invocations on a keep-alive session, softmax and top-k on the logits.",
        "- (d) bench/plain_flask.py under gunicorn (2 sync workers, which close each connection after its answer):"
        " the issue's \"plain Flask app under gunicorn with 2 sync workers\", written the obvious way: the same"
        " preprocessing, the registered torch model in-process, no metrics, no schema.",
        "- Server CPU: user and system time of the target's processes (gunicorn master and workers; for (c) the proxy's"
        " and (b)'s) during the cell, divided by the requests it answered; wrk's own CPU is not in it.",
        "",
        "| target | concurrency | req/s | req/s over the rounds | p50 (ms) | p99 (ms) | server CPU (ms/request) | errors |",
        "|---|---|---|---|---|---|---|---|",
        f"| (a) in-process forward, one 28x28 image, 1 thread | 1 | {1e3 / in_process['forward_ms']:.0f} |"
        f" | {in_process['forward_ms']:.3f} | | | |",
        f"| in-process request work (parse, simplify, render, forward, softmax) | 1 | {1e3 / in_process['work_ms']:.0f} |"
        f" | {in_process['work_ms']:.3f} | | | |",
    ]
    for name in TARGETS:
        for c in levels:
            if (name, c) in results:
                r = results[name, c]
                low, high = r["rps_range"]
                lines.append(f"| {name} | {c} | {r['rps']:.0f} | {low:.0f}-{high:.0f} | {r['p50_us'] / 1e3:.2f} |"
                             f" {r['p99_us'] / 1e3:.2f} | {r['cpu_ms']:.2f} | {r['errors']} |")
    lines += ["", f"Web app memory after the runs: {pss:.0f} MB PSS over the gunicorn master and {workers} workers.", ""]
    top = max(levels)
    app = results.get(("web app", top))
    mlflow_serve, proxy = results.get((TARGETS[1], top)), results.get((TARGETS[2], top))
    if app and mlflow_serve and proxy:
        lines.append(f"Targets of issue 4 (web app at concurrency {top} unless said):")
        checks = [
            (f"req/s >= 5x (b): {app['rps']:.0f} vs {5 * mlflow_serve['rps']:.0f} ({app['rps'] / mlflow_serve['rps']:.1f}x)",
             app["rps"] >= 5 * mlflow_serve["rps"]),
            (f"req/s >= 8x (c): {app['rps']:.0f} vs {8 * proxy['rps']:.0f} ({app['rps'] / proxy['rps']:.1f}x)",
             app["rps"] >= 8 * proxy["rps"]),
            (f"p99 <= 15 ms: {app['p99_us'] / 1e3:.2f} ms", app["p99_us"] <= 15_000),
        ]
        if ("web app", 1) in results:
            p50 = results["web app", 1]["p50_us"] / 1e3
            checks.append((f"p50 at concurrency 1 within 1 ms of (a): {p50:.2f} ms vs {in_process['forward_ms']:.2f}"
                           f" + 1 ms", p50 <= in_process["forward_ms"] + 1))
        checks.append((f"PSS <= 500 MB: {pss:.0f} MB", pss <= 500))
        lines += [f"- {'met' if ok else 'NOT met'}: {text}" for text, ok in checks]
    lines += calibration(results, top)
    return "\n".join(lines) + "\n"


def calibration(results: dict, top: int) -> list[str]:
    """This machine against the issue's reference machine, target by target, and the web app against (d)."""
    measured = {name: results[name, top]["rps"] for name in REFERENCE if (name, top) in results}
    if len(measured) < len(REFERENCE) or ("web app", top) not in results:
        return []
    app, plain = results["web app", top]["rps"], measured[TARGETS[3]]
    b, c, d = (REFERENCE[name] for name in TARGETS[1:])
    ratios = ", ".join(f"({letter}) {measured[name] / REFERENCE[name]:.2f}x" for letter, name in zip("bcd", TARGETS[1:]))
    return [
        "",
        f"This machine against the issue's reference figures at concurrency {top} ((b) ~{b}, (c) ~{c}, (d) ~{d}"
        f" req/s): {ratios}. The web app answers {app / plain:.2f}x the requests of (d); on the reference machine"
        f" 5x (b) and 8x (c) are {5 * b / d:.2f}x and {8 * c / d:.2f}x of (d).",
    ]


def write_section(text: str, path: Path = PROJECT_ROOT / "BENCHMARKS.md") -> None:
    """Replace this benchmark's section of BENCHMARKS.md (or append it), keeping every other section."""
    current = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(current):
        updated = pattern.sub(lambda _: text + "\n", current, count=1)
    else:
        updated = current.rstrip("\n") + "\n\n" + text
    path.write_text(updated.rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8, help="wrk duration of each cell")
    parser.add_argument("--rounds", type=int, default=3, help="times every cell runs, interleaved; medians reported")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16], help="wrk connections")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs of the served model")
    parser.add_argument("--webapp-args", default="", help="extra gunicorn options for the web app (compare settings)")
    parser.add_argument("--only-webapp", action="store_true", help="skip (b), (c) and (d)")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave BENCHMARKS.md alone")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install -y wrk")
    load_before = ", ".join(f"{v:.2f}" for v in os.getloadavg())

    with tempfile.TemporaryDirectory(prefix="bench-serve-") as folder, ExitStack() as stack:
        root = Path(folder)
        tracking_url = stack.enter_context(mlflow_server(root / "mlflow"))
        settings = Settings(MLFLOW_TRACKING_URI=tracking_url, data_dir=root / "data", storage_dir=root / "storage")
        print(f"training and registering the model ({args.epochs} epochs)", flush=True)
        model = train_and_register(settings, args.epochs)
        in_process = time_in_process(model)
        print(f"(a) forward {in_process['forward_ms']:.3f} ms; in-process request work {in_process['work_ms']:.3f} ms")
        strokes, bitmaps = write_bodies(root)

        production = Settings()  # the defaults a deployment gets, without environment overrides
        workers = production.webapp_workers
        webapp_port = free_port()
        webapp = stack.enter_context(gunicorn_app(app_env(settings, poll_seconds=5.0), root, workers,
                                                  webapp_port, tuple(shlex.split(args.webapp_args))))
        targets = {"web app": (f"{webapp}/api/predict", strokes, lambda: server_processes(webapp_port))}
        if not args.only_webapp:
            serve_port, proxy_port = free_port(), free_port()
            serve = stack.enter_context(process(
                [str(VENV_BIN / "mlflow"), "models", "serve", "-m", f"models:/{settings.model_name}@production",
                 "--env-manager", "local", "-h", "127.0.0.1", "-p", str(serve_port)],
                {"MLFLOW_TRACKING_URI": tracking_url, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"},
                root / "mlflow-serve.log", f"http://127.0.0.1:{serve_port}/ping",
            ))
            proxy = stack.enter_context(process(
                [str(VENV_BIN / "gunicorn"), "bench.proxy:create_app()", "-b", f"127.0.0.1:{proxy_port}",
                 "-w", "2", "-k", "gthread", "--threads", "4", "--keep-alive", "30"],
                {"BENCH_INVOCATIONS_URL": f"http://127.0.0.1:{serve_port}/invocations",
                 "BENCH_CATEGORIES": json.dumps(model.categories)},
                root / "proxy.log", f"http://127.0.0.1:{proxy_port}/healthz",
            ))
            plain_port = free_port()
            plain = stack.enter_context(process(
                [str(VENV_BIN / "gunicorn"), "bench.plain_flask:create_app()", "-b", f"127.0.0.1:{plain_port}",
                 "-w", "2", "-k", "sync"],
                {"MLFLOW_TRACKING_URI": tracking_url}, root / "plain-flask.log", f"http://127.0.0.1:{plain_port}/healthz",
            ))
            targets[TARGETS[1]] = (f"http://127.0.0.1:{serve_port}/invocations", bitmaps, lambda: process_tree(serve.pid))
            # The proxy's requests cost both servers' CPU.
            targets[TARGETS[2]] = (f"http://127.0.0.1:{proxy_port}/api/predict", strokes,
                                   lambda: process_tree(proxy.pid) + process_tree(serve.pid))
            targets[TARGETS[3]] = (f"http://127.0.0.1:{plain_port}/api/predict", strokes, lambda: process_tree(plain.pid))
        results = measure(targets, args.concurrency, args.seconds, args.rounds)
        processes = server_processes(webapp_port)
        pss = pss_mb(processes)
        webapp_settings = webapp_summary(args.webapp_args, workers, root)
        context = {
            "date": date.today(), "epochs": args.epochs, "seconds": args.seconds, "rounds": args.rounds,
            "load_before": load_before,
            "load_after": ", ".join(f"{v:.2f}" for v in os.getloadavg()), "webapp_args": args.webapp_args,
            "webapp_settings": webapp_settings,
        }
    text = report(results, args.concurrency, in_process, pss, len(processes) - 1, context)
    print(text)
    if not args.no_write:
        write_section(text)
        print("written to BENCHMARKS.md")


def webapp_summary(args: str, workers: int, folder: Path) -> str:
    """The web app's effective gunicorn settings, as `gunicorn --print-config` resolves them."""
    env = {**os.environ, "DOODLE_WEBAPP_WORKERS": str(workers), "TMPDIR": str(folder)}
    command = [str(VENV_BIN / "gunicorn"), "-c", str(GUNICORN_CONF), *shlex.split(args), "--print-config"]
    output = subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, check=True).stdout
    config = dict(re.findall(r"^(\w+)\s+= (.*)$", output, re.M))
    threads_text = f" x {config['threads']} threads" if config["worker_class"] == "gthread" else ""
    return (f"{config['workers']} {config['worker_class']} workers{threads_text}, keep-alive {config['keepalive']} s,"
            f" reuse_port {config['reuse_port']}, backlog {config['backlog']}")


if __name__ == "__main__":
    main()
