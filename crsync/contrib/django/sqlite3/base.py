"""Django's SQLite backend, with a schema editor that removes a column of a replicated model
by rebuilding its table.

Django drops a plain column with ``ALTER TABLE ... DROP COLUMN``, which SQLite refuses on a
tracked table (``error in trigger <table>__crsync_upd after drop column``: crsync's capture
trigger uses the column). For the models of ``settings.CRSYNC["models"]`` this editor rebuilds
the table instead (Django's own ``_remake_table``, as it does for most changes on SQLite);
crsync re-adopts the rebuilt table after ``migrate``. Everything else is Django's backend.
"""

from __future__ import annotations

from typing import Any

from django.db.backends.sqlite3 import base
from django.db.backends.sqlite3.schema import DatabaseSchemaEditor as _SQLiteSchemaEditor

from crsync.contrib.django import configured_models


class DatabaseSchemaEditor(_SQLiteSchemaEditor):  # type: ignore[misc]  # Django has no hints
    def remove_field(self, model: Any, field: Any) -> None:
        tables = {m._meta.db_table for m in configured_models()}
        if field.many_to_many or model._meta.db_table not in tables:
            super().remove_field(model, field)
        elif field.db_parameters(connection=self.connection)["type"] is not None:
            self._remake_table(model, delete_field=field)


class DatabaseWrapper(base.DatabaseWrapper):  # type: ignore[misc]
    SchemaEditorClass = DatabaseSchemaEditor
