"""sqlite-utils: ``table.transform()`` (a table rebuild) on a tracked table, by the app's own
sqlite-utils connection while Peers sync through a real relay, keeps syncing: the writes made
after it included."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlite_utils
import trio
from sync.conftest import RelayProcess
from sync.helpers import converge

import crsync

from .conftest import peers

pytestmark = pytest.mark.e2e


def device(path: Path) -> tuple[sqlite_utils.Database, crsync.Database]:
    app = sqlite_utils.Database(path)
    app["todos"].create(
        {"id": str, "title": str, "done": int}, pk="id", not_null={"id"}, defaults={"done": 0}
    )
    db = crsync.connect(path)
    db.track("todos")
    return app, db


def todos(app: sqlite_utils.Database) -> list[dict[str, object]]:
    return list(app["todos"].rows_where(order_by="id"))


async def test_transform_while_peers_sync(relay: RelayProcess, tmp_path: Path) -> None:
    app_a, a = device(tmp_path / "a.db")
    app_b, b = device(tmp_path / "b.db")
    app_a["todos"].insert_all([{"id": "1", "title": "milk"}, {"id": "2", "title": "eggs"}])
    with trio.fail_after(30):
        async with peers(relay, "transform", a, b) as ps:
            await converge(ps)
            assert len(todos(app_b)) == 2
            # The new app version: a default for titles, a new column, done dropped...
            # transform() rebuilds the table (create, copy, drop, rename) in one transaction.
            app_a["todos"].transform(defaults={"title": "untitled"}, drop={"done"})
            app_a["todos"].add_column("due", str)
            app_a["todos"].update("1", {"title": "oat milk", "due": "monday"})
            app_a["todos"].insert({"id": "3"})
            # ...while device B, on the old schema, keeps writing.
            app_b["todos"].update("2", {"done": 1})
            for p in ps:
                p.notify()
            await converge(ps)
            assert b.pending_count() > 0  # A's due values wait for the column on B
            app_b["todos"].transform(defaults={"title": "untitled"}, drop={"done"})
            app_b["todos"].add_column("due", str)
            for p in ps:
                p.notify()
            await converge(ps)
    assert todos(app_a) == todos(app_b)
    assert todos(app_b) == [
        {"id": "1", "title": "oat milk", "due": "monday"},
        {"id": "2", "title": "eggs", "due": None},
        {"id": "3", "title": "untitled", "due": None},
    ]
    assert b.pending_count() == 0
