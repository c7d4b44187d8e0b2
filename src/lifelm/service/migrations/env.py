"""Alembic environment of the LifeLM service (runs the migrations in ``versions/``)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from lifelm.service.db import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    """Run the migrations online against ``sqlalchemy.url``."""
    url = config.get_main_option("sqlalchemy.url")
    if url is None:
        raise RuntimeError("alembic: no sqlalchemy.url in the configuration")
    engine = create_engine(url)
    with engine.connect() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run()
