"""``crsync-relay serve --database``: real relay processes on a private PostgreSQL server,
real devices (:class:`crsync.Peer`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from crsync_relay.process import RelayLauncher
from store.pg_server import PrivatePostgres
from sync.conftest import relay_cli
from sync.helpers import (
    FAST,
    assert_resumes_without_resending,
    converge,
    eventually,
    open_db,
    rows,
    snapshot,
)
from sync.helpers import peers_at as peers

from crsync.peer import Peer

from .conftest import NodeFactory, start_node

pytestmark = pytest.mark.e2e


async def test_devices_sync_through_a_relay_on_postgres_and_resume_after_its_restart(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    node = nodes()
    assert "database=postgresql://" in node.log and ":***@" in node.log  # no password logged
    a, b = open_db(tmp_path / "a.db"), open_db(tmp_path / "b.db")
    a.conn.executemany("INSERT INTO todos (id) VALUES (?)", [(str(i),) for i in range(200)])
    b.conn.executemany("INSERT INTO notes VALUES (?, 'b', 'x')", [(i,) for i in range(50)])
    with trio.fail_after(60):
        async with peers(node.url, "resume", a, b) as ps:
            await converge(ps)
            assert ps[1].stats.received_changes > 0
        node.stop()
        node.start()  # same port, same database: positions and epoch kept
        await assert_resumes_without_resending(
            lambda: peers(node.url, "resume", a, b),
            lambda: a.conn.execute("UPDATE todos SET title = 'new' WHERE id = '7'"),
        )
    assert snapshot(a) == snapshot(b)


async def test_a_write_on_one_node_reaches_a_device_on_another_node_without_reconnecting(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    node1, node2 = nodes(), nodes()
    a, b = open_db(tmp_path / "a.db"), open_db(tmp_path / "b.db")
    with trio.fail_after(60):
        async with peers(node1.url, "fan", a) as (pa,), peers(node2.url, "fan", b) as (pb,):
            await pa.wait_synced()
            await pb.wait_synced()
            for i in range(5):
                a.conn.execute("INSERT INTO todos (id, title) VALUES (?, 'from A')", (str(i),))
                await pa.wait_synced()  # acknowledged by node 1 (committed in PostgreSQL)
                await eventually(
                    lambda i=i: len(rows(b)) == i + 1, f"write {i} of A to reach B on node 2"
                )
            b.conn.execute("UPDATE todos SET done = 1 WHERE id = '3'")
            await pb.wait_synced()
            await eventually(
                lambda: a.conn.execute("SELECT done FROM todos WHERE id = '3'").fetchone() == (1,),
                "B's write to reach A on node 1",
            )
            assert pa.stats.connects == 1 and pb.stats.connects == 1
    assert snapshot(a) == snapshot(b)
    # node 2 heard node 1's merges (and read each batch into its ring, once per node)
    node2.wait_for(r"relay\.listening_heads")


def test_serve_refuses_both_a_data_directory_and_a_database(tmp_path: Path) -> None:
    res = relay_cli(
        "serve", "--dev", "--data-dir", str(tmp_path / "d"),
        "--database", "postgresql://x@127.0.0.1:1/y",
    )  # fmt: skip
    assert res.returncode == 2
    assert "--data-dir and --database exclude each other" in res.stderr
    res = relay_cli("serve", "--dev")
    assert res.returncode == 2 and "--data-dir or --database is required" in res.stderr


def test_serve_takes_the_database_from_the_environment_and_config_file(
    tmp_path: Path, pg_url: str, pg_server: PrivatePostgres
) -> None:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("CRSYNC_RELAY_")}
    node = RelayLauncher(
        None,
        args=("--dev", "--port", "0"),
        env={**env, "CRSYNC_RELAY_DATABASE": pg_url},
    )
    start_node(node, pg_server)
    try:
        assert "database=postgresql://" in node.log
    finally:
        node.stop()
    cfg = tmp_path / "relay.toml"
    cfg.write_text(f'[relay]\ndatabase = "{pg_url}"\ndata_dir = "{tmp_path / "d"}"\n')
    res = relay_cli("serve", "--dev", "--config", str(cfg))
    assert res.returncode == 2 and "exclude each other" in res.stderr
    cfg.write_text(f'[relay]\ndatabase = "{pg_url}"\n')
    node = RelayLauncher(None, args=("--dev", "--port", "0", "--config", str(cfg)), env=env)
    start_node(node, pg_server)
    try:
        assert "database=postgresql://" in node.log
    finally:
        node.stop()


def test_serve_with_an_unreachable_database_fails_with_postgresqls_reason(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = relay_cli(
        "serve", "--dev", "--port", "0", "--database", f"postgresql://x@127.0.0.1:{port}/y"
    )
    assert res.returncode == 1
    assert "cannot connect to PostgreSQL" in res.stderr


async def test_devices_of_a_migrated_data_directory_resume_without_a_full_re_push(
    nodes: NodeFactory, pg_url: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "sqlite-relay"
    a, b = open_db(tmp_path / "a.db"), open_db(tmp_path / "b.db")
    a.conn.executemany("INSERT INTO todos (id) VALUES (?)", [(str(i),) for i in range(100)])
    b.conn.executemany("INSERT INTO notes VALUES (?, 'b', 'x')", [(i,) for i in range(30)])
    sqlite_relay = RelayLauncher(data_dir)
    sqlite_relay.start()
    try:
        with trio.fail_after(60):
            async with peers(sqlite_relay.url, "moving", a, b) as ps:
                await converge(ps)
                assert ps[0].stats.pushed_changes > 0 and ps[1].stats.received_changes > 0
        # a relay serving the directory refuses the migration
        busy = relay_cli("migrate-stores", "--from", str(data_dir), "--to", pg_url)
        assert busy.returncode == 1 and "stop it before migrating" in busy.stderr
    finally:
        sqlite_relay.stop()
    res = relay_cli("migrate-stores", "--from", str(data_dir), "--to", pg_url)
    assert res.returncode == 0, res.stderr
    assert "migrated store moving" in res.stdout and "migrated 1 store(s)" in res.stdout
    again = relay_cli("migrate-stores", "--from", str(data_dir), "--to", pg_url)
    assert again.returncode == 1 and "exist in the database already" in again.stderr
    node = nodes()
    with trio.fail_after(60):
        await assert_resumes_without_resending(  # the migrated store kept epoch and positions
            lambda: peers(node.url, "moving", a, b),
            lambda: a.conn.execute("UPDATE todos SET title = 'after' WHERE id = '3'"),
        )
    assert snapshot(a) == snapshot(b)


async def test_backup_and_restore_of_a_store_in_postgres(
    nodes: NodeFactory, pg_url: str, tmp_path: Path
) -> None:
    node = nodes()
    a = open_db(tmp_path / "a.db")
    a.conn.executemany("INSERT INTO todos (id) VALUES (?)", [(str(i),) for i in range(20)])
    with trio.fail_after(60):
        async with peers(node.url, "kept", a) as (pa,):
            await pa.wait_synced()
    bak = tmp_path / "kept.bak"
    res = relay_cli("backup", "--database", pg_url, "--store", "kept", "--to", str(bak))
    assert res.returncode == 0, res.stderr
    assert "at relay version 1" in res.stdout
    listed = relay_cli("stores", "--database", pg_url)
    assert listed.returncode == 0 and listed.stdout.splitlines()[1].startswith("kept ")
    # rewrites of a store refuse while a node serves the database
    for args in (
        ["restore", "--store", "copy", "--from", str(bak)],
        ["remove", "--store", "kept", "--table", "todos", "--key", '["3"]'],
        ["forget-table", "--store", "kept", "--table", "todos"],
    ):
        busy = relay_cli(*args, "--database", pg_url)
        assert busy.returncode == 1 and "stop every node first" in busy.stderr, busy.stderr
    node.stop()
    res = relay_cli(
        "remove", "--database", pg_url, "--store", "kept", "--table", "todos", "--key", '["3"]'
    )  # fmt: skip
    assert res.returncode == 0 and res.stdout.startswith("removed 3 cell(s)"), res.stderr
    gone = relay_cli(
        "remove", "--database", pg_url, "--store", "kept", "--table", "todos", "--key", '["3"]'
    )  # fmt: skip
    assert gone.returncode == 1 and "has no row" in gone.stderr
    refused = relay_cli("restore", "--database", pg_url, "--store", "kept", "--from", str(bak))
    assert refused.returncode == 1 and "pass --force" in refused.stderr
    res = relay_cli(
        "restore", "--database", pg_url, "--store", "copy", "--from", str(bak)
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    res = relay_cli(
        "restore", "--database", pg_url, "--store", "kept", "--from", str(bak), "--force"
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    node.start()
    b = open_db(tmp_path / "b.db")
    with trio.fail_after(60):
        async with peers(node.url, "copy", b) as (pb,):
            await pb.wait_synced()
        assert len(rows(b)) == 20
        # the restored store has a new epoch: its device re-pushes everything it holds
        async with peers(node.url, "kept", a) as (pa,):
            await pa.wait_synced()
            assert pa.stats.pushed_changes > 0
    both = relay_cli("backup", "--database", pg_url, "--data-dir", str(tmp_path), "--store", "x",
                     "--to", str(tmp_path / "x.bak"))  # fmt: skip
    assert both.returncode == 2 and "exclude each other" in both.stderr


async def test_tokens_and_the_byte_quota_hold_across_nodes(
    nodes: NodeFactory, tmp_path: Path
) -> None:
    import secrets as secrets_module

    from crsync_relay.auth import issue_token

    from crsync.errors import AuthError, ProtocolError
    from crsync.peer import PeerState

    secret_file = tmp_path / "secret"
    secret_file.write_text(secrets_module.token_urlsafe(48))
    secret_file.chmod(0o600)
    secret = secret_file.read_bytes().strip()
    quota = 150_000
    node1 = nodes("--max-store-bytes", str(quota), secret_file=secret_file)
    node2 = nodes("--max-store-bytes", str(quota), secret_file=secret_file)
    token = issue_token(secret, ["full"], 3600, subject="t")
    w1, w2, other = (open_db(tmp_path / f"{n}.db") for n in ("w1", "w2", "other"))
    with trio.fail_after(60):
        async with Peer(w1, node1.url, store="full", token=token, **FAST) as p1:  # type: ignore[arg-type]
            with w1.conn:
                w1.conn.executemany(
                    "INSERT INTO todos (id, title, data) VALUES (?, 't', ?)",
                    [(f"r{i:02}", bytes(8192)) for i in range(40)],
                )
            await p1.wait_synced()
        # the store is over its quota for every node: node 2 refuses a push to it
        w2.conn.execute("INSERT INTO todos (id, title) VALUES ('late', 'x')")
        async with Peer(w2, node2.url, store="full", token=token, **FAST) as p2:  # type: ignore[arg-type]
            with pytest.raises(ProtocolError, match="quota_exceeded"):
                await p2.wait_synced()
            assert p2.state is PeerState.ERROR
        # a token for one store does not open another, on any node
        async with Peer(other, node2.url, store="other", token=token, **FAST) as po:  # type: ignore[arg-type]
            with pytest.raises(AuthError, match="forbidden"):
                await po.wait_synced()
    assert node2.wait_for(r"code=quota_exceeded") >= 1
