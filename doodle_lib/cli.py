"""The `doodle` command: data download / prepare / checkout, train, evaluate, proposals, stack."""
from __future__ import annotations

import json
import logging
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import click

from doodle_lib.settings import get_settings


def current_settings():
    """The settings, or a one-line error naming each environment variable whose value they refuse."""
    from pydantic import ValidationError

    try:
        return get_settings()
    except ValidationError as error:
        problems = "; ".join(
            f"{environment_variable(str(e['loc'][0]))}={e['input']!r}: {e['msg']}" for e in error.errors()
        )
        raise click.ClickException(f"bad setting: {problems}") from None


class NonEmptyPath(click.Path):
    """A path option that refuses an empty value, which Path("") would take for the current folder."""

    def convert(self, value, param, ctx):
        if isinstance(value, str) and not value.strip():
            self.fail("an empty path would mean the current folder: name one (\".\" if you mean it)", param, ctx)
        return super().convert(value, param, ctx)


class Doodle(click.Group):
    """The command group: a file system error anywhere below is a message naming the file, not a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except OSError as error:  # a file where a folder goes, a name too long, no permission, a full disk
            where = f": {error.filename}" if error.filename else ""
            raise click.ClickException(f"{error.strerror or error}{where}") from None


def registered_version(ctx, param, value: str | None) -> str | None:
    """A --model-version as MLflow numbers them: the registry takes " 1" as 1, and loading it then fails."""
    if value is not None and not re.fullmatch(r"[1-9][0-9]{0,8}", value):
        raise click.BadParameter(f"{value!r} is not a registered version: a whole number such as 3")
    return value


def require_mlflow(settings) -> None:
    """Fail at once, naming the server, when MLFLOW_TRACKING_URI is a server that does not answer (MLflow's client
    would retry for minutes before its own traceback), or a local registry that does not exist yet."""
    import urllib.error
    import urllib.request

    uri = settings.mlflow_uri
    missing = missing_local_registry(settings)
    if missing:
        # MLflow would create the store to find nothing in it, leaving an empty database where none was.
        raise click.ClickException(
            f"no model registry yet at {missing}: train a model first "
            "(`doodle train --promote`), or set MLFLOW_TRACKING_URI to a running server"
        )
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=10).close()
    except urllib.error.HTTPError:  # it answers (behind a proxy or authentication, perhaps): MLflow's client decides
        return
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise click.ClickException(
            f"the MLflow server at {uri} does not answer ({reason}): start the platform (`make up`) or set "
            "MLFLOW_TRACKING_URI to a running server"
        ) from None


def missing_local_registry(settings) -> Path | None:
    """The SQLite file of a local tracking URI when it does not exist yet (nothing was ever registered), else None."""
    uri = settings.mlflow_uri
    if not uri.startswith("sqlite:///"):
        return None
    path = Path(uri.removeprefix("sqlite:///"))
    return None if path.exists() else path


def environment_variable(field: str) -> str:
    """The variable a settings field is read from: DOODLE_<FIELD>, or the alias it was found under."""
    return field if field.isupper() else f"DOODLE_{field.upper()}"


@click.group(cls=Doodle)
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages too.")
def main(verbose: bool) -> None:
    """Doodle platform: data, training and the model registry."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")


@main.group()
def data() -> None:
    """The Quick, Draw! data and its versions."""


@data.command()
@click.option("--categories", required=True, help="Comma-separated names, e.g. 'cat,hot air balloon'.")
@click.option("--max-per-category", type=click.IntRange(min=1),
              help="Fetch only the first N drawings of each (a file that already holds more is kept as it is).")
@click.option("--base-url", help="Where Google's files are (default: DOODLE_QUICKDRAW_URL).")
@click.option("--dest", type=NonEmptyPath(path_type=Path), help="Folder for the files (default: <data>/quickdraw).")
def download(categories: str, max_per_category: int | None, base_url: str | None, dest: Path | None) -> None:
    """Download Quick, Draw! numpy_bitmap and simplified files (resumable, checked, atomic)."""
    from doodle_lib import download as downloader

    settings = current_settings()
    names = category_names(categories)
    try:
        paths = downloader.download(
            names, dest or settings.downloads_dir, base_url or settings.quickdraw_url, max_per_category=max_per_category
        )
    except downloader.DownloadError as error:
        raise click.ClickException(str(error)) from None
    for path in paths:
        click.echo(path)


@data.command()
@click.option("--source", type=NonEmptyPath(exists=True, file_okay=False, path_type=Path),
              help="A Quick, Draw! folder (numpy_bitmap/...); default: the shipped sample.")
@click.option("--categories", help="Comma-separated subset of the source's categories.")
@click.option("--max-per-category", type=click.IntRange(min=2), help="Use only the first N drawings of each.")
@click.option("--eval-per-category", type=click.IntRange(min=1), help="Drawings of each kept for evaluation.")
@click.option("--output-dir", type=NonEmptyPath(file_okay=False, path_type=Path),
              help="Only write base.npz and evaluation.npz here (the DVC pipeline); no dataset version.")
@click.option("--force", is_flag=True, help="Rebuild the base data and the evaluation set even if they exist.")
def prepare(source, categories, max_per_category, eval_per_category, output_dir, force) -> None:
    """Build the training data (versioned with DVC) and the fixed evaluation set beside it."""
    from doodle_lib import baseline, dataset
    from doodle_lib.versioning import VersioningError

    settings = current_settings()
    chosen_options = [name for name, value in (("--source", source), ("--categories", categories),
                      ("--max-per-category", max_per_category), ("--eval-per-category", eval_per_category)) if value]
    if chosen_options and not (output_dir or force) and settings.evaluation_path.exists():
        raise click.UsageError(f"the base data and evaluation set exist and are kept: {', '.join(chosen_options)} "
                               "would change nothing. Add --force to rebuild them")
    if eval_per_category:
        settings.eval_per_category = eval_per_category
    names = category_names(categories) if categories else None
    try:
        if output_dir:
            source = source or settings.sample_dir
            dataset.build_base(source, output_dir, output_dir / "evaluation.npz", baseline.base_categories(source, names),
                               settings.eval_per_category, max_per_category)
        else:
            click.echo(baseline.prepare(settings, source, names, max_per_category, force))
    except (FileNotFoundError, ValueError, VersioningError) as error:
        raise click.ClickException(str(error)) from None


def category_names(text: str) -> list[str]:
    """The names of a comma-separated --categories, each once: a repeated one would repeat its drawings."""
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if not names:
        raise click.BadParameter(f"no category name in {text!r}", param_hint="--categories")
    return names


@data.command()
@click.option("--model-version", required=True, callback=registered_version,
              help="Registered version whose training data to restore.")
@click.option("--dest", default=None, help="Folder inside the data dir (default: checkouts/v<N>).")
def checkout(model_version: str, dest: str | None) -> None:
    """Restore exactly the dataset a model version was trained on, from the DVC remote."""
    from doodle_lib import lineage

    settings = current_settings()
    require_mlflow(settings)
    try:
        click.echo(lineage.checkout_model_dataset(settings, model_version, dest))
    except (LookupError, RuntimeError, ValueError) as error:
        raise click.ClickException(str(error)) from None


@main.command()
@click.option("--epochs", type=click.IntRange(min=1), default=None)
@click.option("--learning-rate", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--width", type=click.IntRange(min=1), default=None, help="Channels of the first conv block.")
@click.option("--seed", type=int, default=None)
@click.option("--params-file", type=NonEmptyPath(exists=True, dir_okay=False, path_type=Path),
              help="Read the training configuration from the `train` section of this file (params.yaml).")
@click.option("--data-dir", type=NonEmptyPath(exists=True, file_okay=False, path_type=Path),
              help="With --checkpoint: train on DIR/base.npz instead of the versioned dataset.")
@click.option("--checkpoint", type=NonEmptyPath(dir_okay=False, path_type=Path),
              help="Write the model to this file instead of logging and registering it (the DVC pipeline).")
@click.option("--dry-run", is_flag=True, help="One epoch on 100 drawings a category: checks the wiring in seconds.")
@click.option("--promote", is_flag=True, help="Mark the new version as production.")
def train(epochs, learning_rate, width, seed, params_file, data_dir, checkpoint, dry_run, promote) -> None:
    """Train from scratch on the current dataset, log to MLflow and register a version."""
    from doodle_lib import baseline
    from doodle_lib.versioning import VersioningError

    if data_dir and not checkpoint:
        raise click.UsageError("--data-dir goes with --checkpoint")
    if promote and (dry_run or checkpoint):
        raise click.UsageError("--promote registers a full training run's model: not with --dry-run or --checkpoint")
    if dry_run and epochs:
        raise click.UsageError("--dry-run trains one epoch: leave out --epochs")
    settings = current_settings()
    overrides = {"epochs": epochs, "learning_rate": learning_rate, "width": width, "seed": seed}
    try:
        config = baseline.load_train_config(params_file, **overrides)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    if config.epochs < 1:  # fine-tuning may take 0 (tests of the replay); a model trained from scratch may not
        raise click.ClickException(f"{params_file}: epochs must be at least 1 to train a model, not {config.epochs}")
    config.threads = config.threads or settings.torch_threads
    if dry_run:
        config.epochs, config.limit_per_class = 1, 100
    try:
        if checkpoint:
            baseline.train_checkpoint(data_dir or settings.dataset_dir, checkpoint, config)
            click.echo(checkpoint)
            return
        if not missing_local_registry(settings):  # training creates the local registry
            require_mlflow(settings)
        result = baseline.train_base(settings, config, promote=promote, run_name="dry-run" if dry_run else "base")
    except (FileNotFoundError, ValueError, VersioningError) as error:  # no data, not a dataset, not in the remote
        raise click.ClickException(str(error)) from None
    state = "production" if result.promoted else "registered"
    click.echo(f"version {result.version} ({state}): eval accuracy {result.accuracy:.2%}, run {result.run_id}")


@main.command()
@click.option("--model-version", default=None, callback=registered_version,
              help="Registered version (default: production).")
@click.option("--checkpoint", type=NonEmptyPath(exists=True, dir_okay=False, path_type=Path),
              help="Evaluate this model file instead of a registered version.")
@click.option("--evaluation", type=NonEmptyPath(exists=True, dir_okay=False, path_type=Path),
              help="With --checkpoint: the evaluation set (default: the fixed one in the data dir).")
@click.option("--metrics-file", type=NonEmptyPath(dir_okay=False, path_type=Path),
              help="With --checkpoint: also write the figures as JSON (the DVC pipeline's metrics).")
def evaluate(model_version, checkpoint, evaluation, metrics_file) -> None:
    """Evaluate a registered version (or a checkpoint file) on the fixed evaluation set."""
    from doodle_lib import baseline

    if not checkpoint and (evaluation or metrics_file):
        raise click.UsageError("--evaluation and --metrics-file go with --checkpoint")
    if checkpoint and model_version:
        raise click.UsageError("--checkpoint evaluates a file, --model-version a registered version: give one")
    settings = current_settings()
    try:
        if checkpoint:
            version = checkpoint.name
            result = baseline.evaluate_checkpoint(checkpoint, evaluation or settings.evaluation_path, metrics_file)
        else:
            require_mlflow(settings)
            version, result = baseline.evaluate_version(settings, model_version)
    except (LookupError, FileNotFoundError, ValueError) as error:
        raise click.ClickException(str(error)) from None
    click.echo(f"version {version}: accuracy {result.accuracy:.2%} on {result.count} drawings")
    for name, accuracy in result.per_class.items():
        click.echo(f"  {name:<20} {accuracy:.2%}")


@main.command()
@click.option("--url", help="The web app's /webhooks/mlflow as the MLflow server reaches it "
                            "(default: http://DOODLE_WEBAPP_BIND/webhooks/mlflow).")
def webhook(url: str | None) -> None:
    """Register (or update) the registry webhook that makes the web app switch at once when production moves."""
    from mlflow.exceptions import MlflowException

    from doodle_lib import tracking

    settings = current_settings()
    if not settings.webhook_secret:
        raise click.ClickException("set DOODLE_WEBHOOK_SECRET (the web app takes only deliveries signed with it)")
    if not settings.mlflow_uri.startswith(("http://", "https://")):
        raise click.ClickException("only an MLflow server delivers webhooks: set MLFLOW_TRACKING_URI to it (`make up` "
                                   "registers the webhook itself when DOODLE_WEBHOOK_SECRET is set)")
    require_mlflow(settings)
    try:
        hook = tracking.ensure_webhook(settings, url or f"http://{settings.webapp_bind}/webhooks/mlflow")
    except MlflowException as error:
        raise click.ClickException(
            f"the registry refused the webhook: {error.message} (for a web app on plain HTTP or a private address, "
            "the MLflow server needs MLFLOW_WEBHOOK_ALLOWED_SCHEMES=http,https and MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS=true)"
        ) from None
    click.echo(f"webhook {hook.name}: {', '.join(str(e) for e in hook.events)} -> {hook.url}")


@main.group()
def stack() -> None:
    """The embedded platform on this machine: MLflow, Airflow, the web app (make up / down / status)."""


@stack.command("up")
def stack_up() -> None:
    """Initialise what is missing, start every service, and run until Ctrl-C."""
    from doodle_lib import stack as embedded

    try:
        raise SystemExit(embedded.up(current_settings(), click.echo))
    except embedded.StackError as error:
        raise click.ClickException(str(error)) from None


@stack.command("down")
def stack_down() -> None:
    """Stop the running stack and every process it started."""
    from doodle_lib import stack as embedded

    try:
        stopped = embedded.down(current_settings())
    except embedded.StackError as error:
        raise click.ClickException(str(error)) from None
    click.echo("stopped" if stopped else "the stack is not running")


@stack.command("status")
def stack_status() -> None:
    """Whether the stack runs, and each service's health; exits 1 unless it runs and every service is healthy."""
    from doodle_lib import stack as embedded

    settings = current_settings()
    pid = embedded.running_pid(settings)
    click.echo(f"stack: {'running, pid ' + str(pid) if pid else 'not running'}")
    states = embedded.status(settings)
    for name, url, state in states:
        click.echo(f"  {name:<12} {url:<28} {state}")
    password = embedded.airflow_password(settings)
    if pid and password:  # the banner's login, long scrolled away in `make up`'s log
        click.echo(f"  Airflow login: user admin, password {password}")
    if not pid or any(state != "healthy" for _, _, state in states):
        raise SystemExit(1)


@main.group()
def proposals() -> None:
    """Categories users proposed in the web app: list, approve, rename, merge, reject."""


@proposals.command("list")
def proposals_list() -> None:
    """Each proposal with its drawings, status, and whether the next retraining may add it."""
    from doodle_lib import proposals as store

    settings = current_settings()
    needs = f"{settings.proposal_min_drawings} drawings" + (
        " and approval" if settings.proposals_require_approval else ""
    )
    found = store.list_all(settings)
    click.echo(f"{len(found)} proposals; a proposal is ready with {needs}")
    for p in found:
        click.echo(f"  {p.name:<40} {p.count:>6} drawings  {p.status:<8}  {'ready' if p.ready else 'not ready'}")


@proposals.command("approve")
@click.argument("name")
def proposals_approve(name: str) -> None:
    """Let NAME be trained once it has enough drawings (needed when approval is required)."""
    from doodle_lib import proposals as store

    settings = current_settings()
    with proposal_errors():
        proposal = store.approve(settings, name)
    click.echo(f"approved {proposal.name!r}: {proposal.count} of {settings.proposal_min_drawings} drawings")


@proposals.command("rename")
@click.argument("name")
@click.argument("new")
def proposals_rename(name: str, new: str) -> None:
    """Rename NAME to NEW; if NEW is a known category or another proposal, merge into it."""
    from doodle_lib import proposals as store

    settings = current_settings()
    with proposal_errors():
        destination, moved = store.rename(settings, name, new, known_categories(settings))
    click.echo(f"{name!r} is now {describe(destination)}; drawings moved: {moved}")


@proposals.command("merge")
@click.argument("name")
@click.argument("into")
def proposals_merge(name: str, into: str) -> None:
    """Move the drawings of NAME into the proposal or known category INTO."""
    from doodle_lib import proposals as store

    settings = current_settings()
    with proposal_errors():
        destination, moved = store.merge(settings, name, into, known_categories(settings))
    click.echo(f"merged {name!r} into {describe(destination)}; drawings moved: {moved}")


@proposals.command("reject")
@click.argument("name")
@click.option("--reason", default="rejected by an operator", show_default=True, help="Kept beside the drawings.")
def proposals_reject(name: str, reason: str) -> None:
    """Set NAME's drawings aside under rejected/proposals/ with the reason; nothing is deleted."""
    from doodle_lib import proposals as store

    with proposal_errors():
        folder = store.reject(current_settings(), name, reason)
    click.echo(f"rejected {name!r}: its drawings are kept in {folder}")


@contextmanager
def proposal_errors() -> Iterator[None]:
    """A refused name or operation as a one-line error and exit status 1, not a traceback."""
    from doodle_lib.proposals import ProposalError

    try:
        yield
    except ProposalError as error:
        raise click.ClickException(str(error)) from None


def describe(destination) -> str:
    kind = "the known category" if destination.known else "the proposal"
    return f"{kind} {destination.name!r}"


def known_categories(settings) -> list[str]:
    """The production model's categories, as the web app offers them; the base data's while none is served."""
    from doodle_lib import dataset, tracking

    if missing_local_registry(settings):  # nothing registered yet, so nothing served
        return dataset.categories_in(settings.sample_dir)
    require_mlflow(settings)
    try:
        version = tracking.production_version(settings, tracking.registry_client(settings))
    except Exception as error:  # noqa: BLE001 - any registry failure: merging without the categories would guess
        raise click.ClickException(f"cannot read the production model's categories: {error}") from None
    if version is None:
        return dataset.categories_in(settings.sample_dir)
    if "categories" in version.tags:  # every version registered by training carries them
        return json.loads(version.tags["categories"])
    return tracking.load_version(settings, version.version).categories
