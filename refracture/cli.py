"""The ``refracture`` console command.

Logging is configured here and only here. The commands are the table ``COMMANDS``: a
command's options live in ``refracture.options.<group>`` (light: ``--help`` imports only
that module) and its work in ``refracture.commands.<group>`` (imported when it runs);
``refracture.lazy_group`` loads them by name, so ``refracture --help``, ``refracture CMD
--help`` and the data commands never import MLflow, BentoML, SHAP or Spark.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

import typer

from refracture.lazy_group import Command, LazyGroup

#: Every command, in the order ``--help`` lists them: name, options ("module:function"),
#: work ("module:function", called with the same keyword arguments), and the line
#: ``refracture --help`` shows (the options function's docstring, first paragraph;
#: tests/refracture/test_cli_commands.py keeps them equal). To add a command, see
#: docs/architecture.md ("Adding a command").
COMMANDS: tuple[Command, ...] = (
    Command("synth", "refracture.options.data:synth", "refracture.commands.synth:synth",
            "Simulate a cohort calibrated to published evidence, written as a raw export plus true risks."),
    Command("validate", "refracture.options.data:validate", "refracture.commands.data:validate",
            "Check a raw export against the data contract: errors (values that cannot be used) and warnings "
            "(implausible values, used) by table, row and column; exit 1 only on errors."),
    Command("features", "refracture.options.data:features", "refracture.commands.data:features",
            "Build a training set: the feature set's features plus outcome labels, keyed by procedure_id."),
    Command("records", "refracture.options.data:records", "refracture.commands.data:records",
            "Write a raw export's procedures as flat records (one row per procedure, one column per field of the "
            "API's record, in its contract type; dates as calendar dates), for `refracture predict --input` on either "
            "engine."),
    Command("dictionary", "refracture.options.data:dictionary", "refracture.commands.data:dictionary",
            "Generate the data dictionary from the schema (never edit it by hand)."),
    Command("fhir-export", "refracture.options.fhir:fhir_export", "refracture.commands.fhir:fhir_export",
            "Write a raw export as FHIR R4: a Bulk Data export (one NDJSON file per resource type) and one Bundle per "
            "procedure (the mapping of docs/fhir.md, in reverse)."),
    Command("fhir-records", "refracture.options.fhir:fhir_records", "refracture.commands.fhir:fhir_records",
            "Read a FHIR Bulk Data export with the mapping: every refused resource by file, line and element, and the "
            "accepted procedures written as flat records."),
    Command("fhir-docs", "refracture.options.fhir:fhir_docs", "refracture.commands.fhir:fhir_docs",
            "Generate docs/fhir.md from the FHIR mapping (never edit it by hand)."),
    Command("serve", "refracture.options.serving:serve", "refracture.commands.serving:serve",
            "Serve the champion models over HTTP or HTTPS (BentoML). Needs a way for callers to authenticate "
            "(REFRACTURE_API_KEY, REFRACTURE_CLIENTS_FILE or REFRACTURE_OIDC_ISSUER) unless --insecure-dev."),
    Command("predict", "refracture.options.serving:predict", "refracture.commands.serving:predict",
            "Score procedure records with the champion models, without HTTP (vectorised, in chunks)."),
    Command("bento", "refracture.options.serving:bento", "refracture.commands.serving:bento",
            "Pin the champion versions into the BentoML model store and build a Bento that runs without the registry."),
    Command("train", "refracture.options.training:train", "refracture.commands.training:train",
            "Train all candidate models, calibrate and evaluate them, log to MLflow, register the best."),
    Command("models", "refracture.options.training:models", "refracture.commands.training:models",
            "List registered models: versions, aliases and key test metrics."),
    Command("promote", "refracture.options.training:promote", "refracture.commands.training:promote",
            "Move an alias (champion/challenger) to a version by hand; the move is recorded."),
    Command("close-runs", "refracture.options.training:close_runs", "refracture.commands.training:close_runs",
            "Mark runs left RUNNING by a crash, a kill or a lost tracking store as FAILED or KILLED."),
    Command("site-report", "refracture.options.site:site_report", "refracture.commands.site:site_report",
            "Validate a site's export, score it with the registered versions and write the local validation and "
            "drift report (HTML, figures, CSVs), also logged to MLflow."),
    Command("recalibrate", "refracture.options.site:recalibrate", "refracture.commands.site:recalibrate",
            "Update every champion for a site by the documented rule (no update, (i) intercept, (ii) intercept and "
            "slope by closed testing; (iii) refit on the training export plus the site when the site has >= 100 "
            "events and the refit is better on held-out site folds) and register the result as `challenger`; "
            "promote it with `refracture promote`."),
    Command("outcomes", "refracture.options.predictions:outcomes", "refracture.commands.predictions:outcomes",
            "Link the outcomes of a later export to the logged predictions (by the keyed hash of the procedure key) "
            "and store each one's status at every horizon that has matured."),
    Command("performance", "refracture.options.predictions:performance", "refracture.commands.predictions:performance",
            "Realized performance of every model version on its matured predictions: O/E, calibration slope, AUROC "
            "(95 % CIs), by month, champion vs shadow challenger; HTML report, MLflow run on the versions, and the "
            "figures the service exports on /metrics."),
    Command("predictions", "refracture.options.predictions:PREDICTIONS", None,
            "The prediction log's store: migrate its schema, prune old predictions, counts."),
    Command("clients", "refracture.options.clients:CLIENTS", None,
            "Named clients of the service: add (prints the key once), list, rotate a key, revoke."),
    Command("ui", "refracture.options.training:ui", "refracture.commands.training:ui",
            "Open the MLflow UI on the local store (runs, plots, model cards, registry)."),
)


class Commands(LazyGroup):
    entries = COMMANDS


app = typer.Typer(
    name="refracture",
    cls=Commands,
    help="Predict refracture after vertebral augmentation (PVP/PKP): simulate, validate, build features, train, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)


#: The project's own loggers: their INFO lines are part of what a command reports.
OWN_LOGGERS = ("features", "modelstore", "training", "serving", "refracture")
#: Read by MLflow when it is imported (after this runs) and by the processes a command
#: starts: MLflow's own INFO lines and its download bars stay out of a command's output.
QUIET_MLFLOW = {"MLFLOW_LOGGING_LEVEL": "WARNING", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}


class _Stderr(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a line is logged: under a live progress display
    that is rich's proxy, which prints the line above the display instead of through it."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


class _Plain(logging.Formatter):
    """Our INFO lines as they are; a warning or an error with its level and source."""

    def format(self, record: logging.LogRecord) -> str:
        if record.levelno <= logging.INFO:
            return record.getMessage()
        return f"{record.levelname.lower()} ({record.name}): {super().format(record)}"


#: Warnings a library addresses to the developers who call it, not to the user of a
#: command: shown with --verbose only.
LIBRARY_NOTICES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def _log_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning``: a warning as a log line of ``py.warnings``, library notices at
    DEBUG. (Warning filters cannot do this reliably: scikit-learn's parallel fits reset the
    process's filters from their threads, and the notices came back mid-training.)"""
    level = logging.DEBUG if issubclass(category, LIBRARY_NOTICES) else logging.WARNING
    logging.getLogger("py.warnings").log(level, "%s: %s (%s:%s)", category.__name__, message, filename, lineno)


def configure_logging(verbose: bool) -> None:
    """Our INFO lines and everyone's warnings; with ``verbose`` every logger at DEBUG with
    time, level and name, and MLflow's own lines and bars as MLflow prints them."""
    warnings.showwarning = _log_warning
    handler = _Stderr()
    if verbose:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.basicConfig(level=logging.DEBUG, handlers=[handler], force=True)
        return
    for name, value in QUIET_MLFLOW.items():
        os.environ.setdefault(name, value)  # a user's own setting wins
    handler.setFormatter(_Plain())
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages, and other libraries' "
                                       "information lines and progress bars.")) -> None:
    configure_logging(verbose)


def main() -> None:
    """Entry point of the console script."""
    app()
