"""Tracked tables changed behind crsync's back: detection and re-adoption (pure SQL helpers).

SQLite drops a table's triggers with the table. Alembic's batch mode, Django's schema editor,
sqlite-utils' ``table.transform()`` and SQLite's documented 12-step ALTER all rebuild a table
(create a new one, copy the rows, drop the old one, rename the new one), so after such a
migration nothing captures the table's writes any more. :func:`inspect` finds such tables by
comparing the registry (``crsync_tables``) with ``sqlite_schema``; :class:`crsync.Database`
runs it whenever ``PRAGMA schema_version`` moved, and re-adopts what it can.

Re-adoption cannot know which rows the app wrote between the rebuild and the detection (no
trigger saw them, and crsync keeps no copy of the values), so :func:`reconcile` treats every
cell it cannot prove unchanged as changed: each live row's cells are stamped as local writes
(``col_version + 1``), rows that disappeared become deletes, rows that reappeared are
re-created, new rows get clocks. It is the same as if this device had written every row once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence

import attrs

from .errors import SchemaError
from .pack import SqlValue
from .schema import TableInfo, fingerprint_of, quote_ident, table_info
from .triggers import bump, cell_columns, meta_table_name, trigger_names

OK = "ok"
ALTERED = "altered"  # capture triggers in place, shape changed (ALTER TABLE ... ADD COLUMN)
REBUILT = "rebuilt"  # the table exists but its capture triggers are gone
RENAMED = "renamed"
DROPPED = "dropped"
MIGRATE = "migrate"  # not found by inspect(): db.migrate() removed the triggers itself


@attrs.frozen
class Finding:
    """What :func:`inspect` found about one tracked table."""

    name: str
    kind: str
    renamed_to: str | None = None

    def error(self) -> SchemaError:
        """The error to raise for a table crsync cannot re-adopt by itself."""
        n = self.name
        if self.kind == RENAMED:
            new = self.renamed_to or "?"
            return SchemaError(
                n,
                f"was renamed to {new!r} outside crsync, so its changes are no longer read. "
                f"Rename it back (ALTER TABLE {quote_ident(new)} RENAME TO {quote_ident(n)}), "
                f"or replicate it under the new name: db.untrack({n!r}) then "
                f"db.track({new!r}) (other devices then see a new table)",
            )
        return SchemaError(
            n,
            "is tracked but no longer exists (dropped outside crsync), so its changes can no "
            f"longer be read or merged. If it was dropped on purpose, stop replicating it with "
            f"db.untrack({n!r}) (CLI: crsync untrack <db> {n}); if not, create it again: crsync "
            "re-adopts it on the next read",
        )


def inspect(conn: sqlite3.Connection) -> list[Finding]:
    """Compare every tracked table with the schema (three small queries plus one
    ``table_info`` per tracked table)."""
    registry = conn.execute("SELECT name, fingerprint FROM crsync_tables").fetchall()
    if not registry:
        return []
    trig_on: dict[str, str] = dict(
        conn.execute("SELECT name, tbl_name FROM sqlite_schema WHERE type = 'trigger'")
    )
    tables = {
        n.lower() for (n,) in conn.execute("SELECT name FROM sqlite_schema WHERE type = 'table'")
    }
    out = []
    for name, fp in registry:
        names = trigger_names(name)
        if name.lower() not in tables:
            moved = sorted({trig_on[t] for t in names if t in trig_on})
            if moved:
                out.append(Finding(name, RENAMED, moved[0]))
            else:
                out.append(Finding(name, DROPPED))
        else:
            present = {t for t in names if trig_on.get(t, "").lower() == name.lower()}
            if triggers_gone(name, present):
                out.append(Finding(name, REBUILT))
                continue
            info = table_info(conn, name)
            if fingerprint_of(info) != fp or not expected_triggers(info) <= present:
                out.append(Finding(name, ALTERED))
            else:
                out.append(Finding(name, OK))
    return out


def expected_triggers(info: TableInfo) -> set[str]:
    """The capture triggers a table of this shape has (no UPDATE trigger without columns)."""
    ins, upd, pk, dele = trigger_names(info.name)
    return {ins, upd, pk, dele} if info.columns else {ins, pk, dele}


def triggers_gone(table: str, present: set[str]) -> bool:
    """True if a capture trigger every table has is missing: the table was dropped and made
    again (or its triggers dropped), so writes since then were not captured."""
    ins, _upd, pk, dele = trigger_names(table)
    return not {ins, pk, dele} <= present


def missing_slot_columns(conn: sqlite3.Connection, table: str, nslots: int) -> list[str]:
    """ALTER statements adding the metadata columns of slots the metadata table lacks.

    Computed from the metadata table itself, so a table that had no slot at all (only
    primary-key columns) can gain its first column.
    """
    m = meta_table_name(table)
    have = {r[0] for r in conn.execute("SELECT name FROM pragma_table_info(?)", (m,))}
    if not have:
        return []  # no metadata table yet: CREATE TABLE makes every slot
    return [
        f"ALTER TABLE {quote_ident(m)} ADD COLUMN {c} INTEGER"
        for i in range(nslots)
        for c in cell_columns(i)
        if c not in have
    ]


def fresh_version(conn: sqlite3.Connection, metas: Sequence[str]) -> int:
    """A db_version no change carries yet (the open one if it is still empty, else the next).

    Writing re-adoption records at their own version, sealed right after (:func:`seal_after`),
    keeps their seq numbers unique within that version whatever the triggers use.
    """
    v = int(conn.execute("SELECT db_version FROM crsync_clock").fetchone()[0])
    for m in metas:
        if conn.execute(f"SELECT 1 FROM {quote_ident(m)} WHERE dbv = ? LIMIT 1", (v,)).fetchone():
            return v + 1
    return v


def seal_after(conn: sqlite3.Connection, version: int) -> None:
    """Move the open version past ``version`` (records written there are complete)."""
    conn.execute(
        "UPDATE crsync_clock SET db_version = ? WHERE db_version <= ?", (version + 1, version)
    )


# kinds of rows in the work table
_DELETE, _RESURRECT, _RESTAMP, _NEW = 1, 2, 3, 4


@attrs.define
class Reconciled:
    """Counts of rows :func:`reconcile` recorded."""

    deleted: int = 0
    recreated: int = 0
    restamped: int = 0
    new: int = 0

    @property
    def total(self) -> int:
        return self.deleted + self.recreated + self.restamped + self.new


def reconcile(
    conn: sqlite3.Connection,
    info: TableInfo,
    slots: Mapping[str, int],
    nslots: int,
    defaults: Mapping[str, SqlValue],
    version: int,
    seq_base: int,
    *,
    restamp: bool,
) -> tuple[Reconciled, int]:
    """Make a table's metadata agree with its rows, recording local writes at ``version``.

    - live metadata rows whose key is gone: delete records (cl + 1, sentinel, cells dropped);
    - deleted metadata rows whose key exists again: re-created (cl + 1, every cell stamped);
    - with ``restamp``: live rows get ``col_version + 1`` on every cell that has a clock, and
      a first clock on cells whose value differs from the column default; rows with no
      metadata get clocks as a local insert would.

    Returns:
        The counts, and the next free seq number at ``version``.
    """
    q = quote_ident
    m = q(meta_table_name(info.name))
    t = q(info.name)
    npk = len(info.pk)
    pcols = [f"p{j}" for j in range(npk)]
    step = nslots + 2
    cur = [(c.name, slots[c.name]) for c in info.columns]
    base_match = " AND ".join(f"b.{q(c.name)} = m.p{j}" for j, c in enumerate(info.pk))
    work_match = " AND ".join(f"a.p{j} = m.p{j}" for j in range(npk))
    conn.execute("DROP TABLE IF EXISTS temp.crsync_adopt")
    conn.execute(
        "CREATE TEMP TABLE crsync_adopt (rn INTEGER PRIMARY KEY, kind INTEGER NOT NULL, "
        + ", ".join(f"p{j} {c.decltype}".rstrip() for j, c in enumerate(info.pk))
        + ")"
    )
    ins = f"INSERT INTO temp.crsync_adopt (kind, {', '.join(pcols)}) "
    mp = ", ".join(f"m.p{j}" for j in range(npk))
    conn.execute(
        ins + f"SELECT {_DELETE}, {mp} FROM {m} AS m WHERE m.cl % 2 = 1 "
        f"AND NOT EXISTS (SELECT 1 FROM {t} AS b WHERE {base_match})"
    )
    live = "" if restamp else " WHERE m.cl % 2 = 0"
    conn.execute(
        ins + f"SELECT CASE WHEN m.cl % 2 = 0 THEN {_RESURRECT} ELSE {_RESTAMP} END, {mp} "
        f"FROM {m} AS m JOIN {t} AS b ON {base_match}{live}"
    )
    if restamp:
        bk = ", ".join(f"b.{q(c.name)}" for c in info.pk)
        conn.execute(
            ins + f"SELECT {_NEW}, {bk} FROM {t} AS b "
            f"WHERE NOT EXISTS (SELECT 1 FROM {m} AS m WHERE {base_match})"
        )
    counts = Reconciled()
    for kind, n in conn.execute("SELECT kind, count(*) FROM temp.crsync_adopt GROUP BY kind"):
        if kind == _DELETE:
            counts.deleted = n
        elif kind == _RESURRECT:
            counts.recreated = n
        elif kind == _RESTAMP:
            counts.restamped = n
        else:
            counts.new = n
    top = conn.execute("SELECT max(rn) FROM temp.crsync_adopt").fetchone()[0] or 0
    V = int(version)
    seq = f"({int(seq_base)} + a.rn * {step})"
    head = f"sd = {V}, ss = 0, sq = {seq}, dbv = {V}"
    if counts.deleted:
        nulls = "".join(f", {c} = NULL" for i in range(nslots) for c in cell_columns(i))
        conn.execute(
            f"UPDATE {m} AS m SET cl = {bump('m.cl')}, {head}{nulls} FROM temp.crsync_adopt AS a "
            f"WHERE a.kind = {_DELETE} AND {work_match}"
        )
    if counts.recreated:
        sets = "".join(
            f", {v} = {bump(f'COALESCE(m.{v}, 0)')}, {d} = {V}, {s} = 0, {qq} = {seq} + {1 + i}"
            for _, i in cur
            for v, d, s, qq in [cell_columns(i)]
        )
        conn.execute(
            f"UPDATE {m} AS m SET cl = {bump('m.cl')}, {head}{sets} FROM temp.crsync_adopt AS a "
            f"WHERE a.kind = {_RESURRECT} AND {work_match}"
        )
    if counts.restamped and cur:
        params: list[SqlValue] = []
        sets_l = [f"dbv = {V}"]
        for name, i in cur:
            v, d, s, qq = cell_columns(i)
            # one placeholder (the column default) per CASE below
            hit = f"(m.{v} IS NOT NULL OR b.{q(name)} IS NOT ?)"
            params += [defaults.get(name)] * 4
            sets_l += [
                f"{v} = CASE WHEN {hit} THEN {bump(f'COALESCE(m.{v}, 0)')} ELSE m.{v} END",
                f"{d} = CASE WHEN {hit} THEN {V} ELSE m.{d} END",
                f"{s} = CASE WHEN {hit} THEN 0 ELSE m.{s} END",
                f"{qq} = CASE WHEN {hit} THEN {seq} + {1 + i} ELSE m.{qq} END",
            ]
        bjoin = " AND ".join(f"b.{q(c.name)} = a.p{j}" for j, c in enumerate(info.pk))
        conn.execute(
            f"UPDATE {m} AS m SET {', '.join(sets_l)} FROM temp.crsync_adopt AS a "
            f"JOIN {t} AS b ON {bjoin} WHERE a.kind = {_RESTAMP} AND {work_match}",
            params,
        )
    if counts.new:
        cols = [*pcols, "cl", "sd", "ss", "sq", "dbv"]
        vals = [f"a.p{j}" for j in range(npk)] + ["1"]
        vals += [str(V), "0", seq] if not cur else ["NULL", "NULL", "NULL"]
        vals.append(str(V))
        for _, i in cur:
            cols += list(cell_columns(i))
            vals += ["1", str(V), "0", f"{seq} + {1 + i}"]
        conn.execute(
            f"INSERT INTO {m} ({', '.join(cols)}) SELECT {', '.join(vals)} "
            f"FROM temp.crsync_adopt AS a WHERE a.kind = {_NEW}"
        )
    conn.execute("DROP TABLE temp.crsync_adopt")
    return counts, int(seq_base) + (top + 1) * step
