"""The prediction store's tables (SQLAlchemy Core), as the newest migration leaves them.

The migrations in ``predictionlog/migrations/versions/`` create and change the tables;
this module is what the code reads and writes with. A test migrates an empty database and
compares it with ``METADATA`` (no difference allowed), so the two cannot drift.

- ``predictions``: one row per record scored: when, how it came (``source``), the keyed
  hash of its procedure key (``key_hash``, ``predictionlog.keys``), the surgery date, the
  inputs that were missing, the request id the audit log also holds, the calling client
  when known, and the model inputs only when the deployment stores them.
- ``prediction_scores``: one row per record and model: the registered name and version,
  the predicted cumulative incidence at every horizon (``p_3m`` ... ``p_24m``, the
  columns of ``modelstore.estimand.horizon_column``) and the risk band; ``role`` is
  ``champion`` (the answer) or ``challenger`` (scored in shadow, never returned).
- ``linked_outcomes``: per prediction and target, the follow-up of the same procedure in
  the latest export linked (``features.labels``: days to the event, death or last
  contact, and the competing-risks status 0 censored / 1 event / 2 death first), the
  export's data cut, and a keyed hash of its patient (patient-level intervals).
- ``horizon_outcomes``: per prediction, target and horizon, what was observed by then
  (``HORIZON_STATUSES``).
- ``realized_performance``: the latest figures of ``refracture performance``, which the
  service exports as gauges without importing the evaluation code.
"""

from __future__ import annotations

from sqlalchemy import (
    Column,
    Date,
    DateTime,
    Float,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
)

from modelstore.estimand import DEFAULT_HORIZONS_MONTHS, horizon_column

#: Where a prediction came from.
SOURCES = ("api", "page", "batch", "fhir", "cds", "shadow")
#: ``prediction_scores.role``: the answer, or a challenger scored in shadow.
ROLES = ("champion", "challenger")
#: ``horizon_outcomes.status``: the event by the horizon; death first (no event before
#: it); followed to the horizon without either; lost to follow-up before the horizon
#: (although the horizon has passed by the data cut); or the data cut comes before
#: the horizon, so it cannot be judged yet (even when the event has already happened:
#: counting early events before the non-events can be seen would bias every estimate).
HORIZON_STATUSES = ("event", "death_first", "event_free", "censored", "not_mature")
#: The horizons stored as columns (months), fixed by the estimand: serving refuses models
#: with other horizons (``serving.loading``), and a change of horizons is a migration.
HORIZONS_MONTHS = DEFAULT_HORIZONS_MONTHS
RISK_COLUMNS = tuple(horizon_column(h) for h in HORIZONS_MONTHS)
#: The Alembic version table (not the default name: a store put in a database that also
#: holds another Alembic history, such as MLflow's, must not clash with it).
VERSION_TABLE = "prediction_log_version"

METADATA = MetaData()

predictions = Table(
    "predictions", METADATA,
    Column("prediction_id", String(32), primary_key=True, comment="random id, the idempotency key of the writer"),
    Column("logged_at", DateTime(timezone=True), nullable=False, comment="when it was predicted (UTC)"),
    Column("source", String(16), nullable=False, comment="api, page, batch, fhir, cds or shadow"),
    Column("request_id", String(64), nullable=True, comment="the audit log's request id (HTTP), or the batch run's"),
    Column("record_index", Integer, nullable=False, comment="position of the record in its request or file"),
    Column("client", String(128), nullable=True, comment="the calling client's name, when the service knows it"),
    Column("key_hash", String(64), nullable=True, comment="HMAC-SHA256 of the procedure key with the site secret"),
    Column("surgery_date", Date, nullable=True),
    Column("missing_inputs", Text, nullable=True, comment="JSON list of the record fields that were missing"),
    Column("inputs", Text, nullable=True, comment="JSON of the model inputs; only when the deployment stores them"),
)
Index("ix_predictions_key_hash", predictions.c.key_hash)
Index("ix_predictions_logged_at", predictions.c.logged_at)
Index("ix_predictions_request_id", predictions.c.request_id)

prediction_scores = Table(
    "prediction_scores", METADATA,
    Column("prediction_id", String(32), nullable=False),
    Column("outcome", String(40), nullable=False),
    Column("role", String(16), nullable=False),
    Column("model_name", String(100), nullable=False),
    Column("model_version", String(20), nullable=False),
    *(Column(c, Float, nullable=True, comment=f"predicted cumulative incidence by {h:g} months")
      for c, h in zip(RISK_COLUMNS, HORIZONS_MONTHS)),
    Column("risk_band", String(20), nullable=True),
    PrimaryKeyConstraint("prediction_id", "outcome", "role", name="pk_prediction_scores"),
    ForeignKeyConstraint(["prediction_id"], ["predictions.prediction_id"], name="fk_scores_prediction",
                         ondelete="CASCADE"),
)
Index("ix_prediction_scores_version", prediction_scores.c.outcome, prediction_scores.c.model_version)

linked_outcomes = Table(
    "linked_outcomes", METADATA,
    Column("prediction_id", String(32), nullable=False),
    Column("outcome", String(40), nullable=False, comment="an outcome of features.labels, or death"),
    Column("patient_hash", String(64), nullable=True, comment="HMAC-SHA256 of the export's patient key"),
    Column("surgery_date", Date, nullable=False, comment="as the export records it"),
    Column("data_cut", Date, nullable=False, comment="the export's data cut"),
    Column("time_days", Float, nullable=False, comment="days from surgery to the event, death or last contact"),
    Column("status", SmallInteger, nullable=False, comment="0 censored, 1 event, 2 death first"),
    Column("export_fingerprint", String(64), nullable=False),
    Column("linked_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("prediction_id", "outcome", name="pk_linked_outcomes"),
    ForeignKeyConstraint(["prediction_id"], ["predictions.prediction_id"], name="fk_linked_prediction",
                         ondelete="CASCADE"),
)

horizon_outcomes = Table(
    "horizon_outcomes", METADATA,
    Column("prediction_id", String(32), nullable=False),
    Column("outcome", String(40), nullable=False),
    Column("horizon_months", Float, nullable=False),
    Column("status", String(16), nullable=False, comment="event, death_first, event_free, censored or not_mature"),
    PrimaryKeyConstraint("prediction_id", "outcome", "horizon_months", name="pk_horizon_outcomes"),
    ForeignKeyConstraint(["prediction_id"], ["predictions.prediction_id"], name="fk_horizon_prediction",
                         ondelete="CASCADE"),
)

realized_performance = Table(
    "realized_performance", METADATA,
    Column("outcome", String(40), nullable=False),
    Column("role", String(16), nullable=False, comment="the alias the version held when computed"),
    Column("model_version", String(20), nullable=False),
    Column("horizon_months", Float, nullable=False),
    Column("metric", String(32), nullable=False, comment="observed_expected, calibration_slope or td_auroc"),
    Column("value", Float, nullable=True),
    Column("ci_low", Float, nullable=True),
    Column("ci_high", Float, nullable=True),
    Column("matured", Integer, nullable=False),
    Column("events", Integer, nullable=False),
    Column("computed_at", DateTime(timezone=True), nullable=False),
    PrimaryKeyConstraint("outcome", "role", "horizon_months", "metric", name="pk_realized_performance"),
)
