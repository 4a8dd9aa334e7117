"""The prediction log: predictions, their scores, linked outcomes, realized performance.

Revision ID: 0001
Revises:
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen here (a migration is history): the horizons of the estimand in 2026-12.
_RISKS = (("p_3m", 3), ("p_6m", 6), ("p_12m", 12), ("p_24m", 24))


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("prediction_id", sa.String(32), primary_key=True, comment="random id, the idempotency key of the writer"),
        sa.Column("logged_at", sa.DateTime(timezone=True), nullable=False, comment="when it was predicted (UTC)"),
        sa.Column("source", sa.String(16), nullable=False, comment="api, page, batch, fhir, cds or shadow"),
        sa.Column("request_id", sa.String(64), nullable=True, comment="the audit log's request id (HTTP), or the batch run's"),
        sa.Column("record_index", sa.Integer, nullable=False, comment="position of the record in its request or file"),
        sa.Column("client", sa.String(128), nullable=True, comment="the calling client's name, when the service knows it"),
        sa.Column("key_hash", sa.String(64), nullable=True, comment="HMAC-SHA256 of the procedure key with the site secret"),
        sa.Column("surgery_date", sa.Date, nullable=True),
        sa.Column("missing_inputs", sa.Text, nullable=True, comment="JSON list of the record fields that were missing"),
        sa.Column("inputs", sa.Text, nullable=True, comment="JSON of the model inputs; only when the deployment stores them"),
    )
    op.create_index("ix_predictions_key_hash", "predictions", ["key_hash"])
    op.create_index("ix_predictions_logged_at", "predictions", ["logged_at"])
    op.create_index("ix_predictions_request_id", "predictions", ["request_id"])
    op.create_table(
        "prediction_scores",
        sa.Column("prediction_id", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(40), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("model_name", sa.String(100), nullable=False),
        sa.Column("model_version", sa.String(20), nullable=False),
        *(sa.Column(c, sa.Float, nullable=True, comment=f"predicted cumulative incidence by {h} months") for c, h in _RISKS),
        sa.Column("risk_band", sa.String(20), nullable=True),
        sa.PrimaryKeyConstraint("prediction_id", "outcome", "role", name="pk_prediction_scores"),
        sa.ForeignKeyConstraint(["prediction_id"], ["predictions.prediction_id"], name="fk_scores_prediction",
                                ondelete="CASCADE"),
    )
    op.create_index("ix_prediction_scores_version", "prediction_scores", ["outcome", "model_version"])
    op.create_table(
        "linked_outcomes",
        sa.Column("prediction_id", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(40), nullable=False, comment="an outcome of features.labels, or death"),
        sa.Column("patient_hash", sa.String(64), nullable=True, comment="HMAC-SHA256 of the export's patient key"),
        sa.Column("surgery_date", sa.Date, nullable=False, comment="as the export records it"),
        sa.Column("data_cut", sa.Date, nullable=False, comment="the export's data cut"),
        sa.Column("time_days", sa.Float, nullable=False, comment="days from surgery to the event, death or last contact"),
        sa.Column("status", sa.SmallInteger, nullable=False, comment="0 censored, 1 event, 2 death first"),
        sa.Column("export_fingerprint", sa.String(64), nullable=False),
        sa.Column("linked_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("prediction_id", "outcome", name="pk_linked_outcomes"),
        sa.ForeignKeyConstraint(["prediction_id"], ["predictions.prediction_id"], name="fk_linked_prediction",
                                ondelete="CASCADE"),
    )
    op.create_table(
        "horizon_outcomes",
        sa.Column("prediction_id", sa.String(32), nullable=False),
        sa.Column("outcome", sa.String(40), nullable=False),
        sa.Column("horizon_months", sa.Float, nullable=False),
        sa.Column("status", sa.String(16), nullable=False, comment="event, death_first, event_free, censored or not_mature"),
        sa.PrimaryKeyConstraint("prediction_id", "outcome", "horizon_months", name="pk_horizon_outcomes"),
        sa.ForeignKeyConstraint(["prediction_id"], ["predictions.prediction_id"], name="fk_horizon_prediction",
                                ondelete="CASCADE"),
    )
    op.create_table(
        "realized_performance",
        sa.Column("outcome", sa.String(40), nullable=False),
        sa.Column("role", sa.String(16), nullable=False, comment="the alias the version held when computed"),
        sa.Column("model_version", sa.String(20), nullable=False),
        sa.Column("horizon_months", sa.Float, nullable=False),
        sa.Column("metric", sa.String(32), nullable=False, comment="observed_expected, calibration_slope or td_auroc"),
        sa.Column("value", sa.Float, nullable=True),
        sa.Column("ci_low", sa.Float, nullable=True),
        sa.Column("ci_high", sa.Float, nullable=True),
        sa.Column("matured", sa.Integer, nullable=False),
        sa.Column("events", sa.Integer, nullable=False),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("outcome", "role", "horizon_months", "metric", name="pk_realized_performance"),
    )


def downgrade() -> None:
    for table in ("realized_performance", "horizon_outcomes", "linked_outcomes", "prediction_scores", "predictions"):
        op.drop_table(table)
