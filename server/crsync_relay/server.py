"""The relay process: websockets server, hub, health endpoint, graceful shutdown."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
import trio
from websockets.http11 import Request, Response
from websockets.trio.server import Server, ServerConnection, serve

from crsync import protocol as p
from crsync.errors import CrsyncError

from .datadir import DataDir
from .hub import Hub, HubLimits
from .metrics import MetricsServer, RelayMetrics
from .session import ConnectionLimits, RelaySettings, handle_connection
from .store_rules import DAY

if TYPE_CHECKING:
    from .pg_store import PgDatabase

log = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "::1", "localhost"}


DATABASE_POOL_SIZE = 16
"""PostgreSQL connections one node's pool holds at most (plus one LISTEN connection)."""

CLOCK_SKEW_ENV = "CRSYNC_RELAY_CLOCK_SKEW"
"""Seconds added to the wall clock of a relay process (its stores' ``last_seen`` and garbage
collection), for tests and drills that make months pass: never set it in production."""


def relay_clock() -> Callable[[], float]:
    """The wall clock of this relay process: ``time.time``, skewed by
    :data:`CLOCK_SKEW_ENV` seconds when that is set.

    Raises:
        CrsyncError: the variable is not a number of seconds.
    """
    raw = os.environ.get(CLOCK_SKEW_ENV)
    if not raw:
        return time.time
    try:
        skew = float(raw)
    except ValueError:
        raise CrsyncError(f"{CLOCK_SKEW_ENV}={raw!r} is not a number of seconds") from None
    if skew != skew or abs(skew) == float("inf"):
        raise CrsyncError(f"{CLOCK_SKEW_ENV}={raw!r} is not a number of seconds")
    log.warning("relay.clock_skew seconds=%s (for tests and drills only)", skew)

    def skewed() -> float:
        return time.time() + skew

    return skewed


def redact_url(url: str) -> str:
    """A database URL without its password (for logs)."""
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return "postgresql://?"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[-1]}"))


@attrs.define
class RelayConfig:
    """Everything ``crsync-relay serve`` needs."""

    data_dir: Path | None
    host: str = "127.0.0.1"
    port: int = 8765
    secret: bytes | None = None
    dev: bool = False
    max_frame: int = 64 * 1024 * 1024
    max_open_stores: int = 256
    idle_seconds: float = 60.0
    tls_cert: Path | None = None
    tls_key: Path | None = None
    batch_cells: int = 5000
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None  # None: no metrics/health server
    reactor: str | Callable[..., Any] | None = None  # module:object, file.py:object, or a callable
    reactor_stores: str | None = None  # comma-separated glob patterns (None: every store)
    reactor_max_attempts: int = 5  # deliveries of a failing batch, then of its first version
    reactor_backoff: tuple[float, float] = (0.5, 60.0)  # first and largest retry delay
    max_connections: int = 10_000  # open connections, whole process (refused: overloaded)
    max_connections_per_store: int = 1_000  # open connections per store (refused: overloaded)
    max_store_bytes: int = 0  # per-store quota, database + WAL (0: none; refused: quota_exceeded)
    max_push_cells_per_second: float = 0  # per-store push rate (0: none; over it: pushes wait)
    max_unauthenticated: int = 1_000  # connections not yet authenticated, whole process
    max_unauthenticated_per_ip: int = 64  # the same, per client address
    max_open_stores_per_subject: int = 0  # stores one token subject uses at once (0: cap / 4)
    max_new_stores_per_minute: int = 60  # stores one token subject creates a minute (0: none)
    max_stores_per_subject: int = 10_000  # stores one token subject may create (0: none)
    max_unit_bytes: int = 256 << 20  # frames of one multi-part push held in memory
    send_timeout: float = 60.0  # a peer that reads nothing this long is dropped
    database: str | None = None  # postgresql:// URL: stores in PostgreSQL instead of data_dir
    database_pool_size: int = DATABASE_POOL_SIZE  # PostgreSQL connections of this node's pool
    gc_interval: float = 3600.0  # seconds between garbage collections of an open store
    max_offline_days: float = (
        180.0  # a store's max_offline unless set for it (crsync-relay max-offline)
    )

    def reactor_handler(self) -> Any:
        """The loaded reactor handler (None without ``reactor``)."""
        from .reactor import as_handler, load_reactor

        if self.reactor is None:
            return None
        if isinstance(self.reactor, str):
            return load_reactor(self.reactor)
        return as_handler(self.reactor)

    def check(self) -> None:
        """Refuse unsafe or incomplete configurations with a clear message."""
        if (self.data_dir is None) == (self.database is None):
            raise CrsyncError(
                "give the relay --data-dir (SQLite store files) or --database (PostgreSQL), "
                "exactly one"
            )
        if self.database is not None and not self.database.startswith(
            ("postgresql://", "postgres://")
        ):
            raise CrsyncError(
                f"--database must be a postgresql:// URL, not {redact_url(self.database)!r}"
            )
        if self.database_pool_size < 1:
            raise CrsyncError("--database-pool-size must be >= 1")
        if self.dev:
            if self.host not in LOOPBACK:
                raise CrsyncError(
                    f"--dev disables authentication and binds only to loopback, not {self.host}"
                )
            if self.metrics_port is not None and self.metrics_host not in LOOPBACK:
                raise CrsyncError(
                    f"--dev serves metrics only on loopback, not --metrics-host {self.metrics_host}"
                )
        elif self.secret is None:
            raise CrsyncError(
                "no relay secret: pass --secret-file PATH or set CRSYNC_RELAY_SECRET "
                "(or --dev on loopback for local development)"
            )
        if (self.tls_cert is None) != (self.tls_key is None):
            raise CrsyncError("TLS needs both --tls-cert and --tls-key")
        if self.reactor_stores is not None and self.reactor is None:
            raise CrsyncError("--reactor-stores needs --reactor")
        if not self.gc_interval >= 0:
            raise CrsyncError("--gc-interval must be >= 0 seconds (0: only when a store opens)")
        if not 0 < self.max_offline_days < float("inf"):
            raise CrsyncError("--max-offline-days must be a positive number of days")
        if self.reactor_max_attempts < 1:
            raise CrsyncError("--reactor-max-attempts must be >= 1")
        if self.max_connections < 1 or self.max_connections_per_store < 1:
            raise CrsyncError("--max-connections and --max-connections-per-store must be >= 1")
        if self.max_unauthenticated < 1 or self.max_unauthenticated_per_ip < 1:
            raise CrsyncError("--max-unauthenticated and --max-unauthenticated-per-ip must be >= 1")
        if (
            self.max_open_stores_per_subject < 0
            or self.max_new_stores_per_minute < 0
            or self.max_stores_per_subject < 0
            or self.max_unit_bytes < 1
            or self.send_timeout <= 0
        ):
            raise CrsyncError(
                "--max-open-stores-per-subject, --max-new-stores-per-minute and "
                "--max-stores-per-subject must be >= 0, "
                "--max-unit-bytes and --send-timeout > 0"
            )
        if self.max_store_bytes < 0 or self.max_push_cells_per_second < 0:
            raise CrsyncError(
                "--max-store-bytes and --max-push-cells-per-second must be >= 0 (0: unlimited)"
            )

    def ssl_context(self) -> ssl.SSLContext | None:
        """Server TLS context, if a certificate is configured."""
        if self.tls_cert is None or self.tls_key is None:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            ctx.load_cert_chain(self.tls_cert, self.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise CrsyncError(f"cannot load TLS certificate: {exc}") from None
        return ctx


FILES_PER_STORE = 6  # two connections, each with the database and its WAL, plus the shm file
FILES_RESERVED = 128  # sockets, logs, the metrics server


def fit_open_files(max_open_stores: int, connections: int = 0) -> tuple[int, int]:
    """Raise the soft open-files limit as far as allowed and fit the caps under it: open
    stores (``FILES_PER_STORE`` descriptors each) and connections (one socket each:
    authenticated plus authenticating). When both cannot fit, both are lowered in proportion.

    Returns:
        ``(max_open_stores, connections)`` that fit.
    """
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return max_open_stores, connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    store_files = FILES_PER_STORE * max_open_stores
    want = FILES_RESERVED + store_files + connections
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or soft >= want:
        return max_open_stores, connections
    avail = max(0, soft - FILES_RESERVED)
    stores = max(
        1,
        min(max_open_stores, avail * store_files // (store_files + connections) // FILES_PER_STORE),
    )
    conns = max(1, avail - FILES_PER_STORE * stores) if connections else 0
    log.warning(
        "relay.open_files_limit soft=%d max_open_stores=%d lowered_to=%d connections=%d "
        "lowered_to=%d",
        soft,
        max_open_stores,
        stores,
        connections,
        conns,
    )
    return stores, conns


def _health_of(hub: Hub) -> Callable[[ServerConnection, Request], Response | None]:
    """``/healthz`` on the WebSocket port (what load balancers probe): ``ok`` while the
    relay serves; with PostgreSQL, ``503`` while the node's LISTEN connection is down (the
    database is unreachable: no blocking query on this path)."""

    def health(connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            if hub.database is not None and not hub.listening:
                return connection.respond(503, "database unavailable\n")
            return connection.respond(200, "ok\n")
        return None

    return health


async def run_relay(
    config: RelayConfig,
    *,
    task_status: trio.TaskStatus[tuple[Server, Hub]] = trio.TASK_STATUS_IGNORED,
    handle_signals: bool = True,
) -> None:
    """Serve until cancelled, or until SIGINT/SIGTERM when ``handle_signals``."""
    config.check()
    reactor_handler = config.reactor_handler()
    # PostgreSQL stores cost no file descriptors (connections are pooled).
    stores, conns = fit_open_files(
        0 if config.database else config.max_open_stores,
        config.max_connections + config.max_unauthenticated,
    )
    if config.database is None:
        config.max_open_stores = stores
    if conns < config.max_connections + config.max_unauthenticated:
        share = conns / (config.max_connections + config.max_unauthenticated)
        config.max_connections = max(1, int(config.max_connections * share))
        config.max_unauthenticated = max(1, int(config.max_unauthenticated * share))
    if config.database is not None:
        from .pg_store import HEADS_CHANNEL, PgDatabase

        db = await trio.to_thread.run_sync(
            functools.partial(
                PgDatabase,
                config.database,
                max_size=config.database_pool_size,
                timeout=10.0,
                notify_channel=HEADS_CHANNEL,
            )
        )
        try:
            await _serve(config, reactor_handler, task_status, handle_signals, db)
        finally:
            await trio.to_thread.run_sync(db.close)
        return
    assert config.data_dir is not None
    layout = DataDir(config.data_dir)
    try:
        layout.create()  # owner-only
    except OSError as exc:
        raise CrsyncError(f"cannot create data directory {config.data_dir}: {exc}") from None
    # One relay per data directory: two processes would each keep their own head, epoch and
    # ring for the same store files.
    with layout.exclusive(
        f"another relay serves {config.data_dir}; stop it first, or give this relay its own "
        "--data-dir",
    ):
        await _serve(config, reactor_handler, task_status, handle_signals, None)


async def _serve(
    config: RelayConfig,
    reactor_handler: Any,
    task_status: trio.TaskStatus[tuple[Server, Hub]],
    handle_signals: bool,
    db: PgDatabase | None,
) -> None:
    metrics = RelayMetrics()
    limits = HubLimits(
        max_open=config.max_open_stores,
        idle_seconds=config.idle_seconds,
        max_store_bytes=config.max_store_bytes,
        max_push_cells_per_second=config.max_push_cells_per_second,
        max_open_per_subject=config.max_open_stores_per_subject,
        max_new_stores_per_minute=config.max_new_stores_per_minute,
        max_stores_per_subject=config.max_stores_per_subject,
        gc_interval=config.gc_interval,
        max_offline=config.max_offline_days * DAY,
    )
    hub = Hub(None if db else config.data_dir, limits, metrics, database=db, clock=relay_clock())
    metrics_server: MetricsServer | None = None
    serving = False

    def healthy() -> bool:
        """Serving, and (PostgreSQL) the database answers: 503 otherwise."""
        if not serving:
            return False
        if db is None:
            return True
        started = time.perf_counter()
        ok = db.ping()
        metrics.database_up.set(1 if ok else 0)
        if ok:
            metrics.db_seconds.labels(op="ping").observe(time.perf_counter() - started)
        return ok

    if config.metrics_port is not None:
        try:
            metrics_server = MetricsServer(
                metrics, config.metrics_host, config.metrics_port, healthy
            )
        except OSError as exc:
            raise CrsyncError(
                f"cannot serve metrics on {config.metrics_host}:{config.metrics_port}: "
                f"{exc.strerror or exc}"
            ) from None
        metrics_server.start()
        log.info(
            "relay.metrics host=%s port=%d",
            config.metrics_host,
            metrics_server.port,
            extra={"metrics_port": metrics_server.port},
        )
    db_url = config.database
    settings = RelaySettings(
        secret=None if config.dev else config.secret,
        max_frame=config.max_frame,
        batch_cells=config.batch_cells,
        limits=ConnectionLimits(
            config.max_connections,
            config.max_connections_per_store,
            config.max_unauthenticated,
            config.max_unauthenticated_per_ip,
        ),
        max_unit_bytes=config.max_unit_bytes,
        send_timeout=config.send_timeout,
    )

    async def handler(ws: ServerConnection) -> None:
        await handle_connection(ws, hub, settings)

    # Signals are caught before the listening line is logged, so a supervisor (or a test) that
    # sends SIGTERM as soon as the relay says it listens always gets a graceful shutdown.
    signals_cm: Any = (
        trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM)
        if handle_signals
        else contextlib.nullcontext(None)
    )
    try:
        with signals_cm as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(hub.reaper)
                nursery.start_soon(hub.collector)
                if db is not None:
                    await nursery.start(hub.follow_heads)
                if reactor_handler is not None:
                    from .reactor import ReactorManager

                    reactors = ReactorManager(
                        hub,
                        reactor_handler,
                        stores=config.reactor_stores,
                        batch_cells=config.batch_cells,
                        backoff_initial=config.reactor_backoff[0],
                        backoff_max=config.reactor_backoff[1],
                        max_attempts=config.reactor_max_attempts,
                    )
                    await nursery.start(reactors.run)
                    hub.push_listeners.append(reactors.notify)
                    log.info("relay.reactor.enabled stores=%s", config.reactor_stores or "*")
                server: Server = await nursery.start(
                    functools.partial(
                        serve,
                        handler,
                        config.port,
                        host=config.host,
                        ssl=config.ssl_context(),
                        # Before authentication only a hello is read: frames over twice its cap
                        # are refused by websockets itself (close code 1009), smaller oversized
                        # ones by the protocol (frame_too_large). A session raises the limit to
                        # twice --max-frame-bytes once its token is checked.
                        max_size=2 * min(p.MAX_HELLO_BYTES, config.max_frame),
                        # A --dev relay has no authentication: refuse every browser (web
                        # pages always send Origin; programs do not), so that a page the
                        # developer visits cannot read or write local stores.
                        origins=[None] if config.dev else None,
                        process_request=_health_of(hub),
                        compression=None,
                    )
                )
                ports = sorted({lst.socket.getsockname()[1] for lst in server.listeners})
                log.info(
                    "relay.listening host=%s port=%s tls=%s dev=%s %s",
                    config.host,
                    ports[0] if ports else config.port,
                    config.tls_cert is not None,
                    config.dev,
                    f"database={redact_url(db_url)}" if db_url else f"data_dir={config.data_dir}",
                    extra={"port": ports[0] if ports else config.port},
                )
                serving = True
                task_status.started((server, hub))
                if signals is not None:
                    async for signum in signals:
                        log.info("relay.shutdown signal=%s", signal.Signals(signum).name)
                        break
                    nursery.cancel_scope.cancel()
    finally:
        serving = False
        if metrics_server is not None:
            metrics_server.stop()
        with trio.CancelScope(shield=True):
            await hub.close_all()
        log.info("relay.stopped")


def describe_store(path: Path) -> dict[str, Any]:
    """Figures of one store file (for ``crsync-relay stores``)."""
    from .store import RelayStore

    s = RelayStore(path, create=False)
    try:
        return s.stats()
    finally:
        s.close()
