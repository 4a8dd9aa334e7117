"""``refracture clients``: the registry of named clients (serving.auth.clients); options and
help: ``refracture.options.clients``.

A running service picks up every change within a second or two, without a restart.
A new key is printed once, on stdout, and stored only as its hash.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from serving.auth.clients import ALL_SCOPES, RegistryError, add_client, read_registry, rotate_key, write_registry
from serving.auth.clients import revoke as revoke_in
from serving.config import ENV_CLIENTS_FILE

console = Console(stderr=True)

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


def add(*, name: str, scopes: str, expires: str | None, days: int | None, rate: float | None, burst: int | None,
        oauth_client_id: str | None, file: Path | None) -> None:
    """``refracture clients add``: the client added, its key printed once."""
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


def rotate(*, name: str, file: Path | None) -> None:
    """``refracture clients rotate``: a new key for the client, printed once."""
    path = _file(file)
    try:
        clients, key, key_id = rotate_key(read_registry(path), name)
        write_registry(path, clients)
    except RegistryError as exc:
        _fail(str(exc))
    console.print(f"new key {key_id} for {name} (shown only now); revoke the old one once the client uses it:")
    typer.echo(key)


def revoke(*, name: str, key: str | None, file: Path | None) -> None:
    """``refracture clients revoke``: the client, or one of its keys, revoked."""
    path = _file(file)
    try:
        write_registry(path, revoke_in(read_registry(path), name, key))
    except RegistryError as exc:
        _fail(str(exc))
    console.print(f"revoked {name}" + (f" key {key}" if key else ""))


def list_clients(*, file: Path | None) -> None:
    """``refracture clients list``: the registry as a table (key ids, never keys)."""
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
