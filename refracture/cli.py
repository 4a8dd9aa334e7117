"""The ``refracture`` console command.

Logging is configured here and only here. Each command lives in ``refracture.commands.*``;
this module just registers them, so a command group can be read (and owned) on its own.
"""

from __future__ import annotations

import importlib
import logging

import typer

app = typer.Typer(
    name="refracture",
    help="Predict refracture after vertebral augmentation (PVP/PKP): simulate, validate, build features, train, serve.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

#: (module, function or typer app of subcommands, command name). Order is the order shown in --help.
COMMANDS: list[tuple[str, str, str]] = [
    ("refracture.commands.data", "synth", "synth"),
    ("refracture.commands.data", "validate", "validate"),
    ("refracture.commands.data", "features", "features"),
    ("refracture.commands.data", "records", "records"),
    ("refracture.commands.data", "dictionary", "dictionary"),
    ("refracture.commands.fhir", "fhir_export", "fhir-export"),
    ("refracture.commands.fhir", "fhir_records", "fhir-records"),
    ("refracture.commands.fhir", "fhir_docs", "fhir-docs"),
    ("refracture.commands.serving", "serve", "serve"),
    ("refracture.commands.serving", "predict", "predict"),
    ("refracture.commands.serving", "bento", "bento"),
    ("refracture.commands.training", "train", "train"),
    ("refracture.commands.training", "models", "models"),
    ("refracture.commands.training", "promote", "promote"),
    ("refracture.commands.site", "site_report", "site-report"),
    ("refracture.commands.site", "recalibrate", "recalibrate"),
    ("refracture.commands.predictions", "outcomes", "outcomes"),
    ("refracture.commands.predictions", "performance", "performance"),
    ("refracture.commands.predictions", "predictions_app", "predictions"),
    ("refracture.commands.training", "ui", "ui"),
]


def _register() -> None:
    for module_name, func_name, command_name in COMMANDS:
        module = importlib.import_module(module_name)
        target = getattr(module, func_name)
        if isinstance(target, typer.Typer):
            app.add_typer(target, name=command_name)
        else:
            app.command(command_name)(target)


@app.callback()
def _root(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages.")) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main() -> None:
    """Entry point of the console script."""
    _register()
    app()
