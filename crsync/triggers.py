"""Generation of the capture SQL: per-table metadata table and AFTER triggers (pure functions).

Storage design: one metadata row per replicated row, in ``<table>__crsync``
(WITHOUT ROWID, keyed by the primary-key values), holding the row's causal length ``cl``, its
row-existence record (``sd``/``ss``/``sq``: db_version, site ordinal and seq of the ``-1``
sentinel; NULL when the row has none, as after a plain first insert), ``dbv`` (the latest
db_version stamped on the row, indexed, for the change feed; NULL for a *compacted*
tombstone, a delete below the relay's horizon that keeps only its key and ``cl``, see
:func:`crsync.positions.apply_horizon`) and, per column *slot* ``i``, the
cell clock ``v{i}`` (col_version), ``d{i}`` (db_version), ``s{i}`` (site ordinal, 0 = local) and
``q{i}`` (seq). A NULL ``v{i}`` means the cell has no clock (deleted row, or a column added by a
migration and never written).

Triggers are plain SQL: they read the open db_version from the one-row table ``crsync_clock``
(joined, so a merge in progress, ``crsync_clock.merging = 1``, set and cleared inside the merging
transaction, makes them write nothing), so writes from any connection or process are captured.

``seq``: why it follows write order and never repeats within one db_version.

* Every trigger firing computes ``base = total_changes() * SEQ_STEP`` and stamps its records
  ``base + offset``: offset 0 for the row-existence record of the firing's first row (a
  delete, a re-insert, or the *old* key of a primary-key change), then 1 for the new key of a
  primary-key change, then ``2 + j`` for the ``j``-th current non-pk column in table order
  (the order cr-sqlite 0.16 numbers them in). ``SEQ_STEP`` (64) is one constant for every
  table, so the order holds *across* tables too (a per-table step, as before, let a narrow
  table's later write get a smaller seq than a wide table's earlier one). It is small because
  seqs are stored for every cell: a step of 2**16 made them 6-byte integers and cost 20% more
  metadata. A table with more than ``SEQ_STEP - 2`` columns needs ``units`` steps per firing;
  its triggers end with ``units - 1`` no-op updates of the clock row, each counted by
  ``total_changes()``, so the next firing starts ``units`` steps higher.
* ``total_changes()`` (SQLite built-in, per connection, never decreasing) counts the rows
  written by every completed statement, including statements of trigger programs. One
  statement sees one value of it, so the records a firing writes with one statement (all of
  them, except in the primary-key trigger) differ by their offsets. A firing that writes
  metadata completes statements that changed at least ``units`` rows, so the next firing on
  the connection sees a larger ``total_changes()``: its seqs are at least
  ``units * SEQ_STEP`` higher, which no offset reaches. The primary-key trigger writes the new
  key first (it reads the old key's clocks) and the old key second, after its first statement
  added exactly one row: the second statement takes that row off, so both share the firing's
  base and the old key's delete (offset 0) orders first. So the writes of one connection, and
  therefore of one transaction, get strictly increasing seqs in the order they happen, across
  tables, without a counter row that every write would update (that update alone doubled the
  cost of an insert).
* ``total_changes()`` is per connection, and one db_version can hold transactions of several
  connections (see crsync.database: a version is sealed only when someone reads the feed), so
  two connections can produce the same seq in one version. Sealing (a write transaction,
  after which nothing can join the version) therefore checks the local records of the version
  it seals for a repeated seq and, only if it finds one, renumbers them 0, 1, 2, ... in
  (seq, table, key) order: a strictly monotone renumbering, so each transaction's order
  survives, and afterwards no local seq repeats within the version. The check (a GROUP BY
  over the version's local records) is skipped when the sealing connection opened the version
  and ``PRAGMA data_version`` shows no other connection committed since: then every record
  has this connection's seqs. Readers only ever see
  sealed versions (``changes()`` stops at the last sealed one), so they never see a repeated
  local seq. Merged changes keep their author's seq (as in cr-sqlite) and are not renumbered.
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from .change import MAX_CLOCK
from .schema import TableInfo, quote_ident

V = "k.db_version"
CLOCK = "FROM crsync_clock AS k WHERE k.merging = 0"

SEQ_STEP = 64
"""Seq numbers per ``total_changes()`` unit, the same for every table (see the module doc)."""
S = f"(total_changes() * {SEQ_STEP})"
"""SQL for the seq base of a trigger firing."""


def seq_offset(position: int) -> int:
    """Seq offset of the ``position``-th current non-pk column (0-based, table order)."""
    return 2 + position


def seq_units(ncolumns: int) -> int:
    """``total_changes()`` units one firing on a table with ``ncolumns`` non-pk columns uses."""
    return -(-seq_offset(ncolumns) // SEQ_STEP)


def seq_padding(ncolumns: int) -> str:
    """Statements ending a trigger body so that a firing uses ``seq_units`` units."""
    return "".join(
        " UPDATE crsync_clock SET merging = 0 WHERE merging = 0;"
        for _ in range(seq_units(ncolumns) - 1)
    )


def meta_table_name(table: str) -> str:
    """Name of the metadata table of a replicated table."""
    return f"{table}__crsync"


def dbv_index_name(table: str) -> str:
    """Name of the ``dbv`` index of a replicated table's metadata table."""
    return f"{table}__crsync_dbv"


DBV_INDEX_WHERE = "dbv IS NOT NULL"
"""The ``dbv`` index is partial: a compacted tombstone (``dbv`` NULL, see
:func:`crsync.positions.apply_horizon`) leaves it. Queries ``dbv > ?`` imply it, so SQLite
uses the index for them."""


def bump(expr: str) -> str:
    """SQL for a clock one above ``expr``, saturating at :data:`crsync.change.MAX_CLOCK`: a
    clock there can only have been forged, and one past it would be refused by every peer (a
    local edit of such a cell still syncs: it ties, and the value decides)."""
    return f"min({expr} + 1, {MAX_CLOCK})"


# The causal length after a delete (the next even number), refused with a clear error past the
# clock bound instead of overflowing: only a forged causal length can be there.
DELETE_CL = (
    f"CASE WHEN cl % 2 = 1 AND cl >= {MAX_CLOCK} THEN RAISE(ABORT, 'crsync: this row''s causal "
    f"length is at the clock bound {MAX_CLOCK} (a forged clock): it cannot be deleted') "
    "ELSE cl + (cl % 2) END"
)


def cell_columns(slot: int) -> tuple[str, str, str, str]:
    """Metadata column names (col_version, db_version, site, seq) of a column slot."""
    return (f"v{slot}", f"d{slot}", f"s{slot}", f"q{slot}")


@attrs.frozen
class CaptureSql:
    """The SQL that makes one table replicated."""

    meta_table: list[str]
    """CREATE TABLE/INDEX statements for the metadata table (IF NOT EXISTS)."""
    add_slots: list[str]
    """ALTER TABLE statements adding metadata columns for new column slots."""
    drop_triggers: list[str]
    create_triggers: list[str]

    def script(self) -> str:
        """Everything as one SQL script."""
        return (
            ";\n".join(self.meta_table + self.add_slots + self.drop_triggers + self.create_triggers)
            + ";\n"
        )


def trigger_names(table: str) -> list[str]:
    """Names of the capture triggers of a table."""
    return [f"{table}__crsync_{s}" for s in ("ins", "upd", "pk", "del")]


def generate(
    info: TableInfo, slots: Mapping[str, int], nslots: int, existing_slots: int = 0
) -> CaptureSql:
    """Build the capture SQL for a table.

    Args:
        info: the table's shape.
        slots: metadata slot of each current non-pk column.
        nslots: number of slots in use (slots of dropped columns stay reserved).
        existing_slots: slots the metadata table already has columns for.
    """
    q = quote_ident
    t = q(info.name)
    m = q(meta_table_name(info.name))
    npk = len(info.pk)
    pcols = [f"p{j}" for j in range(npk)]
    pk_list = ", ".join(pcols)
    cur = [(c.name, slots[c.name]) for c in info.columns]
    pad = seq_padding(len(cur))
    pk_only = not cur

    slot_defs = []
    for i in range(nslots):
        slot_defs += [f"{c} INTEGER" for c in cell_columns(i)]
    meta = [
        f"CREATE TABLE IF NOT EXISTS {m} ("
        + ", ".join(
            [
                *(f"p{j} {c.decltype}".rstrip() for j, c in enumerate(info.pk)),
                "cl INTEGER NOT NULL",
                "sd INTEGER",
                "ss INTEGER",
                "sq INTEGER",
                "dbv INTEGER",
                *slot_defs,
                f"PRIMARY KEY ({pk_list})",
            ]
        )
        + ") WITHOUT ROWID",
        f"CREATE INDEX IF NOT EXISTS {q(dbv_index_name(info.name))} ON {m} (dbv) "
        f"WHERE {DBV_INDEX_WHERE}",
    ]
    add_slots = (
        [
            f"ALTER TABLE {m} ADD COLUMN {c} INTEGER"
            for i in range(existing_slots, nslots)
            for c in cell_columns(i)
        ]
        if existing_slots
        else []
    )

    def match(prefix: str, alias: str = "") -> str:
        a = f"{alias}." if alias else ""
        return " AND ".join(f"{a}p{j} = +{prefix}.{q(c.name)}" for j, c in enumerate(info.pk))

    new_pk = ", ".join(f"NEW.{q(c.name)}" for c in info.pk)
    old_pk = ", ".join(f"OLD.{q(c.name)}" for c in info.pk)
    pk_same = " AND ".join(f"NEW.{q(c.name)} IS OLD.{q(c.name)}" for c in info.pk)

    def changed(col: str) -> str:
        n, o = f"NEW.{q(col)}", f"OLD.{q(col)}"
        return f"({n} IS NOT {o} OR typeof({n}) <> typeof({o}))"

    all_cells_null = [f"{c} = NULL" for i in range(nslots) for c in cell_columns(i)]

    # AFTER INSERT: new row (cl 1, cells @1), re-insert of a deleted row (cl+1, sentinel, cells
    # @1), or INSERT OR REPLACE of a live row (cells +1, cl untouched: see docs/compatibility.md).
    ins_cols = [*pcols, "cl", "sd", "ss", "sq", "dbv"]
    ins_vals = [new_pk, "1"] + ([V, "0", S] if pk_only else ["NULL", "NULL", "NULL"]) + [V]
    upd_sets = [
        "cl = CASE WHEN cl % 2 = 0 THEN cl + 1 ELSE cl END",
        "sd = CASE WHEN cl % 2 = 0 THEN excluded.dbv ELSE sd END",
        "ss = CASE WHEN cl % 2 = 0 THEN 0 ELSE ss END",
        f"sq = CASE WHEN cl % 2 = 0 THEN {S} ELSE sq END",
        "dbv = excluded.dbv",
    ]
    for j, (_name, i) in enumerate(cur):
        v, d, s, qq = cell_columns(i)
        ins_cols += [v, d, s, qq]
        ins_vals += ["1", V, "0", f"{S} + {seq_offset(j)}"]
        upd_sets += [
            f"{v} = {bump(f'COALESCE({v}, 0)')}",
            f"{d} = excluded.{d}",
            f"{s} = 0",
            f"{qq} = excluded.{qq}",
        ]
    ins_where = " WHERE cl % 2 = 0" if pk_only else ""
    trig_ins = (
        f"CREATE TRIGGER {q(trigger_names(info.name)[0])} AFTER INSERT ON {t} BEGIN "
        f"INSERT INTO {m} ({', '.join(ins_cols)}) SELECT {', '.join(ins_vals)} {CLOCK} "
        f"ON CONFLICT ({pk_list}) DO UPDATE SET {', '.join(upd_sets)}{ins_where};{pad} END"
    )

    triggers = [trig_ins]
    if not pk_only:
        # AFTER UPDATE, primary key unchanged: bump exactly the cells that changed (type-aware).
        u_cols = [*pcols, "cl", "dbv"]
        u_vals = [new_pk, "1", V]
        u_sets = ["dbv = excluded.dbv"]
        for j, (name, i) in enumerate(cur):
            v, d, s, qq = cell_columns(i)
            ch = changed(name)
            u_cols += [v, d, s, qq]
            u_vals += [f"CASE WHEN {ch} THEN 1 END", V, "0", f"{S} + {seq_offset(j)}"]
            u_sets += [
                f"{v} = CASE WHEN excluded.{v} IS NULL THEN {v} "
                f"ELSE {bump(f'COALESCE({v}, 0)')} END",
                f"{d} = CASE WHEN excluded.{v} IS NULL THEN {d} ELSE excluded.{d} END",
                f"{s} = CASE WHEN excluded.{v} IS NULL THEN {s} ELSE 0 END",
                f"{qq} = CASE WHEN excluded.{v} IS NULL THEN {qq} ELSE excluded.{qq} END",
            ]
        any_changed = " OR ".join(changed(name) for name, _ in cur)
        triggers.append(
            f"CREATE TRIGGER {q(trigger_names(info.name)[1])} AFTER UPDATE ON {t} "
            f"WHEN {pk_same} AND ({any_changed}) BEGIN "
            f"INSERT INTO {m} ({', '.join(u_cols)}) SELECT {', '.join(u_vals)} {CLOCK} "
            f"ON CONFLICT ({pk_list}) DO UPDATE SET {', '.join(u_sets)};{pad} END"
        )

    # AFTER UPDATE of the primary key: delete of the old key + create of the new one. Unlike
    # cr-sqlite 0.16, moved cells are re-stamped (new db_version, col_version + 1) so that a
    # peer pulling incrementally receives them (docs/compatibility.md).
    #
    # UPDATE OR REPLACE onto a key that is live: SQLite deletes the target row without firing
    # delete triggers, so this is the only trigger that sees it. As for INSERT OR REPLACE of a
    # live row, the target's causal length does not change (cr-sqlite 0.16 keeps it too when
    # the target has no "-1" record); raising it would be a resurrection on other devices that
    # wipes their concurrent edits of the row. The moved cells get a col_version above both
    # the old key's and the target's clocks, so they win over everything this database has
    # seen of either row. Dead target: resurrected (next odd cl), as cr-sqlite does.
    # seqs: old key's delete first, then the new key's "-1", then the cells (cr-sqlite order).
    # The old key is written by the second statement, when total_changes() has grown by the
    # one row the first statement wrote: one is taken off to share the firing's base.
    k_cols = [*pcols, "cl", "sd", "ss", "sq", "dbv"]
    k_vals = [new_pk, "1", V, "0", f"{S} + 1", V]
    k_sets = [
        "cl = cl + 1 - cl % 2",
        "sd = excluded.sd",
        "ss = 0",
        "sq = excluded.sq",
        "dbv = excluded.dbv",
    ]
    for j, (_name, i) in enumerate(cur):
        v, d, s, qq = cell_columns(i)
        k_cols += [v, d, s, qq]
        k_vals += [bump(f"COALESCE(o.{v}, 0)"), V, "0", f"{S} + {seq_offset(j)}"]
        k_sets += [
            f"{v} = CASE WHEN cl % 2 = 1 THEN max({bump(f'COALESCE({v}, 0)')}, excluded.{v}) "
            f"ELSE excluded.{v} END"
        ]
        k_sets += [f"{c} = excluded.{c}" for c in (d, s, qq)]
    triggers.append(
        f"CREATE TRIGGER {q(trigger_names(info.name)[2])} AFTER UPDATE ON {t} "
        f"WHEN NOT ({pk_same}) BEGIN "
        f"INSERT INTO {m} ({', '.join(k_cols)}) SELECT {', '.join(k_vals)} "
        f"FROM crsync_clock AS k LEFT JOIN {m} AS o ON {match('OLD', 'o')} "
        f"WHERE k.merging = 0 "
        f"ON CONFLICT ({pk_list}) DO UPDATE SET {', '.join(k_sets)}; "
        f"UPDATE {m} SET cl = {DELETE_CL}, sd = k.db_version, ss = 0, "
        f"sq = (total_changes() - 1) * {SEQ_STEP}, dbv = k.db_version"
        f"{''.join(', ' + c for c in all_cells_null)} FROM crsync_clock AS k "
        f"WHERE k.merging = 0 AND {match('OLD')};{pad} END"
    )

    # AFTER DELETE: the sentinel goes to the next even cl; every cell clock is dropped.
    triggers.append(
        f"CREATE TRIGGER {q(trigger_names(info.name)[3])} AFTER DELETE ON {t} BEGIN "
        f"INSERT INTO {m} ({pk_list}, cl, sd, ss, sq, dbv) SELECT {old_pk}, 2, {V}, 0, {S}, {V} "
        f"{CLOCK} ON CONFLICT ({pk_list}) DO UPDATE SET cl = {DELETE_CL}, "
        f"sd = excluded.sd, ss = 0, sq = excluded.sq, dbv = excluded.dbv"
        f"{''.join(', ' + c for c in all_cells_null)}; END"
    )
    drops = [f"DROP TRIGGER IF EXISTS {q(n)}" for n in trigger_names(info.name)]
    return CaptureSql(meta, add_slots, drops, triggers)
