"""The todo app's model and sync thread, without a screen (examples/todo_sync)."""

from __future__ import annotations

import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import crsync
from crsync.peer import PeerState

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # plain ``pytest`` does not put the repository root on the path
    sys.path.insert(0, str(ROOT))

from examples.todo_sync.model import TodoModel  # noqa: E402
from examples.todo_sync.relay import LocalRelay, local_relay  # noqa: E402
from examples.todo_sync.sync import (  # noqa: E402
    DataChanged,
    StateChanged,
    SyncEvent,
    SyncThread,
    describe,
)

TIMEOUT = 30.0


def titles(model: TodoModel) -> list[tuple[str, bool]]:
    return [(t.title, t.done) for t in model.list()]


def wait_for(
    sync: SyncThread, cond: Callable[[list[SyncEvent]], bool], what: str
) -> list[SyncEvent]:
    """Re-check ``cond(events so far)`` after each event the sync thread reports (bounded)."""
    deadline = time.monotonic() + TIMEOUT
    seen: list[SyncEvent] = []
    while not cond(seen):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"{what} did not happen within {TIMEOUT:.0f} s; events: {seen}")
        try:
            seen.append(sync.events.get(timeout=remaining))
        except queue.Empty:
            pass
    return seen


def reported(state: PeerState) -> Callable[[list[SyncEvent]], bool]:
    return lambda events: any(isinstance(e, StateChanged) and e.state is state for e in events)


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


# ---------------------------------------------------------------------- syncing through a relay


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[LocalRelay]:
    with local_relay(tmp_path / "relay", store="todos") as r:
        yield r


@pytest.fixture
def devices(tmp_path: Path, relay: LocalRelay) -> Iterator[list[tuple[TodoModel, SyncThread]]]:
    """Two devices, each a model on its own file plus a running sync thread."""
    out = []
    for name in ("laptop", "phone"):
        model = TodoModel.open(tmp_path / f"{name}.db")
        sync = SyncThread(model.path or "", relay.url, store=relay.store, token=relay.token)
        sync.start()
        out.append((model, sync))
    yield out
    for model, sync in out:
        sync.stop()
        assert not sync.running
        model.close()


@pytest.mark.e2e
def test_two_devices_converge_live_and_the_ui_hears_about_each_merge(
    devices: list[tuple[TodoModel, SyncThread]],
) -> None:
    (laptop, s_laptop), (phone, s_phone) = devices
    wait_for(s_phone, reported(PeerState.SYNCED), "phone synced")

    milk = laptop.add("buy milk")
    laptop.add("call mum")
    s_laptop.notify()
    events = wait_for(s_phone, lambda _: len(phone.list()) == 2, "phone receiving two todos")
    assert any(isinstance(e, DataChanged) and e.wins > 0 for e in events)
    assert titles(phone) == [("buy milk", False), ("call mum", False)]

    # Both edit the same todo at once (different columns) and the phone deletes the other one.
    laptop.rename(milk, "buy oat milk")
    s_laptop.notify()
    phone.set_done(milk, True)
    phone.delete(phone.list()[1].id)
    s_phone.notify()
    expected = [("buy oat milk", True)]
    wait_for(s_phone, lambda _: titles(phone) == expected, "phone merging the rename")
    wait_for(s_laptop, lambda _: titles(laptop) == expected, "laptop merging done + delete")


@pytest.mark.e2e
def test_sync_thread_reports_states_and_wakes_the_ui_for_every_event(
    tmp_path: Path, relay: LocalRelay
) -> None:
    model = TodoModel.open(tmp_path / "a.db")
    model.add("seed")
    wakeups = threading.Semaphore(0)
    sync = SyncThread(
        model.path or "", relay.url, store=relay.store, token=relay.token, wakeup=wakeups.release
    )
    sync.start()
    try:
        events = wait_for(sync, reported(PeerState.SYNCED), "synced")
        sync.wait_synced(TIMEOUT)
    finally:
        sync.stop()
    states = [e.state for e in events if isinstance(e, StateChanged)]
    assert states[0] is PeerState.CONNECTING
    assert PeerState.SYNCED in states
    for _ in events:  # one wake-up per queued event, called from the sync thread
        assert wakeups.acquire(timeout=TIMEOUT)
    model.close()


@pytest.mark.e2e
def test_a_refused_token_stops_sync_with_a_readable_status(
    tmp_path: Path, relay: LocalRelay
) -> None:
    model = TodoModel.open(tmp_path / "a.db")
    sync = SyncThread(model.path or "", relay.url, store="someone-else", token=relay.token)
    sync.start()
    try:
        events = wait_for(sync, reported(PeerState.ERROR), "refusal")
    finally:
        sync.stop()
    model.close()
    final = [e for e in events if isinstance(e, StateChanged)][-1]
    assert final.state is PeerState.ERROR
    status = describe(final.state, final.detail)
    assert status.startswith("sync stopped: ")
    assert "someone-else" in status or "token" in status.lower(), status


def test_sync_thread_start_raises_on_a_bad_relay_url(tmp_path: Path) -> None:
    model = TodoModel.open(tmp_path / "a.db")
    sync = SyncThread(model.path or "", "http://127.0.0.1:1", store="todos", token=None)
    with pytest.raises(crsync.CrsyncError, match="ws:// or wss://"):
        sync.start()
    assert not sync.running
    model.close()


def test_describe_explains_offline_and_error_states() -> None:
    assert describe(PeerState.SYNCED) == "synced"
    assert describe(PeerState.OFFLINE, "OSError: refused") == "offline, retrying: OSError: refused"
    assert describe(PeerState.SYNCING, "ignored") == "syncing…"
