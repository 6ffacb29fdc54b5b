"""Django: a Django app that tracks the configured models after ``migrate``
(``pip install 'crsync[django]'``).

In ``settings.py``::

    INSTALLED_APPS = [..., "notes", "crsync.contrib.django"]
    CRSYNC = {
        "models": ["notes.Note", "notes.Tag"],   # or {"notes.Note": {"integer_keys": ...}}
        "database": "default",                   # the alias whose SQLite file syncs
    }

After every ``manage.py migrate`` (the ``post_migrate`` signal of each app), the configured
models of that app are tracked: tables a migration created start replicating, and tables
Django's SQLite schema editor rebuilt (most ``AlterField``, and ``AddField`` with a default)
are re-adopted at once. :func:`get_database` gives the :class:`crsync.Database` to run a
:class:`crsync.Peer` on. See docs/guides/django.md.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import crsync
from crsync import CrsyncError, Database, SchemaError, UnsupportedDatabaseError
from crsync.contrib import require, sqlite_file, with_hints

require("django", "django", "crsync.contrib.django")

if TYPE_CHECKING:
    from django.db.models import Model

__all__ = ["APP_ASSIGNED", "configured_models", "get_database", "integer_keys_of", "track_models"]

log = logging.getLogger(__name__)

APP_ASSIGNED = "app-assigned"


def _settings() -> Mapping[str, Any]:
    from django.conf import settings

    conf = getattr(settings, "CRSYNC", {})
    if not isinstance(conf, Mapping):
        raise CrsyncError(f"settings.CRSYNC must be a dict, not {type(conf).__name__}")
    return conf


def database_alias() -> str:
    """The database alias whose file syncs (``CRSYNC["database"]``, default ``"default"``)."""
    return str(_settings().get("database", "default"))


def configured_models() -> dict[type[Model], dict[str, Any]]:
    """The models named in ``CRSYNC["models"]`` with their options.

    Raises:
        CrsyncError: a name is not ``"app_label.ModelName"`` of an installed model.
    """
    from django.apps import apps

    names = _settings().get("models", [])
    items = names.items() if isinstance(names, Mapping) else ((n, {}) for n in names)
    out: dict[type[Model], dict[str, Any]] = {}
    for name, opts in items:
        try:
            model = apps.get_model(name)
        except (LookupError, ValueError) as exc:
            raise CrsyncError(
                f"settings.CRSYNC['models'] names {name!r}, which is not an installed model "
                f"(expected 'app_label.ModelName'): {exc}"
            ) from exc
        out[model] = dict(opts or {})
    return out


def get_database(using: str | None = None, **kwargs: Any) -> Database:
    """``crsync.connect()`` on the SQLite file of a Django database (default: the configured
    alias). The :class:`crsync.Database` has its own connection: give it to a
    :class:`crsync.Peer`; the app keeps using the ORM. ``kwargs`` go to :func:`crsync.connect`.

    Raises:
        UnsupportedDatabaseError: the database is not SQLite, or is in memory (Django's test
            databases on SQLite are, unless ``TEST["NAME"]`` names a file).
    """
    from django.db import connections

    alias = using or database_alias()
    conn = connections[alias]
    if conn.vendor != "sqlite":
        raise UnsupportedDatabaseError(
            f"Django database {alias!r} is {conn.vendor}; crsync syncs SQLite files only"
        )
    name = conn.settings_dict.get("NAME")
    if name is not None and not isinstance(name, str):
        name = str(name)
    path = sqlite_file(
        name, uri=False, source=f"Django database {alias!r}", hint=": set its NAME to a file path"
    )
    if conn.is_in_memory_db():
        raise UnsupportedDatabaseError(
            f"Django database {alias!r} is an in-memory SQLite database; crsync syncs a "
            "database file: set its NAME to a file path"
        )
    return crsync.connect(path, **kwargs)


def integer_keys_of(model: type[Model], opts: Mapping[str, Any]) -> str | None:
    """``"app-assigned"`` when the options say so or the primary key has
    ``default=crsync.new_id`` (the app then gives every row an id unique across devices)."""
    if opts.get("integer_keys") is not None:
        return str(opts["integer_keys"])
    pk = model._meta.pk
    if pk is not None and getattr(pk, "default", None) is crsync.new_id:
        return APP_ASSIGNED
    return None


def track_models(
    using: str | None = None, app_label: str | None = None, db: Database | None = None
) -> list[str]:
    """Track the configured models' tables (those of ``app_label`` only, if given) that
    exist in the database. Idempotent; re-adopts at once a table a migration rebuilt.

    Returns:
        The tables tracked.

    Raises:
        SchemaError: a model's table cannot replicate; the message lists the problems and how
            to declare the model.
    """
    models = {
        m: o for m, o in configured_models().items() if app_label in (None, m._meta.app_label)
    }
    if not models:
        return []
    own = db is None
    database = db if db is not None else get_database(using)
    try:
        existing = {
            n.lower()
            for (n,) in database.conn.execute(
                "SELECT name FROM sqlite_schema WHERE type = 'table'"
            )
        }
        done = []
        for model, opts in models.items():
            table = model._meta.db_table
            if table.lower() not in existing:
                log.info("crsync.django.skipped table=%s reason=not created yet", table)
                continue
            try:
                database.track(table, integer_keys=integer_keys_of(model, opts))
            except SchemaError as exc:
                raise _with_model_hints(exc, model) from exc
            done.append(table)
        return done
    finally:
        if own:
            database.close()


_MODEL_HINTS = (
    (
        ("autoincrement", "integer primary key"),
        "give the model a key unique across devices: id = models.UUIDField("
        "primary_key=True, default=uuid.uuid4), or models.BigIntegerField(primary_key="
        "True, default=crsync.new_id) (Django's AutoField lets SQLite pick ids)",
    ),
    (("not null",), "give NOT NULL fields a db_default (Django 5.0+), or null=True"),
    (("foreign key",), "declare ForeignKey(..., db_constraint=False)"),
    (("a unique",), "use db_index=True instead of unique=True"),
)


def _with_model_hints(exc: SchemaError, model: type[Model]) -> SchemaError:
    return with_hints(exc, exc.table, f"in {model._meta.label}", _MODEL_HINTS)


def _after_migrate(sender: Any, using: str = "default", **kwargs: Any) -> None:
    """``post_migrate`` receiver: track the configured models of the migrated app."""
    if using != database_alias():
        return
    from django.db import connections

    if connections[using].vendor == "sqlite" and connections[using].is_in_memory_db():
        # Django's test databases on SQLite: nothing to sync with, nothing to track.
        log.info("crsync.django.skipped database=%s reason=in memory", using)
        return
    names = track_models(using, app_label=getattr(sender, "label", None))
    if names:
        log.info("crsync.django.tracked app=%s tables=%s", sender.label, ",".join(names))
