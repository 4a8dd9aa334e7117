"""Serving settings, read once from the environment at the service's entry point.

Every knob of the service is here, with its environment variable, so an operator finds
them in one place (``docs/serving.md`` lists them too). ``ServingSettings.from_env`` is
called by the service's ``__init__`` and by ``refracture serve`` before it starts the
server, so a missing API key stops the start with a clear message instead of a server
that answers 401 to everyone.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from modelstore.errors import ConfigError
from modelstore.risk_bands import RISK_BANDS
from predictionlog.settings import ENV_ENABLED, PredictionLogSettings, read_secret


#: The served risk bands (``modelstore.risk_bands``, shared with the model card).
DEFAULT_RISK_BANDS: dict[str, tuple[float, float]] = RISK_BANDS

ENV_API_KEY = "REFRACTURE_API_KEY"
ENV_API_KEY_FILE = "REFRACTURE_API_KEY_FILE"
ENV_INSECURE_DEV = "REFRACTURE_INSECURE_DEV"
ENV_AUDIT_SALT = "REFRACTURE_AUDIT_SALT"
ENV_AUDIT_LOG = "REFRACTURE_AUDIT_LOG"
ENV_MAX_RECORDS = "REFRACTURE_MAX_RECORDS"
ENV_MAX_BODY_BYTES = "REFRACTURE_MAX_BODY_BYTES"
ENV_MODEL_VERSIONS = "REFRACTURE_MODEL_VERSIONS"
ENV_SCORING_PROCESS = "REFRACTURE_SCORING_PROCESS"
ENV_CLIENTS_FILE = "REFRACTURE_CLIENTS_FILE"
ENV_RATE_LIMIT = "REFRACTURE_RATE_LIMIT_PER_S"
ENV_RATE_BURST = "REFRACTURE_RATE_LIMIT_BURST"
ENV_OIDC_ISSUER = "REFRACTURE_OIDC_ISSUER"
ENV_OIDC_AUDIENCE = "REFRACTURE_OIDC_AUDIENCE"
ENV_OIDC_JWKS_URI = "REFRACTURE_OIDC_JWKS_URI"
ENV_OIDC_SCOPE_MAP = "REFRACTURE_OIDC_SCOPE_MAP"
ENV_OIDC_UI_CLIENT_ID = "REFRACTURE_OIDC_UI_CLIENT_ID"
ENV_OIDC_UI_SCOPE = "REFRACTURE_OIDC_UI_SCOPE"
ENV_OIDC_LEEWAY_S = "REFRACTURE_OIDC_LEEWAY_S"
ENV_OIDC_KEY_LIFETIME_S = "REFRACTURE_OIDC_KEY_LIFETIME_S"
ENV_OIDC_REGISTERED_ONLY = "REFRACTURE_OIDC_REGISTERED_ONLY"
ENV_TLS_CERT = "REFRACTURE_TLS_CERT"
ENV_TLS_KEY = "REFRACTURE_TLS_KEY"
ENV_SHADOW_CHALLENGERS = "REFRACTURE_SHADOW_CHALLENGERS"


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < 1:
        raise ConfigError(f"{name} must be at least 1, got {value}")
    return value


def _scoring_process(value: str | None) -> bool:
    """``REFRACTURE_SCORING_PROCESS``: 1/true/yes, 0/false/no, or auto (default: on when
    this process may run on 2 or more CPUs, where the child has a core of its own)."""
    text = (value or "auto").strip().lower()
    if text == "auto":
        return _usable_cpus() >= 2
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{ENV_SCORING_PROCESS}={value!r}: expected 1, 0 or auto")


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def parse_model_versions(text: str | None) -> dict[str, str]:
    """'cemented_refracture=3,adjacent_fracture=2' -> {outcome: version}. Empty -> {}."""
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        part = part.strip()
        if not part:
            continue
        outcome, sep, version = part.partition("=")
        if not sep or not outcome.strip() or not version.strip().isdigit():
            raise ConfigError(f"{ENV_MODEL_VERSIONS}: expected outcome=version pairs, got {part!r}")
        out[outcome.strip()] = version.strip()
    return out


def _positive_float(env: Mapping[str, str], name: str) -> float | None:
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if not value > 0:
        raise ConfigError(f"{name} must be positive, got {raw}")
    return value


def parse_scope_map(text: str | None) -> dict[str, str]:
    """'predict=refracture/predict explain=refracture/explain' (our scope = the provider's,
    separated by spaces or commas) -> {provider scope: our scope}. Empty -> {} (same names)."""
    out: dict[str, str] = {}
    for part in (text or "").replace(",", " ").split():
        ours, sep, theirs = part.partition("=")
        if not sep or not ours or not theirs:
            raise ConfigError(f"{ENV_OIDC_SCOPE_MAP}: expected ours=theirs pairs, got {part!r}")
        out[theirs] = ours
    return out


@dataclass(frozen=True)
class OidcSettings:
    """The hospital's identity provider (OAuth 2.0 / OpenID Connect), when configured.

    ``issuer``: its exact issuer URL (keys found by discovery unless ``jwks_uri`` is set).
    ``audience``: what this service's access tokens carry in ``aud``. ``scope_map``:
    provider scope -> service scope. ``ui_client_id``: the public client the clinician page
    signs in as (authorization code + PKCE), None: the page offers no sign-in.
    ``leeway_s``: clock skew allowed on exp/nbf. ``key_lifetime_s``: how long cached keys
    stay trusted while the provider cannot be reached.
    """

    issuer: str
    audience: str
    jwks_uri: str | None = None
    scope_map: dict[str, str] = field(default_factory=dict)
    ui_client_id: str | None = None
    ui_scope: str = "openid profile"
    leeway_s: int = 30
    key_lifetime_s: float = 86400.0
    #: Accept tokens only from clients the registry names (``oauth_client_id``).
    registered_only: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "OidcSettings | None":
        issuer = (env.get(ENV_OIDC_ISSUER) or "").strip()
        if not issuer:
            return None
        audience = (env.get(ENV_OIDC_AUDIENCE) or "").strip()
        if not audience:
            raise ConfigError(f"{ENV_OIDC_ISSUER} is set but {ENV_OIDC_AUDIENCE} is not: set it to the identifier "
                              "the provider puts in this service's access tokens (aud)")
        if not issuer.startswith("https://") and not issuer.startswith(("http://127.0.0.1", "http://localhost")):
            raise ConfigError(f"{ENV_OIDC_ISSUER}={issuer!r}: the identity provider must be reached over https "
                              "(http only on this machine, for tests)")
        scope_map = parse_scope_map(env.get(ENV_OIDC_SCOPE_MAP))
        ui_scope = (env.get(ENV_OIDC_UI_SCOPE) or "").strip() or " ".join(
            ["openid", "profile", *(t for t, o in scope_map.items() if o in ("predict", "explain", "model:read"))]
            if scope_map else ["openid", "profile", "predict", "explain", "model:read"])
        leeway = _positive_int(env, ENV_OIDC_LEEWAY_S, 30)
        if leeway > 300:
            raise ConfigError(f"{ENV_OIDC_LEEWAY_S}={leeway}: at most 300 seconds")
        return cls(issuer=issuer, audience=audience, jwks_uri=(env.get(ENV_OIDC_JWKS_URI) or "").strip() or None,
                   scope_map=scope_map, ui_client_id=(env.get(ENV_OIDC_UI_CLIENT_ID) or "").strip() or None,
                   ui_scope=ui_scope, leeway_s=leeway,
                   key_lifetime_s=float(_positive_int(env, ENV_OIDC_KEY_LIFETIME_S, 86400)),
                   registered_only=_truthy(env.get(ENV_OIDC_REGISTERED_ONLY)))


@dataclass(frozen=True)
class ServingSettings:
    """What the service needs to know at start.

    ``api_key`` is None when ``insecure_dev`` is set or callers authenticate otherwise
    (``clients_file``, ``oidc``). ``audit_salt`` is bytes; when
    none is configured a random one is drawn per process (hashes then link requests
    within one process lifetime only) and ``audit_salt_is_random`` says so.
    """

    api_key: str | None
    insecure_dev: bool = False
    audit_salt: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    audit_salt_is_random: bool = True
    audit_log_path: Path | None = None
    max_records: int = 1000
    max_body_bytes: int = 4 * 1024 * 1024
    #: Pin versions instead of resolving the champion alias (outcome -> registry version).
    model_versions: dict[str, str] = field(default_factory=dict)
    risk_bands: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_RISK_BANDS))
    #: Score micro-batches in a child process of each worker (``serving.http.scoring_process``)
    #: rather than in a thread of it: on by default when the worker may use 2 or more CPUs.
    scoring_process: bool = False
    #: The client registry (``serving.auth.clients``), re-read when it changes.
    clients_file: Path | None = None
    #: The identity provider whose bearer tokens are accepted (None: API keys only).
    oidc: OidcSettings | None = None
    #: Rate limit of clients without their own (the ``default`` client, OAuth clients not
    #: in the registry), requests per second and burst; None: unlimited.
    rate_limit_per_s: float | None = None
    rate_limit_burst: int | None = None
    #: Score each outcome's ``challenger`` alongside the champion and log it, never
    #: return it (``serving.http.shadow``; needs the prediction log). Off by default.
    shadow_challengers: bool = False

    def __repr__(self) -> str:  # never print the key or the salt
        return (f"ServingSettings(api_key={'set' if self.api_key else 'none'}, insecure_dev={self.insecure_dev}, "
                f"max_records={self.max_records}, max_body_bytes={self.max_body_bytes}, "
                f"model_versions={self.model_versions}, clients_file={self.clients_file}, "
                f"oidc={self.oidc.issuer if self.oidc else None})")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "ServingSettings":
        """Read and check the settings. Raises ConfigError with the fix in the message."""
        env = os.environ if env is None else env
        insecure = _truthy(env.get(ENV_INSECURE_DEV))
        key = (env.get(ENV_API_KEY) or "").strip() or None
        key_file = env.get(ENV_API_KEY_FILE)
        if key is None and key_file:
            try:
                key = Path(key_file).read_text(encoding="utf-8").strip() or None
            except OSError as exc:
                raise ConfigError(f"{ENV_API_KEY_FILE}={key_file}: cannot read it ({exc.strerror})") from None
        clients_file = (env.get(ENV_CLIENTS_FILE) or "").strip() or None
        oidc = OidcSettings.from_env(env)
        if key is None and clients_file is None and oidc is None and not insecure:
            raise ConfigError(
                f"no way for callers to authenticate: set {ENV_API_KEY} (or {ENV_API_KEY_FILE} to a file holding it), "
                f"{ENV_CLIENTS_FILE} (named clients: `refracture clients add`) or {ENV_OIDC_ISSUER} (an identity "
                "provider), or start with --insecure-dev for a local, unauthenticated development server"
            )
        if key is not None and len(key) < 16:
            raise ConfigError(f"{ENV_API_KEY} is too short ({len(key)} characters): use at least 16, "
                              "e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
        salt_text = env.get(ENV_AUDIT_SALT)
        log_path = env.get(ENV_AUDIT_LOG)
        return cls(
            api_key=key,
            insecure_dev=insecure and key is None and clients_file is None and oidc is None,
            audit_salt=salt_text.encode("utf-8") if salt_text else secrets.token_bytes(32),
            audit_salt_is_random=not salt_text,
            audit_log_path=Path(log_path) if log_path else None,
            max_records=_positive_int(env, ENV_MAX_RECORDS, 1000),
            max_body_bytes=_positive_int(env, ENV_MAX_BODY_BYTES, 4 * 1024 * 1024),
            model_versions=parse_model_versions(env.get(ENV_MODEL_VERSIONS)),
            scoring_process=_scoring_process(env.get(ENV_SCORING_PROCESS)),
            clients_file=Path(clients_file) if clients_file else None,
            oidc=oidc,
            rate_limit_per_s=_positive_float(env, ENV_RATE_LIMIT),
            rate_limit_burst=_positive_int(env, ENV_RATE_BURST, 0) if env.get(ENV_RATE_BURST) else None,
            shadow_challengers=_truthy(env.get(ENV_SHADOW_CHALLENGERS)),
        )

    def key_matches(self, presented: str | None) -> bool:
        """Constant-time comparison of a presented key with the configured one."""
        if self.api_key is None:
            return self.insecure_dev
        if presented is None:
            return False
        return hmac.compare_digest(presented.encode("utf-8"), self.api_key.encode("utf-8"))


def prediction_log_settings(env: Mapping[str, str] | None = None, insecure_dev: bool = False) -> PredictionLogSettings:
    """The prediction log's settings for the service (``predictionlog.settings``): an
    enabled log without its site secret refuses the start (ConfigError saying how to give
    one), except on an ``--insecure-dev`` server, which then runs with the log off."""
    env = os.environ if env is None else env
    if insecure_dev and read_secret(env) is None:
        return PredictionLogSettings.from_env({**env, ENV_ENABLED: "0"})
    return PredictionLogSettings.from_env(env)


_SETTINGS: ServingSettings | None = None


def get_settings() -> ServingSettings:
    """The process's settings, read from the environment on first use (not on import)
    and then shared, so the middleware and the service agree (same audit salt)."""
    global _SETTINGS
    if _SETTINGS is None:
        _SETTINGS = ServingSettings.from_env()
    return _SETTINGS


def reset_settings() -> None:
    """Forget the cached settings (tests that change the environment)."""
    global _SETTINGS
    _SETTINGS = None
