"""SQLAlchemy: a :class:`crsync.Database` for an engine's SQLite file, and tracking the tables
declared as models (``pip install 'crsync[sqlalchemy]'``).

Example::

    import sqlalchemy as sa
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    import crsync
    from crsync.contrib import sqlalchemy as crsync_sa

    class Base(DeclarativeBase):
        pass

    class Note(Base):
        __tablename__ = "notes"
        id: Mapped[int] = mapped_column(primary_key=True, default=crsync.new_id)
        title: Mapped[str] = mapped_column(server_default="")

    engine = sa.create_engine("sqlite:///app.db")
    crsync_sa.track_on_create(Base.metadata)  # create_all() now also tracks the tables
    Base.metadata.create_all(engine)
    db = crsync_sa.connect(engine)            # for a crsync.Peer: its own connection

The app keeps using its engine, sessions and pool: crsync's triggers capture every write, on
any connection. See docs/guides/sqlalchemy-alembic.md.
"""

from __future__ import annotations

import logging
import sqlite3
import urllib.parse
from typing import TYPE_CHECKING, Any

import crsync
from crsync import CrsyncError, Database, SchemaError, UnsupportedDatabaseError
from crsync.contrib import is_crsync_table, require, sqlite_file, with_hints

_sa = require("sqlalchemy", "sqlalchemy", "crsync.contrib.sqlalchemy")

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine, MetaData, Table

__all__ = [
    "APP_ASSIGNED",
    "INFO_KEY",
    "connect",
    "database_path",
    "integer_keys_of",
    "replicated_tables",
    "track",
    "track_on_create",
]

log = logging.getLogger(__name__)

INFO_KEY = "crsync"
"""Key of a table's ``info`` dict read by :func:`track`: ``{"crsync": False}`` leaves the table
out; ``{"crsync": {"integer_keys": "app-assigned"}}`` opts an integer key in."""

APP_ASSIGNED = "app-assigned"

# Query arguments of a sqlite:// URL that the pysqlite dialect passes to sqlite3.connect().
_DRIVER_ARGS = {"timeout", "isolation_level", "detect_types", "check_same_thread"}


def database_path(bind: Engine | Connection) -> str:
    """The SQLite file (or ``file:`` URI) an engine or connection uses.

    Raises:
        UnsupportedDatabaseError: the engine is not SQLite, or its database is in memory.
    """
    engine = bind if isinstance(bind, _sa.Engine) else bind.engine
    url = engine.url
    if url.get_backend_name() != "sqlite":
        raise UnsupportedDatabaseError(
            f"engine {url.render_as_string(hide_password=True)} is not SQLite "
            f"({url.get_backend_name()}); crsync syncs SQLite files only"
        )
    query = dict(url.query)
    uri = str(query.pop("uri", "")).lower() in ("true", "1")
    database = url.database
    if uri and database and query:
        flat = {k: v if isinstance(v, str) else v[-1] for k, v in query.items()}
        params = {k: v for k, v in flat.items() if k not in _DRIVER_ARGS}
        if params:
            database = f"{database}?{urllib.parse.urlencode(params)}"
    return sqlite_file(
        database,
        uri=uri,
        source=f"engine {url.render_as_string(hide_password=True)}",
        hint=": give the engine a file path (sqlite:///app.db)",
    )


def connect(bind: Engine | Connection, **kwargs: Any) -> Database:
    """``crsync.connect()`` on the SQLite file of an engine (or a connection of it).

    The :class:`crsync.Database` has a connection of its own, outside the engine's pool: give
    it to a :class:`crsync.Peer`; the app keeps writing through its engine. ``kwargs`` go to
    :func:`crsync.connect` (``busy_timeout_ms``, ``check_same_thread``).

    Raises:
        UnsupportedDatabaseError: the engine is not SQLite, or its database is in memory.
    """
    return crsync.connect(database_path(bind), **kwargs)


def integer_keys_of(table: Table) -> str | None:
    """The ``integer_keys`` option to track ``table`` with: ``"app-assigned"`` when the table
    says so in ``info`` or when its one integer primary-key column has ``default=crsync.new_id``
    (the ORM then gives every new row an id unique across devices), else None."""
    opts = table.info.get(INFO_KEY)
    if isinstance(opts, dict) and opts.get("integer_keys") is not None:
        return str(opts["integer_keys"])
    pk = list(table.primary_key.columns)
    if len(pk) == 1 and pk[0].default is not None:
        arg = getattr(pk[0].default, "arg", None)
        if getattr(arg, "__wrapped__", arg) is crsync.new_id:
            return APP_ASSIGNED
    return None


def replicated_tables(*models: Any) -> list[Table]:
    """The tables of ``models`` that :func:`track` replicates.

    Each item is a ``MetaData``, a ``Table``, a mapped class or a declarative base (its
    metadata). Tables whose ``info`` has ``{"crsync": False}`` and crsync's own tables are left
    out; order and duplicates as given.
    """
    out: list[Table] = []
    for item in models:
        out += [t for t in _tables(item) if t not in out]
    return [
        t for t in out if t.info.get(INFO_KEY, True) is not False and not is_crsync_table(t.name)
    ]


def _tables(item: Any) -> list[Table]:
    if isinstance(item, _sa.MetaData):
        return list(item.sorted_tables)
    if isinstance(item, _sa.Table):
        return [item]
    table = getattr(item, "__table__", None)
    if isinstance(table, _sa.Table):
        return [table]
    metadata = getattr(item, "metadata", None)
    if isinstance(metadata, _sa.MetaData):
        return list(metadata.sorted_tables)
    raise TypeError(
        f"expected a MetaData, a Table, a mapped class or a declarative base, got {item!r}"
    )


def track(db: Database, *models: Any, missing_ok: bool = False) -> list[str]:
    """Track the tables declared by ``models`` (see :func:`replicated_tables`) in ``db``.

    Idempotent and cheap when nothing changed, so it can run at every start; a table already
    tracked and changed by a migration since is re-adopted at once. Integer keys follow
    :func:`integer_keys_of`.

    Args:
        missing_ok: skip tables that do not exist in the file yet (a migration creates them
            later) instead of raising.

    Returns:
        The names of the tables tracked.

    Raises:
        SchemaError: a table cannot replicate as declared; the message lists every problem and
            says how to declare the model (an integer key without ``default=crsync.new_id``,
            a ``NOT NULL`` column without ``server_default``, a foreign key...).
    """
    done: list[str] = []
    for table in replicated_tables(*models):
        if missing_ok and not _exists(db.conn, table.name):
            continue
        try:
            db.track(table.name, integer_keys=integer_keys_of(table))
        except SchemaError as exc:
            raise _with_model_hints(exc, table) from exc
        done.append(table.name)
    return done


def _exists(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ? COLLATE NOCASE", (name,)
    ).fetchone()
    return row is not None


_MODEL_HINTS = (
    (
        ("integer primary key",),
        "give the key column default=crsync.new_id (or info={'crsync': {'integer_keys': "
        "'app-assigned'}} on the table) so the app, not SQLite, picks ids",
    ),
    (("not null",), "give NOT NULL columns a server_default (mapped_column(server_default=''))"),
    (
        ("foreign key",),
        "declare relationships without a database constraint (ForeignKey only in "
        "relationship(foreign_keys=...) / primaryjoin)",
    ),
    (("a unique",), "use index=True instead of unique=True"),
)


def _with_model_hints(exc: SchemaError, table: Table) -> SchemaError:
    """crsync's refusal, with how to fix it in the model."""
    return with_hints(exc, table.name, "in the model", _MODEL_HINTS)


def track_on_create(metadata: MetaData, *models: Any) -> None:
    """Make ``metadata.create_all()`` also track the tables it declares.

    Installs an ``after_create`` listener on ``metadata``: after ``create_all`` created the
    tables (on every call, also when they existed already), the tables of ``models`` (default:
    every table of ``metadata``, see :func:`replicated_tables`) are tracked on the same
    connection, so a table is never written untracked. Installing it again replaces the
    previous listener.

    ``create_all`` raises :class:`crsync.SchemaError` if a table cannot replicate, and
    :class:`crsync.UnsupportedDatabaseError` on a database that is not a SQLite file.
    """
    targets = models or (metadata,)

    def after_create(target: MetaData, connection: Connection, **kw: Any) -> None:
        database_path(connection)  # refuse non-SQLite and in-memory engines
        raw = connection.connection.driver_connection
        if not isinstance(raw, sqlite3.Connection):
            raise UnsupportedDatabaseError(
                f"create_all ran on a {type(raw).__name__}; crsync tracks tables on the "
                "standard library's sqlite3 driver (sqlite:// or sqlite+pysqlite://)"
            )
        if raw.in_transaction:
            raise CrsyncError(
                "create_all ran inside an open SQLite transaction, where crsync cannot track "
                "the tables; call crsync.contrib.sqlalchemy.track(db, metadata) after it "
                "commits instead of track_on_create"
            )
        db = crsync.connect(raw)  # wraps the connection: never closes it
        names = track(db, *targets, missing_ok=True)
        log.info("crsync.sqlalchemy.tracked tables=%s", ",".join(names))

    previous = metadata.info.get(_LISTENER)
    if previous is not None and _sa.event.contains(metadata, "after_create", previous):
        _sa.event.remove(metadata, "after_create", previous)
    metadata.info[_LISTENER] = after_create
    _sa.event.listen(metadata, "after_create", after_create)


_LISTENER = "crsync.track_on_create"  # key of metadata.info holding the installed listener
