"""SQLAlchemy 2.x: a crsync.Database for an engine's file, models tracked by create_all, ORM
sessions writing from the app's pool (several threads) while Peers sync through a real relay."""

from __future__ import annotations

import subprocess
import sys
import threading
import types
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import trio
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sync.conftest import RelayProcess
from sync.helpers import converge

import crsync
from crsync.contrib import sqlalchemy as crsync_sa

from .conftest import peers


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "notes"
    id: Mapped[int] = mapped_column(primary_key=True, default=crsync.new_id)
    title: Mapped[str] = mapped_column(server_default="")
    done: Mapped[bool] = mapped_column(server_default=sa.false())
    body: Mapped[str | None]


class Tag(Base):
    __tablename__ = "tags"
    id: Mapped[str] = mapped_column(primary_key=True)
    # No FOREIGN KEY: replicas receive rows in any order.
    note_id: Mapped[int | None] = mapped_column(index=True)


class Scratch(Base):
    """Not replicated: opted out in ``info``."""

    __tablename__ = "scratch"
    __table_args__ = {"info": {"crsync": False}}
    id: Mapped[int] = mapped_column(primary_key=True)


def device(path: Path) -> tuple[sa.Engine, crsync.Database]:
    engine = sa.create_engine(f"sqlite:///{path}")
    crsync_sa.track_on_create(Base.metadata)
    Base.metadata.create_all(engine)
    return engine, crsync_sa.connect(engine)


def state(engine: sa.Engine) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    with Session(engine) as s:
        notes = [
            (n.id, n.title, n.done, n.body) for n in s.scalars(sa.select(Note).order_by(Note.id))
        ]
        tags = [(t.id, t.note_id) for t in s.scalars(sa.select(Tag).order_by(Tag.id))]
    return notes, tags


def test_create_all_tracks_the_models_and_sessions_are_captured(tmp_path: Path) -> None:
    engine, db = device(tmp_path / "a.db")
    assert db.tracked_tables() == ["notes", "tags"]  # scratch opted out
    Base.metadata.create_all(engine)  # again, at the next start: nothing changes
    before = db.db_version
    with Session(engine) as s:
        note = Note(title="milk")
        s.add_all([note, Scratch(id=1)])
        s.flush()
        s.add(Tag(id="t1", note_id=note.id))
        s.commit()
        note_id = note.id
    assert note_id > 2**32  # crsync.new_id(), not SQLite's next rowid
    changed = {(c.table, c.cid) for c in db.changes(since=before)}
    assert changed == {("notes", "title"), ("notes", "done"), ("notes", "body"),
                       ("tags", "note_id")}
    engine.dispose()


def test_an_integer_key_without_new_id_is_refused_with_the_model_fix(tmp_path: Path) -> None:
    class Other(DeclarativeBase):
        pass

    class Item(Other):
        __tablename__ = "items"
        id: Mapped[int] = mapped_column(primary_key=True)
        label: Mapped[str]

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    crsync_sa.track_on_create(Other.metadata)
    with pytest.raises(crsync.SchemaError) as info:
        Other.metadata.create_all(engine)
    assert "default=crsync.new_id" in str(info.value)
    assert "server_default" in str(info.value)
    engine.dispose()


def test_create_all_inside_an_open_transaction_says_what_to_do(tmp_path: Path) -> None:
    """SQLAlchemy's recipe for real SQLite transactions (BEGIN on begin) runs create_all in an
    open transaction, where crsync cannot track: a clear error names the alternative."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'a.db'}")

    @sa.event.listens_for(engine, "connect")
    def no_driver_transactions(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None

    @sa.event.listens_for(engine, "begin")
    def begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN")

    hooked = sa.MetaData()
    Note.__table__.to_metadata(hooked)
    crsync_sa.track_on_create(hooked)
    with pytest.raises(crsync.CrsyncError, match=r"crsync.contrib.sqlalchemy.track\(db"):
        hooked.create_all(engine)  # rolled back: nothing was created untracked
    plain = sa.MetaData()
    Note.__table__.to_metadata(plain)
    plain.create_all(engine)
    db = crsync_sa.connect(engine)
    assert crsync_sa.track(db, plain) == ["notes"]  # the alternative works
    engine.dispose()


@pytest.mark.parametrize(
    "url",
    ["sqlite://", "sqlite:///:memory:", "sqlite:///file:mem?mode=memory&uri=true"],
)
def test_in_memory_engines_are_refused(url: str) -> None:
    engine = sa.create_engine(url, poolclass=sa.pool.StaticPool)
    with pytest.raises(crsync.UnsupportedDatabaseError, match="in-memory"):
        crsync_sa.connect(engine)
    metadata = sa.MetaData()
    sa.Table("t", metadata, sa.Column("id", sa.Text, primary_key=True))
    crsync_sa.track_on_create(metadata)
    with pytest.raises(crsync.UnsupportedDatabaseError, match="in-memory"):
        metadata.create_all(engine)
    engine.dispose()


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///app.db", "app.db"),
        ("sqlite:////srv/app.db?timeout=3", "/srv/app.db"),
        ("sqlite:///file:app.db?mode=ro&uri=true&timeout=3", "file:app.db?mode=ro"),
    ],
)
def test_the_file_of_an_engine(url: str, path: str) -> None:
    engine = sa.create_engine(url)
    assert crsync_sa.database_path(engine) == path


def test_a_non_sqlite_engine_is_refused() -> None:
    """(A stand-in connection: no PostgreSQL driver is installed; only the URL is read.)"""
    url = sa.engine.make_url("postgresql://app@db.invalid/app")
    conn = types.SimpleNamespace(engine=types.SimpleNamespace(url=url))
    with pytest.raises(crsync.UnsupportedDatabaseError, match="not SQLite"):
        crsync_sa.connect(conn)  # type: ignore[arg-type]


def test_the_base_install_imports_no_orm() -> None:
    code = (
        "import sys, crsync, crsync.contrib; "
        "print(sorted(m for m in ('sqlalchemy', 'alembic', 'django') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_missing_library_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['sqlalchemy'] = None\n"
        "import crsync\n"
        "try:\n"
        "    import crsync.contrib.sqlalchemy\n"
        "except crsync.MissingExtraError as exc:\n"
        "    print(isinstance(exc, ImportError), exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("True ")
    assert "pip install 'crsync[sqlalchemy]'" in out.stdout


@pytest.mark.e2e
async def test_orm_sessions_in_threads_while_peers_sync_through_a_relay(
    relay: RelayProcess, tmp_path: Path
) -> None:
    engine_a, a = device(tmp_path / "a.db")
    engine_b, b = device(tmp_path / "b.db")
    errors: list[BaseException] = []

    def writer(engine: sa.Engine, name: str, n: int) -> None:
        """An app thread: its own sessions from the engine's pool."""
        try:
            for i in range(n):
                with Session(engine) as s, s.begin():
                    note = Note(title=f"{name}-{i}", body="x" * i)
                    s.add(note)
                    s.flush()
                    s.add(Tag(id=f"{name}-{i}", note_id=note.id))
                if i % 3 == 0:
                    with Session(engine) as s, s.begin():
                        for row in s.scalars(sa.select(Note).where(Note.title == f"{name}-{i}")):
                            row.done = True
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    with trio.fail_after(90):
        async with peers(relay, "orm", a, b) as ps:
            threads = [
                threading.Thread(target=writer, args=(engine_a, f"a{k}", 15)) for k in range(3)
            ] + [threading.Thread(target=writer, args=(engine_b, "b0", 15))]
            for t in threads:
                t.start()
            for t in threads:
                await trio.to_thread.run_sync(t.join)
            assert errors == []
            for p in ps:
                p.notify()
            await converge(ps)
            # Both edit the same cell concurrently: equal col_versions, the larger value wins
            # on both sides.
            with Session(engine_a) as s, s.begin():
                s.scalars(sa.select(Note).where(Note.title == "a0-1")).one().body = "from a"
            with Session(engine_b) as s, s.begin():
                s.scalars(sa.select(Note).where(Note.title == "a0-1")).one().body = "from b"
            for p in ps:
                p.notify()
            await converge(ps)
    notes, tags = state(engine_a)
    assert (notes, tags) == state(engine_b)
    assert len(notes) == len(tags) == 60
    assert sum(1 for n in notes if n[2]) == 4 * 5
    assert [n[3] for n in notes if n[1] == "a0-1"] == ["from b"]
    for e in (engine_a, engine_b):
        e.dispose()
