"""Every setting of the platform, read from environment variables with working local defaults."""
from __future__ import annotations

from pathlib import Path

from pydantic import AliasChoices, Field
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
    model_name: str = "doodle-classifier"
    production_alias: str = "production"
    experiment: str = "doodle"
    quickdraw_url: str = Field(
        "https://storage.googleapis.com/quickdraw_dataset/full", description="base URL of Google's full files"
    )
    eval_per_category: int = Field(400, description="rows at the end of each category kept for evaluation")
    torch_threads: int = Field(0, description="torch intra-op threads; 0 lets torch decide")
    feedback_threshold: int = Field(50, description="complete drawings that start a retraining run")
    promotion_tolerance: float = Field(0.5, description="evaluation-set accuracy points a candidate may lose")
    model_poll_seconds: float = Field(5.0, description="how often the web app asks the registry for the alias")

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
    def dataset_dir(self) -> Path:
        return self.data_dir / "dataset"

    @property
    def evaluation_path(self) -> Path:
        return self.data_dir / "evaluation" / "evaluation.npz"

    @property
    def downloads_dir(self) -> Path:
        return self.data_dir / "quickdraw"

    @property
    def dvc_remote_dir(self) -> Path:
        return self.storage_dir / "dvc-remote"


def get_settings() -> Settings:
    """Settings as the environment says now (cheap; read again so tests and tasks see their own env)."""
    return Settings()
