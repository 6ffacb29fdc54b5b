"""The todo app's real windows under Xvfb: typing in one window shows up in the other.

Needs ``Xvfb``, ``xdotool`` and ``import`` (Debian: ``apt-get install -y xvfb xdotool
imagemagick``) and Tk for Python (Debian: ``python3-tk``); skipped without them unless
``CRSYNC_REQUIRE_GUI=1`` (then it fails). Two app processes on two database files sync through
a real relay on loopback; X input comes from ``xdotool``; each app reports what its window shows
through ``--test-hook FILE``. ``CRSYNC_UPDATE_SCREENSHOT=1`` writes the screenshot of the two
synced windows to docs/images/todo_sync.png (otherwise it goes to the test's tmp directory).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # plain ``pytest`` does not put the repository root on the path
    sys.path.insert(0, str(ROOT))

from examples.todo_sync.model import TodoModel  # noqa: E402
from examples.todo_sync.relay import LocalRelay, local_relay  # noqa: E402

TIMEOUT = 30.0
SCREEN = (880, 420)
WINDOW = "420x400"
SCREENSHOT = ROOT / "docs" / "images" / "todo_sync.png"
TOOLS = {"Xvfb": "xvfb", "xdotool": "xdotool", "import": "imagemagick"}

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _missing() -> list[str]:
    missing = [f"{tool} (Debian: {pkg})" for tool, pkg in TOOLS.items() if not shutil.which(tool)]
    try:
        import _tkinter  # noqa: F401
    except ImportError:
        missing.append("Tk for Python (Debian: python3-tk)")
    return missing


@pytest.fixture(autouse=True)
def _needs_x_tools() -> None:
    missing = _missing()
    if not missing:
        return
    reason = "the GUI test needs " + ", ".join(missing)
    if os.environ.get("CRSYNC_REQUIRE_GUI"):
        pytest.fail(f"CRSYNC_REQUIRE_GUI is set but {reason}")
    pytest.skip(reason)


@pytest.fixture
def display() -> Iterator[str]:
    """A private Xvfb server on a free display number (Xvfb picks it: ``-displayfd``)."""
    r, w = os.pipe()
    proc = subprocess.Popen(
        [
            "Xvfb",
            "-displayfd",
            str(w),
            "-screen",
            "0",
            f"{SCREEN[0]}x{SCREEN[1]}x24",
            "-nolisten",
            "tcp",
            "-wr",  # white root window instead of the grey weave
        ],
        pass_fds=(w,),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    os.close(w)
    try:
        number = b""
        deadline = time.monotonic() + TIMEOUT
        while not number.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([r], [], [], max(remaining, 0))
            if not ready:
                raise AssertionError(f"Xvfb did not report a display within {TIMEOUT:.0f} s")
            chunk = os.read(r, 16)
            if not chunk:
                err = proc.stderr.read().decode() if proc.stderr else ""
                raise AssertionError(f"Xvfb exited before it was ready:\n{err}")
            number += chunk
        yield f":{int(number)}"
    finally:
        os.close(r)
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[LocalRelay]:
    with local_relay(tmp_path / "relay", store="todos") as r:
        yield r


class AppWindow:
    """One app process with its ``--test-hook`` file."""

    def __init__(
        self,
        tmp: Path,
        name: str,
        x: int,
        relay: LocalRelay,
        display: str,
        db: Path | None = None,
    ) -> None:
        self.name = name
        self.db = db or tmp / f"{name}.db"
        self.hook = tmp / f"{name}.hook.json"
        self.log = tmp / f"{name}.log"
        env = dict(os.environ, DISPLAY=display, CRSYNC_TOKEN=relay.token)
        cmd = [
            sys.executable,
            str(ROOT / "examples" / "todo_sync" / "app.py"),
            "--db",
            str(self.db),
            "--name",
            name,
            "--url",
            relay.url,
            "--store",
            relay.store,
            "--geometry",
            f"{WINDOW}+{x}+10",
            "--test-hook",
            str(self.hook),
        ]
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                cmd, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )

    def shown(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.hook.read_text())  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None

    def current(self) -> dict[str, Any]:
        info = self.shown()
        assert info is not None, f"{self.name} has not reported its window yet"
        return info

    def wait(self, cond: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        """Poll what the window shows until ``cond`` holds (another process: no event to wait
        on), failing after TIMEOUT seconds or as soon as the app dies."""
        deadline = time.monotonic() + TIMEOUT
        while True:
            info = self.shown()
            if info is not None and cond(info):
                return info
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.proc.returncode}):\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: {what} not shown within {TIMEOUT:.0f} s; last: {info}\n"
                    + self.output
                )
            time.sleep(0.05)

    @property
    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def close(self) -> int:
        """SIGTERM (the app closes its window and stops syncing); returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(TIMEOUT)
                raise AssertionError(f"{self.name} ignored SIGTERM:\n{self.output}") from None
        return self.proc.returncode


def xdotool(display: str, *args: object) -> None:
    subprocess.run(
        ["xdotool", *map(str, args)],
        env=dict(os.environ, DISPLAY=display),
        check=True,
        timeout=TIMEOUT,
    )


def todos(info: dict[str, Any]) -> list[tuple[str, bool]]:
    return [(t["title"], t["done"]) for t in info["todos"]]


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_a_todo_typed_in_one_window_appears_in_the_other_and_back(
    tmp_path: Path, display: str, relay: LocalRelay
) -> None:
    laptop = AppWindow(tmp_path, "laptop", 10, relay, display)
    phone = AppWindow(tmp_path, "phone", 450, relay, display)
    opened = [laptop, phone]
    try:
        for app in (laptop, phone):
            app.wait(lambda i: i["mapped"] and i["state"] == "synced", "the synced window")

        # Type into the laptop window with real X input: click the entry, type, press Enter.
        x, y = laptop.current()["entry_at"]
        xdotool(display, "mousemove", x, y, "click", "1")
        for title in ("buy milk", "call mum", "water the plants"):
            xdotool(display, "type", "--delay", "5", title)
            xdotool(display, "key", "Return")
        expected = [("buy milk", False), ("call mum", False), ("water the plants", False)]
        laptop.wait(lambda i: todos(i) == expected, "the typed todos")
        phone.wait(lambda i: todos(i) == expected, "the laptop's todos")

        # Tick "buy milk" in the phone window; the laptop window follows.
        at = phone.current()["todos"][0]["click_done"]
        xdotool(display, "mousemove", at[0], at[1], "click", "1")
        expected[0] = ("buy milk", True)
        for app in (phone, laptop):
            app.wait(lambda i: todos(i) == expected and i["state"] == "synced", "buy milk done")
        assert laptop.current()["entry_text"] == ""

        shot = SCREENSHOT if os.environ.get("CRSYNC_UPDATE_SCREENSHOT") == "1" else None
        shot = shot or tmp_path / "todo_sync.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        xdotool(display, "mousemove", SCREEN[0] - 1, SCREEN[1] - 1)  # no hover highlight
        subprocess.run(
            ["import", "-window", "root", str(shot)],
            env=dict(os.environ, DISPLAY=display),
            check=True,
            timeout=TIMEOUT,
        )
        assert png_size(shot) == SCREEN

        # A second window on the laptop's file waits in standby (the old bridge raised
        # KeyError here), then takes over when the first laptop window closes.
        second = AppWindow(tmp_path, "laptop-2", 10, relay, display, db=laptop.db)
        opened.append(second)
        shown = second.wait(lambda i: i["state"] == "standby", "standby")
        assert shown["status"].startswith("standby"), shown
        assert todos(shown) == expected  # it reads the file the first window syncs
        assert laptop.close() == 0
        second.wait(lambda i: i["state"] == "synced", "taking over")
        assert "Traceback" not in second.output, second.output
    finally:
        codes = {app.name: app.close() for app in opened}
    assert set(codes.values()) == {0}, "".join(app.output for app in opened)

    # The windows showed what the files hold.
    for app in (laptop, phone):
        model = TodoModel.open(app.db)
        assert [(t.title, t.done) for t in model.list()] == expected
        model.close()
