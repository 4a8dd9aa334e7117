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


@dataclass(frozen=True)
class ServingSettings:
    """What the service needs to know at start.

    ``api_key`` is None only when ``insecure_dev`` is set. ``audit_salt`` is bytes; when
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
    #: Score each outcome's ``challenger`` alongside the champion and log it, never
    #: return it (``serving.http.shadow``; needs the prediction log). Off by default.
    shadow_challengers: bool = False

    def __repr__(self) -> str:  # never print the key or the salt
        return (f"ServingSettings(api_key={'set' if self.api_key else 'none'}, insecure_dev={self.insecure_dev}, "
                f"max_records={self.max_records}, max_body_bytes={self.max_body_bytes}, "
                f"model_versions={self.model_versions})")

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
        if key is None and not insecure:
            raise ConfigError(
                f"no API key configured: set {ENV_API_KEY} (or {ENV_API_KEY_FILE} to a file holding it), "
                "or start with --insecure-dev for a local, unauthenticated development server"
            )
        if key is not None and len(key) < 16:
            raise ConfigError(f"{ENV_API_KEY} is too short ({len(key)} characters): use at least 16, "
                              "e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
        salt_text = env.get(ENV_AUDIT_SALT)
        log_path = env.get(ENV_AUDIT_LOG)
        return cls(
            api_key=key,
            insecure_dev=insecure and key is None,
            audit_salt=salt_text.encode("utf-8") if salt_text else secrets.token_bytes(32),
            audit_salt_is_random=not salt_text,
            audit_log_path=Path(log_path) if log_path else None,
            max_records=_positive_int(env, ENV_MAX_RECORDS, 1000),
            max_body_bytes=_positive_int(env, ENV_MAX_BODY_BYTES, 4 * 1024 * 1024),
            model_versions=parse_model_versions(env.get(ENV_MODEL_VERSIONS)),
            scoring_process=_scoring_process(env.get(ENV_SCORING_PROCESS)),
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
