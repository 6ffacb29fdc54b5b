"""The Qt todo window (examples/todo_qt), offscreen: two windows on two database files sync
through a real relay; the lists update from SyncThread callbacks delivered on the GUI thread.

Needs PySide6 (``pip install 'crsync[qt]'``; the ``test`` extra has it); skipped without it
unless ``CRSYNC_REQUIRE_GUI=1`` (then it fails). ``QT_QPA_PLATFORM=offscreen`` is set here, so
no display is needed. ``CRSYNC_UPDATE_SCREENSHOT=1`` writes the screenshot of the two synced
windows to docs/images/todo_qt.png (otherwise it goes to the test's tmp directory).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # plain ``pytest`` does not put the repository root on the path
    sys.path.insert(0, str(ROOT))
os.environ["QT_QPA_PLATFORM"] = "offscreen"  # before Qt starts: no display needed

try:
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QPainter, QPixmap
    from PySide6.QtTest import QTest
    from PySide6.QtWidgets import QApplication
except ImportError as exc:  # not installed, or a system library missing
    if os.environ.get("CRSYNC_REQUIRE_GUI"):
        raise RuntimeError(f"CRSYNC_REQUIRE_GUI is set but PySide6 cannot load: {exc}") from exc
    pytest.skip(
        f"the Qt example needs PySide6 (pip install 'crsync[qt]'): {exc}", allow_module_level=True
    )

from crsync.peer import PeerState  # noqa: E402
from crsync.sync_thread import SyncStatus  # noqa: E402
from examples.todo_qt.app import GuiCallSoon, TodoWindow, open_device_windows  # noqa: E402
from examples.todo_sync.model import TodoModel  # noqa: E402
from examples.todo_sync.relay import LocalRelay, local_relay  # noqa: E402

TIMEOUT = 30.0
SCREENSHOT = ROOT / "docs" / "images" / "todo_qt.png"

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def qapp() -> Any:
    return QApplication.instance() or QApplication([])


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[LocalRelay]:
    with local_relay(tmp_path / "relay", store="todos") as r:
        yield r


def wait(cond: Callable[[], bool], what: str) -> None:
    """Run the Qt event loop until ``cond()`` holds (checked every 20 ms); fail after
    TIMEOUT seconds."""
    deadline = time.monotonic() + TIMEOUT
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not shown within {TIMEOUT:.0f} s")
        QTest.qWait(20)


def synced(window: TodoWindow) -> bool:
    return window.status.state is PeerState.SYNCED


def test_two_qt_windows_sync_through_a_relay_and_update_on_the_gui_thread(
    qapp: Any, tmp_path: Path, relay: LocalRelay
) -> None:
    call_soon = GuiCallSoon()
    windows = open_device_windows(tmp_path, relay, call_soon)
    laptop, phone = windows
    seen_on: set[str] = set()
    for w in windows:
        assert w.sync is not None
        w.sync.on_state(lambda _s: seen_on.add(threading.current_thread().name))
        w.show()
    try:
        wait(lambda: synced(laptop) and synced(phone), "both windows synced")
        assert "synced" in phone.status_label.text()

        # Type into the laptop's entry; the phone's list follows.
        for title in ("buy milk", "call mum", "water the plants"):
            QTest.keyClicks(laptop.entry, title)
            QTest.keyClick(laptop.entry, Qt.Key.Key_Return)
        expected = [("buy milk", False), ("call mum", False), ("water the plants", False)]
        assert laptop.shown() == expected and laptop.entry.text() == ""
        wait(lambda: phone.shown() == expected, "the laptop's todos on the phone")

        # Tick "buy milk" on the phone; the laptop follows.
        phone.list.item(0).setCheckState(Qt.CheckState.Checked)
        expected[0] = ("buy milk", True)
        wait(lambda: laptop.shown() == expected, "buy milk done on the laptop")
        wait(lambda: synced(laptop) and synced(phone), "both synced again")
        assert "3 todos, 1 done" in laptop.count.text()

        # Callbacks ran on the GUI thread (the Qt signal marshalled them).
        assert seen_on == {threading.current_thread().name}

        shot = SCREENSHOT if os.environ.get("CRSYNC_UPDATE_SCREENSHOT") == "1" else None
        shot = shot or tmp_path / "todo_qt.png"
        grabs = [w.grab() for w in windows]
        gap = 12
        width = sum(g.width() for g in grabs) + gap * (len(grabs) + 1)
        height = max(g.height() for g in grabs) + 2 * gap
        canvas = QPixmap(width, height)
        canvas.fill(Qt.GlobalColor.white)
        painter = QPainter(canvas)
        x = gap
        for g in grabs:
            painter.drawPixmap(x, gap, g)
            x += g.width() + gap
        painter.end()
        shot.parent.mkdir(parents=True, exist_ok=True)
        assert canvas.save(str(shot), "PNG")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        for w in windows:
            w.close()
    for w in windows:
        assert w.sync is not None and not w.sync.running
        assert w.sync.status == SyncStatus(PeerState.STOPPED)
    for name in ("laptop", "phone"):
        model = TodoModel.open(tmp_path / f"{name}.db")
        assert [(t.title, t.done) for t in model.list()] == expected
        model.close()
