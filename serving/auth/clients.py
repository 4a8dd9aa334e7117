"""The registry of named clients: who may call, with which scopes, until when, how often.

A JSON file (``REFRACTURE_CLIENTS_FILE``), written by ``refracture clients add|rotate|revoke``
and read by the service, which notices a change within ``RELOAD_INTERVAL_S`` (1 s) without
a restart: a revoked or expired key is refused from the next request on, requests already
past the guard finish. A file that cannot be read or is invalid on reload is logged and the
last good registry kept (at start it stops the start).

Each client has a name (what the audit line, the metrics and the prediction log show),
scopes (``predict``, ``explain``, ``model:read``, ``metrics:read``), an optional expiry,
an optional rate limit (requests per second and a burst), and either API keys or an
identity provider's ``oauth_client_id`` (then the entry names that client, caps its
scopes and sets its rate limit; its tokens are checked by ``serving.auth.tokens``).

Keys are random (``KEY_PREFIX`` + 43 characters, 256 bits) and stored only as their
SHA-256: with that much entropy a slow password hash adds nothing, and a lookup by hash
costs one dictionary access. A client may hold several keys (``rotate``: a new key while
the old one still works; ``revoke --key ID``: then the old one stops).

File format (``"version": 1``)::

    {"version": 1, "clients": [
      {"name": "ris", "scopes": ["predict"], "expires": "2027-06-30T00:00:00+00:00",
       "rate_limit_per_s": 20, "burst": 40, "oauth_client_id": null, "revoked": null,
       "keys": [{"id": "a1b2c3d4", "sha256": "...", "created": "...", "revoked": null}]}]}
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable

logger = logging.getLogger(__name__)

#: The service's scopes (the guard checks them: serving.http.callers.required_scope).
ALL_SCOPES = ("predict", "explain", "model:read", "metrics:read")
KEY_PREFIX = "rr_"
RELOAD_INTERVAL_S = 1.0
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
#: Names the service gives callers itself: never a registry entry.
RESERVED_NAMES = frozenset({"default", "insecure-dev", "other", "anonymous"})


class RegistryError(ValueError):
    """The registry file or a change to it is invalid; the message names the client and field."""


def key_hash(key: str) -> str:
    """SHA-256 of a presented key, hex (what the registry stores)."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _parse_time(value: Any, where: str) -> dt.datetime | None:
    if value in (None, ""):
        return None
    try:
        parsed = dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise RegistryError(f"{where}: {value!r} is not an ISO 8601 time") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.timezone.utc)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value else None


@dataclass(frozen=True)
class ClientKey:
    id: str
    sha256: str
    created: dt.datetime | None = None
    revoked: dt.datetime | None = None


@dataclass(frozen=True)
class Client:
    """One registry entry (see the module docstring). Times are timezone-aware UTC."""

    name: str
    scopes: frozenset[str]
    keys: tuple[ClientKey, ...] = ()
    expires: dt.datetime | None = None
    revoked: dt.datetime | None = None
    rate_limit_per_s: float | None = None
    burst: int | None = None
    oauth_client_id: str | None = None
    created: dt.datetime | None = None

    def usable(self, now: dt.datetime) -> str | None:
        """None when the client may call now, else why not (``revoked``, ``expired``)."""
        if self.revoked is not None and self.revoked <= now:
            return "revoked"
        if self.expires is not None and self.expires <= now:
            return "expired"
        return None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "scopes": sorted(self.scopes), "created": _iso(self.created),
                "expires": _iso(self.expires), "revoked": _iso(self.revoked),
                "rate_limit_per_s": self.rate_limit_per_s, "burst": self.burst,
                "oauth_client_id": self.oauth_client_id,
                "keys": [{"id": k.id, "sha256": k.sha256, "created": _iso(k.created), "revoked": _iso(k.revoked)}
                         for k in self.keys]}


def _client_from_json(entry: Any, i: int) -> Client:
    if not isinstance(entry, dict):
        raise RegistryError(f"clients[{i}]: expected an object")
    name = entry.get("name")
    if not isinstance(name, str) or not NAME_RE.match(name) or name in RESERVED_NAMES:
        raise RegistryError(f"clients[{i}].name: {name!r} is not a valid client name "
                            "(lower-case letters, digits, '.', '_', '-'; not default/other/insecure-dev)")
    where = f"client {name!r}"
    scopes = entry.get("scopes")
    if not isinstance(scopes, list) or any(s not in ALL_SCOPES for s in scopes):
        raise RegistryError(f"{where}.scopes: {scopes!r}; allowed: {', '.join(ALL_SCOPES)}")
    keys = []
    for j, k in enumerate(entry.get("keys") or []):
        if not isinstance(k, dict) or not isinstance(k.get("sha256"), str) or len(k["sha256"]) != 64:
            raise RegistryError(f"{where}.keys[{j}]: expected {{'id', 'sha256' (64 hex digits), ...}}")
        keys.append(ClientKey(id=str(k.get("id", "")), sha256=k["sha256"].lower(),
                              created=_parse_time(k.get("created"), f"{where}.keys[{j}].created"),
                              revoked=_parse_time(k.get("revoked"), f"{where}.keys[{j}].revoked")))
    rate = entry.get("rate_limit_per_s")
    burst = entry.get("burst")
    if rate is not None and (not isinstance(rate, (int, float)) or rate <= 0):
        raise RegistryError(f"{where}.rate_limit_per_s: {rate!r} is not a positive number")
    if burst is not None and (not isinstance(burst, int) or burst < 1):
        raise RegistryError(f"{where}.burst: {burst!r} is not a positive integer")
    oauth = entry.get("oauth_client_id")
    if oauth is not None and (not isinstance(oauth, str) or not oauth):
        raise RegistryError(f"{where}.oauth_client_id: {oauth!r} is not a client id")
    return Client(name=name, scopes=frozenset(scopes), keys=tuple(keys),
                  expires=_parse_time(entry.get("expires"), f"{where}.expires"),
                  revoked=_parse_time(entry.get("revoked"), f"{where}.revoked"),
                  rate_limit_per_s=float(rate) if rate is not None else None, burst=burst,
                  oauth_client_id=oauth, created=_parse_time(entry.get("created"), f"{where}.created"))


def parse_registry(text: str, source: str = "registry") -> tuple[Client, ...]:
    """The clients of a registry document; ``RegistryError`` naming the entry and field."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise RegistryError(f"{source}: not JSON ({exc})") from None
    if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("clients"), list):
        raise RegistryError(f"{source}: expected {{\"version\": 1, \"clients\": [...]}}")
    clients = tuple(_client_from_json(e, i) for i, e in enumerate(data["clients"]))
    seen: set[str] = set()
    hashes: set[str] = set()
    for c in clients:
        if c.name in seen:
            raise RegistryError(f"{source}: client {c.name!r} is listed twice")
        seen.add(c.name)
        for k in c.keys:
            if k.sha256 in hashes:
                raise RegistryError(f"{source}: client {c.name!r} key {k.id!r} is another client's key too")
            hashes.add(k.sha256)
    return clients


def read_registry(path: Path) -> tuple[Client, ...]:
    """The clients in ``path`` (none if it does not exist); ``RegistryError`` if invalid."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ()
    except OSError as exc:
        raise RegistryError(f"{path}: cannot read it ({exc.strerror})") from None
    return parse_registry(text, str(path))


def write_registry(path: Path, clients: Iterable[Client]) -> None:
    """Write the registry atomically (a reader sees the old file or the new one, never half),
    readable by the owner only (it holds key hashes)."""
    body = json.dumps({"version": 1, "clients": [c.to_json() for c in clients]}, indent=2) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def new_key() -> tuple[str, ClientKey]:
    """A fresh key (shown once) and its registry entry."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    return key, ClientKey(id=secrets.token_hex(4), sha256=key_hash(key), created=_now())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0)


# ------------------------------------------------------------------ editing (the CLI)
def add_client(clients: tuple[Client, ...], name: str, scopes: Iterable[str], *, expires: dt.datetime | None = None,
               rate_limit_per_s: float | None = None, burst: int | None = None,
               oauth_client_id: str | None = None) -> tuple[tuple[Client, ...], str | None]:
    """The registry with a new client, and its key (None for an OAuth client, which has none)."""
    if any(c.name == name for c in clients):
        raise RegistryError(f"client {name!r} exists already (rotate its key with `refracture clients rotate {name}`)")
    key, entry = (None, None) if oauth_client_id else new_key()
    client = Client(name=name, scopes=frozenset(scopes), keys=(entry,) if entry else (), expires=expires,
                    rate_limit_per_s=rate_limit_per_s, burst=burst, oauth_client_id=oauth_client_id, created=_now())
    updated = clients + (client,)
    parse_registry(json.dumps({"version": 1, "clients": [c.to_json() for c in updated]}))  # same checks as reading
    return updated, key


def rotate_key(clients: tuple[Client, ...], name: str) -> tuple[tuple[Client, ...], str, str]:
    """The registry with a new key for ``name`` (the old ones keep working), the key and its id."""
    client = _find(clients, name)
    if client.oauth_client_id:
        raise RegistryError(f"client {name!r} signs in with the identity provider; it has no API key")
    key, entry = new_key()
    return _replace(clients, replace(client, keys=client.keys + (entry,))), key, entry.id


def revoke(clients: tuple[Client, ...], name: str, key_id: str | None = None) -> tuple[Client, ...]:
    """The registry with ``name`` revoked (every key, and its tokens), or only its key ``key_id``."""
    client = _find(clients, name)
    now = _now()
    if key_id is None:
        return _replace(clients, replace(client, revoked=client.revoked or now))
    if not any(k.id == key_id for k in client.keys):
        raise RegistryError(f"client {name!r} has no key {key_id!r} (keys: {', '.join(k.id for k in client.keys)})")
    keys = tuple(replace(k, revoked=k.revoked or now) if k.id == key_id else k for k in client.keys)
    return _replace(clients, replace(client, keys=keys))


def _find(clients: tuple[Client, ...], name: str) -> Client:
    for c in clients:
        if c.name == name:
            return c
    raise RegistryError(f"no client {name!r} (see `refracture clients list`)")


def _replace(clients: tuple[Client, ...], new: Client) -> tuple[Client, ...]:
    return tuple(new if c.name == new.name else c for c in clients)


# ------------------------------------------------------------------ the service's view
@dataclass(frozen=True)
class KeyMatch:
    """A presented API key's client, or why it is refused (``reason``: ``wrong``,
    ``revoked``, ``expired``)."""

    client: Client | None
    reason: str | None = None


@dataclass
class _Snapshot:
    by_hash: dict[str, tuple[Client, ClientKey]] = field(default_factory=dict)
    by_oauth_id: dict[str, Client] = field(default_factory=dict)
    by_name: dict[str, Client] = field(default_factory=dict)
    names: frozenset[str] = frozenset()


class ClientRegistry:
    """The service's live view of the registry file; reloads it when it changes.

    ``check_key(key)`` and ``oauth_client(client_id)`` are what the guard asks per
    request; both look at the file's modification (``os.stat``) at most once per
    ``RELOAD_INTERVAL_S`` and reload it when it changed. ``extra_clients`` are clients that
    are not in the file (the ``default`` client of ``REFRACTURE_API_KEY``).
    """

    def __init__(self, path: Path | None, extra_clients: Iterable[Client] = (),
                 clock: Callable[[], float] = time.monotonic, reload_interval_s: float = RELOAD_INTERVAL_S):
        self.path = path
        self.extra = tuple(extra_clients)
        self._clock = clock
        self.reload_interval_s = reload_interval_s
        self._stamp: tuple[int, int, int] | None = None
        self._checked = -float("inf")
        self._lock = threading.Lock()
        self.last_error: str | None = None
        self.loaded_at: float | None = None
        self._snap = self._build(read_registry(path) if path else ())  # invalid at start: RegistryError
        self._stamp = self._file_stamp()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _build(self, clients: tuple[Client, ...]) -> _Snapshot:
        snap = _Snapshot()
        for c in self.extra + clients:
            for k in c.keys:
                snap.by_hash[k.sha256] = (c, k)
            if c.oauth_client_id:
                snap.by_oauth_id[c.oauth_client_id] = c
            snap.by_name[c.name] = c
        snap.names = frozenset(c.name for c in self.extra + clients)
        self.loaded_at = time.time()
        return snap

    def maybe_reload(self) -> None:
        """Reload the file if it changed (checked at most once per interval)."""
        now = self._clock()
        if now - self._checked < self.reload_interval_s or self.path is None:
            return
        with self._lock:
            if now - self._checked < self.reload_interval_s:
                return
            self._checked = now
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            try:
                clients = read_registry(self.path)
            except RegistryError as exc:
                if self.last_error != str(exc):
                    logger.error("client registry not reloaded, the last good one stays in force: %s", exc)
                self.last_error = str(exc)
                return
            self._snap = self._build(clients)
            self._stamp = stamp
            self.last_error = None
            logger.info("client registry reloaded from %s: %d clients", self.path, len(clients))

    @property
    def names(self) -> frozenset[str]:
        """The configured clients' names (the bounded label set of the metrics)."""
        return self._snap.names

    def check_key(self, key: str) -> KeyMatch:
        self.maybe_reload()
        found = self._snap.by_hash.get(key_hash(key))
        if found is None:
            return KeyMatch(None, "wrong")
        client, k = found
        now = dt.datetime.now(dt.timezone.utc)
        if k.revoked is not None and k.revoked <= now:
            return KeyMatch(client, "revoked")
        why = client.usable(now)
        return KeyMatch(client, why) if why else KeyMatch(client)

    def client_named(self, name: str) -> Client | None:
        """The entry of the client with this name (no reload: called after ``check_key``
        or ``oauth_client`` in the same request)."""
        return self._snap.by_name.get(name)

    def oauth_client(self, client_id: str) -> Client | None:
        """The registry entry bound to an identity provider's client id, if any."""
        self.maybe_reload()
        return self._snap.by_oauth_id.get(client_id)


def default_client(api_key: str) -> Client:
    """The ``REFRACTURE_API_KEY`` as the client ``default`` with every scope (not in the file)."""
    return Client(name="default", scopes=frozenset(ALL_SCOPES), keys=(ClientKey(id="env", sha256=key_hash(api_key)),))
