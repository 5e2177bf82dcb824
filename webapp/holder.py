"""The model holder: serves the production model, learns that the alias moved, swaps the new one in."""
from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from doodle_lib import dataset, tracking
from doodle_lib.drawing import strokes_to_bitmap
from doodle_lib.model import ServingCNN, load_checkpoint
from doodle_lib.settings import Settings
from webapp import offload

log = logging.getLogger(__name__)
SIGNAL_FILE = "registry-changed"  # touched by the webhook receiver of any worker, watched by all
SIGNAL_CHECK_SECONDS = 0.2
WARM_UP_STROKES = [[[0, 10, 20], [0, 20, 0]]]


@dataclass(frozen=True)
class Served:
    """One loaded model version; immutable, so a request keeps a consistent one across a swap."""

    model: ServingCNN  # the inference-only form: the registered model's function in NumPy, about 3x faster a forward
    version: str
    loaded_at: datetime

    @property
    def categories(self) -> list[str]:
        return self.model.categories

    def predict(self, bitmap: np.ndarray) -> np.ndarray:
        """Class probabilities of one 28x28 bitmap."""
        return self.model.probabilities(bitmap)


def serving_model(checkpoint: Path) -> ServingCNN:
    """The serving form of a checkpoint, warmed up: first calls load cairo and the BLAS kernels, not in a request."""
    model = ServingCNN(load_checkpoint(checkpoint))
    model.probabilities(strokes_to_bitmap(WARM_UP_STROKES))
    return model


class ModelHolder:
    """Keeps the production model of one process and replaces it in the background."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings
        self.served: Served | None = None  # swapped by one assignment: readers never see half a model
        self.registry_reachable = False
        self.checked = False  # the registry has answered at least once (with a version or with none)
        self.in_production: str | None = None  # the version the alias named when the registry last answered
        self.failed_version: str | None = None  # that version, while loading it fails (retried at every check)
        self.last_error = ""
        self.versions_seen: set[str] = set()
        self.on_reload = lambda result, served: None  # metrics hooks
        self.on_check = lambda reachable: None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._signal_mtime = 0.0

    def init_app(self, app) -> None:
        """Load the production model now, then watch the registry from a daemon thread."""
        self.settings = app.config["SETTINGS"]
        # Fail fast: a poll that retries for minutes would leave the holder blind to an outage.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(app.config["REGISTRY_TIMEOUT_SECONDS"]))
        app.extensions["model_holder"] = self
        if app.config["MODEL_WATCH"]:
            self.check()
            self.start()

    @property
    def signal_path(self):
        return self.settings.webapp_state_dir / SIGNAL_FILE

    def status(self) -> str:
        """ok; degraded (registry unreachable, or the production version failed to load); or no_model."""
        if not self.registry_reachable or self.failed_version:
            return "degraded"
        return "ok" if self.served else "no_model"

    def ready(self) -> bool:
        """Serving a model, or the registry said there is none in production yet."""
        return self.served is not None or (self.checked and self.in_production is None)

    def why_no_model(self) -> str:
        """Why nothing is served, in words for the person asking for a prediction."""
        if not self.registry_reachable:
            return f"no model is loaded: the model registry does not answer ({self.last_error or 'starting'})"
        if self.failed_version:
            return f"no model is loaded: the production model could not be loaded ({self.last_error})"
        return "no model is in production yet: train and promote one"

    def reason(self) -> str | None:
        """Why the status is not ok, in words for the page; None when it is."""
        if self.served is None:
            return self.why_no_model()
        if not self.registry_reachable:
            return "registry unreachable: still serving"
        if self.failed_version:
            return f"version {self.failed_version} could not be loaded: still serving"
        return None

    def describe(self) -> dict:
        """What GET /api/model and the page say of the served model."""
        served = self.served
        return {
            "status": self.status(),
            "reason": self.reason(),
            "version": served.version if served else None,
            "categories": self.known_categories(),  # while none is served, the base data's: what feedback may carry
            "loaded_since": served.loaded_at.isoformat() if served else None,
            "registry_reachable": self.registry_reachable,
            "poll_seconds": self.settings.model_poll_seconds,
            "last_error": self.last_error,
        }

    def known_categories(self) -> list[str]:
        """Labels feedback may carry: the served model's, or the base data's while none is served."""
        served = self.served
        return served.categories if served else dataset.categories_in(self.settings.sample_dir)

    def check(self) -> None:
        """Ask the registry where the alias points; load and swap in a new version if it moved."""
        try:
            version = tracking.production_version(self.settings, tracking.registry_client(self.settings))
        except Exception as error:  # noqa: BLE001 - any registry failure means: keep serving what we have
            self._unreachable(error)
            self.on_check(False)
            return
        self.in_production = None if version is None else str(version.version)
        self.registry_reachable, self.checked = True, True
        self.on_check(True)
        current = self.served
        if self.in_production is None or (current and current.version == self.in_production):
            self.failed_version, self.last_error = None, ""
            return
        try:
            served = self._load(self.in_production)
        except Exception as error:  # noqa: BLE001
            log.warning("loading version %s failed, still serving %s: %s", version.version, current and current.version, error)
            self.failed_version, self.last_error = self.in_production, f"loading version {version.version} failed: {error}"
            self.on_reload("failure", current)
            return
        self.failed_version, self.last_error = None, ""
        self.versions_seen.add(served.version)
        self.served = served
        log.info("now serving version %s (was %s)", version.version, current and current.version)
        self.on_reload("success", self.served)

    def _load(self, version: str) -> Served:
        """Download a version (network I/O, which gevent interleaves with requests), then build and warm up its
        serving form off the event loop (tens of ms of CPU that no request should wait on)."""
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = tracking.download_checkpoint(self.settings, version, Path(folder))
            model = offload.blocking(serving_model, checkpoint)
        return Served(model, version, datetime.now(timezone.utc))

    def _unreachable(self, error: Exception) -> None:
        if self.registry_reachable or not self.last_error:
            # At a stack's start the web app may ask before MLflow listens: the next poll finds it.
            serving = f"still serving version {self.served.version}" if self.served else "no model loaded yet"
            log.warning("registry unreachable (%s; asking again every %g s): %s", serving,
                        self.settings.model_poll_seconds, error)
        self.registry_reachable = False
        self.last_error = f"registry unreachable: {error.__class__.__name__}"

    def notify(self) -> None:
        """The registry changed (webhook): check now here, and tell the other workers through the signal file."""
        self.signal_path.parent.mkdir(parents=True, exist_ok=True)
        self.signal_path.write_text(str(time.time()))
        self._wake.set()

    def _signalled(self) -> bool:
        try:
            mtime = self.signal_path.stat().st_mtime
        except OSError:
            return False
        changed, self._signal_mtime = mtime != self._signal_mtime, mtime
        return changed

    def start(self) -> None:
        self._signalled()  # remember the current signal, so only newer ones wake us
        self._thread = threading.Thread(target=self._run, name="model-holder", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            deadline = time.monotonic() + self.settings.model_poll_seconds
            # Sleep in short steps so a webhook's signal (from any worker) is acted on at once.
            while time.monotonic() < deadline and not self._stop.is_set():
                if self._wake.wait(SIGNAL_CHECK_SECONDS) or self._signalled():
                    break
            self._wake.clear()
            try:
                self.check()
            except Exception:  # noqa: BLE001 - e.g. a metrics file on a full disk: keep watching, say why
                log.exception("checking the registry failed; trying again at the next check")
