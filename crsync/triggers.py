"""Generation of the capture SQL: per-table metadata table and AFTER triggers (pure functions).

Storage design (see docs/design.md): one metadata row per replicated row, in ``<table>__crsync``
(WITHOUT ROWID, keyed by the primary-key values), holding the row's causal length ``cl``, its
row-existence record (``sd``/``ss``/``sq``: db_version, site ordinal and seq of the ``-1``
sentinel; NULL when the row has none, as after a plain first insert), ``dbv`` (the latest
db_version stamped on the row, indexed, for the change feed) and, per column *slot* ``i``, the
cell clock ``v{i}`` (col_version), ``d{i}`` (db_version), ``s{i}`` (site ordinal, 0 = local) and
``q{i}`` (seq). A NULL ``v{i}`` means the cell has no clock (deleted row, or a column added by a
migration and never written).

Triggers are plain SQL: they read the open db_version from the one-row table ``crsync_clock``
(joined, so a merge in progress, ``crsync_clock.merging = 1``, set and cleared inside the merging
transaction, makes them write nothing), so writes from any connection or process are captured.
``seq`` comes from SQLite's built-in ``total_changes()``, which grows with every row written on
the connection: it orders the writes of one transaction without a counter row that every write
would have to update (that update alone doubled the cost of an insert).
"""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from .schema import TableInfo, quote_ident

V = "k.db_version"
CLOCK = "FROM crsync_clock AS k WHERE k.merging = 0"


def meta_table_name(table: str) -> str:
    """Name of the metadata table of a replicated table."""
    return f"{table}__crsync"


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
    step = nslots + 2  # seq numbers reserved per trigger firing
    S = f"(total_changes() * {step})"
    cur = [(c.name, slots[c.name]) for c in info.columns]
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
                "dbv INTEGER NOT NULL",
                *slot_defs,
                f"PRIMARY KEY ({pk_list})",
            ]
        )
        + ") WITHOUT ROWID",
        f"CREATE INDEX IF NOT EXISTS {q(meta_table_name(info.name) + '_dbv')} ON {m} (dbv)",
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
    for _name, i in cur:
        v, d, s, qq = cell_columns(i)
        ins_cols += [v, d, s, qq]
        ins_vals += ["1", V, "0", f"{S} + {1 + i}"]
        upd_sets += [
            f"{v} = COALESCE({v}, 0) + 1",
            f"{d} = excluded.{d}",
            f"{s} = 0",
            f"{qq} = excluded.{qq}",
        ]
    ins_where = " WHERE cl % 2 = 0" if pk_only else ""
    trig_ins = (
        f"CREATE TRIGGER {q(trigger_names(info.name)[0])} AFTER INSERT ON {t} BEGIN "
        f"INSERT INTO {m} ({', '.join(ins_cols)}) SELECT {', '.join(ins_vals)} {CLOCK} "
        f"ON CONFLICT ({pk_list}) DO UPDATE SET {', '.join(upd_sets)}{ins_where}; END"
    )

    triggers = [trig_ins]
    if not pk_only:
        # AFTER UPDATE, primary key unchanged: bump exactly the cells that changed (type-aware).
        u_cols = [*pcols, "cl", "dbv"]
        u_vals = [new_pk, "1", V]
        u_sets = ["dbv = excluded.dbv"]
        for name, i in cur:
            v, d, s, qq = cell_columns(i)
            ch = changed(name)
            u_cols += [v, d, s, qq]
            u_vals += [f"CASE WHEN {ch} THEN 1 END", V, "0", f"{S} + {1 + i}"]
            u_sets += [
                f"{v} = CASE WHEN excluded.{v} IS NULL THEN {v} ELSE COALESCE({v}, 0) + 1 END",
                f"{d} = CASE WHEN excluded.{v} IS NULL THEN {d} ELSE excluded.{d} END",
                f"{s} = CASE WHEN excluded.{v} IS NULL THEN {s} ELSE 0 END",
                f"{qq} = CASE WHEN excluded.{v} IS NULL THEN {qq} ELSE excluded.{qq} END",
            ]
        any_changed = " OR ".join(changed(name) for name, _ in cur)
        triggers.append(
            f"CREATE TRIGGER {q(trigger_names(info.name)[1])} AFTER UPDATE ON {t} "
            f"WHEN {pk_same} AND ({any_changed}) BEGIN "
            f"INSERT INTO {m} ({', '.join(u_cols)}) SELECT {', '.join(u_vals)} {CLOCK} "
            f"ON CONFLICT ({pk_list}) DO UPDATE SET {', '.join(u_sets)}; END"
        )

    # AFTER UPDATE of the primary key: delete of the old key + create of the new one. Unlike
    # cr-sqlite 0.16, moved cells are re-stamped (new db_version, col_version + 1) so that a
    # peer pulling incrementally receives them (docs/compatibility.md).
    k_cols = [*pcols, "cl", "sd", "ss", "sq", "dbv"]
    k_vals = [new_pk, "1", V, "0", S, V]
    k_sets = [
        "cl = cl + CASE WHEN cl % 2 = 0 THEN 1 ELSE 2 END",
        "sd = excluded.sd",
        "ss = 0",
        "sq = excluded.sq",
        "dbv = excluded.dbv",
    ]
    for _name, i in cur:
        v, d, s, qq = cell_columns(i)
        k_cols += [v, d, s, qq]
        k_vals += [f"COALESCE(o.{v}, 0) + 1", V, "0", f"{S} + {1 + i}"]
        k_sets += [f"{c} = excluded.{c}" for c in (v, d, s, qq)]
    triggers.append(
        f"CREATE TRIGGER {q(trigger_names(info.name)[2])} AFTER UPDATE ON {t} "
        f"WHEN NOT ({pk_same}) BEGIN "
        f"INSERT INTO {m} ({', '.join(k_cols)}) SELECT {', '.join(k_vals)} "
        f"FROM crsync_clock AS k LEFT JOIN {m} AS o ON {match('OLD', 'o')} "
        f"WHERE k.merging = 0 "
        f"ON CONFLICT ({pk_list}) DO UPDATE SET {', '.join(k_sets)}; "
        f"UPDATE {m} SET cl = cl + (cl % 2), sd = k.db_version, ss = 0, "
        f"sq = {S} + {step - 1}, dbv = k.db_version"
        f"{''.join(', ' + c for c in all_cells_null)} FROM crsync_clock AS k "
        f"WHERE k.merging = 0 AND {match('OLD')}; END"
    )

    # AFTER DELETE: the sentinel goes to the next even cl; every cell clock is dropped.
    triggers.append(
        f"CREATE TRIGGER {q(trigger_names(info.name)[3])} AFTER DELETE ON {t} BEGIN "
        f"INSERT INTO {m} ({pk_list}, cl, sd, ss, sq, dbv) SELECT {old_pk}, 2, {V}, 0, {S}, {V} "
        f"{CLOCK} ON CONFLICT ({pk_list}) DO UPDATE SET cl = cl + (cl % 2), "
        f"sd = excluded.sd, ss = 0, sq = excluded.sq, dbv = excluded.dbv"
        f"{''.join(', ' + c for c in all_cells_null)}; END"
    )
    drops = [f"DROP TRIGGER IF EXISTS {q(n)}" for n in trigger_names(info.name)]
    return CaptureSql(meta, add_slots, drops, triggers)
