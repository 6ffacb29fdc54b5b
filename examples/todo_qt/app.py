"""A small Qt (PySide6) todo window whose list syncs live through a crsync relay.

One window per device::

    python -m examples.todo_qt.app --db laptop.db --url ws://127.0.0.1:8765 --store todos \\
        --token "$TOKEN"            # or set CRSYNC_TOKEN; without --url the list stays local

or the demo, a relay on loopback and two windows (two devices, two database files) in one
process::

    python -m examples.todo_qt.app --demo

The list is the same ``TodoModel`` as the Tk example (``examples.todo_sync.model``). Syncing
runs in a :class:`crsync.SyncThread`; its callbacks (state changes, changed rows) come from the
sync thread, so they are handed to the GUI thread by :class:`GuiCallSoon`: a signal emitted
from any thread and connected with ``Qt.QueuedConnection`` to a slot of an object living in
the GUI thread. Nothing polls.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make ``examples`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from PySide6.QtCore import QObject, QSocketNotifier, Qt, Signal, Slot
from PySide6.QtGui import QCloseEvent, QFont
from PySide6.QtWidgets import (
    QApplication,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

import crsync
from crsync.live import RowChange
from crsync.peer import PeerState
from crsync.sync_thread import SyncStatus
from examples.todo_sync.model import TABLE, TodoModel
from examples.todo_sync.relay import LocalRelay, local_relay
from examples.todo_sync.status import colour, describe


class GuiCallSoon(QObject):
    """``SyncThread(call_soon=...)`` for Qt: run functions on the GUI thread, in order.

    ``emit`` is safe from any thread; the queued connection delivers each function to
    :meth:`_run` in the thread this object lives in (make it on the GUI thread).
    """

    call = Signal(object)

    def __init__(self) -> None:
        super().__init__()
        self.call.connect(self._run, Qt.ConnectionType.QueuedConnection)

    def __call__(self, fn: Callable[[], None]) -> None:
        self.call.emit(fn)

    @Slot(object)
    def _run(self, fn: Callable[[], None]) -> None:
        fn()


class TodoWindow(QWidget):
    """An entry, the live list (tick to mark done), Delete, and a status line."""

    def __init__(self, model: TodoModel, sync: crsync.SyncThread | None, *, name: str) -> None:
        super().__init__()
        self.model = model
        self.sync = sync
        self.name = name
        self.status = SyncStatus(PeerState.STOPPED, "local only (no relay)")
        self._filling = False
        self._closed = False
        self.setWindowTitle(f"crsync todos — {name}")
        self.resize(380, 330)

        layout = QVBoxLayout(self)
        head = QHBoxLayout()
        title = QLabel(name)
        font = QFont(title.font())
        font.setPointSize(15)
        font.setBold(True)
        title.setFont(font)
        head.addWidget(title)
        head.addStretch()
        head.addWidget(QLabel(f"<span style='color:#777'>{Path(model.path or '').name}</span>"))
        layout.addLayout(head)

        add = QHBoxLayout()
        self.entry = QLineEdit()
        self.entry.setPlaceholderText("What needs doing?")
        self.entry.returnPressed.connect(self.on_add)
        add_button = QPushButton("Add")
        add_button.clicked.connect(self.on_add)
        add.addWidget(self.entry)
        add.addWidget(add_button)
        layout.addLayout(add)

        self.list = QListWidget()
        self.list.itemChanged.connect(self.on_item_changed)
        layout.addWidget(self.list)

        buttons = QHBoxLayout()
        delete = QPushButton("Delete")
        delete.clicked.connect(self.on_delete)
        buttons.addWidget(delete)
        buttons.addStretch()
        self.count = QLabel()
        buttons.addWidget(self.count)
        layout.addLayout(buttons)

        self.status_label = QLabel()
        layout.addWidget(self.status_label)

        if sync is not None:
            sync.on_state(self.on_status)  # through the sync thread's call_soon
            sync.on_change(self.on_rows_changed, tables=[TABLE])
            self.on_status(sync.status)
        else:
            self._show_status()
        self.refresh()

    # ------------------------------------------------------------------ showing data

    def refresh(self) -> None:
        """Re-read the list from the database file."""
        self._filling = True  # setting check states is not the user ticking boxes
        try:
            current = self.list.currentItem()
            keep = current.data(Qt.ItemDataRole.UserRole) if current is not None else None
            self.list.clear()
            todos = self.model.list()
            for todo in todos:
                item = QListWidgetItem(todo.title)
                item.setData(Qt.ItemDataRole.UserRole, todo.id)
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                item.setCheckState(Qt.CheckState.Checked if todo.done else Qt.CheckState.Unchecked)
                if todo.done:
                    item.setForeground(Qt.GlobalColor.gray)
                self.list.addItem(item)
                if todo.id == keep:
                    self.list.setCurrentItem(item)
            done = sum(t.done for t in todos)
            self.count.setText(f"<span style='color:#777'>{len(todos)} todos, {done} done</span>")
        finally:
            self._filling = False

    def shown(self) -> list[tuple[str, bool]]:
        """What the list shows: (title, done) per row (for the tests)."""
        out = []
        for i in range(self.list.count()):
            item = self.list.item(i)
            out.append((item.text(), item.checkState() == Qt.CheckState.Checked))
        return out

    def _show_status(self) -> None:
        text = describe(self.status) if self.sync is not None else "local only (no relay)"
        dot = colour(self.status) if self.sync is not None else "#8a8a8a"
        self.status_label.setText(f"<span style='color:{dot}'>●</span> {text}")

    def on_status(self, status: SyncStatus) -> None:
        """The sync thread's state changed (GUI thread)."""
        if self._closed:  # a call queued before the window closed
            return
        self.status = status
        self._show_status()

    def on_rows_changed(self, _changes: list[RowChange]) -> None:
        """Todos changed: merged from another device or written to the file (GUI thread)."""
        if not self._closed:
            self.refresh()

    # ------------------------------------------------------------------ editing

    def _wrote(self) -> None:
        self.refresh()
        if self.sync is not None:
            self.sync.notify()  # push now (the peer would also notice the file change)

    def on_add(self) -> None:
        try:
            self.model.add(self.entry.text())
        except ValueError:
            QApplication.beep()
            return
        self.entry.clear()
        self._wrote()

    def on_item_changed(self, item: QListWidgetItem) -> None:
        if self._filling:
            return
        done = item.checkState() == Qt.CheckState.Checked
        try:
            self.model.set_done(item.data(Qt.ItemDataRole.UserRole), done)
        except KeyError:  # deleted on another device a moment ago
            pass
        self._wrote()

    def on_delete(self) -> None:
        item = self.list.currentItem()
        if item is None:
            return
        try:
            self.model.delete(item.data(Qt.ItemDataRole.UserRole))
        except KeyError:
            pass
        self._wrote()

    def closeEvent(self, event: QCloseEvent) -> None:
        if not self._closed:
            self._closed = True
            if self.sync is not None:
                self.sync.stop()
            self.model.close()
        event.accept()


def open_window(
    db: Path,
    url: str | None,
    *,
    store: str,
    token: str | None,
    name: str,
    call_soon: GuiCallSoon,
) -> TodoWindow:
    """A window on one database file, syncing it if ``url`` is given (started)."""
    model = TodoModel.open(db)
    sync = None
    if url:
        sync = crsync.SyncThread(
            db, url, store=store, token=token, call_soon=call_soon, backoff_max=5.0
        )
    window = TodoWindow(model, sync, name=name)
    if sync is not None:
        sync.start()
    return window


def open_device_windows(
    workdir: Path, relay: LocalRelay, call_soon: GuiCallSoon
) -> list[TodoWindow]:
    """The laptop's and the phone's windows, each on its own file in ``workdir``, syncing
    through ``relay``."""
    return [
        open_window(
            workdir / f"{name}.db",
            relay.url,
            store=relay.store,
            token=relay.token,
            name=name,
            call_soon=call_soon,
        )
        for name in ("laptop", "phone")
    ]


SEED = ("buy milk", "call mum", "water the plants")


_KEEP: list[object] = []


def quit_on_signals(app: QApplication) -> None:
    """Quit the Qt loop (closing the windows, so their sync threads stop) on Ctrl-C and SIGTERM.

    Python runs signal handlers only when the interpreter gets control; Qt's loop runs in C.
    The signal also writes to a socket that Qt watches, which runs a Python slot at once.
    """
    r, w = socket.socketpair()
    r.setblocking(False)
    w.setblocking(False)
    signal.set_wakeup_fd(w.fileno())
    notifier = QSocketNotifier(r.fileno(), QSocketNotifier.Type.Read, app)
    notifier.activated.connect(lambda *_: r.recv(64))
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: app.closeAllWindows())
    _KEEP.extend((r, w, notifier))  # alive as long as the process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A Qt todo list that syncs through crsync.")
    parser.add_argument("--db", type=Path, help="the database file of this device")
    parser.add_argument("--url", help="relay URL, ws://host:port (omit to stay local)")
    parser.add_argument("--store", default="todos", help="store id on the relay")
    parser.add_argument("--token", default=os.environ.get("CRSYNC_TOKEN"), help="access token")
    parser.add_argument("--name", help="device name shown in the window (default: file name)")
    parser.add_argument("--demo", action="store_true", help="relay on loopback + two windows")
    args = parser.parse_args(argv)
    if not args.demo and args.db is None:
        parser.error("--db is required (or use --demo)")

    app = QApplication(sys.argv[:1])
    quit_on_signals(app)
    call_soon = GuiCallSoon()
    if not args.demo:
        window = open_window(
            args.db,
            args.url,
            store=args.store,
            token=args.token or None,
            name=args.name or args.db.stem,
            call_soon=call_soon,
        )
        window.show()
        return app.exec()

    workdir = Path(tempfile.mkdtemp(prefix="crsync-qt-todos-"))
    try:
        seed = TodoModel.open(workdir / "laptop.db")
        for title in SEED:
            seed.add(title)
        seed.close()
        with local_relay(workdir / "relay", store=args.store) as relay:
            windows = open_device_windows(workdir, relay, call_soon)
            for i, window in enumerate(windows):
                window.move(40 + 420 * i, 60)
                window.show()
            code = app.exec()
            for window in windows:
                window.close()
            return code
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
