"""``crsync-relay``: serve stores, issue tokens, list stores."""

from __future__ import annotations

import contextlib
import os
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import trio

from crsync.errors import CrsyncError, ExitStatus

from . import logconfig
from .auth import issue_token, load_secret
from .datadir import DataDir, check_store_id
from .server import DATABASE_POOL_SIZE, RelayConfig, describe_store, relay_clock, run_relay
from .store_api import StoreBackend
from .store_rules import DAY, DEFAULT_MAX_OFFLINE

ENV_PREFIX = "CRSYNC_RELAY_"


def _fail(msg: str, status: ExitStatus = ExitStatus.ERROR) -> NoReturn:
    click.echo(f"crsync-relay: error: {msg}", err=True)
    sys.exit(status)


def _usage(msg: str) -> NoReturn:
    _fail(msg, ExitStatus.USAGE)


def _config_file(path: str | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        _usage(f"cannot read config file {path}: {exc.strerror}")
    except tomllib.TOMLDecodeError as exc:
        _usage(f"config file {path} is not valid TOML: {exc}")
    relay = data.get("relay", data)
    if not isinstance(relay, dict):
        _usage(f"config file {path}: [relay] must be a table")
    return dict(relay)


class _Commands(click.Group):
    """The command group: a :class:`CrsyncError` a command lets out ends it with
    ``crsync-relay: error: ...`` and :attr:`ExitStatus.ERROR`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CrsyncError as exc:
            _fail(str(exc))


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """The crsync relay: many stores, one process."""


_F = TypeVar("_F", bound=Callable[..., Any])


def _setting(*decls: str, **attrs: Any) -> Callable[[_F], _F]:
    """A ``serve`` option: None unless given, so that the config file and the defaults apply."""
    return click.option(*decls, default=None, **attrs)


@main.command()
@_setting(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False),
    help="TOML file with a [relay] table (keys as the long options, with _).",
)
@_setting("--data-dir", help="Directory holding one SQLite file per store.")
@_setting(
    "--database",
    help="postgresql:// URL: keep every store in PostgreSQL instead of --data-dir (several "
    "relay nodes may serve the same database).",
)
@_setting(
    "--database-pool-size",
    type=int,
    help="PostgreSQL connections this node holds at most (default 16, plus one for LISTEN).",
)
@_setting("--host", help="Address to bind (default 127.0.0.1).")
@_setting("--port", type=int, help="Port (default 8765; 0 picks one).")
@_setting("--secret-file", help="File holding the token signing secret.")
@_setting("--dev", is_flag=True, help="No authentication; loopback only.")
@_setting("--tls-cert", help="PEM certificate chain for wss://.")
@_setting("--tls-key", help="PEM private key for wss://.")
@_setting("--max-frame-bytes", type=int, help="Largest accepted frame.")
@_setting("--max-open-stores", type=int, help="Cap on open store files.")
@_setting("--idle-seconds", type=float, help="Close stores idle this long.")
@_setting(
    "--max-connections",
    type=int,
    help="Cap on open connections for the process (default 10000); more are refused as overloaded.",
)
@_setting(
    "--max-connections-per-store",
    type=int,
    help="Cap on open connections to one store (default 1000); more are refused as overloaded.",
)
@_setting(
    "--max-store-bytes",
    type=int,
    help="Quota per store, database + WAL in bytes (default 0: none); a store over it refuses "
    "pushes with quota_exceeded (pulls still work).",
)
@_setting(
    "--max-push-cells-per-second",
    type=float,
    help="Push rate per store in changed cells per second (default 0: none); faster pushes "
    "wait for their acknowledgement, other stores are unaffected.",
)
@_setting(
    "--max-unauthenticated",
    type=int,
    help="Cap on connections whose token is not checked yet (default 1000).",
)
@_setting(
    "--max-unauthenticated-per-ip",
    type=int,
    help="The same cap per client address (default 64).",
)
@_setting(
    "--max-open-stores-per-subject",
    type=int,
    help="Stores one token subject may use at once (default: a quarter of --max-open-stores).",
)
@_setting(
    "--max-new-stores-per-minute",
    type=int,
    help="Stores one token subject may create a minute (default 60; 0: no limit).",
)
@_setting(
    "--max-stores-per-subject",
    type=int,
    help="Stores one token subject may create in all (default 10000; 0: no limit).",
)
@_setting(
    "--max-unit-bytes",
    type=int,
    help="Bytes of frames one multi-part push may hold in memory (default 256 MiB).",
)
@_setting(
    "--send-timeout",
    type=float,
    help="Drop a peer that reads nothing for this many seconds (default 60).",
)
@_setting(
    "--metrics-port",
    type=int,
    help="Serve /metrics (Prometheus) and /healthz on this port (off by default).",
)
@_setting("--metrics-host", help="Address for --metrics-port (127.0.0.1).")
@_setting(
    "--reactor",
    help="Store reactor to run: module:object or path/to/file.py:object (an async function).",
)
@_setting(
    "--reactor-stores",
    help="Run the reactor only for store ids matching these comma-separated globs (default *).",
)
@_setting(
    "--reactor-max-attempts",
    type=int,
    help="Deliveries of a failing batch before it is narrowed to one relay version, and of "
    "that version before it is set aside (default 5).",
)
@_setting(
    "--gc-interval",
    type=float,
    help="Seconds between garbage collections of each open store (default 3600; each store is "
    "also collected when it opens; 0: only then).",
)
@_setting(
    "--max-offline-days",
    type=float,
    help="Days a device may stay away before a store's horizon passes it (default 180); "
    "per store: crsync-relay max-offline.",
)
@_setting("--log-format", type=click.Choice(["text", "json"]))
@_setting("--log-level")
def serve(**opts: Any) -> None:
    """Serve stores over WebSocket.

    Settings come from, in order of precedence: command-line options, CRSYNC_RELAY_* environment
    variables (e.g. CRSYNC_RELAY_PORT), the --config file, defaults.

    Example:

        crsync-relay serve --data-dir /var/lib/crsync --secret-file /etc/crsync/secret
    """
    file_cfg = _config_file(opts.pop("config_path"))

    def pick(name: str, default: Any = None, conv: Any = str) -> Any:
        if opts.get(name) is not None:
            return opts[name]
        env = os.environ.get(ENV_PREFIX + name.upper())
        if env is not None:
            if conv is bool:
                return env.lower() in ("1", "true", "yes", "on")
            try:
                return conv(env)
            except ValueError:
                _usage(f"{ENV_PREFIX + name.upper()}={env!r} is not a valid {conv.__name__}")
        if name in file_cfg:
            return file_cfg[name]
        return default

    data_dir = pick("data_dir")
    database = pick("database")
    if data_dir and database:
        _usage(
            "--data-dir and --database exclude each other: the relay keeps its stores in a "
            "directory of SQLite files or in PostgreSQL, not both"
        )
    if not data_dir and not database:
        _usage(
            "--data-dir or --database is required (or CRSYNC_RELAY_DATA_DIR / "
            "CRSYNC_RELAY_DATABASE, or data_dir / database in --config)"
        )
    dev = bool(pick("dev", False, bool))
    secret = None
    if not dev:
        try:
            secret = load_secret(pick("secret_file"))
        except CrsyncError as exc:
            _usage(str(exc))
    cert, key = pick("tls_cert"), pick("tls_key")
    config = RelayConfig(
        data_dir=Path(data_dir) if data_dir else None,
        database=database or None,
        database_pool_size=int(pick("database_pool_size", DATABASE_POOL_SIZE, int)),
        host=pick("host", "127.0.0.1"),
        port=int(pick("port", 8765, int)),
        secret=secret,
        dev=dev,
        max_frame=int(pick("max_frame_bytes", 64 * 1024 * 1024, int)),
        max_open_stores=int(pick("max_open_stores", 256, int)),
        idle_seconds=float(pick("idle_seconds", 60.0, float)),
        max_connections=int(pick("max_connections", 10_000, int)),
        max_connections_per_store=int(pick("max_connections_per_store", 1_000, int)),
        max_store_bytes=int(pick("max_store_bytes", 0, int)),
        max_push_cells_per_second=float(pick("max_push_cells_per_second", 0.0, float)),
        max_unauthenticated=int(pick("max_unauthenticated", 1_000, int)),
        max_unauthenticated_per_ip=int(pick("max_unauthenticated_per_ip", 64, int)),
        max_open_stores_per_subject=int(pick("max_open_stores_per_subject", 0, int)),
        max_new_stores_per_minute=int(pick("max_new_stores_per_minute", 60, int)),
        max_stores_per_subject=int(pick("max_stores_per_subject", 10_000, int)),
        max_unit_bytes=int(pick("max_unit_bytes", 256 << 20, int)),
        send_timeout=float(pick("send_timeout", 60.0, float)),
        tls_cert=Path(cert) if cert else None,
        tls_key=Path(key) if key else None,
        metrics_host=pick("metrics_host", "127.0.0.1"),
        metrics_port=pick("metrics_port", None, int),
        reactor=pick("reactor"),
        reactor_stores=pick("reactor_stores"),
        reactor_max_attempts=int(pick("reactor_max_attempts", 5, int)),
        gc_interval=float(pick("gc_interval", 3600.0, float)),
        max_offline_days=float(pick("max_offline_days", 180.0, float)),
    )
    logconfig.configure(pick("log_level", "info"), pick("log_format", "text"))
    try:
        config.check()
        config.reactor = config.reactor_handler()  # loaded once; fails fast with a message
    except CrsyncError as exc:
        _usage(str(exc))
    try:
        trio.run(run_relay, config)
    except CrsyncError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot serve on {config.host}:{config.port}: {exc.strerror or exc}")
    except KeyboardInterrupt:
        pass


@main.command()
@click.option(
    "--store",
    "stores",
    multiple=True,
    required=True,
    help="Store id the token grants (repeat; alice* grants alice and alice.<name>; "
    "team-* every id starting with team-).",
)
@click.option("--ttl", type=int, default=86400, show_default=True, help="Validity in seconds.")
@click.option("--subject", default="", help="Who the token is for (recorded in the token).")
@click.option("--secret-file", default=None, help="File holding the signing secret.")
def token(stores: tuple[str, ...], ttl: int, subject: str, secret_file: str | None) -> None:
    """Print a signed token for some stores.

    Example: crsync-relay token --store alice --ttl 3600 --secret-file /etc/crsync/secret
    """
    try:
        for s in stores:
            check_store_id(s[:-1] if s.endswith("*") and len(s) > 1 else s) if s != "*" else None
        secret = load_secret(secret_file or os.environ.get(ENV_PREFIX + "SECRET_FILE"))
        click.echo(issue_token(secret, list(stores), ttl, subject))
    except CrsyncError as exc:
        _usage(str(exc))


def _one_source(data_dir: str | None, database: str | None) -> None:
    """Exactly one of --data-dir and --database (a usage error otherwise)."""
    if data_dir and database:
        _usage("--data-dir and --database exclude each other")
    if not data_dir and not database:
        _usage("--data-dir or --database is required")
    if database and not database.startswith(("postgresql://", "postgres://")):
        _usage("--database must be a postgresql:// URL")


def _open_database(url: str, *, create: bool = False) -> Any:
    from .pg_store import PgDatabase

    return PgDatabase(url, max_size=2, create=create)


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else "-"


@contextlib.contextmanager
def _each_store(
    data_dir: str | None,
    database: str | None,
    only: str | None = None,
    default_max_offline: float = DEFAULT_MAX_OFFLINE,
) -> Iterator[Iterator[tuple[str, StoreBackend]]]:
    """The stores of a data directory or database (``only``: that one, which must exist),
    each opened with the relay's clock (``CRSYNC_RELAY_CLOCK_SKEW``)."""
    _one_source(data_dir, database)
    clock = relay_clock()
    if only is not None:
        check_store_id(only)
    if database:
        with _open_database(database) as db:
            ids = [only] if only is not None else db.store_ids()

            def pg_stores() -> Iterator[tuple[str, StoreBackend]]:
                for sid in ids:
                    yield (
                        sid,
                        db.open_store(
                            sid, create=False, clock=clock, default_max_offline=default_max_offline
                        ),
                    )

            yield pg_stores()
        return
    from .store import RelayStore

    assert data_dir is not None
    d = Path(data_dir)
    if not d.is_dir():
        _fail(f"no such directory: {d}")
    layout = DataDir(d)
    paths = [(only, layout.existing_store(only))] if only is not None else layout.stores()

    def sqlite_stores() -> Iterator[tuple[str, StoreBackend]]:
        for sid, path in paths:
            s = RelayStore(path, create=False, clock=clock, default_max_offline=default_max_offline)
            try:
                yield sid, s
            finally:
                s.close()

    yield sqlite_stores()


@main.command()
@click.option("--data-dir", default=None, help="The relay's data directory.")
@click.option("--database", default=None, help="Or the relay's PostgreSQL database URL.")
@click.option(
    "--details",
    is_flag=True,
    help="Also the horizon, tombstones and each device: last seen, positions, departed.",
)
def stores(data_dir: str | None, database: str | None, details: bool) -> None:
    """List stores with size, peers and last activity.

    Example: crsync-relay stores --data-dir /var/lib/crsync --details
    """
    _one_source(data_dir, database)
    figures: list[tuple[str, dict[str, Any]]] = []
    gc: dict[str, Any] = {}
    if database or details:
        with _each_store(data_dir, database) as each:
            for sid, s in each:
                figures.append((sid, s.stats()))
                if details:
                    gc[sid] = s.gc_stats()
    else:
        assert data_dir is not None
        d = Path(data_dir)
        if not d.is_dir():
            _fail(f"no such directory: {d}")
        figures = [(name, describe_store(path)) for name, path in DataDir(d).stores()]
    click.echo(f"{'store':<32} {'bytes':>12} {'cells':>10} {'peers':>6} {'head':>8}  last activity")
    for name, st in figures:
        click.echo(
            f"{name:<32} {st['bytes']:>12} {st['cells']:>10} {st['peers']:>6} {st['head']:>8}  "
            f"{_when(st['last_activity'])}"
        )
        g = gc.get(name)
        if g is None:
            continue
        click.echo(
            f"  horizon {g.horizon} (age {g.horizon_age / DAY:.1f} days), tombstones "
            f"{g.tombstones}, collected {g.graves}, max-offline {g.max_offline / DAY:g} days, "
            f"about to depart {g.about_to_depart}"
        )
        click.echo(f"  {'device':<32} {'last seen':<20} {'pushed':>10} {'received':>10}  state")
        for dev in g.devices:
            state = "departed" if dev.departed else "active"
            click.echo(
                f"  {dev.site_id.hex():<32} {_when(dev.last_seen):<20} {dev.pushed_upto:>10} "
                f"{dev.received_upto:>10}  {state}"
            )


@main.command()
@click.option("--data-dir", default=None, help="The relay's data directory.")
@click.option("--database", default=None, help="Or the relay's PostgreSQL database URL.")
@click.option("--store", default=None, help="Only this store (default: every store).")
@click.option(
    "--max-offline-days",
    type=float,
    default=180.0,
    show_default=True,
    help="The relay's default max-offline (stores with their own setting keep it).",
)
def gc(
    data_dir: str | None, database: str | None, store: str | None, max_offline_days: float
) -> None:
    """Collect tombstones now (the relay does it every --gc-interval anyway): move each
    store's horizon, turn tombstones below it into collected tombstones, let devices away
    longer than the store's max-offline depart. Safe while the relay serves.

    Example: crsync-relay gc --data-dir /var/lib/crsync --store alice
    """
    if not 0 < max_offline_days < float("inf"):
        _usage("--max-offline-days must be a positive number of days")
    n = 0
    with _each_store(data_dir, database, store, max_offline_days * DAY) as each:
        for sid, s in each:
            done = s.collect()
            n += 1
            click.echo(
                f"store {sid}: horizon {done.horizon}, collected {done.collected} "
                f"tombstone(s), {done.departed} device(s) departed"
            )
    click.echo(f"collected {n} store(s)")


@main.command("max-offline")
@click.option("--data-dir", default=None, help="The relay's data directory.")
@click.option("--database", default=None, help="Or the relay's PostgreSQL database URL.")
@click.argument("store")
@click.argument("days", type=float, required=False)
def max_offline(data_dir: str | None, database: str | None, store: str, days: float | None) -> None:
    """Show or set how many days a device of STORE may stay away before the store's horizon
    passes it (it then departs: re-admitted by catch-up when it returns).

    Example: crsync-relay max-offline --data-dir /var/lib/crsync alice 365
    """
    with _each_store(data_dir, database, store) as each:
        for sid, s in each:
            if days is not None:
                s.set_max_offline(days * DAY)
            click.echo(f"store {sid}: max-offline {s.max_offline() / DAY:g} days")


@main.command()
@click.option("--data-dir", default=None, help="The relay's data directory.")
@click.option("--database", default=None, help="Or the relay's PostgreSQL database URL.")
@click.option("--store", required=True, help="Store id to back up.")
@click.option("--to", "dest", required=True, help="Backup file to create.")
def backup(data_dir: str | None, database: str | None, store: str, dest: str) -> None:
    """Copy a store while the relay keeps serving (SQLite online backup; with --database, a
    SQLite store file written from one PostgreSQL snapshot).

    Example: crsync-relay backup --data-dir /var/lib/crsync --store alice --to alice.bak
    """
    from .backup import backup_store

    _one_source(data_dir, database)
    if database:
        check_store_id(store)
        with _open_database(database) as db:
            head, check = db.export_store(store, Path(dest))
        if check != "ok":
            Path(dest).unlink(missing_ok=True)
            _fail(f"the backup of {store!r} failed its integrity check: {check}")
    else:
        assert data_dir is not None
        head = backup_store(Path(data_dir), store, Path(dest))
    click.echo(f"backed up store {store} at relay version {head} to {dest}")


@main.command()
@click.option("--data-dir", default=None, help="The relay's data directory.")
@click.option("--database", default=None, help="Or the relay's PostgreSQL database URL.")
@click.option("--store", required=True, help="Store id to restore.")
@click.option("--from", "src", required=True, help="Backup file made by `backup`.")
@click.option("--force", is_flag=True, help="Replace the store if it exists.")
def restore(data_dir: str | None, database: str | None, store: str, src: str, force: bool) -> None:
    """Install a backup as a store (stop the relay first; with --database, every node). The
    store gets a new epoch, so every device re-pushes what it holds and nothing written after
    the backup is lost.

    Example: crsync-relay restore --data-dir /var/lib/crsync --store alice --from alice.bak
    """
    import uuid

    from .backup import restore_store

    _one_source(data_dir, database)
    if database:
        check_store_id(store)
        if not Path(src).is_file():
            _fail(f"no backup file {src}")
        with _open_database(database, create=True) as db:
            db.require_stopped()
            if db.has_store(store) and not force:
                _fail(f"store {store!r} exists; pass --force to replace it")
            epoch = db.import_store(store, Path(src), replace=force, epoch=uuid.uuid4().hex)
    else:
        assert data_dir is not None
        epoch = restore_store(Path(data_dir), store, Path(src), force=force)
    click.echo(f"restored store {store} from {src}; new epoch {epoch}")


@main.command("migrate-stores")
@click.option("--from", "src", required=True, help="The relay's data directory (SQLite files).")
@click.option("--to", "dest", required=True, help="PostgreSQL database URL (postgresql://...).")
@click.option("--replace", is_flag=True, help="Replace stores that exist in the database.")
def migrate_stores(src: str, dest: str, replace: bool) -> None:
    """Move every store of a data directory into PostgreSQL (stop the relay first), keeping
    epochs, relay versions and device positions: devices resume without a full re-push once
    the relay serves --database. The directory is left as it was.

    Example: crsync-relay migrate-stores --from /var/lib/crsync --to postgresql://relay@db/crsync
    """
    from .pg_store import migrate_data_dir

    _one_source(None, dest)
    with _open_database(dest, create=True) as db:
        moved = migrate_data_dir(Path(src), db, replace=replace)
    for sid, epoch, head in moved:
        click.echo(f"migrated store {sid} (epoch {epoch}, relay version {head})")
    click.echo(f"migrated {len(moved)} store(s) from {src}")


@main.command()
@click.option("--data-dir", default=None, help="The relay's data directory.")
@click.option("--database", default=None, help="Or the relay's PostgreSQL database URL.")
@click.option("--store", required=True, help="Store id to repair.")
@click.option("--table", required=True, help="Table of the cell or row.")
@click.option("--key", "key_json", default=None, help='Primary key as a JSON array: ["t1"].')
@click.option("--pk-hex", default=None, help="Packed primary key in hex (as errors print it).")
@click.option("--column", default=None, help="Remove only this column's cell (default: the row).")
def remove(
    data_dir: str | None,
    database: str | None,
    store: str,
    table: str,
    key_json: str | None,
    pk_hex: str | None,
    column: str | None,
) -> None:
    """Remove a poisoned cell or row from a store (stop the relay first). Devices that
    merged it keep it; devices catching up later never receive it.

    Example: crsync-relay remove --data-dir DIR --store alice --table todos --key '["t1"]'
    """
    from .repair import parse_key
    from .repair import remove as remove_cells

    _one_source(data_dir, database)
    source = database if database else Path(str(data_dir))
    n = remove_cells(source, store, table, parse_key(key_json, pk_hex), column)
    click.echo(f"removed {n} cell(s) from store {store}")


@main.command("forget-table")
@click.option("--data-dir", default=None, help="The relay's data directory.")
@click.option("--database", default=None, help="Or the relay's PostgreSQL database URL.")
@click.option("--store", required=True, help="Store id to repair.")
@click.option("--table", required=True, help="Table to forget.")
def forget_table(data_dir: str | None, database: str | None, store: str, table: str) -> None:
    """Forget a table's announced schema and its cells in a store (stop the relay first), for
    a table announced with a wrong primary key: the next device announces it afresh.

    Example: crsync-relay forget-table --data-dir /var/lib/crsync --store alice --table invoices
    """
    from .repair import forget_table as forget

    _one_source(data_dir, database)
    n = forget(database if database else Path(str(data_dir)), store, table)
    click.echo(f"forgot table {table} of store {store} ({n} cells removed)")


if __name__ == "__main__":  # pragma: no cover
    main()
