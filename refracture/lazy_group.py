"""A command group that imports a command's modules only when that command is used.

click's documented lazy-loading pattern ("Lazily Loading Subcommands"), as a typer group,
one step further: click's ``LazyGroup`` still imports every command module to list the
commands in ``--help`` and imports the whole command to print its own ``--help``. Here

- the group's ``--help`` lists every command from the registry (name and one-line help,
  declared there), importing no command module;
- ``refracture CMD --help`` imports only the command's *options* module (typer, the standard
  library and small constants): what the options are and what the command does;
- ``refracture CMD ...`` imports the options module, runs its function (cheap checks of the
  options), then imports the *run* module, the one with the heavy imports (MLflow, BentoML,
  SHAP, pandas ...), and calls the function of the same name with the same keyword arguments.

Every module keeps its imports at the top (import-linter reads them); what is lazy is which
module is loaded, here, by name.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any, Callable, NamedTuple

import click
from typer.core import TyperGroup
from typer.main import get_command_from_info
from typer.models import CommandInfo


class Command(NamedTuple):
    """One entry of the registry (``refracture.cli.COMMANDS``)."""

    #: What the user types: ``refracture <name>``.
    name: str
    #: ``"module:function"``: the typer-annotated function that declares the options; its
    #: docstring is the command's help. Its module must stay light (no MLflow, BentoML, SHAP,
    #: Spark, pandas): ``--help`` imports it. For a command group (``refracture predictions
    #: migrate``), ``"module:NAME"`` of a ``Subcommands``: the group's help and registry.
    options: str
    #: ``"module:function"`` that does the work, called with the options' values as keyword
    #: arguments after the options function returned; None when the options function does
    #: the work itself.
    run: str | None
    #: The one line ``refracture --help`` lists: the first paragraph of the options function's
    #: docstring (a test keeps the two equal).
    summary: str


class Subcommands:
    """A command group's own registry, named by a ``Command``'s ``options``: its help (the
    docstring, as a command's) and its commands, loaded like the top-level ones."""

    def __init__(self, help: str, *entries: Command) -> None:
        self.__doc__ = help
        self.entries = entries


def resolve(target: str) -> Callable[..., Any]:
    """The function named by ``"module:function"`` (imports the module)."""
    module_name, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def summary_of(help_text: str) -> str:
    """The one line typer lists for a command: the first paragraph, its lines joined."""
    return " ".join(line.strip() for line in inspect.cleandoc(help_text).split("\n\n")[0].splitlines())


def command_function(entry: Command) -> Callable[..., Any]:
    """The function typer turns into the click command: the options function, followed by
    the run function when the entry has one (imported only then)."""
    options = resolve(entry.options)
    if entry.run is None:
        return options

    @functools.wraps(options)  # the options' signature and docstring: typer reads them
    def options_then_run(**values: Any) -> Any:
        options(**values)
        return resolve(entry.run)(**values)

    return options_then_run


class _Listed(click.Command):
    """A command as ``--help`` lists it: name and one-line help, nothing imported. The group
    swaps it for the loaded command before anything runs."""

    def invoke(self, ctx: click.Context) -> Any:
        raise RuntimeError(f"command {self.name!r} was not loaded (LazyGroup.resolve_command loads it)")


class LazyGroup(TyperGroup):
    """A typer group whose commands come from ``entries`` (a list of ``Command``), loaded on use."""

    entries: tuple[Command, ...] = ()

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self._entries = {entry.name: entry for entry in self.entries}
        for entry in self.entries:
            # The listing's stand-ins: list_commands, get_command and typer's "did you mean"
            # read self.commands, and only the name and the short help are used from them.
            self.add_command(_Listed(entry.name, short_help=entry.summary, help=entry.summary))

    def load(self, name: str) -> click.Command:
        """The full command ``name`` (its options module imported, not its run module); a
        group's subcommands are loaded the same way, when one is used."""
        entry = self._entries[name]
        target = resolve(entry.options)
        if isinstance(target, Subcommands):
            group = type(f"{type(self).__name__}_{name}", (LazyGroup,), {"entries": target.entries})
            return group(name=name, help=entry.summary, no_args_is_help=True, rich_markup_mode=self.rich_markup_mode)
        return get_command_from_info(CommandInfo(name=name, callback=command_function(entry)),
                                     pretty_exceptions_short=True, rich_markup_mode=self.rich_markup_mode)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name, command, rest = super().resolve_command(ctx, args)
        if isinstance(command, _Listed):
            command = self.load(command.name)
        return name, command, rest
