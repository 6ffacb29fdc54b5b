"""A small desktop todo app (Tkinter) whose list syncs live through a crsync relay.

Run one window per device::

    python -m examples.todo_sync.app --db laptop.db --url ws://127.0.0.1:8765 --store todos \\
        --token "$TOKEN"            # or set CRSYNC_TOKEN; without --url the list stays local

or the demo, a relay on loopback and two windows (two processes) on two database files::

    python -m examples.todo_sync.app --demo        # or: python examples/todo_sync/app.py --demo

Type a todo and press Enter; click the box (or press Space) to mark it done; double-click to
rename; Delete removes it. Each window writes plain SQL to its own file; the other window
shows the change as soon as its sync thread has merged it (no polling of the database).

Syncing runs in a :class:`crsync.SyncThread`; its callbacks reach the Tk thread through
``call_soon=TkCallSoon(root)``: a queue of functions plus one byte written to a pipe that Tk
watches. A second window on the same file waits in STANDBY and takes over when the first
closes.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import tkinter
from collections.abc import Callable
from pathlib import Path
from tkinter import simpledialog, ttk
from typing import Any

if __package__ in (None, ""):  # run as a script: make ``examples.todo_sync`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import crsync
from crsync.live import RowChange
from crsync.peer import PeerState
from crsync.sync_thread import SyncStatus
from examples.todo_sync.model import TABLE, Todo, TodoModel
from examples.todo_sync.status import colour, describe

CHECKED, UNCHECKED = "☑", "☐"
POLL_MS = 100  # only where Tk cannot watch a pipe (Windows)


class Wakeup:
    """Wake the Tk main loop from any thread, without polling.

    Calling the object writes one byte to a pipe that Tk watches (``createfilehandler``); Tk
    then runs ``callback`` on its own thread. Where Tk cannot watch file descriptors
    (Windows), it falls back to running ``callback`` every ``POLL_MS`` milliseconds.
    """

    def __init__(self, root: tkinter.Tk, callback: Callable[[], None]) -> None:
        self._root = root
        self._callback = callback
        self._fds: tuple[int, int] | None = None
        self._after: str | None = None
        self._signals = False
        try:
            r, w = os.pipe()
        except OSError:
            self._poll()
            return
        try:
            os.set_blocking(r, False)
            os.set_blocking(w, False)
            root.tk.createfilehandler(r, tkinter.READABLE, self._readable)
        except (AttributeError, OSError, RuntimeError, tkinter.TclError):
            os.close(r)
            os.close(w)
            self._poll()
            return
        self._fds = (r, w)

    def __call__(self) -> None:
        fds = self._fds
        if fds is not None:
            try:
                os.write(fds[1], b"!")
            except OSError:  # the pipe is full: a wake-up is already pending
                pass

    def _readable(self, fd: int, _mask: int) -> None:
        try:
            os.read(fd, 4096)
        except OSError:
            pass
        self._callback()

    def _poll(self) -> None:
        self._callback()
        self._after = self._root.after(POLL_MS, self._poll)

    def forward_signals(self) -> None:
        """Make signals wake Tk too, so their Python handlers run promptly (main thread)."""
        if self._fds is not None:
            signal.set_wakeup_fd(self._fds[1])
            self._signals = True

    def close(self) -> None:
        """Stop watching. Call only once no other thread can call the object any more."""
        if self._signals:
            signal.set_wakeup_fd(-1)
            self._signals = False
        if self._after is not None:
            self._root.after_cancel(self._after)
            self._after = None
        if self._fds is not None:
            r, w = self._fds
            self._fds = None
            self._root.tk.deletefilehandler(r)
            os.close(r)
            os.close(w)


class TkCallSoon:
    """``SyncThread(call_soon=...)`` for Tk: run functions on the Tk thread, in order.

    Called from the sync thread: queues the function and wakes Tk (:class:`Wakeup`), which
    then runs everything queued. Never blocks (Tk's own ``after`` called from another thread
    waits for the Tk thread, which deadlocks while that thread waits for the sync thread).
    """

    def __init__(self, root: tkinter.Tk) -> None:
        self._pending: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self.wakeup = Wakeup(root, self.run_pending)
        self.closed = False

    def __call__(self, fn: Callable[[], None]) -> None:
        self._pending.put(fn)
        self.wakeup()

    def run_pending(self) -> None:
        while True:
            try:
                fn = self._pending.get_nowait()
            except queue.Empty:
                return
            if not self.closed:
                fn()


class TodoApp:
    """The window: an entry, the list, a few buttons and a status line."""

    def __init__(
        self,
        root: tkinter.Tk,
        model: TodoModel,
        sync: crsync.SyncThread | None = None,
        *,
        name: str,
        test_hook: Path | None = None,
    ) -> None:
        self.root = root
        self.model = model
        self.sync = sync
        self.name = name
        self.test_hook = test_hook
        self.state = PeerState.STOPPED
        self.status = "local only (no relay)"
        self._hook_pending = False
        self._closed = False
        self._build()
        self.call_soon = TkCallSoon(root)
        if sync is not None:
            sync.call_soon = self.call_soon  # before start(): callbacks run on the Tk thread
            sync.on_state(self.on_status)
            sync.on_change(self.on_rows_changed, tables=[TABLE])
            self.on_status(sync.status)
        self.refresh()
        self._show_status()
        root.protocol("WM_DELETE_WINDOW", self.close)

    # ------------------------------------------------------------------ layout

    def _build(self) -> None:
        root = self.root
        root.title(f"crsync todos — {self.name}")
        root.minsize(360, 320)
        style = ttk.Style(root)
        if "clam" in style.theme_names():
            style.theme_use("clam")
        style.configure("TButton", width=0, padding=(10, 3))
        style.configure("Treeview", rowheight=28, font=("TkDefaultFont", 11))
        style.configure("Header.TLabel", font=("TkDefaultFont", 15, "bold"))
        style.configure("Quiet.TLabel", foreground="#777777")

        outer = ttk.Frame(root, padding=12)
        outer.pack(fill="both", expand=True)
        head = ttk.Frame(outer)
        head.pack(side="top", fill="x")
        ttk.Label(head, text=self.name, style="Header.TLabel").pack(side="left")
        file_name = Path(self.model.path or "").name
        ttk.Label(head, text=file_name, style="Quiet.TLabel").pack(side="right")

        add = ttk.Frame(outer)
        add.pack(side="top", fill="x", pady=(10, 8))
        self.entry = ttk.Entry(add, font=("TkDefaultFont", 11))
        self.entry.pack(side="left", fill="x", expand=True, ipady=2)
        self.entry.bind("<Return>", self.on_add)
        ttk.Button(add, text="Add", command=self.on_add).pack(side="left", padx=(6, 0))

        # Packed before the list so that a small window shrinks the list, not the status.
        status = ttk.Frame(outer)
        status.pack(side="bottom", fill="x", pady=(10, 0))
        self.dot = tkinter.Label(status, text="●", font=("TkDefaultFont", 12))
        self.dot.pack(side="left")
        self.status_label = ttk.Label(status, text="")
        self.status_label.pack(side="left", padx=(4, 0))
        self.count_label = ttk.Label(status, text="", style="Quiet.TLabel")
        self.count_label.pack(side="right")

        buttons = ttk.Frame(outer)
        buttons.pack(side="bottom", fill="x", pady=(8, 0))
        ttk.Button(buttons, text="Done", command=self.on_toggle).pack(side="left")
        ttk.Button(buttons, text="Rename…", command=self.on_rename).pack(side="left", padx=6)
        ttk.Button(buttons, text="Delete", command=self.on_delete).pack(side="left")
        ttk.Button(buttons, text="Clear done", command=self.on_clear_done).pack(side="right")

        body = ttk.Frame(outer)
        body.pack(side="top", fill="both", expand=True)
        self.tree = ttk.Treeview(
            body, columns=("done", "title"), show="headings", selectmode="browse", height=6
        )
        self.tree.heading("done", text="Done")
        self.tree.heading("title", text="Todo", anchor="w")
        self.tree.column("done", width=56, stretch=False, anchor="center")
        self.tree.column("title", width=260, stretch=True, anchor="w")
        self.tree.tag_configure("done", foreground="#8a8a8a")
        scroll = ttk.Scrollbar(body, orient="vertical", command=self.tree.yview)
        self.tree.configure(yscrollcommand=scroll.set)
        self.tree.pack(side="left", fill="both", expand=True)
        scroll.pack(side="left", fill="y")
        self.tree.bind("<Button-1>", self._on_click)
        self.tree.bind("<Double-Button-1>", self._on_double_click)
        self.tree.bind("<space>", lambda _e: self.on_toggle())
        self.tree.bind("<Delete>", lambda _e: self.on_delete())

        self.entry.focus_set()
        root.bind("<Configure>", lambda _e: self._schedule_hook())

    # ------------------------------------------------------------------ showing data

    def refresh(self) -> None:
        """Re-read the list from the database and show it (keeps the selection)."""
        todos = self.model.list()
        selected = set(self.tree.selection())
        top = self.tree.yview()[0]
        self.tree.delete(*self.tree.get_children())
        for t in todos:
            self.tree.insert(
                "",
                "end",
                iid=t.id,
                values=(CHECKED if t.done else UNCHECKED, t.title),
                tags=("done",) if t.done else (),
            )
        keep = [t.id for t in todos if t.id in selected]
        if keep:
            self.tree.selection_set(keep)
        self.tree.yview_moveto(top)
        done = sum(t.done for t in todos)
        self.count_label.configure(text=f"{len(todos)} todos, {done} done")
        self._schedule_hook()

    def _show_status(self, dot: str = "#8a8a8a") -> None:
        self.dot.configure(foreground=dot)
        self.status_label.configure(text=self.status)
        self._schedule_hook()

    def on_status(self, status: SyncStatus) -> None:
        """The sync thread's state changed (runs on the Tk thread, through call_soon)."""
        if self._closed:
            return
        self.state, self.status = status.state, describe(status)
        self._show_status(colour(status))

    def on_rows_changed(self, changes: list[RowChange]) -> None:
        """Todos changed: merged from another device, or written to this file by any
        connection or process (runs on the Tk thread)."""
        if not self._closed and changes:
            self.refresh()

    # ------------------------------------------------------------------ editing

    def _selected(self) -> str | None:
        sel = self.tree.selection()
        return sel[0] if sel else None

    def _after_write(self) -> None:
        self.refresh()
        if self.sync is not None:
            self.sync.notify()  # push now (the peer would also notice the file change)

    def _edit(self, action: Callable[[], Any]) -> None:
        try:
            action()
        except KeyError:  # deleted on another device a moment ago
            self.root.bell()
            self.refresh()
            return
        except ValueError:
            self.root.bell()
            return
        self._after_write()

    def on_add(self, _event: object = None) -> None:
        title = self.entry.get()
        try:
            self.model.add(title)
        except ValueError:
            self.root.bell()
            return
        self.entry.delete(0, "end")
        self._after_write()

    def on_toggle(self, todo_id: str | None = None) -> None:
        todo_id = todo_id or self._selected()
        if todo_id is not None:
            self._edit(lambda: self.model.toggle(todo_id))

    def on_rename(self, todo_id: str | None = None) -> None:
        todo_id = todo_id or self._selected()
        if todo_id is None:
            return
        try:
            current: Todo = self.model.get(todo_id)
        except KeyError:
            self.refresh()
            return
        title = simpledialog.askstring(
            "Rename", "New title:", initialvalue=current.title, parent=self.root
        )
        if title is not None:
            self._edit(lambda: self.model.rename(todo_id, title))

    def on_delete(self) -> None:
        todo_id = self._selected()
        if todo_id is not None:
            self._edit(lambda: self.model.delete(todo_id))

    def on_clear_done(self) -> None:
        self._edit(self.model.clear_done)

    def _on_click(self, event: tkinter.Event[Any]) -> str | None:
        row = self.tree.identify_row(event.y)
        if row and self.tree.identify_column(event.x) == "#1":
            self.tree.selection_set(row)
            self.on_toggle(row)
            return "break"
        return None

    def _on_double_click(self, event: tkinter.Event[Any]) -> None:
        row = self.tree.identify_row(event.y)
        if row and self.tree.identify_column(event.x) == "#2":
            self.on_rename(row)

    # ------------------------------------------------------------------ test hook

    def _schedule_hook(self) -> None:
        if self.test_hook is not None and not self._hook_pending and not self._closed:
            self._hook_pending = True
            self.root.after_idle(self._write_hook)

    def _write_hook(self) -> None:
        """Write what the window shows to ``--test-hook`` FILE (atomically), for the GUI test."""
        self._hook_pending = False
        if self.test_hook is None or self._closed:
            return
        self.root.update_idletasks()  # so that the coordinates below are current
        tree = self.tree
        rows = []
        for iid in tree.get_children():
            values: Any = tree.item(iid, "values")
            done, title = values[0], values[1]
            box = tree.bbox(iid, "done")
            at = None
            if box:
                x, y, w, h = box
                at = [tree.winfo_rootx() + x + w // 2, tree.winfo_rooty() + y + h // 2]
            rows.append({"id": iid, "title": title, "done": done == CHECKED, "click_done": at})
        e = self.entry
        info = {
            "name": self.name,
            "pid": os.getpid(),
            "mapped": bool(self.root.winfo_ismapped()),
            "state": self.state.value,
            "status": self.status,
            "todos": rows,
            "entry_at": [e.winfo_rootx() + e.winfo_width() // 2, e.winfo_rooty() + 8],
            "entry_text": e.get(),
        }
        tmp = self.test_hook.with_name(self.test_hook.name + ".tmp")
        tmp.write_text(json.dumps(info))
        os.replace(tmp, self.test_hook)

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.call_soon.closed = True
        if self.sync is None or self.sync.stop():
            self.call_soon.wakeup.close()  # no other thread can call it any more
        self.model.close()
        self.root.destroy()


# ---------------------------------------------------------------------- command line


def run_window(args: argparse.Namespace) -> int:
    if args.url and not args.url.startswith(("ws://", "wss://")):
        print(f"error: --url must start with ws:// or wss://, not {args.url!r}", file=sys.stderr)
        return 2
    try:
        model = TodoModel.open(args.db)
    except crsync.CrsyncError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sync = None
    if args.url:
        sync = crsync.SyncThread(
            args.db, args.url, store=args.store, token=args.token or None, backoff_max=5.0
        )
    root = tkinter.Tk(className="crsync-todos")
    if args.geometry:
        root.geometry(args.geometry)
    app = TodoApp(root, model, sync, name=args.name or Path(args.db).stem, test_hook=args.test_hook)
    if sync is not None:
        sync.start()
    # Close cleanly on SIGTERM and Ctrl-C. Tk runs Python signal handlers only between
    # events, so a signal also writes to the wake-up pipe (where Tk can watch one).
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: root.after_idle(app.close))
    app.call_soon.wakeup.forward_signals()
    root.mainloop()
    return 0


SEED = ("buy milk", "call mum", "water the plants")


def run_demo(args: argparse.Namespace) -> int:
    """A relay on loopback and two windows (two processes) on two database files."""
    from examples.todo_sync.relay import local_relay

    workdir = args.keep or Path(tempfile.mkdtemp(prefix="crsync-todos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    laptop_db = workdir / "laptop.db"
    if not laptop_db.exists():
        model = TodoModel.open(laptop_db)
        for title in SEED:
            model.add(title)
        model.close()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with local_relay(workdir, store=args.store) as relay:
            print(f"relay at {relay.url}, store {relay.store!r}, files in {workdir}", flush=True)
            env = dict(os.environ, CRSYNC_TOKEN=relay.token)
            for name, x in (("laptop", 40), ("phone", 500)):
                cmd = [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--db",
                    str(workdir / f"{name}.db"),
                    "--name",
                    name,
                    "--url",
                    relay.url,
                    "--store",
                    relay.store,
                    "--geometry",
                    f"420x420+{x}+60",
                ]
                procs.append(subprocess.Popen(cmd, env=env))
            for proc in procs:
                proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A todo list that syncs through crsync.")
    parser.add_argument("--db", type=Path, help="the database file of this device")
    parser.add_argument("--url", help="relay URL, ws://host:port (omit to stay local)")
    parser.add_argument("--store", default="todos", help="store id on the relay")
    parser.add_argument(
        "--token",
        default=os.environ.get("CRSYNC_TOKEN"),
        help="access token for the store (default: $CRSYNC_TOKEN)",
    )
    parser.add_argument("--name", help="device name shown in the window (default: file name)")
    parser.add_argument("--geometry", help="Tk window geometry, e.g. 420x420+40+60")
    parser.add_argument("--test-hook", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--demo", action="store_true", help="relay on loopback + two windows")
    parser.add_argument("--keep", type=Path, help="with --demo: keep the files in this directory")
    args = parser.parse_args(argv)
    if args.demo:
        return run_demo(args)
    if args.db is None:
        parser.error("--db is required (or use --demo)")
    return run_window(args)


if __name__ == "__main__":
    sys.exit(main())
