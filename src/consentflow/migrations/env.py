"""Alembic environment: runs migrations on the engine consentflow hands it (see ``db.upgrade``)."""

from __future__ import annotations

from alembic import context

from consentflow import models
from consentflow.db import get_engine

target_metadata = models.metadata


def run() -> None:
    engine = context.config.attributes.get("engine") or get_engine()
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run()
