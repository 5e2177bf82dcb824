"""Every setting of the platform, read from environment variables with working local defaults."""
from __future__ import annotations

import re
from pathlib import Path

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Configuration; each field is the environment variable DOODLE_<FIELD> unless an alias says otherwise."""

    model_config = SettingsConfigDict(env_prefix="DOODLE_", extra="ignore")

    data_dir: Path = Field(PROJECT_ROOT / "data", description="feedback, dataset, evaluation set, downloads")
    storage_dir: Path = Field(PROJECT_ROOT / "storage", description="MLflow store, DVC remote, Airflow home")
    sample_dir: Path = Field(PROJECT_ROOT / "data" / "quickdraw-sample", description="the shipped Quick, Draw! sample")
    tracking_uri: str = Field(
        "",
        validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "DOODLE_TRACKING_URI"),
        description="MLflow tracking server; empty means the local SQLite store under storage_dir",
    )
    model_name: str = Field("doodle-classifier", min_length=1, max_length=256, pattern=r"^[^/:\s]([^/:]*[^/:\s])?$",
                            description="registered model name in MLflow (no '/' or ':')")
    # MLflow's own rule for aliases: letters, digits, '_' and '-'.
    production_alias: str = Field("production", pattern=r"^[A-Za-z0-9_-]+$", description="the alias the web app serves")
    experiment: str = Field("doodle", min_length=1, description="MLflow experiment of the training runs")
    quickdraw_url: str = Field(
        "https://storage.googleapis.com/quickdraw_dataset/full", description="base URL of Google's full files"
    )
    eval_per_category: int = Field(400, description="rows at the end of each category kept for evaluation")
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 lets torch decide")
    # The bounds of the settings that are defaults of the retraining form are the form's (a default outside them
    # would make Airflow refuse the whole DAG, naming neither the setting nor its variable).
    feedback_threshold: int = Field(50, ge=1, le=100_000, description="complete drawings that start a retraining run")
    promotion_tolerance: float = Field(0.5, ge=0, le=100, description="evaluation-set accuracy points a candidate may lose")
    # Categories users propose in the web app (doodle_lib/proposals.py)
    proposal_min_drawings: int = Field(25, ge=1, description="drawings a proposed category needs before it is trained")
    proposals_require_approval: bool = Field(
        False, description="train a proposed category only after an operator approved it (doodle proposals approve)"
    )
    new_category_holdout: float = Field(
        0.2, gt=0, lt=1, description="share of a new category's drawings held back from training to judge it"
    )
    new_category_bar: float = Field(
        0.6, ge=0, le=1, description="accuracy a new category needs on its held-back drawings for promotion"
    )
    new_category_epochs: int = Field(20, description="fine-tuning epochs of a run that adds categories, unless its params say otherwise")
    new_category_replay_ratio: float = Field(10.0, description="old images replayed per new image when a run adds categories")
    model_poll_seconds: float = Field(5.0, gt=0, description="how often the web app asks the registry for the alias")
    # Retraining pipeline (dags/retrain.py, dags/retrain_from_scratch.py)
    feedback_poll_seconds: float = Field(1.0, gt=0, description="how often the feedback sensor's trigger counts the folder")
    feedback_wait_minutes: float = Field(
        30.0, ge=0, le=1440, description="how long a retraining run waits for feedback before it skips"
    )
    fine_tune_epochs: int = Field(3, description="epochs of a fine-tuning run unless the run's params say otherwise")
    fine_tune_learning_rate: float = Field(5e-4, description="peak learning rate of a fine-tuning run (gentler than from scratch)")
    retrain_epochs: int = Field(
        15, ge=1, le=100, description="epochs of a from-scratch retraining run unless the run's params say otherwise"
    )
    retry_delay_seconds: float = Field(30.0, ge=0, description="delay before Airflow retries a failed retraining stage")
    mlflow_ui_url: str = Field("", description="MLflow address for links in the Airflow UI; empty means tracking_uri")
    webapp_bind: str = Field("127.0.0.1:8000", description="host:port the web app's gunicorn listens on")
    webapp_workers: int = Field(2, ge=1, description="gunicorn worker processes of the web app (one model copy each)")
    webapp_connections: int = Field(1000, ge=1, description="simultaneous client connections per web app worker (gevent)")
    webapp_body_timeout: float = Field(
        60.0, gt=0, le=3600, description="seconds a request body may pause before the web app answers 408"
    )
    webhook_secret: str = Field("", description="HMAC secret of the MLflow registry webhook; empty turns the receiver off")
    top_k: int = Field(3, ge=1, le=100, description="how many labels /api/predict returns by default")
    prometheus_multiproc_dir: Path | None = Field(
        None,
        validation_alias=AliasChoices("PROMETHEUS_MULTIPROC_DIR", "DOODLE_PROMETHEUS_MULTIPROC_DIR"),
        description="prometheus_client's multiprocess folder; set by webapp/gunicorn.conf.py, unset in one process",
    )

    # The embedded stack (doodle stack up / make up)
    host: str = Field("127.0.0.1", description="address every embedded service listens on")
    mlflow_port: int = Field(5000, ge=1, le=65535, description="MLflow tracking server port in the embedded stack")
    airflow_port: int = Field(8080, ge=1, le=65535, description="Airflow api-server port in the embedded stack")
    prometheus_port: int = Field(9090, ge=1, le=65535, description="Prometheus port in the embedded stack, when installed")
    airflow_parallelism: int = Field(4, ge=1, description="Airflow task slots; 4 suits 2 cores")
    training_threads: int = Field(1, ge=0, description="torch threads of training tasks in the stack, so serving keeps a core")

    # The web app's pipeline page reads Airflow's REST API
    airflow_url: str = Field("", description="Airflow api-server for the pipeline page; empty means http://host:airflow_port")
    airflow_user: str = Field("admin", description="Airflow user the pipeline page logs in as")
    airflow_password: str = Field(
        "", description="its password; empty reads the one Airflow generated under storage_dir/airflow"
    )

    @field_validator("tracking_uri")
    @classmethod
    def a_uri(cls, value: str) -> str:
        # MLflow takes anything else for a local folder of files, so a typo surfaced as "no version 1 of ...".
        if value and not re.fullmatch(r"[a-z][a-z0-9+.-]*://\S+", value):
            raise ValueError("must be a URI such as http://127.0.0.1:5000 or sqlite:///path/mlflow.db (empty: the local "
                             "SQLite store under the storage dir)")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def no_edge_spaces(cls, value: str) -> str:
        # A secret pasted with a space or newline signs differently from MLflow's copy: every delivery is refused.
        if value != value.strip():
            raise ValueError("has spaces or line breaks at its start or end: the signatures would not match")
        return value

    @field_validator("data_dir", "storage_dir", "sample_dir", mode="before")
    @classmethod
    def not_empty(cls, value):
        # Path("") is the current directory: an emptied variable would turn wherever the command runs into the data.
        if isinstance(value, str) and not value.strip():
            raise ValueError("must not be empty")
        return value

    @property
    def airflow_api(self) -> str:
        """Where the pipeline page finds Airflow's REST API."""
        return (self.airflow_url or f"http://{self.host}:{self.airflow_port}").rstrip("/")

    @property
    def mlflow_uri(self) -> str:
        """The tracking URI to use: the configured server, or the local SQLite store."""
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{self.storage_dir / 'mlflow' / 'mlflow.db'}"

    @property
    def artifacts_dir(self) -> Path:
        """Where a local (serverless) MLflow store keeps artifacts."""
        return self.storage_dir / "mlflow" / "artifacts"

    @property
    def feedback_dir(self) -> Path:
        return self.data_dir / "feedback"

    @property
    def proposals_dir(self) -> Path:
        """Drawings under category names users proposed, one folder per normalised name."""
        return self.data_dir / "proposals"

    @property
    def dataset_dir(self) -> Path:
        return self.data_dir / "dataset"

    @property
    def evaluation_path(self) -> Path:
        return self.data_dir / "evaluation" / "evaluation.npz"

    @property
    def downloads_dir(self) -> Path:
        return self.data_dir / "quickdraw"

    @property
    def webapp_state_dir(self) -> Path:
        """Where the web app's workers share small state (the registry-changed signal)."""
        return self.storage_dir / "webapp"

    @property
    def dvc_remote_dir(self) -> Path:
        return self.storage_dir / "dvc-remote"

    @property
    def batches_dir(self) -> Path:
        """Feedback a retraining run has taken, one folder per run, until its dataset version is stored."""
        return self.data_dir / "batches"

    @property
    def rejected_dir(self) -> Path:
        """Copies of drawings ingest could not use, one folder per batch, with the reason."""
        return self.data_dir / "rejected"

    @property
    def runs_dir(self) -> Path:
        """Per-run working files of the retraining pipeline (candidate checkpoints)."""
        return self.storage_dir / "runs"


def get_settings() -> Settings:
    """Settings as the environment says now (cheap; read again so tests and tasks see their own env)."""
    return Settings()
