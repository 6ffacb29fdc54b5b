"""Fixtures of the cluster tests: relay nodes (real ``crsync-relay serve --database``
processes) on a private PostgreSQL server (see :mod:`store.pg_server`), a fresh database per
test."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from crsync_relay.process import RelayLauncher
from store.pg_fixtures import REQUIRE_PG, pg_server
from store.pg_server import PrivatePostgres

from .nginx import REQUIRE_NGINX, Nginx, NginxUnavailable, find_nginx

__all__ = ["REQUIRE_PG", "pg_server"]

READY_TIMEOUT = 30.0

NodeFactory = Callable[..., RelayLauncher]


@pytest.fixture
def pg_url(pg_server: PrivatePostgres) -> str:
    """A ``postgresql://`` URL of a fresh, empty database."""
    name = f"relay_{uuid.uuid4().hex[:12]}"
    pg_server.create_database(name)
    return pg_server.url(name)


def start_node(node: RelayLauncher, server: PrivatePostgres) -> None:
    """Start a relay node; if it does not listen, fail with its log and PostgreSQL's."""
    try:
        node.start()
    except RuntimeError as exc:
        raise AssertionError(
            f"{exc}\n--- PostgreSQL on port {server.port}:\n{server.log_tail()}"
        ) from None


@pytest.fixture
def nodes(pg_url: str, pg_server: PrivatePostgres, tmp_path: Path) -> Iterator[NodeFactory]:
    """``nodes(*extra_args, database=pg_url, secret_file=None)`` starts a relay node on the
    test's database (``database``: another URL; without ``secret_file``, ``--dev``); every
    node is stopped at the end."""
    started: list[RelayLauncher] = []

    def make(
        *extra_args: str, database: str | None = None, secret_file: Path | None = None
    ) -> RelayLauncher:
        node = RelayLauncher(
            None,
            database=database or pg_url,
            secret_file=secret_file,
            args=("--log-level", "debug", *extra_args),
            ready_timeout=READY_TIMEOUT,
        )
        started.append(node)
        start_node(node, pg_server)
        return node

    try:
        yield make
    finally:
        for node in started:
            try:
                node.stop()
            except RuntimeError:
                node.kill()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def balancer(tmp_path: Path) -> Iterator[Callable[[list[int]], Nginx]]:
    """``balancer(ports)`` starts nginx on a free loopback port balancing WebSockets over the
    relay nodes on ``ports``; skips where nginx is absent (fails with CRSYNC_REQUIRE_NGINX=1)."""
    try:
        find_nginx()
    except NginxUnavailable as exc:
        if REQUIRE_NGINX:
            pytest.fail(f"CRSYNC_REQUIRE_NGINX=1 but {exc}")
        pytest.skip(str(exc))
    started: list[Nginx] = []

    def make(ports: list[int]) -> Nginx:
        lb = Nginx(tmp_path / f"nginx{len(started)}", free_port(), ports)
        started.append(lb)
        lb.start()
        return lb

    try:
        yield make
    finally:
        for lb in started:
            lb.stop()
