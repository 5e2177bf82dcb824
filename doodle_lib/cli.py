"""The `doodle` command: data download / prepare / checkout, train, evaluate."""
from __future__ import annotations

import logging
from pathlib import Path

import click

from doodle_lib.settings import get_settings


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages too.")
def main(verbose: bool) -> None:
    """Doodle platform: data, training and the model registry."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@main.group()
def data() -> None:
    """The Quick, Draw! data and its versions."""


@data.command()
@click.option("--categories", required=True, help="Comma-separated names, e.g. 'cat,hot air balloon'.")
@click.option("--max-per-category", type=click.IntRange(min=1), help="Keep only the first N drawings of each.")
@click.option("--base-url", help="Where Google's files are (default: DOODLE_QUICKDRAW_URL).")
@click.option("--dest", type=click.Path(path_type=Path), help="Folder for the files (default: <data>/quickdraw).")
def download(categories: str, max_per_category: int | None, base_url: str | None, dest: Path | None) -> None:
    """Download Quick, Draw! numpy_bitmap and simplified files (resumable, checked, atomic)."""
    from doodle_lib import download as downloader

    settings = get_settings()
    names = [name.strip() for name in categories.split(",") if name.strip()]
    try:
        paths = downloader.download(
            names, dest or settings.downloads_dir, base_url or settings.quickdraw_url, max_per_category=max_per_category
        )
    except downloader.DownloadError as error:
        raise click.ClickException(str(error)) from None
    for path in paths:
        click.echo(path)


@data.command()
@click.option("--source", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A Quick, Draw! folder (numpy_bitmap/...); default: the shipped sample.")
@click.option("--categories", help="Comma-separated subset of the source's categories.")
@click.option("--max-per-category", type=click.IntRange(min=2), help="Use only the first N drawings of each.")
@click.option("--force", is_flag=True, help="Rebuild the base data and the evaluation set even if they exist.")
def prepare(source: Path | None, categories: str | None, max_per_category: int | None, force: bool) -> None:
    """Build the training data and the fixed evaluation set, and version them with DVC."""
    from doodle_lib import baseline

    names = [c.strip() for c in categories.split(",")] if categories else None
    try:
        click.echo(baseline.prepare(get_settings(), source, names, max_per_category, force))
    except (FileNotFoundError, ValueError) as error:
        raise click.ClickException(str(error)) from None


@data.command()
@click.option("--model-version", required=True, help="Registered version whose training data to restore.")
@click.option("--dest", default=None, help="Folder inside the data dir (default: checkouts/v<N>).")
def checkout(model_version: str, dest: str | None) -> None:
    """Restore exactly the dataset a model version was trained on, from the DVC remote."""
    from doodle_lib import lineage

    try:
        click.echo(lineage.checkout_model_dataset(get_settings(), model_version, dest))
    except (LookupError, RuntimeError) as error:
        raise click.ClickException(str(error)) from None


@main.command()
@click.option("--epochs", type=click.IntRange(min=1), default=None)
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--width", type=click.IntRange(min=1), default=None, help="Channels of the first conv block.")
@click.option("--seed", type=int, default=None)
@click.option("--dry-run", is_flag=True, help="One epoch on 100 drawings a category: checks the wiring in seconds.")
@click.option("--promote", is_flag=True, help="Mark the new version as production.")
def train(epochs, learning_rate, width, seed, dry_run, promote) -> None:
    """Train from scratch on the current dataset, log to MLflow and register a version."""
    from doodle_lib import baseline
    from doodle_lib.training import TrainConfig

    settings = get_settings()
    overrides = {"epochs": epochs, "learning_rate": learning_rate, "width": width, "seed": seed}
    config = TrainConfig(**{k: v for k, v in overrides.items() if v is not None}, threads=settings.torch_threads)
    if dry_run:
        config.epochs, config.limit_per_class = 1, 100
    try:
        result = baseline.train_base(settings, config, promote=promote, run_name="dry-run" if dry_run else "base")
    except FileNotFoundError as error:
        raise click.ClickException(str(error)) from None
    state = "production" if result.promoted else "registered"
    click.echo(f"version {result.version} ({state}): eval accuracy {result.accuracy:.2%}, run {result.run_id}")


@main.command()
@click.option("--model-version", default=None, help="Registered version (default: production).")
def evaluate(model_version: str | None) -> None:
    """Evaluate a registered version on the fixed evaluation set."""
    from doodle_lib import baseline

    try:
        version, result = baseline.evaluate_version(get_settings(), model_version)
    except (LookupError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"version {version}: accuracy {result.accuracy:.2%} on {result.count} drawings")
    for name, accuracy in result.per_class.items():
        click.echo(f"  {name:<20} {accuracy:.2%}")


@main.group()
def stack() -> None:
    """The embedded platform on this machine: MLflow, Airflow, the web app (make up / down / status)."""


@stack.command("up")
def stack_up() -> None:
    """Initialise what is missing, start every service, and run until Ctrl-C."""
    from doodle_lib import stack as embedded

    try:
        raise SystemExit(embedded.up(get_settings(), click.echo))
    except embedded.StackError as error:
        raise click.ClickException(str(error)) from None


@stack.command("down")
def stack_down() -> None:
    """Stop the running stack and every process it started."""
    from doodle_lib import stack as embedded

    try:
        stopped = embedded.down(get_settings())
    except embedded.StackError as error:
        raise click.ClickException(str(error)) from None
    click.echo("stopped" if stopped else "the stack is not running")


@stack.command("status")
def stack_status() -> None:
    """Whether the stack runs, and each service's health."""
    from doodle_lib import stack as embedded

    settings = get_settings()
    pid = embedded.running_pid(settings)
    click.echo(f"stack: {'running, pid ' + str(pid) if pid else 'not running'}")
    for name, url, ok in embedded.status(settings):
        click.echo(f"  {name:<12} {url:<28} {'healthy' if ok else 'down'}")
