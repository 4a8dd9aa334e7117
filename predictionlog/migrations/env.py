"""Alembic's environment for the prediction store (run by ``predictionlog.store``, never by
hand: ``PredictionStore.migrate`` hands it an open connection in ``config.attributes``)."""

from __future__ import annotations

from alembic import context

from predictionlog.schema import METADATA, VERSION_TABLE


def run_migrations_online() -> None:
    connection = context.config.attributes["connection"]
    context.configure(connection=connection, target_metadata=METADATA, version_table=VERSION_TABLE,
                      render_as_batch=connection.dialect.name == "sqlite", compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("the prediction store migrates online only (PredictionStore.migrate)")
run_migrations_online()
