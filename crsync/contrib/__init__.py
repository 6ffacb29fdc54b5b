"""Integrations with ORMs and migration tools: ``crsync.contrib.sqlalchemy``,
``crsync.contrib.alembic``, ``crsync.contrib.django``.

Each is an optional extra (``pip install 'crsync[sqlalchemy]'``, ``'crsync[django]'``): the base
install never imports SQLAlchemy, Alembic or Django, and importing an integration without its
library raises :class:`crsync.MissingExtraError` naming the extra. The integrations use crsync's
public API only (``crsync.connect``, ``Database.track`` and friends): what they do, an app can do
by hand.
"""

from __future__ import annotations

import importlib
import urllib.parse
from collections.abc import Sequence
from types import ModuleType

from crsync import MissingExtraError, SchemaError, UnsupportedDatabaseError

__all__ = ["is_crsync_table", "require", "sqlite_file"]


def require(module: str, extra: str, what: str) -> ModuleType:
    """Import ``module`` or raise :class:`crsync.MissingExtraError` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtraError(
            f"{what} needs {module}, which is not installed: pip install 'crsync[{extra}]'"
        ) from exc


def is_crsync_table(name: str) -> bool:
    """True for the tables crsync keeps in the app's file (``crsync_*`` and ``*__crsync``):
    schema tools must neither drop nor model them (see ``crsync.contrib.alembic.include_name``)."""
    return name.startswith("crsync_") or name.endswith("__crsync")


def sqlite_file(database: str | None, *, uri: bool, source: str, hint: str = "") -> str:
    """The file (or ``file:`` URI) a SQLite database name designates, refusing in-memory ones.

    Args:
        database: the database name an engine or settings entry gives SQLite.
        uri: the name is a ``file:`` URI.
        source: what gave the name, for the error message.
        hint: how to give it a file, appended to the error message.

    Raises:
        UnsupportedDatabaseError: the database is in memory (no file another device could sync
            with, and each connection of a pool would see another database).
    """
    if not database or database == ":memory:":
        raise UnsupportedDatabaseError(
            f"{source} is an in-memory SQLite database; crsync syncs a database file{hint}"
        )
    if uri or database.startswith("file:"):
        parsed = urllib.parse.urlsplit(database)
        query = urllib.parse.parse_qs(parsed.query)
        if "memory" in query.get("mode", []) or parsed.path in ("", ":memory:"):
            raise UnsupportedDatabaseError(
                f"{source} is an in-memory SQLite database ({database}); crsync syncs a "
                "database file"
            )
        return database if database.startswith("file:") else f"file:{database}"
    return database


def with_hints(
    exc: SchemaError, table: str, where: str, hints: Sequence[tuple[tuple[str, ...], str]]
) -> SchemaError:
    """crsync's refusal ``exc`` with how to fix it in the framework's terms: each hint whose
    words appear in the problem is added, after ``where`` (e.g. ``"in the model"``). ``exc``
    itself when no hint applies."""
    text = exc.problem.lower()
    found = [hint for words, hint in hints if any(w in text for w in words)]
    if not found:
        return exc
    problems = [*exc.problems, f"{where}: {'; '.join(found)}"]
    return SchemaError(table, "; ".join(problems), problems)
