"""``refracture clients``: the registry of named clients (serving.auth.clients).

A running service picks up every change within a second or two, without a restart.
A new key is printed once, on stdout, and stored only as its hash.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from serving.auth.clients import ALL_SCOPES, RegistryError, add_client, read_registry, revoke, rotate_key, write_registry
from serving.config import ENV_CLIENTS_FILE

app = typer.Typer(help="Named clients of the service: add (prints the key once), list, rotate a key, revoke.",
                  no_args_is_help=True)
console = Console(stderr=True)

FileOption = Annotated[Path | None, typer.Option(
    "--file", help=f"The registry file (default: ${ENV_CLIENTS_FILE}); the service reads the same file.")]


def _file(file: Path | None) -> Path:
    path = file or (Path(os.environ[ENV_CLIENTS_FILE]) if os.environ.get(ENV_CLIENTS_FILE) else None)
    if path is None:
        raise typer.BadParameter(f"give --file or set {ENV_CLIENTS_FILE}", param_hint="--file")
    return path


def _fail(message: str) -> None:
    console.print(f"[red]error[/red]: {message}", markup=True, highlight=False)
    raise typer.Exit(code=1)


def _scopes(text: str) -> list[str]:
    scopes = [s.strip() for s in text.replace(" ", ",").split(",") if s.strip()]
    unknown = [s for s in scopes if s not in ALL_SCOPES]
    if unknown or not scopes:
        raise typer.BadParameter(f"{', '.join(unknown) or 'none given'}; allowed: {', '.join(ALL_SCOPES)}",
                                 param_hint="--scopes")
    return scopes


def _expiry(expires: str | None, days: int | None) -> dt.datetime | None:
    if expires and days:
        raise typer.BadParameter("give --expires or --days, not both", param_hint="--expires")
    if days:
        return dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(days=days)
    if not expires:
        return None
    try:
        value = dt.datetime.fromisoformat(expires)
    except ValueError:
        raise typer.BadParameter(f"{expires!r} is not a date (2027-06-30) or time (2027-06-30T12:00:00+00:00)",
                                 param_hint="--expires") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


@app.command("add")
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
    path = _file(file)
    try:
        clients, key = add_client(read_registry(path), name, _scopes(scopes), expires=_expiry(expires, days),
                                  rate_limit_per_s=rate, burst=burst, oauth_client_id=oauth_client_id)
        write_registry(path, clients)
    except RegistryError as exc:
        _fail(str(exc))
    if key is None:
        console.print(f"added {name}: tokens of {oauth_client_id} from the identity provider")
        return
    console.print(f"added {name} to {path}; its key (shown only now):")
    typer.echo(key)


@app.command("rotate")
def rotate(name: Annotated[str, typer.Argument(help="The client.")], file: FileOption = None) -> None:
    """Give a client a new key; its old keys keep working until `clients revoke NAME --key ID`."""
    path = _file(file)
    try:
        clients, key, key_id = rotate_key(read_registry(path), name)
        write_registry(path, clients)
    except RegistryError as exc:
        _fail(str(exc))
    console.print(f"new key {key_id} for {name} (shown only now); revoke the old one once the client uses it:")
    typer.echo(key)


@app.command("revoke")
def revoke_command(
    name: Annotated[str, typer.Argument(help="The client.")],
    key: Annotated[str | None, typer.Option("--key", help="Revoke only this key id (see `clients list`).")] = None,
    file: FileOption = None,
) -> None:
    """Revoke a client (all its keys and tokens) or one of its keys; the service refuses it within seconds."""
    path = _file(file)
    try:
        write_registry(path, revoke(read_registry(path), name, key))
    except RegistryError as exc:
        _fail(str(exc))
    console.print(f"revoked {name}" + (f" key {key}" if key else ""))


@app.command("list")
def list_clients(file: FileOption = None) -> None:
    """The clients: scopes, expiry, rate limit, keys (ids only), state."""
    path = _file(file)
    try:
        clients = read_registry(path)
    except RegistryError as exc:
        _fail(str(exc))
    now = dt.datetime.now(dt.timezone.utc)
    table = Table("client", "scopes", "state", "expires", "rate/s", "keys", "identity provider client")
    for c in clients:
        keys = ", ".join(k.id + (" (revoked)" if k.revoked else "") for k in c.keys)
        table.add_row(c.name, " ".join(sorted(c.scopes)), c.usable(now) or "active",
                      c.expires.isoformat() if c.expires else "", f"{c.rate_limit_per_s:g}" if c.rate_limit_per_s else "",
                      keys, c.oauth_client_id or "")
    Console().print(table)
