"""Python client for the reference cr-sqlite 0.16.0 peer (``crsqlite_peer.mjs`` under Node.js).

The peer runs the real cr-sqlite (npm ``@vlcn.io/crsqlite-wasm`` 0.16.0, wasm) in a long-lived
``node`` process and speaks JSON lines; this module starts it, encodes and decodes SQLite values
exactly (int64, reals incl. -0.0/inf, text, blobs, NULL), and bounds every wait with a timeout.

Install the Node side once with ``npm ci --prefix tests/interop``.

Usage::

    with CrSqlitePeerProcess() as peer:
        a = peer.open("a", site_id=bytes([1]) * 16)
        b = peer.open("b")
        for db in (a, b):
            db.exec("CREATE TABLE t(id TEXT PRIMARY KEY NOT NULL, a, b);"
                    "SELECT crsql_as_crr('t');")
        a.exec("INSERT INTO t VALUES ('r1', 1, 'x')")
        b.apply(a.changes())
        assert b.query("SELECT * FROM t") == [("r1", 1, "x")]

The client is blocking; from trio code call it from a sync helper or ``trio.to_thread``.
"""

from __future__ import annotations

import json
import math
import os
import queue
import shutil
import subprocess
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PEER_SCRIPT = HERE / "crsqlite_peer.mjs"
NODE_MODULES = HERE / "node_modules"

SqlValue = int | float | str | bytes | None
Change = tuple[str, bytes, str, SqlValue, int, int, bytes, int, int]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
DEFAULT_TIMEOUT = 30.0
STARTUP_TIMEOUT = 30.0

__all__ = [
    "Change",
    "CrDb",
    "CrSqliteError",
    "CrSqlitePeerProcess",
    "PeerProtocolError",
    "PeerTimeout",
    "SqlValue",
    "decode_value",
    "encode_value",
    "node_executable",
    "node_harness_available",
    "node_harness_missing_reason",
]


class PeerProtocolError(RuntimeError):
    """The peer process died, misbehaved, or replied with something unexpected."""


class PeerTimeout(PeerProtocolError):
    """No reply within the timeout; the peer process has been killed."""


class CrSqliteError(RuntimeError):
    """The peer reported an error for a command (an SQLite or cr-sqlite error, usually)."""


# ------------------------------------------------------------------------------------------------
# availability


def node_executable() -> str | None:
    """Path of the ``node`` binary (``$CRSYNC_NODE`` overrides), or None."""
    override = os.environ.get("CRSYNC_NODE")
    if override:
        return override if Path(override).exists() else shutil.which(override)
    return shutil.which("node")


def node_harness_missing_reason() -> str | None:
    """Why the harness cannot run here, or None if it can."""
    if node_executable() is None:
        return "node (Node.js >= 18) is not on PATH"
    for pkg in ("@vlcn.io/crsqlite-wasm", "@vlcn.io/wa-sqlite"):
        if not (NODE_MODULES / pkg / "package.json").is_file():
            return f"{pkg} is not installed in {NODE_MODULES}; run `npm ci --prefix tests/interop`"
    return None


def node_harness_available() -> bool:
    """True when node is present and tests/interop/node_modules is installed."""
    return node_harness_missing_reason() is None


# ------------------------------------------------------------------------------------------------
# value codec


def encode_value(v: SqlValue) -> Any:
    """Python value -> typed JSON value understood by the peer."""
    if v is None:
        return None
    if isinstance(v, bool):
        v = int(v)
    if isinstance(v, int):
        if not INT64_MIN <= v <= INT64_MAX:
            raise OverflowError(f"integer out of int64 range: {v}")
        return {"i": str(v)}
    if isinstance(v, float):
        if math.isnan(v):
            return {"f": "nan"}
        if math.isinf(v):
            return {"f": "inf" if v > 0 else "-inf"}
        if v == 0.0 and math.copysign(1.0, v) < 0:
            return {"f": "-0"}
        return {"f": v}
    if isinstance(v, str):
        return {"t": v}
    if isinstance(v, bytes | bytearray | memoryview):
        return {"b": bytes(v).hex()}
    raise TypeError(f"cannot send {type(v).__name__} to SQLite")


_SPECIAL_REALS = {"inf": math.inf, "-inf": -math.inf, "-0": -0.0, "nan": math.nan}


def decode_value(v: Any) -> SqlValue:
    """Typed JSON value from the peer -> Python int/float/str/bytes/None."""
    if v is None:
        return None
    if isinstance(v, dict) and len(v) == 1:
        ((tag, x),) = v.items()
        if tag == "i":
            return int(x)
        if tag == "f":
            if isinstance(x, str):
                return _SPECIAL_REALS[x]
            return float(x)
        if tag == "t":
            return str(x)
        if tag == "b":
            return bytes.fromhex(x)
        if tag == "tx":  # TEXT that is not valid UTF-8
            return bytes.fromhex(x).decode("utf-8", "surrogateescape")
    raise PeerProtocolError(f"bad value from peer: {v!r}")


def _decode_row(row: Sequence[Any]) -> tuple[SqlValue, ...]:
    return tuple(decode_value(x) for x in row)


def _as_change(row: Sequence[Any]) -> Change:
    t, pk, cid, val, cv, dbv, site, cl, seq = _decode_row(row)
    assert isinstance(t, str) and isinstance(pk, bytes) and isinstance(cid, str)
    assert isinstance(cv, int) and isinstance(dbv, int)
    assert isinstance(site, bytes) and isinstance(cl, int) and isinstance(seq, int)
    return (t, pk, cid, val, cv, dbv, site, cl, seq)


# ------------------------------------------------------------------------------------------------
# process


class CrSqlitePeerProcess:
    """A running ``node crsqlite_peer.mjs``; use as a context manager.

    Every request waits at most ``timeout`` seconds for its reply (override per call where a
    method takes ``timeout``); on a timeout the process is killed and :class:`PeerTimeout`
    raised. Not thread-safe: use one process per thread.
    """

    def __init__(
        self,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        startup_timeout: float = STARTUP_TIMEOUT,
        node: str | None = None,
    ) -> None:
        self.timeout = timeout
        self.startup_timeout = startup_timeout
        self._node = node
        self._proc: subprocess.Popen[bytes] | None = None
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._stderr: list[bytes] = []
        self._next_id = 0
        self.sqlite_version: str | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> CrSqlitePeerProcess:
        if self._proc is not None:
            raise PeerProtocolError("peer already started")
        reason = node_harness_missing_reason() if self._node is None else None
        if reason:
            raise PeerProtocolError(reason)
        node = self._node or node_executable()
        assert node is not None
        self._proc = subprocess.Popen(
            [node, str(PEER_SCRIPT)],
            cwd=str(HERE),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        threading.Thread(target=self._pump_stdout, daemon=True, name="crsqlite-peer-out").start()
        threading.Thread(target=self._pump_stderr, daemon=True, name="crsqlite-peer-err").start()
        try:
            ready = self._read_reply(self.startup_timeout)
            if ready.get("id") != "ready" or not ready.get("ok"):
                raise PeerProtocolError(f"unexpected first line from peer: {ready!r}")
            self.sqlite_version = ready["result"]["sqlite"]
        except BaseException:
            self.kill()
            raise
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Ask the peer to quit (closing its databases) and wait for it; kill if it lingers."""
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                try:
                    self._request({"cmd": "quit"}, timeout)
                except (PeerProtocolError, OSError):
                    pass
                try:
                    assert proc.stdin is not None
                    proc.stdin.close()
                except OSError:
                    pass
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout)
        finally:
            self._close_pipes()
            self._proc = None

    def kill(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        try:
            proc.wait(10)
        finally:
            self._close_pipes()
            self._proc = None

    def __enter__(self) -> CrSqlitePeerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stderr_text(self) -> str:
        """What the peer wrote to stderr so far (diagnostics)."""
        return b"".join(self._stderr).decode("utf-8", "replace")

    # -- databases ------------------------------------------------------------------------------

    def open(self, name: str, *, site_id: bytes | None = None) -> CrDb:
        """Open (creating if needed) database ``name``, held in the peer's memory.

        ``site_id`` (16 bytes) relabels a new database's site id (cr-sqlite picks a random one
        otherwise). A closed database keeps its contents until :meth:`drop` or the process ends.
        """
        req: dict[str, Any] = {"cmd": "open", "db": name}
        if site_id is not None:
            if len(site_id) != 16:
                raise ValueError("site_id must be 16 bytes")
            req["site_id"] = bytes(site_id).hex()
        self.call(req)
        return CrDb(self, name)

    def drop(self, name: str) -> None:
        """Close database ``name`` if open and delete its contents."""
        self.call({"cmd": "drop", "db": name})

    def ping(self) -> str:
        return str(self.call({"cmd": "ping"})["sqlite"])

    # -- protocol -------------------------------------------------------------------------------

    def call(self, req: dict[str, Any], timeout: float | None = None) -> Any:
        """Send one command; return its ``result`` or raise :class:`CrSqliteError`."""
        reply = self._request(req, self.timeout if timeout is None else timeout)
        if reply.get("ok") is True:
            return reply.get("result")
        raise CrSqliteError(str(reply.get("error")))

    def _request(self, req: dict[str, Any], timeout: float) -> dict[str, Any]:
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise PeerProtocolError("peer is not running")
        self._next_id += 1
        rid = self._next_id
        line = json.dumps({**req, "id": rid}, ensure_ascii=True, allow_nan=False) + "\n"
        try:
            proc.stdin.write(line.encode("ascii"))
            proc.stdin.flush()
        except OSError as e:
            raise PeerProtocolError(f"peer stdin closed: {e}; stderr: {self.stderr_text}") from e
        reply = self._read_reply(timeout)
        if reply.get("id") != rid:
            raise PeerProtocolError(f"reply out of order: wanted id {rid}, got {reply!r}")
        return reply

    def _read_reply(self, timeout: float) -> dict[str, Any]:
        try:
            raw = self._lines.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise PeerTimeout(
                f"no reply from crsqlite peer within {timeout}s; stderr: {self.stderr_text}"
            ) from None
        if raw is None:
            self._lines.put(None)  # keep reporting EOF
            code = self._proc.poll() if self._proc else None
            raise PeerProtocolError(
                f"crsqlite peer exited (code {code}); stderr: {self.stderr_text}"
            )
        try:
            reply = json.loads(raw)
        except ValueError as e:
            raise PeerProtocolError(f"bad line from peer: {raw[:200]!r}") from e
        if not isinstance(reply, dict):
            raise PeerProtocolError(f"bad reply from peer: {reply!r}")
        return reply

    def _pump_stdout(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        try:
            for raw in proc.stdout:
                self._lines.put(raw)
        except (OSError, ValueError):
            pass
        finally:
            self._lines.put(None)

    def _pump_stderr(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stderr is not None
        try:
            for raw in proc.stderr:
                self._stderr.append(raw)
        except (OSError, ValueError):
            pass

    def _close_pipes(self) -> None:
        proc = self._proc
        if proc is None:
            return
        for f in (proc.stdin, proc.stdout, proc.stderr):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass


class CrDb:
    """One database opened in a :class:`CrSqlitePeerProcess`."""

    def __init__(self, peer: CrSqlitePeerProcess, name: str) -> None:
        self.peer = peer
        self.name = name

    def __repr__(self) -> str:
        return f"CrDb({self.name!r})"

    def _call(self, cmd: str, timeout: float | None = None, **kw: Any) -> Any:
        return self.peer.call({"cmd": cmd, "db": self.name, **kw}, timeout)

    def exec(self, sql: str, *, timeout: float | None = None) -> None:
        """Run one or more SQL statements; rows are discarded."""
        self._call("exec", timeout, sql=sql)

    def query(
        self, sql: str, params: Sequence[SqlValue] = (), *, timeout: float | None = None
    ) -> list[tuple[SqlValue, ...]]:
        """Run one statement with ``?`` parameters; return its rows as tuples."""
        rows = self._call("query", timeout, sql=sql, params=[encode_value(p) for p in params])
        return [_decode_row(r) for r in rows]

    def scalar(self, sql: str, params: Sequence[SqlValue] = ()) -> SqlValue:
        return self.query(sql, params)[0][0]

    def changes(self, since: int = 0, *, timeout: float | None = None) -> list[Change]:
        """``crsql_changes`` rows with ``db_version > since``, ordered by db_version, seq."""
        rows = self._call("changes", timeout, since=encode_value(since))
        return [_as_change(r) for r in rows]

    def apply(self, changes: Iterable[Sequence[SqlValue]], *, timeout: float | None = None) -> int:
        """Insert change rows (9 values each) into ``crsql_changes`` in one transaction.

        Returns ``crsql_rows_impacted()`` for that transaction (winning merges).
        """
        encoded = []
        for c in changes:
            if len(c) != 9:
                raise ValueError(f"a change has 9 values, got {len(c)}: {c!r}")
            encoded.append([encode_value(v) for v in c])
        result = decode_value(self._call("apply", timeout, changes=encoded))
        assert isinstance(result, int)
        return result

    @property
    def site_id(self) -> bytes:
        return bytes.fromhex(self._call("site_id"))

    @property
    def db_version(self) -> int:
        v = decode_value(self._call("db_version"))
        assert isinstance(v, int)
        return v

    def close(self) -> None:
        """Close the connection (cr-sqlite finalizes its statements); contents are kept."""
        self._call("close")

    def reopen(self) -> None:
        """Close and open the same database again (reloads cr-sqlite's per-connection state)."""
        self._call("close")
        self._call("open")
