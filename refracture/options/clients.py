"""Options of ``refracture clients add|list|rotate|revoke`` (work: ``refracture.commands.clients``).

``serving.auth.clients`` is standard library only, so its scope names are read from it here."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from refracture.lazy_group import Command, Subcommands
from serving.auth.clients import ALL_SCOPES

#: The service's setting naming the registry file (``serving.config.ENV_CLIENTS_FILE``;
#: tests/refracture/test_cli_commands.py keeps them equal).
CLIENTS_FILE_ENV = "REFRACTURE_CLIENTS_FILE"

FileOption = Annotated[Path | None, typer.Option(
    "--file", help=f"The registry file (default: ${CLIENTS_FILE_ENV}); the service reads the same file.")]


def add(
    name: Annotated[str, typer.Argument(help="The client's name (lower case): what audit lines and metrics show.")],
    scopes: Annotated[str, typer.Option("--scopes", help=f"Comma-separated: {', '.join(ALL_SCOPES)}.")],
    expires: Annotated[str | None, typer.Option("--expires", help="Refused from this date/time (ISO 8601, UTC if no zone).")] = None,
    days: Annotated[int | None, typer.Option("--days", help="Refused after this many days.", min=1)] = None,
    rate: Annotated[float | None, typer.Option("--rate", help="Rate limit, requests per second (default: the service's).", min=0.001)] = None,
    burst: Annotated[int | None, typer.Option("--burst", help="Requests allowed at once after a quiet spell (default: one second's worth).", min=1)] = None,
    oauth_client_id: Annotated[str | None, typer.Option("--oauth-client-id", help="Bind the identity provider's client with this id instead of issuing a key.")] = None,
    file: FileOption = None,
) -> None:
    """Add a client. Prints its API key once (on stdout); only the key's hash is stored."""
    if expires and days:
        raise typer.BadParameter("give --expires or --days, not both", param_hint="--expires")


def rotate(name: Annotated[str, typer.Argument(help="The client.")], file: FileOption = None) -> None:
    """Give a client a new key; its old keys keep working until `clients revoke NAME --key ID`."""


def revoke(
    name: Annotated[str, typer.Argument(help="The client.")],
    key: Annotated[str | None, typer.Option("--key", help="Revoke only this key id (see `clients list`).")] = None,
    file: FileOption = None,
) -> None:
    """Revoke a client (all its keys and tokens) or one of its keys; the service refuses it within seconds."""


def list_clients(file: FileOption = None) -> None:
    """The clients: scopes, expiry, rate limit, keys (ids only), state."""


#: ``refracture clients ...``: the group's own registry (``refracture.lazy_group``).
CLIENTS = Subcommands(
    "Named clients of the service: add (prints the key once), list, rotate a key, revoke.",
    Command("add", "refracture.options.clients:add", "refracture.commands.clients:add",
            "Add a client. Prints its API key once (on stdout); only the key's hash is stored."),
    Command("list", "refracture.options.clients:list_clients", "refracture.commands.clients:list_clients",
            "The clients: scopes, expiry, rate limit, keys (ids only), state."),
    Command("rotate", "refracture.options.clients:rotate", "refracture.commands.clients:rotate",
            "Give a client a new key; its old keys keep working until `clients revoke NAME --key ID`."),
    Command("revoke", "refracture.options.clients:revoke", "refracture.commands.clients:revoke",
            "Revoke a client (all its keys and tokens) or one of its keys; the service refuses it within seconds."),
)
