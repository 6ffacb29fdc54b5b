"""``crsync``: the trigger generator, status, change feed, one-shot and continuous sync."""

from __future__ import annotations

import datetime
import json
import sqlite3
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import click
import trio

from . import positions, tracking
from .database import Database, connect
from .errors import CrsyncError, ExitStatus
from .schema import quote_ident


class _Fail(click.ClickException):
    def show(self, file: Any = None) -> None:
        click.echo(f"crsync: error: {self.message}", err=True)


def _open(path: str, must_exist: bool = True) -> Database:
    if must_exist and not Path(path).exists():
        raise _Fail(f"no such database file: {path}")
    try:
        return connect(path)
    except CrsyncError as exc:
        raise _Fail(str(exc)) from None
    except sqlite3.DatabaseError as exc:
        raise _Fail(f"{path} is not a usable SQLite database: {exc}") from None


def _guard(fn: Any) -> Any:
    import functools

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CrsyncError as exc:
            raise _Fail(str(exc)) from None
        except sqlite3.Error as exc:
            raise _Fail(f"SQLite error: {exc}") from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="crsync")
def cli() -> None:
    """crsync: multi-device sync for plain SQLite."""


_INTEGER_KEYS = click.option(
    "--integer-keys",
    type=click.Choice(["app-assigned"]),
    default=None,
    help="Accept an INTEGER PRIMARY KEY (rowid) table: the app gives every new row an id "
    "unique across devices (crsync.new_id()), never lets SQLite pick one.",
)


@cli.command()
@click.argument("db")
@click.argument("table")
@_INTEGER_KEYS
@_guard
def triggers(db: str, table: str, integer_keys: str | None) -> None:
    """Print the SQL that tracking TABLE would install (executes nothing).

    Example: crsync triggers app.db todos
    """
    if not Path(db).exists():
        raise _Fail(f"no such database file: {db}")
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        from . import trigger_sql

        click.echo(trigger_sql(conn, table, integer_keys=integer_keys))
    finally:
        conn.close()


@cli.command()
@click.argument("db")
@click.argument("tables", nargs=-1, required=True)
@_INTEGER_KEYS
@_guard
def track(db: str, tables: Sequence[str], integer_keys: str | None) -> None:
    """Make TABLES replicated (validates them, installs triggers, records existing rows).

    Example: crsync track app.db todos lists
    """
    d = _open(db)
    for t in tables:
        d.track(t, integer_keys=integer_keys)
        click.echo(f"tracking {t}")


@cli.command()
@click.argument("db")
@click.argument("table")
@click.option(
    "--ref",
    "refs",
    multiple=True,
    metavar="TABLE.COLUMN",
    help="A column holding TABLE's keys without a declared FOREIGN KEY (repeatable); "
    "declared foreign keys are found by themselves.",
)
@_guard
def rekey(db: str, table: str, refs: Sequence[str]) -> None:
    """Give every row of TABLE a new integer key unique across devices (crsync.new_id()) and
    rewrite the columns that refer to it, in one transaction. For tables keyed by INTEGER
    PRIMARY KEY, before they are first tracked; then make the app insert crsync.new_id() keys
    and track with --integer-keys app-assigned.

    Example: crsync rekey app.db notes --ref attachments.note
    """
    from .ids import rekey as do_rekey

    d = _open(db)
    try:
        result = do_rekey(d.conn, table, refs)
    finally:
        d.close()
    click.echo(f"re-keyed {result.rows} rows of {result.table} ({result.key})")
    for r in result.references:
        how = "foreign key" if r.declared else "--ref"
        click.echo(f"  rewrote {r} ({how})")
    click.echo(f"{result.updated_references} referencing values rewritten")


@cli.command()
@click.argument("db")
@click.argument("table")
@_guard
def untrack(db: str, table: str) -> None:
    """Stop replicating TABLE: removes its triggers and metadata, keeps its rows.

    Example: crsync untrack app.db todos
    """
    _open(db).untrack(table)
    click.echo(f"untracked {table}")


@cli.command("reset-site")
@click.argument("db")
@_guard
def reset_site(db: str) -> None:
    """Give DB a new site id (after copying the file to another device or restoring a backup).

    Example: crsync reset-site copy-of-app.db
    """
    d = _open(db)
    old = d.site_id
    new = d.reset_site()
    click.echo(f"site id {old.hex()} -> {new.hex()}")


def _status(d: Database) -> dict[str, Any]:
    conn = d.conn
    tables = []
    fps = d.schema_fingerprints()
    for name in d.tracked_tables():
        rows = conn.execute(f"SELECT count(*) FROM {quote_ident(name)}").fetchone()[0]
        tombstones = tracking.tombstone_count(d, name)
        tables.append(
            {"table": name, "rows": rows, "tombstones": tombstones, "fingerprint": fps[name]}
        )
    version = d.db_version
    peers = [attrs.asdict(pos) for pos in positions.listed(d)]
    pushed = {p["peer"]: p["version"] for p in peers if p["event"] == "push"}
    unacked = {
        peer: sum(1 for c in d.changes(since=v) if c.site_id == d.site_id)
        for peer, v in pushed.items()
    }
    if not pushed:
        unacked = {"(never synced)": sum(1 for c in d.changes() if c.site_id == d.site_id)}
    meta_bytes = tracking.metadata_bytes(d)
    stats = d.metadata_stats()
    return {
        "site_id": d.site_id.hex(),
        "db_version": version,
        "tables": tables,
        "changes": len(d.changes()),
        "peers": peers,
        "unacked_local_changes": unacked,
        "pending_changes": d.pending_count(),
        "rejected_changes": d.rejected_count(),
        "metadata_bytes": meta_bytes,
        "metadata": attrs.asdict(stats),
    }


@cli.command()
@click.argument("db")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@_guard
def status(db: str, as_json: bool) -> None:
    """Site id, version, tracked tables, peers' positions and the upload queue.

    Example: crsync status app.db
    """
    s = _status(_open(db))
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    click.echo(f"site id       {s['site_id']}")
    click.echo(f"db_version    {s['db_version']}")
    click.echo(f"changes       {s['changes']} cells in the change feed")
    click.echo(
        f"pending       {s['pending_changes']} changes kept aside for unknown tables/columns"
    )
    if s["rejected_changes"]:
        click.echo(
            f"rejected      {s['rejected_changes']} changes from other devices this database "
            "cannot apply (db.rejected_changes() lists them with the reason)"
        )
    m = s["metadata"]
    how = "" if m["metadata_bytes_exact"] else " (estimated: this SQLite has no dbstat)"
    per_row = "" if m["bytes_per_row"] is None else f", {m['bytes_per_row']:.1f} per live row"
    click.echo(f"metadata      {m['metadata_bytes']} bytes{per_row}{how}")
    click.echo(
        f"rows          {m['rows']} live, {m['tombstones']} tombstones, "
        f"{m['collected']} collected deletes (compacted below the relay's horizon)"
    )
    if m["horizon"] is None:
        click.echo("horizon       none announced by a relay")
    else:
        seen = m["horizon_seen_at"]
        when = (
            ""
            if seen is None
            else " (heard "
            + datetime.datetime.fromtimestamp(seen, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
            + " UTC)"
        )
        click.echo(f"horizon       relay version {m['horizon']}{when}")
    click.echo("tables:")
    for t in s["tables"]:
        click.echo(
            f"  {t['table']:<24} rows={t['rows']:<8} tombstones={t['tombstones']:<6} "
            f"{t['fingerprint']}"
        )
    click.echo("peers:")
    if not s["peers"]:
        click.echo("  (none)")
    for p in s["peers"]:
        click.echo(f"  {p['peer']:<24} {p['event']:<5} version={p['version']} epoch={p['epoch']}")
    click.echo("not yet acknowledged by the relay:")
    for peer, n in s["unacked_local_changes"].items():
        click.echo(f"  {peer:<24} {n} local changes")


def _json_value(v: Any) -> Any:
    if isinstance(v, bytes):
        return {"blob": v.hex()}
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return {"real": repr(v)}
        return {"real": v}
    if isinstance(v, int):
        return {"int": str(v)} if abs(v) > 2**53 else v
    return v


@cli.command()
@click.argument("db")
@click.option("--since", type=int, default=0, show_default=True, help="A db_version.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines with typed values.")
@_guard
def changes(db: str, since: int, as_json: bool) -> None:
    """Print the change feed after --since (JSON lines: typed values, hex blobs).

    Example: crsync changes app.db --since 10 --json
    """
    d = _open(db)
    for c in d.changes(since=since):
        row = {
            "table": c.table,
            "pk": c.pk.hex(),
            "cid": c.cid,
            "val": _json_value(c.val),
            "col_version": c.col_version,
            "db_version": c.db_version,
            "site_id": c.site_id.hex(),
            "cl": c.cl,
            "seq": c.seq,
        }
        if as_json:
            click.echo(json.dumps(row, ensure_ascii=False))
        else:
            click.echo(
                f"v{c.db_version:<6} {c.table}[{c.pk.hex()}].{c.cid} = {c.val!r} "
                f"(cv {c.col_version}, cl {c.cl}, site {c.site_id.hex()[:8]})"
            )


@cli.command()
@click.argument("db")
@click.option("--url", required=True, help="Relay URL, ws:// or wss://.")
@click.option("--store", required=True, help="Store id on the relay.")
@click.option("--token", default=None, envvar="CRSYNC_TOKEN", help="Access token ($CRSYNC_TOKEN).")
@click.option("--watch", is_flag=True, help="Keep syncing until Ctrl-C.")
@click.option(
    "--timeout",
    type=float,
    default=60.0,
    show_default=True,
    help="One-shot: give up after this many seconds.",
)
@click.option("--cafile", default=None, help="CA certificate to trust for wss://.")
@_guard
def sync(
    db: str,
    url: str,
    store: str,
    token: str | None,
    watch: bool,
    timeout: float,
    cafile: str | None,
) -> None:
    """Sync DB with a store on a relay: once (exit 0 when synced) or continuously (--watch).

    Example: crsync sync app.db --url ws://127.0.0.1:8765 --store alice --token $TOKEN
    """
    import ssl

    from ._trio_util import open_nursery
    from .peer import Peer, PeerState

    d = _open(db)
    ctx = None
    if url.startswith("wss://"):
        ctx = ssl.create_default_context(cafile=cafile)
    quiet = not sys.stderr.isatty()
    bar: Any = None
    task: Any = None
    if not quiet and not watch:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(
            TextColumn("receiving"),
            BarColumn(),
            TextColumn("{task.completed:.0f}/{task.total:.0f} changes"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )

    def progress(done: int, total: int) -> None:
        """The peer's on_progress: cells of the catch-up received (merged or staged) and
        expected (see crsync.Peer's on_progress)."""
        nonlocal task
        if bar is None or not total:
            return
        if task is None:
            bar.start()
            task = bar.add_task("receive", total=total)
        bar.update(task, completed=done, total=max(total, done))

    async def report(peer: Peer) -> None:
        """State changes (on a terminal) and, always, why the peer is not syncing."""
        said: str | None = None
        while True:
            state = peer.state
            if not quiet:
                click.echo(state.value, err=True)
            if state in (PeerState.OFFLINE, PeerState.STANDBY) and peer.reason != said:
                said = peer.reason
                click.echo(f"{state.value}: {said}; retrying", err=True)
            elif state in (PeerState.SYNCING, PeerState.SYNCED):
                said = None
            await peer.wait_state(*[s for s in PeerState if s is not state])

    async def run() -> None:
        peer = Peer(d, url, store=store, token=token, ssl=ctx, on_progress=progress)
        async with peer, open_nursery() as nursery:
            if watch:
                click.echo(f"syncing {db} with {url} store {store}; Ctrl-C to stop", err=True)
                await report(peer)
            nursery.start_soon(report, peer)
            await peer.wait_synced(timeout=timeout)
            nursery.cancel_scope.cancel()
            if bar is not None:
                bar.stop()
            click.echo(
                f"synced: pushed {peer.stats.pushed_changes}, received "
                f"{peer.stats.received_changes} changes"
            )

    try:
        trio.run(run)
    except KeyboardInterrupt:
        click.echo("\nstopped", err=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the exit status (:class:`~crsync.errors.ExitStatus`)."""
    try:
        cli.main(
            args=list(argv) if argv is not None else None, prog_name="crsync", standalone_mode=False
        )
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return ExitStatus.ERROR
    except click.ClickException as exc:
        exc.show()
        return ExitStatus.ERROR if isinstance(exc, _Fail) else exc.exit_code
    except CrsyncError as exc:
        click.echo(f"crsync: error: {exc}", err=True)
        return ExitStatus.ERROR
    return ExitStatus.OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
