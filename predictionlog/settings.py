"""The prediction log's settings, read once from the environment at an entry point.

| variable | default | what |
|---|---|---|
| ``REFRACTURE_PREDICTION_LOG`` | ``1`` | ``0`` turns the log off (the service and batch scoring then remember nothing) |
| ``REFRACTURE_PREDICTION_DB`` | ``sqlite:///data/predictions.db`` | SQLAlchemy URL of the store; PostgreSQL: ``postgresql+psycopg://user:password@host:port/predictions`` |
| ``REFRACTURE_PREDICTION_SECRET`` / ``_FILE`` | none | the site secret keying the procedure hash (at least 32 characters); required while the log is on |
| ``REFRACTURE_PREDICTION_STORE_INPUTS`` | ``0`` | ``1`` also stores each record's model inputs (sensitive: off by default) |
| ``REFRACTURE_PREDICTION_RETENTION_DAYS`` | ``1096`` (3 years) | predictions older than this are deleted by ``refracture predictions prune`` |
| ``REFRACTURE_PREDICTION_SPOOL_DIR`` | ``spool/`` beside a SQLite store, else ``data/prediction-spool`` | where rows wait while the store is unreachable |
| ``REFRACTURE_PREDICTION_QUEUE`` | ``20000`` | records waiting for the writer at most; beyond, new ones are dropped and counted |
| ``REFRACTURE_PREDICTION_BATCH`` | ``500`` | records per write |
| ``REFRACTURE_PREDICTION_FLUSH_SECONDS`` | ``1.0`` | longest wait before a partial batch is written |

The secret never sits in the repository: a deployment keeps it in its secret store and
passes it by file (``_FILE``); ``make demo`` draws one into ``data/demo/prediction-secret``
(git-ignored), as it does the API key. The same secret must be used for as long as
outcomes are to be linked (the hash of a procedure is only reproducible with it): losing
it makes every stored prediction unlinkable, rotating it starts a new linkable period.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from modelstore.errors import ConfigError

ENV_ENABLED = "REFRACTURE_PREDICTION_LOG"
ENV_DB = "REFRACTURE_PREDICTION_DB"
ENV_SECRET = "REFRACTURE_PREDICTION_SECRET"
ENV_SECRET_FILE = "REFRACTURE_PREDICTION_SECRET_FILE"
ENV_STORE_INPUTS = "REFRACTURE_PREDICTION_STORE_INPUTS"
ENV_RETENTION_DAYS = "REFRACTURE_PREDICTION_RETENTION_DAYS"
ENV_SPOOL_DIR = "REFRACTURE_PREDICTION_SPOOL_DIR"
ENV_QUEUE = "REFRACTURE_PREDICTION_QUEUE"
ENV_BATCH = "REFRACTURE_PREDICTION_BATCH"
ENV_FLUSH_SECONDS = "REFRACTURE_PREDICTION_FLUSH_SECONDS"

DEFAULT_DB_PATH = Path("data") / "predictions.db"
#: Three years: the longest horizon (24 months) plus a year for the export that carries
#: its outcome to arrive and be linked.
DEFAULT_RETENTION_DAYS = 1096
#: Shorter retention would delete predictions before their 24-month outcome can be seen.
MIN_RETENTION_DAYS = 731
MIN_SECRET_CHARS = 32


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={env.get(name)!r}: expected 1 or 0")


def _number(env: Mapping[str, str], name: str, default: float, kind=int, low: float = 1) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value < low:
        raise ConfigError(f"{name} must be at least {low:g}, got {value}")
    return value


def read_secret(env: Mapping[str, str]) -> bytes | None:
    """The site secret from ``REFRACTURE_PREDICTION_SECRET`` or the file named by
    ``REFRACTURE_PREDICTION_SECRET_FILE`` (stripped), else None. Raises ConfigError when
    the file cannot be read or the secret is shorter than ``MIN_SECRET_CHARS``."""
    text = (env.get(ENV_SECRET) or "").strip()
    path = (env.get(ENV_SECRET_FILE) or "").strip()
    if not text and path:
        try:
            text = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{ENV_SECRET_FILE}={path}: cannot read it ({exc.strerror})") from None
    if not text:
        return None
    if len(text) < MIN_SECRET_CHARS:
        raise ConfigError(f"the prediction-log secret is too short ({len(text)} characters): use at least "
                          f"{MIN_SECRET_CHARS}, e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`")
    return text.encode("utf-8")


def check_url(url: str) -> str:
    """``url`` if SQLAlchemy can parse it and it names SQLite or PostgreSQL, else ConfigError."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"{ENV_DB}: {url!r} is not a database URL (e.g. sqlite:///data/predictions.db or "
                          "postgresql+psycopg://user:password@host:5432/predictions)") from None
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ConfigError(f"{ENV_DB}: {parsed.get_backend_name()} is not supported; use sqlite or postgresql")
    return url


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for another database or an in-memory one)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database)


@dataclass(frozen=True)
class PredictionLogSettings:
    """What the prediction log needs (module docstring). ``secret`` is None only while the
    log is off; ``from_env`` refuses an enabled log without one."""

    enabled: bool = True
    url: str = f"sqlite:///{DEFAULT_DB_PATH}"
    secret: bytes | None = field(default=None, repr=False)
    store_inputs: bool = False
    retention_days: int = DEFAULT_RETENTION_DAYS
    spool_dir: Path = Path("data") / "prediction-spool"
    max_queue_records: int = 20_000
    batch_records: int = 500
    flush_seconds: float = 1.0

    def __repr__(self) -> str:  # never the secret nor the database password
        return (f"PredictionLogSettings(enabled={self.enabled}, url={make_url(self.url).render_as_string(hide_password=True)!r}, "
                f"store_inputs={self.store_inputs}, retention_days={self.retention_days}, spool_dir={str(self.spool_dir)!r})")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, need_secret: bool = True) -> "PredictionLogSettings":
        """Read and check the settings. ``need_secret``: refuse an enabled log without a
        secret (commands that only read or prune the store pass False)."""
        env = os.environ if env is None else env
        enabled = _flag(env, ENV_ENABLED, True)
        url = check_url((env.get(ENV_DB) or "").strip() or f"sqlite:///{DEFAULT_DB_PATH.resolve()}")
        secret = read_secret(env)
        if enabled and need_secret and secret is None:
            raise ConfigError(
                f"the prediction log needs the site secret that keys the procedure hash: set {ENV_SECRET_FILE} to a "
                f"file holding at least {MIN_SECRET_CHARS} random characters (kept outside the repository, the same "
                f"for as long as outcomes are to be linked), or {ENV_SECRET}; or turn the log off with {ENV_ENABLED}=0. "
                "`make demo` writes one to data/demo/prediction-secret.")
        retention = int(_number(env, ENV_RETENTION_DAYS, DEFAULT_RETENTION_DAYS))
        if retention < MIN_RETENTION_DAYS:
            raise ConfigError(f"{ENV_RETENTION_DAYS}={retention}: at least {MIN_RETENTION_DAYS} days, or predictions are "
                              "deleted before their 24-month outcome can be linked")
        db_file = sqlite_path(url)
        spool_default = (db_file.parent / "prediction-spool") if db_file else Path("data") / "prediction-spool"
        spool = Path((env.get(ENV_SPOOL_DIR) or "").strip() or spool_default)
        return cls(enabled=enabled, url=url, secret=secret, store_inputs=_flag(env, ENV_STORE_INPUTS, False),
                   retention_days=retention, spool_dir=spool.resolve(),
                   max_queue_records=int(_number(env, ENV_QUEUE, 20_000)),
                   batch_records=int(_number(env, ENV_BATCH, 500)),
                   flush_seconds=float(_number(env, ENV_FLUSH_SECONDS, 1.0, float, 0.01)))
