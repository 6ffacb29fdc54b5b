"""Alembic env.py of the integration tests, copied beside the SQLAlchemy example's migration
versions: the app's models (new version) and crsync's helper around the migration run."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

import crsync
from crsync.contrib.alembic import include_name, migrations

target_metadata = sa.MetaData()

# The new app version's table (Alembic loads env.py outside sys.modules, so Core rather than
# annotated ORM classes).
notes = sa.Table(
    "notes",
    target_metadata,
    sa.Column("id", sa.Integer, primary_key=True, default=crsync.new_id),
    sa.Column("title", sa.String, nullable=False, server_default="untitled"),
    sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("due", sa.String, nullable=True),
)

# Declared by the app, created by no migration of the base chain (tests add one).
tags = sa.Table(
    "tags",
    target_metadata,
    sa.Column("id", sa.String, primary_key=True),
    sa.Column("note_id", sa.Integer, index=True),
)

engine = sa.create_engine(context.config.get_main_option("sqlalchemy.url"))
try:
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=True,
            include_name=include_name,
        )
        with migrations(connection, target_metadata), context.begin_transaction():
            context.run_migrations()
finally:
    engine.dispose()
