"""The relay's seams, checked on its source (docs/code-map.md):

* ``RelayStore`` (store.py) alone runs SQL on store files; ``datadir.StoreIndex`` runs SQL on
  the data directory's own index; ``pg_store`` alone runs SQL on PostgreSQL (stores, the
  LISTEN connection of cross-node fan-out, reactor leases). No other relay module opens a
  connection or executes a statement (the reactor's cursor and a backup's epoch go through
  the store).
* Transactions are opened in one place per backend, ``RelayStore._transaction`` and (writing
  an exported store file in one transaction) ``PgDatabase._export``: no other code writes
  ``BEGIN``, ``COMMIT`` or ``ROLLBACK``.
* The connection handler's rules are ``crsync.relay_session``'s: session.py imports it.
* The store rules both backends apply are ``store_rules``'s, pure: it imports no database
  driver, and both backends import it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import crsync_relay
import pytest

RELAY = Path(crsync_relay.__file__).parent
SQL_OWNERS = {"store", "datadir", "pg_store"}
TRANSACTION_OWNERS = {"_transaction", "_export"}
_RUNS_SQL = {"execute", "executemany", "executescript", "connect", "backup"}
_TRANSACTION_WORD = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT)\b")


def _sql_calls(tree: ast.AST) -> list[str]:
    """Calls that run SQL: ``x.execute(...)`` and friends, ``sqlite3.connect(...)``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = node.func.attr
            if name in _RUNS_SQL - {"connect", "backup"} or (
                name in {"connect", "backup"}
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "sqlite3"
            ):
                found.append(f"line {node.lineno}: {ast.unparse(node.func)}(...)")
    return found


def _transaction_words(tree: ast.AST) -> list[tuple[str, int]]:
    """String literals that begin or end a transaction, with the function they are in."""
    found = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef):
            continue
        for node in ast.walk(fn):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and _TRANSACTION_WORD.match(node.value)
            ):
                found.append((fn.name, node.lineno))
    return found


def _modules() -> list[str]:
    return sorted(p.stem for p in RELAY.glob("*.py"))


@pytest.mark.parametrize("module", sorted(set(_modules()) - SQL_OWNERS))
def test_only_the_store_runs_sql(module: str) -> None:
    tree = ast.parse((RELAY / f"{module}.py").read_text(encoding="utf-8"))
    assert _sql_calls(tree) == []


@pytest.mark.parametrize("module", _modules())
def test_transactions_open_in_one_helper(module: str) -> None:
    tree = ast.parse((RELAY / f"{module}.py").read_text(encoding="utf-8"))
    outside = [(fn, line) for fn, line in _transaction_words(tree) if fn not in TRANSACTION_OWNERS]
    assert outside == []


def test_the_checks_see_what_they_forbid() -> None:
    tree = ast.parse(
        "import sqlite3\n"
        "def f(store):\n"
        "    conn = sqlite3.connect('x')\n"
        "    conn.execute('BEGIN IMMEDIATE')\n"
        "    store.conn.executemany('INSERT INTO t VALUES (?)', [])\n"
        "    conn.execute('COMMIT')\n"
    )
    assert len(_sql_calls(tree)) == 4
    assert [fn for fn, _ in _transaction_words(tree)] == ["f", "f"]


def test_the_connection_handler_is_a_loop_around_the_relay_session() -> None:
    tree = ast.parse((RELAY / "session.py").read_text(encoding="utf-8"))
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "crsync"
        for alias in node.names
    }
    assert "relay_session" in imported


def _imported_modules(module: str) -> set[str]:
    tree = ast.parse((RELAY / f"{module}.py").read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            found.add(base)
            found |= {f"{base}.{alias.name}".replace("..", ".") for alias in node.names}
    return found


def test_store_rules_are_pure_and_shared_by_both_backends() -> None:
    rules = _imported_modules("store_rules")
    assert not {m for m in rules if m.split(".")[0] in {"sqlite3", "psycopg", "psycopg_pool"}}
    assert not {m for m in rules if m.startswith(".")}  # no relay module: no I/O comes in
    for backend in ("store", "pg_store"):
        assert ".store_rules" in _imported_modules(backend), backend
        assert ".store_api.StoreBackend" in _imported_modules(backend), backend
