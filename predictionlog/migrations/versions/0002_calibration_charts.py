"""Calibration charts: the latest state of each outcome's risk-adjusted CUSUM charts.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "calibration_charts",
        sa.Column("outcome", sa.String(40), nullable=False),
        sa.Column("role", sa.String(16), nullable=False, comment="the alias the version held when computed"),
        sa.Column("model_version", sa.String(20), nullable=False),
        sa.Column("direction", sa.String(20), nullable=False, comment="under_prediction or over_prediction"),
        sa.Column("statistic", sa.Float, nullable=False, comment="the CUSUM after the last matured interval"),
        sa.Column("threshold", sa.Float, nullable=False, comment="it signals at or above this"),
        sa.Column("peak", sa.Float, nullable=False,
                  comment="the highest statistic since the chart started (the alert compares it)"),
        sa.Column("first_signal", sa.Date, nullable=True,
                  comment="the maturity date of the trial that first reached the threshold"),
        sa.Column("expected_events", sa.Float, nullable=False, comment="sum of the predicted interval probabilities"),
        sa.Column("observed_events", sa.Integer, nullable=False),
        sa.Column("life_expected_events", sa.Float, nullable=False,
                  comment="expected events the false-alarm rate is stated over"),
        sa.Column("predictions", sa.Integer, nullable=False, comment="matured predictions behind the chart"),
        sa.Column("computed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("outcome", "role", "direction", name="pk_calibration_charts"),
    )


def downgrade() -> None:
    op.drop_table("calibration_charts")
