"""``PredictionStore``: the prediction log's database, through SQLAlchemy.

SQLite by default (one file, ``data/predictions.db``; write-ahead log so readers never
wait for the writer, busy timeout so several worker processes take turns), PostgreSQL for
deployments (its own database in the cluster of the MLflow stack: ``scripts/
tracking_stack.py`` creates ``predictions`` beside ``mlflow``). The schema is versioned by
Alembic (``predictionlog/migrations``); ``migrate()`` brings a database to the newest
version and is run once per deployment step (``refracture predictions migrate``, and by
``refracture serve`` before its workers start), while writers only check the version.

Writes are idempotent: every prediction has a unique id, and a row already stored is
skipped (``INSERT ... ON CONFLICT DO NOTHING``), so a batch written again after an
ambiguous failure, or replayed from the spool, is stored once.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any, Iterable

import pandas as pd
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, delete, event, func, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from predictionlog.rows import RowBatch
from predictionlog.schema import (
    VERSION_TABLE,
    horizon_outcomes,
    linked_outcomes,
    prediction_scores,
    predictions,
    realized_performance,
)
from predictionlog.settings import sqlite_path

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: Seconds a connection attempt may take before the store counts as unreachable.
CONNECT_TIMEOUT_S = 5
#: Rows per statement when reading or writing many (bound-parameter limits of SQLite).
_CHUNK = 5000


class SchemaOutOfDate(RuntimeError):
    """The database is not at the newest migration; the message says how to migrate it."""


def _alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    """The newest migration shipped with the package."""
    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def _on_sqlite_connect(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")  # durable across a process crash; WAL keeps it consistent
    cursor.close()


def _dates(rows: list[dict[str, Any]], names: tuple[str, ...], parse) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        r = dict(r)
        for n in names:
            if isinstance(r.get(n), str):
                r[n] = parse(r[n])
        out.append(r)
    return out


class PredictionStore:
    """The store at ``url`` (``predictionlog.settings.PredictionLogSettings.url``).

    Construction opens nothing; the first call connects (and creates a SQLite file and
    its folder unless ``create`` is False: readers check ``exists()`` first, so looking
    never leaves an empty store behind). ``dispose()`` closes the pool.
    """

    def __init__(self, url: str, create: bool = True):
        self.url = url
        self.dialect = url.split(":", 1)[0].split("+", 1)[0]
        self.path = sqlite_path(url) if self.dialect == "sqlite" else None
        if self.dialect == "sqlite":
            if self.path is not None and create:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(url, connect_args={"timeout": 30})
            event.listen(self.engine, "connect", _on_sqlite_connect)
            self._insert = sqlite.insert
        else:
            self.engine = create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2,
                                        connect_args={"connect_timeout": CONNECT_TIMEOUT_S})
            self._insert = postgresql.insert

    def __repr__(self) -> str:
        return f"PredictionStore({self.engine.url.render_as_string(hide_password=True)!r})"

    def dispose(self) -> None:
        self.engine.dispose()

    def exists(self) -> bool:
        """False for a SQLite file not created yet (a server database is assumed to exist)."""
        return self.path is None or self.path.exists()

    # ------------------------------------------------------------------ schema

    def migrate(self) -> str:
        """Upgrade the database to the newest migration; returns that revision."""
        cfg = _alembic_config()
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        return head_revision()

    def revision(self) -> str | None:
        """The database's current migration (None for an empty database)."""
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()

    def require_current(self) -> None:
        """Raise ``SchemaOutOfDate`` unless the database is at the newest migration."""
        have, want = self.revision(), head_revision()
        if have != want:
            raise SchemaOutOfDate(f"the prediction store {self!r} is at migration {have or '(none)'}, this version "
                                  f"needs {want}: run `refracture predictions migrate`")

    # ------------------------------------------------------------------ predictions

    def insert(self, batch: RowBatch) -> int:
        """Store a batch (predictions, then their scores) in one transaction; rows already
        stored are skipped. Returns the number of predictions newly stored. Raises the
        driver's error (``sqlalchemy.exc.OperationalError`` when unreachable) and stores
        nothing then."""
        preds = _dates(batch.predictions, ("surgery_date",), dt.date.fromisoformat)
        preds = _dates(preds, ("logged_at",), dt.datetime.fromisoformat)
        new = 0
        with self.engine.begin() as conn:
            for i in range(0, len(preds), _CHUNK):
                stmt = self._insert(predictions).on_conflict_do_nothing().returning(predictions.c.prediction_id)
                new += len(conn.execute(stmt, preds[i:i + _CHUNK]).all())
            for i in range(0, len(batch.scores), _CHUNK):
                conn.execute(self._insert(prediction_scores).on_conflict_do_nothing(), batch.scores[i:i + _CHUNK])
        return new

    def count(self, table: str = "predictions") -> int:
        t = {"predictions": predictions, "prediction_scores": prediction_scores, "linked_outcomes": linked_outcomes,
             "horizon_outcomes": horizon_outcomes}[table]
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(t)).scalar_one())

    def prediction_keys(self, key_hashes: Iterable[str] | None = None) -> pd.DataFrame:
        """``prediction_id``, ``key_hash``, ``surgery_date``, ``logged_at`` of the logged
        predictions (only those whose hash is in ``key_hashes`` when given)."""
        cols = [predictions.c.prediction_id, predictions.c.key_hash, predictions.c.surgery_date, predictions.c.logged_at]
        frames = []
        with self.engine.connect() as conn:
            if key_hashes is None:
                frames.append(pd.DataFrame(conn.execute(select(*cols).where(predictions.c.key_hash.is_not(None))).all(),
                                           columns=[c.name for c in cols]))
            else:
                keys = list(dict.fromkeys(key_hashes))
                for i in range(0, len(keys), _CHUNK):
                    q = select(*cols).where(predictions.c.key_hash.in_(keys[i:i + _CHUNK]))
                    frames.append(pd.DataFrame(conn.execute(q).all(), columns=[c.name for c in cols]))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[c.name for c in cols])

    def scores_frame(self) -> pd.DataFrame:
        """Every score joined with its prediction (``logged_at``, ``source``, ``key_hash``,
        ``surgery_date``), one row per prediction, outcome and role."""
        q = select(prediction_scores, predictions.c.logged_at, predictions.c.source, predictions.c.key_hash,
                   predictions.c.surgery_date).join(predictions, predictions.c.prediction_id == prediction_scores.c.prediction_id)
        with self.engine.connect() as conn:
            result = conn.execute(q)
            return pd.DataFrame(result.all(), columns=list(result.keys()))

    # ------------------------------------------------------------------ outcomes

    def store_outcomes(self, linked: list[dict[str, Any]], horizons: list[dict[str, Any]]) -> None:
        """Replace the linked follow-up and horizon statuses of the predictions in
        ``linked`` (a later export supersedes an earlier one), in one transaction."""
        ids = sorted({r["prediction_id"] for r in linked})
        with self.engine.begin() as conn:
            for i in range(0, len(ids), _CHUNK):
                part = ids[i:i + _CHUNK]
                conn.execute(delete(horizon_outcomes).where(horizon_outcomes.c.prediction_id.in_(part)))
                conn.execute(delete(linked_outcomes).where(linked_outcomes.c.prediction_id.in_(part)))
            for i in range(0, len(linked), _CHUNK):
                conn.execute(linked_outcomes.insert(), linked[i:i + _CHUNK])
            for i in range(0, len(horizons), _CHUNK):
                conn.execute(horizon_outcomes.insert(), horizons[i:i + _CHUNK])

    def latest_data_cuts(self) -> pd.DataFrame:
        """``prediction_id`` and the ``data_cut`` of the export last linked to it."""
        q = select(linked_outcomes.c.prediction_id, func.max(linked_outcomes.c.data_cut).label("data_cut")) \
            .group_by(linked_outcomes.c.prediction_id)
        with self.engine.connect() as conn:
            return pd.DataFrame(conn.execute(q).all(), columns=["prediction_id", "data_cut"])

    def outcomes_frame(self) -> pd.DataFrame:
        """Every linked follow-up: ``prediction_id``, ``outcome``, ``patient_hash``,
        ``surgery_date``, ``data_cut``, ``time_days``, ``status``."""
        t = linked_outcomes.c
        q = select(t.prediction_id, t.outcome, t.patient_hash, t.surgery_date, t.data_cut, t.time_days, t.status)
        with self.engine.connect() as conn:
            result = conn.execute(q)
            return pd.DataFrame(result.all(), columns=list(result.keys()))

    def horizon_frame(self) -> pd.DataFrame:
        with self.engine.connect() as conn:
            result = conn.execute(select(horizon_outcomes))
            return pd.DataFrame(result.all(), columns=list(result.keys()))

    # ------------------------------------------------------------------ realized performance

    def replace_performance(self, rows: list[dict[str, Any]]) -> None:
        """Replace the latest realized figures (``realized_performance``) with ``rows``."""
        with self.engine.begin() as conn:
            conn.execute(delete(realized_performance))
            if rows:
                conn.execute(realized_performance.insert(), rows)

    def performance(self) -> list[dict[str, Any]]:
        """The latest realized figures, as ``refracture performance`` stored them."""
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(realized_performance))]

    # ------------------------------------------------------------------ retention

    def prune(self, before: dt.datetime) -> int:
        """Delete the predictions logged before ``before`` (UTC) with their scores and
        linked outcomes; returns the number of predictions deleted."""
        old = select(predictions.c.prediction_id).where(predictions.c.logged_at < before).scalar_subquery()
        with self.engine.begin() as conn:
            for table in (horizon_outcomes, linked_outcomes, prediction_scores):
                conn.execute(delete(table).where(table.c.prediction_id.in_(old)))
            return int(conn.execute(delete(predictions).where(predictions.c.logged_at < before)).rowcount or 0)
