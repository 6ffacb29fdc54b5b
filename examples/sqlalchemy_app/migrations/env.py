"""Alembic's env.py: migrations run inside crsync's helper, so tracked tables keep syncing."""

import sys
from pathlib import Path

import sqlalchemy as sa
from alembic import context

from crsync.contrib.alembic import include_name, migrations

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models import Base

target_metadata = Base.metadata
engine = sa.create_engine(context.config.get_main_option("sqlalchemy.url"))
try:
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=True,  # SQLite: rebuild tables for changes ALTER cannot make
            include_name=include_name,  # autogenerate leaves crsync's tables alone
        )
        with migrations(connection, target_metadata), context.begin_transaction():
            context.run_migrations()
finally:
    engine.dispose()
