"""Alembic: a real ``alembic upgrade`` (a migrations directory with crsync's env.py helper) on
tracked databases of two devices syncing through a real relay while the upgrade rolls out:
device A upgraded and writing the new column, device B on the old schema still writing, B
upgraded later and receiving A's new-column values."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
import sqlalchemy as sa
import trio
from alembic import command
from alembic.config import Config
from sync.conftest import RelayProcess
from sync.helpers import converge

import crsync
from crsync.contrib import sqlalchemy as crsync_sa
from crsync.contrib.alembic import include_name

from .conftest import peers

# The SQLAlchemy example's migration chain (0001 notes, 0002 due + batch rebuild), run by this
# suite's env.py (its metadata also declares a table no base migration creates).
EXAMPLE_MIGRATIONS = Path(__file__).resolve().parents[2] / "examples/sqlalchemy_app/migrations"
ENV_PY = Path(__file__).parent / "alembic_env.py"


def alembic_config(tmp_path: Path, db: Path) -> Config:
    """The example's migrations with this suite's env.py, copied into tmp_path (tests add
    revisions to the copy), on the database ``db``."""
    scripts = tmp_path / "migrations"
    if not scripts.exists():
        shutil.copytree(
            EXAMPLE_MIGRATIONS, scripts, ignore=shutil.ignore_patterns("__pycache__")
        )
        shutil.copyfile(ENV_PY, scripts / "env.py")
    cfg = Config()
    cfg.set_main_option("script_location", str(scripts))
    cfg.set_main_option("sqlalchemy.url", f"sqlite:///{db}")
    return cfg


def columns(engine: sa.Engine) -> list[str]:
    return [c["name"] for c in sa.inspect(engine).get_columns("notes")]


def notes(engine: sa.Engine, cols: str) -> list[tuple[object, ...]]:
    with engine.connect() as c:
        return [tuple(r) for r in c.exec_driver_sql(f"SELECT {cols} FROM notes ORDER BY id")]


def write(engine: sa.Engine, sql: str, **params: object) -> None:
    with engine.begin() as c:
        c.execute(sa.text(sql), params)


def test_upgrade_tracks_new_tables_and_readopts_rebuilt_ones(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    cfg = alembic_config(tmp_path, path)
    command.upgrade(cfg, "0001")
    db = crsync.connect(path)
    assert db.tracked_tables() == ["notes"]  # created by the migration, tracked by env.py
    db.conn.execute("INSERT INTO notes (id, title) VALUES (?, 'one')", (crsync.new_id(),))
    command.upgrade(cfg, "head")  # batch mode: the table is rebuilt
    before = db.db_version
    engine = sa.create_engine(f"sqlite:///{path}")
    write(engine, "UPDATE notes SET due = 'monday'")
    assert [(c.cid, c.val) for c in db.changes(since=before)] == [("due", "monday")]
    command.downgrade(cfg, "0001")  # rebuilt again, without the column
    write(engine, "UPDATE notes SET title = 'one, edited'")
    assert ("title", "one, edited") in [(c.cid, c.val) for c in db.changes(since=before)]
    engine.dispose()


def test_autogenerate_ignores_crsync_tables(tmp_path: Path) -> None:
    """include_name keeps crsync's tables out of autogenerate: no drop_table for them."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    path = tmp_path / "app.db"
    cfg = alembic_config(tmp_path, path)
    command.upgrade(cfg, "head")
    engine = sa.create_engine(f"sqlite:///{path}")
    metadata = sa.MetaData()
    sa.Table(
        "notes",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("title", sa.String, nullable=False, server_default="untitled"),
        sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("due", sa.String),
    )
    with engine.connect() as conn:
        plain = compare_metadata(MigrationContext.configure(conn), metadata)
        ctx = MigrationContext.configure(conn, opts={"include_name": include_name})
        filtered = compare_metadata(ctx, metadata)
    dropped = {d[1].name for d in plain if d[0] == "remove_table"}
    assert {"crsync_tables", "notes__crsync"} <= dropped  # what would happen without it
    assert [d for d in filtered if d[0] == "remove_table"] == []
    engine.dispose()


@pytest.mark.e2e
async def test_upgrade_rolls_out_while_old_and_new_versions_sync(
    relay: RelayProcess, tmp_path: Path
) -> None:
    cfg_a = alembic_config(tmp_path, tmp_path / "a.db")
    cfg_b = alembic_config(tmp_path, tmp_path / "b.db")
    for cfg in (cfg_a, cfg_b):
        command.upgrade(cfg, "0001")  # both devices run the old app version
    engine_a = sa.create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    engine_b = sa.create_engine(f"sqlite:///{tmp_path / 'b.db'}")
    a, b = crsync_sa.connect(engine_a), crsync_sa.connect(engine_b)
    ids = [crsync.new_id() for _ in range(4)]
    insert = "INSERT INTO notes (id, title) VALUES (:id, :title)"

    with trio.fail_after(90):
        async with peers(relay, "rollout", a, b) as ps:
            write(engine_a, insert, id=ids[0], title="from a, v1")
            write(engine_b, insert, id=ids[1], title="from b, v1")
            await converge(ps)

            # Device A updates the app; B keeps writing on the old schema meanwhile.
            await trio.to_thread.run_sync(command.upgrade, cfg_a, "head")
            assert "due" in columns(engine_a)
            # (A's upgrade re-stamped its rows one col_version up; B's edit ties with it and
            # the larger value, 1, wins on both devices.)
            write(engine_b, "UPDATE notes SET done = 1 WHERE id = :id", id=ids[0])
            write(engine_a, "UPDATE notes SET due = 'monday' WHERE id = :id", id=ids[1])
            write(engine_a, insert + "", id=ids[2], title="from a, v2")
            write(engine_a, "UPDATE notes SET due = 'friday' WHERE id = :id", id=ids[2])
            write(engine_b, insert, id=ids[3], title="from b, still v1")
            for p in ps:
                p.notify()
            await converge(ps)
            shared = "id, title, done"
            assert notes(engine_a, shared) == notes(engine_b, shared)
            assert len(notes(engine_b, shared)) == 4
            assert "due" not in columns(engine_b)
            assert b.pending_count() > 0  # A's due values wait on B for the column

            # B updates later: it receives the values A wrote in the new column.
            await trio.to_thread.run_sync(command.upgrade, cfg_b, "head")
            assert b.pending_count() == 0
            write(engine_b, "UPDATE notes SET due = 'sunday' WHERE id = :id", id=ids[3])
            for p in ps:
                p.notify()
            await converge(ps)
    everything = "id, title, done, due"
    assert notes(engine_a, everything) == notes(engine_b, everything)
    by_id = {r[0]: r for r in notes(engine_b, everything)}
    assert by_id[ids[0]][2:] == (1, None)
    assert by_id[ids[1]][3] == "monday"
    assert by_id[ids[2]][1:] == ("from a, v2", 0, "friday")
    assert by_id[ids[3]][1:] == ("from b, still v1", 0, "sunday")
    for e in (engine_a, engine_b):
        e.dispose()


def add_migration(tmp_path: Path, revision: str, down: str, body: str) -> None:
    """A migration file written into the copied migrations directory."""
    (tmp_path / "migrations" / "versions" / f"{revision}.py").write_text(
        "import sqlalchemy as sa\nfrom alembic import op\n\n"
        f"revision = {revision!r}\ndown_revision = {down!r}\n"
        "branch_labels = None\ndepends_on = None\n\n\n"
        f"def upgrade() -> None:\n{textwrap.indent(textwrap.dedent(body), '    ')}\n\n"
        "def downgrade() -> None:\n    pass\n"
    )


def test_a_migration_that_breaks_replication_fails_the_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    cfg = alembic_config(tmp_path, path)
    command.upgrade(cfg, "head")
    add_migration(
        tmp_path, "0003", "0002", 'op.create_index("notes_title", "notes", ["title"], unique=True)'
    )
    with pytest.raises(crsync.SchemaError, match="UNIQUE index notes_title") as info:
        command.upgrade(cfg, "head")
    assert info.value.table == "notes"


def test_tables_created_before_a_failing_migration_are_tracked(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    cfg = alembic_config(tmp_path, path)
    add_migration(
        tmp_path,
        "0003",
        "0002",
        """
        op.create_table(
            "tags",
            sa.Column("id", sa.String(), primary_key=True),
            sa.Column("note_id", sa.Integer(), index=True),
        )
        """,
    )
    add_migration(tmp_path, "0004", "0003", 'raise RuntimeError("a broken migration")')
    with pytest.raises(RuntimeError, match="a broken migration"):
        command.upgrade(cfg, "head")
    assert crsync.connect(path).tracked_tables() == ["notes", "tags"]


def test_a_tracked_table_dropped_and_no_longer_declared_is_untracked(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    cfg = alembic_config(tmp_path, path)
    command.upgrade(cfg, "head")
    db = crsync.connect(path)
    db.conn.execute("CREATE TABLE legacy (id TEXT PRIMARY KEY NOT NULL, v TEXT)")
    db.track("legacy")
    add_migration(tmp_path, "0003", "0002", 'op.drop_table("legacy")')
    command.upgrade(cfg, "head")
    assert db.tracked_tables() == ["notes"]  # no SchemaError about a dropped table
