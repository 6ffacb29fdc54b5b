"""The todo app's model and status line, and two models syncing through ``crsync.SyncThread``
as the windows do, without a screen (examples/todo_sync)."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import crsync
from crsync.peer import PeerState

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # plain ``pytest`` does not put the repository root on the path
    sys.path.insert(0, str(ROOT))

from crsync.live import RowChange  # noqa: E402
from crsync.sync_thread import SyncStatus  # noqa: E402
from examples.todo_sync.model import TodoModel  # noqa: E402
from examples.todo_sync.relay import LocalRelay, local_relay  # noqa: E402
from examples.todo_sync.status import colour, describe  # noqa: E402

TIMEOUT = 30.0


def titles(model: TodoModel) -> list[tuple[str, bool]]:
    return [(t.title, t.done) for t in model.list()]


# ---------------------------------------------------------------------- the model alone


def test_model_adds_toggles_renames_and_deletes_todos_in_creation_order(tmp_path: Path) -> None:
    m = TodoModel.open(tmp_path / "a.db")
    first = m.add("  buy   milk ")
    second = m.add("call mum")
    assert titles(m) == [("buy milk", False), ("call mum", False)]
    assert m.toggle(first) is True
    m.rename(second, "call dad")
    assert titles(m) == [("buy milk", True), ("call dad", False)]
    assert m.toggle(first) is False
    m.delete(first)
    assert [t.id for t in m.list()] == [second]
    m.set_done(second, True)
    assert m.clear_done() == 1
    assert m.list() == []


def test_model_rejects_empty_titles_and_unknown_todos(tmp_path: Path) -> None:
    m = TodoModel.open(tmp_path / "a.db")
    with pytest.raises(ValueError, match="needs a title"):
        m.add("   ")
    with pytest.raises(ValueError, match="at most"):
        m.add("x" * 501)
    todo = m.add("ok")
    with pytest.raises(ValueError, match="needs a title"):
        m.rename(todo, "")
    for action in (
        lambda: m.toggle("nope"),
        lambda: m.rename("nope", "x"),
        lambda: m.delete("nope"),
        lambda: m.set_done("nope", True),
    ):
        with pytest.raises(KeyError, match="no todo with id 'nope'"):
            action()
    assert titles(m) == [("ok", False)]


def test_setting_an_unchanged_value_writes_nothing_to_sync(tmp_path: Path) -> None:
    m = TodoModel.open(tmp_path / "a.db")
    todo = m.add("ok")
    before = m.db.db_version
    m.set_done(todo, False)
    m.rename(todo, "ok")
    assert m.db.db_version == before


def test_concurrent_edits_of_two_models_keep_both_columns_when_merged(tmp_path: Path) -> None:
    a = TodoModel.open(tmp_path / "a.db")
    b = TodoModel.open(tmp_path / "b.db")
    todo = a.add("buy milk")
    b.db.merge(a.db.changes())
    a.rename(todo, "buy oat milk")  # offline on A
    b.set_done(todo, True)  # offline on B
    gone = b.add("temporary")
    b.delete(gone)
    a_changes, b_changes = a.db.changes(), b.db.changes()
    a.db.merge(b_changes)
    b.db.merge(a_changes)
    assert titles(a) == titles(b) == [("buy oat milk", True)]


# ---------------------------------------------------------------------- the status line


def test_the_status_line_covers_every_state_including_standby() -> None:
    # A second window on the same file goes to STANDBY; the status line used to raise
    # KeyError for it and kill the window's refresh.
    for state in PeerState:
        assert describe(SyncStatus(state))
        assert colour(SyncStatus(state)).startswith("#")
    assert describe(SyncStatus(PeerState.STANDBY, "lock held")).startswith("standby")
    assert describe(SyncStatus(PeerState.SYNCED)) == "synced"
    offline = SyncStatus(PeerState.OFFLINE, "relay unreachable")
    assert describe(offline) == "offline, retrying: relay unreachable"
    assert describe(SyncStatus(PeerState.SYNCING, "ignored")) == "syncing…"


# ---------------------------------------------------------------------- syncing through a relay


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[LocalRelay]:
    with local_relay(tmp_path / "relay", store="todos") as r:
        yield r


class Changed:
    """An on_change callback with a condition to wait on."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.count = 0

    def __call__(self, _changes: list[RowChange]) -> None:
        with self.cond:
            self.count += 1
            self.cond.notify_all()

    def wait_until(self, cond: Callable[[], bool], what: str) -> None:
        """Re-check ``cond`` after each change the sync thread reports (bounded)."""
        with self.cond:
            assert self.cond.wait_for(cond, TIMEOUT), f"{what} within {TIMEOUT:.0f} s"


@pytest.mark.e2e
def test_two_devices_converge_live_through_sync_threads(tmp_path: Path, relay: LocalRelay) -> None:
    devices = []
    for name in ("laptop", "phone"):
        model = TodoModel.open(tmp_path / f"{name}.db")
        sync = crsync.SyncThread(model.db, relay.url, store=relay.store, token=relay.token)
        changed = Changed()
        sync.on_change(changed, tables=["todos"])
        sync.start()
        devices.append((model, sync, changed))
    (laptop, s_laptop, c_laptop), (phone, s_phone, c_phone) = devices
    try:
        assert s_phone.wait_synced(TIMEOUT) and s_laptop.wait_synced(TIMEOUT)
        milk = laptop.add("buy milk")
        laptop.add("call mum")
        s_laptop.notify()
        c_phone.wait_until(lambda: len(phone.list()) == 2, "phone receiving two todos")
        assert titles(phone) == [("buy milk", False), ("call mum", False)]

        # Both edit the same todo (different columns); the phone deletes the other one.
        laptop.rename(milk, "buy oat milk")
        phone.set_done(milk, True)
        phone.delete(phone.list()[1].id)
        expected = [("buy oat milk", True)]
        c_phone.wait_until(lambda: titles(phone) == expected, "phone merging the rename")
        c_laptop.wait_until(lambda: titles(laptop) == expected, "laptop merging done + delete")
    finally:
        for model, sync, _ in devices:
            assert sync.stop()
            model.close()


@pytest.mark.e2e
def test_a_refused_token_gives_a_readable_status_line(tmp_path: Path, relay: LocalRelay) -> None:
    model = TodoModel.open(tmp_path / "a.db")
    with crsync.SyncThread(model.db, relay.url, store="someone-else", token=relay.token) as sync:
        assert sync.wait_state(PeerState.ERROR, timeout=TIMEOUT) is PeerState.ERROR
        status = describe(sync.status)
    model.close()
    assert status.startswith("sync stopped: ")
    assert "someone-else" in status or "token" in status.lower(), status
