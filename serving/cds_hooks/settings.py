"""The CDS Hooks service's settings, read once from the environment at start.

- ``REFRACTURE_PUBLIC_URL``: the service's external base URL (``https://risk.hospital.org``).
  A CDS client's JWT must name ``<it>/cds-services`` (discovery) or
  ``<it>/cds-services/refracture-risk`` as audience (CDS Hooks 2.0, "Trusting CDS
  Clients"), and the cards link to ``<it>/ui/`` and to the model card. Required when CDS
  clients are configured.
- ``REFRACTURE_CDS_CLIENTS``: a JSON file naming the CDS clients the service trusts (the
  issuer allow-list), each with its JWK Set, by URL or inline (``CdsClient``):
  ``{"clients": [{"name": "ehr-prod", "issuer": "https://ehr.example.org",
  "jwks_url": "https://ehr.example.org/.well-known/jwks.json",
  "fhir_servers": ["https://ehr.example.org/fhir"]}]}`` (``fhir_servers``, optional: the FHIR
  servers the client may ask the service to fetch from).
- ``REFRACTURE_CDS_CORS_ORIGINS``: comma-separated origins of browser-based CDS clients
  allowed to call ``/cds-services`` (``*`` for any); empty: no cross-origin access.
- ``REFRACTURE_MODEL_CARD_URL``: where the cards' source links (the published model card of
  the served versions); default ``<public URL>/model`` (versions, held-out metrics, estimand),
  which needs the ``model:read`` scope: a clinician's browser following the link gets a 401, so
  a deployment sets this to the model card it publishes.

Without clients, ``/cds-services`` refuses everyone (401), unless the service runs with
``--insecure-dev``, where anyone may call it (a local demonstration).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from modelstore.errors import ConfigError
from serving.config import get_settings

ENV_PUBLIC_URL = "REFRACTURE_PUBLIC_URL"
ENV_CDS_CLIENTS = "REFRACTURE_CDS_CLIENTS"
ENV_CDS_CORS_ORIGINS = "REFRACTURE_CDS_CORS_ORIGINS"
ENV_MODEL_CARD_URL = "REFRACTURE_MODEL_CARD_URL"


def _is_loopback(host: str | None) -> bool:
    return host in ("127.0.0.1", "localhost", "::1")


def check_url(url: str, what: str) -> str:
    """``url`` without a trailing slash, if absolute https (http only on this machine's loopback)."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.netloc:
        raise ValueError(f"{what} {url!r} is not an absolute http(s) URL")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError(f"{what} {url!r} must use https (plain http only on 127.0.0.1/localhost)")
    return url.rstrip("/")


class CdsClient(BaseModel):
    """One trusted CDS client: its name (audit line, never a secret), the ``iss`` its JWTs
    carry, and its public keys: a JWK Set URL (fetched and cached; a token's ``jku`` must be
    this URL) or an inline JWK Set (keys agreed out of band, as CDS Hooks allows)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    issuer: str = Field(min_length=1)
    jwks_url: str | None = None
    jwks: dict[str, Any] | None = None
    #: The FHIR servers (base URLs) this client may send as ``fhirServer``; empty: any https one.
    #: The service fetches from it with the client's token, so listing them bounds where it goes.
    fhir_servers: tuple[str, ...] = ()

    @field_validator("jwks_url")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        return None if value is None else check_url(value, "jwks_url")

    @field_validator("fhir_servers")
    @classmethod
    def _servers(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_url(v, "fhir_servers entry") for v in value)

    def may_use(self, fhir_server: str) -> bool:
        """Whether ``fhir_server`` (already checked as an https URL) is one this client may name."""
        base = fhir_server.rstrip("/")
        return not self.fhir_servers or any(base == s or base.startswith(s + "/") for s in self.fhir_servers)

    @field_validator("jwks")
    @classmethod
    def _public_only(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        keys = value.get("keys")
        if not isinstance(keys, list) or not keys:
            raise ValueError("jwks must be a JWK Set: {\"keys\": [...]} with at least one key")
        for k in keys:
            if not isinstance(k, dict) or "kid" not in k:
                raise ValueError("every key of jwks needs a 'kid' (CDS Hooks: tokens name their key by kid)")
            if any(p in k for p in ("d", "p", "q", "dp", "dq", "qi", "k")):
                raise ValueError(f"key {k.get('kid')!r} of jwks holds private or symmetric key material: give the "
                                 "client's public keys only")
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> "CdsClient":
        if (self.jwks_url is None) == (self.jwks is None):
            raise ValueError(f"client {self.name!r}: give exactly one of jwks_url or jwks")
        return self


class _ClientsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    clients: list[CdsClient]


@dataclass(frozen=True)
class CdsSettings:
    """See the module docstring."""

    public_url: str | None = None
    clients: tuple[CdsClient, ...] = ()
    cors_origins: tuple[str, ...] = ()
    model_card_url: str | None = None
    insecure_dev: bool = False
    #: Clients by issuer (built at construction).
    by_issuer: dict[str, CdsClient] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_issuer", {c.issuer: c for c in self.clients})

    @property
    def card_source_url(self) -> str | None:
        """Where a card's source links: the model card, else the service's ``/model``."""
        if self.model_card_url:
            return self.model_card_url
        return f"{self.public_url}/model" if self.public_url else None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, insecure_dev: bool = False) -> "CdsSettings":
        """Read and check the settings; raises ConfigError naming the variable and the fix."""
        env = os.environ if env is None else env
        public_url = (env.get(ENV_PUBLIC_URL) or "").strip() or None
        if public_url is not None:
            try:
                public_url = check_url(public_url, ENV_PUBLIC_URL)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        clients = _read_clients(env.get(ENV_CDS_CLIENTS))
        if clients and public_url is None:
            raise ConfigError(f"{ENV_CDS_CLIENTS} is set but {ENV_PUBLIC_URL} is not: a CDS client's token must name "
                              f"this service's URL as audience, so set {ENV_PUBLIC_URL} to it (e.g. "
                              "https://risk.hospital.org)")
        origins = tuple(o.strip().rstrip("/") for o in (env.get(ENV_CDS_CORS_ORIGINS) or "").split(",") if o.strip())
        for origin in origins:
            if origin != "*" and (urlsplit(origin).scheme not in ("http", "https") or urlsplit(origin).path):
                raise ConfigError(f"{ENV_CDS_CORS_ORIGINS}: {origin!r} is not an origin (scheme://host[:port]) or *")
        card = (env.get(ENV_MODEL_CARD_URL) or "").strip() or None
        return cls(public_url=public_url, clients=clients, cors_origins=origins, model_card_url=card,
                   insecure_dev=insecure_dev)


def _read_clients(path: str | None) -> tuple[CdsClient, ...]:
    if not path or not path.strip():
        return ()
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{ENV_CDS_CLIENTS}={path}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:
        raise ConfigError(f"{ENV_CDS_CLIENTS}={path}: not JSON ({exc})") from None
    try:
        clients = tuple(_ClientsFile.model_validate(data).clients)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{ENV_CDS_CLIENTS}={path}: {where}: {first['msg']}") from None
    for attr in ("name", "issuer"):
        values = [getattr(c, attr) for c in clients]
        if len(set(values)) != len(values):
            raise ConfigError(f"{ENV_CDS_CLIENTS}={path}: two clients with the same {attr}")
    return clients


_SETTINGS: CdsSettings | None = None


def get_cds_settings() -> CdsSettings:
    """The process's CDS settings, read on first use (at start, not import) and then shared by
    the guard's route, the CORS middleware and the service (``--insecure-dev`` from the
    service's own settings)."""
    global _SETTINGS
    if _SETTINGS is None:
        _SETTINGS = CdsSettings.from_env(insecure_dev=get_settings().insecure_dev)
    return _SETTINGS


def reset_cds_settings() -> None:
    """Forget the cached settings (tests that change the environment)."""
    global _SETTINGS
    _SETTINGS = None
