"""The layering of the ``crsync`` package, checked on its source (see docs/code-map.md).

* The pure core (the change value type, packing, value order, the merge rules, the wire codec,
  the device and relay sync sessions) does no I/O: it imports no sqlite3, anyio, sniffio,
  asyncio, trio, websockets or watchfiles, and only other pure modules of the package.
  ``triggers`` generates SQL text and imports none of them directly.
* Storage never imports the sync layer when imported (no cycle between ``database`` and
  ``live``).
* Only the storage modules touch crsync's metadata: the sync layer (``peer``, ``live``, the
  CLI and the package's ``__init__``) runs no SQL naming a ``crsync_*`` or ``*__crsync`` table,
  does not build metadata table names, and uses no private member of another module's objects
  (``db._write()``, ``db._tracked``...): it goes through the storage API (``crsync.positions``,
  ``crsync.feed``, ``crsync.tracking``) and ``Database``'s public methods.
* Every module is in the code map, and imports (at run time) only what its "may import"
  column allows.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import crsync

PACKAGE = Path(crsync.__file__).parent

PURE = (
    "errors",
    "pack",
    "values",
    "change",
    "merge_rules",
    "protocol",
    "device_session",
    "relay_session",
)
SQL_TEXT_ONLY = ("triggers",)
IO_MODULES = {"sqlite3", "anyio", "sniffio", "asyncio", "trio", "websockets", "watchfiles"}

SYNC_LAYER = ("peer", "live", "watcher", "_websocket", "sync_thread", "cli", "__init__")
STORAGE = (
    "database",
    "tracking",
    "versions",
    "feed",
    "merge",
    "rejected",
    "adoption",
    "identity",
    "positions",
)
# What builds or names crsync's metadata tables: storage modules only.
METADATA_NAMES = {"meta_table_name", "cell_columns", "META_SUFFIX"}

_SQL_WORD = re.compile(r"\b(SELECT|INSERT|UPDATE|DELETE|CREATE|DROP|ALTER|REPLACE)\b")
_METADATA_TABLE = re.compile(r"\bcrsync_\w+|\w*__crsync\b")


def _tree(module: str) -> ast.Module:
    return ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))


def _imports(tree: ast.Module) -> tuple[set[str], set[str]]:
    """(outside modules, crsync modules) imported anywhere in a module, by top-level name."""
    outside: set[str] = set()
    inside: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")[0]
                if top == "crsync":
                    inside.add(alias.name.split(".")[1] if "." in alias.name else "__init__")
                else:
                    outside.add(top)
        elif isinstance(node, ast.ImportFrom):
            parts = (node.module or "").split(".")
            if node.level == 0 and parts[0] == "crsync":
                inside.add(parts[1] if len(parts) > 1 else "__init__")
            elif node.level == 0:
                if parts[0] != "__future__":
                    outside.add(parts[0])
            elif node.module:
                inside.add(parts[0])
            else:
                inside.update(alias.name for alias in node.names)
    return outside, inside


@pytest.mark.parametrize("module", PURE)
def test_pure_core_imports_no_io_and_only_pure_modules(module: str) -> None:
    outside, inside = _imports(_tree(module))
    assert not outside & IO_MODULES, f"crsync.{module} imports {sorted(outside & IO_MODULES)}"
    assert inside <= set(PURE), f"crsync.{module} imports {sorted(inside - set(PURE))}"


@pytest.mark.parametrize("module", SQL_TEXT_ONLY)
def test_sql_generation_imports_no_io(module: str) -> None:
    outside, _ = _imports(_tree(module))
    assert not outside & IO_MODULES, f"crsync.{module} imports {sorted(outside & IO_MODULES)}"


def _module_level_imports(tree: ast.Module) -> set[str]:
    """crsync modules imported when a module is imported (not inside functions, not only for
    type checking)."""
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("module", STORAGE)
def test_storage_never_imports_the_sync_layer_at_import_time(module: str) -> None:
    """The edge goes one way, live -> database; ``Database.watch`` and friends import
    ``crsync.live`` when called."""
    imported = _module_level_imports(_tree(module))
    assert not imported & set(SYNC_LAYER), f"crsync.{module} imports {imported & set(SYNC_LAYER)}"


# What each module may import from the package (docs/code-map.md, "may import").
_CORE = set(PURE)
_SCHEMA = {"schema", "triggers", "ids"}
_LOW = _CORE | _SCHEMA
_HELPERS = {"_gc", "_sqlite_errors", "_sync_lock", "_task_errors", "_trio_util", "_async_util"}
MAY_IMPORT: dict[str, set[str]] = {
    "errors": set(),
    "pack": {"errors"},
    "values": {"pack"},
    "change": {"errors", "pack"},
    "merge_rules": {"change", "pack", "values"},
    "protocol": {"change", "errors"},
    "device_session": {"change", "errors", "protocol"},
    "relay_session": {"change", "errors", "protocol"},
    "schema": _CORE,
    "triggers": _CORE | {"schema"},
    "ids": _CORE | {"schema"},
    "_gc": set(),
    "_sqlite_errors": {"errors"},
    "_sync_lock": set(),
    "_task_errors": set(),
    "_trio_util": {"_task_errors"},
    "_async_util": {"_task_errors"},
    "identity": set(),
    "rejected": _LOW,
    "adoption": _LOW,
    "versions": _LOW,
    "feed": _LOW | {"_gc", "versions"},
    "merge": _LOW | {"rejected"},
    "tracking": _LOW | {"adoption", "merge"},
    "positions": _LOW | {"identity", "merge", "versions"},
    # live only inside watch(), changes_feed() and on_change()
    "database": _LOW | set(STORAGE) | {"_gc", "live"},
    "watcher": {"_async_util"},
    "_websocket": {"errors"},
    "live": _LOW | {"database", "feed", "watcher", "_async_util"},
    "peer": _LOW | {"database", "positions", "watcher", "_websocket"} | _HELPERS,
    "cli": _LOW | {"database", "peer", "positions", "tracking", "trigger_sql"} | _HELPERS,
    "sync_thread": _LOW | {"database", "live", "peer", "_sqlite_errors"},
    "__init__": _LOW | {"database", "peer", "sync_thread", "tracking"},
    "__main__": {"cli"},
}


def test_every_module_is_in_the_code_map() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules == set(MAY_IMPORT)
    text = (PACKAGE.parent / "docs" / "code-map.md").read_text(encoding="utf-8")
    assert [m for m in sorted(modules) if f"`{m}`" not in text] == []


def _without_type_checking(tree: ast.Module) -> ast.Module:
    """The module without its ``if TYPE_CHECKING:`` blocks (imports for annotations only)."""
    body = [
        node
        for node in tree.body
        if not (
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Name)
            and node.test.id == "TYPE_CHECKING"
        )
    ]
    return ast.Module(body=body, type_ignores=[])


@pytest.mark.parametrize("module", sorted(MAY_IMPORT))
def test_modules_import_only_what_the_code_map_allows(module: str) -> None:
    """Imports made at run time (annotations may name any module)."""
    _, inside = _imports(_without_type_checking(_tree(module)))
    assert inside - {module} <= MAY_IMPORT[module], sorted(inside - MAY_IMPORT[module])


def _strings(tree: ast.Module) -> list[tuple[int, str]]:
    """Every string literal, f-strings joined with ``{}`` for their fields."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(
                v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else "{}"
                for v in node.values
            )
            out.append((node.lineno, text))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            out.append((node.lineno, node.value))
    return out


def _own_private_names(tree: ast.Module) -> set[str]:
    """Private names a module defines itself: functions, methods, classes, attributes."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return {n for n in names if n.startswith("_")}


def _violations(source: str) -> list[str]:
    tree = ast.parse(source)
    found = []
    for line, text in _strings(tree):
        if _SQL_WORD.search(text) and _METADATA_TABLE.search(text):
            found.append(f"line {line}: SQL on crsync's metadata: {text!r}")
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            for alias in node.names:
                if alias.name in METADATA_NAMES:
                    found.append(f"line {node.lineno}: imports {alias.name}")
    own = _own_private_names(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        name = node.attr
        if not name.startswith("_") or name.startswith("__") or name in own:
            continue
        if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
            continue
        found.append(f"line {node.lineno}: uses private member {ast.unparse(node)}")
    return found


@pytest.mark.parametrize("module", SYNC_LAYER)
def test_only_storage_modules_touch_crsync_metadata(module: str) -> None:
    assert _violations((PACKAGE / f"{module}.py").read_text(encoding="utf-8")) == []


def test_the_checks_see_what_they_forbid() -> None:
    """The boundary check flags SQL on crsync's tables, metadata names and private storage
    members when they are there (so a passing check means something)."""
    found = _violations(
        "from .triggers import meta_table_name\n"
        "def f(db, t):\n"
        "    with db._write() as conn:\n"
        "        conn.execute('SELECT version FROM crsync_peers WHERE peer = ?', ('k',))\n"
        "        conn.execute(f'SELECT 1 FROM {t}__crsync WHERE dbv > ?', (0,))\n"
        "    return db._tracked\n"
    )
    assert len(found) == 5, found


# ---------------------------------------------------------------- integrations (crsync.contrib)

CONTRIB = sorted((PACKAGE / "contrib").rglob("*.py"))
# Django's documented model metadata API (``Model._meta``) is public despite its name.
_THIRD_PARTY_PUBLIC = ("._meta",)


def _contrib_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@pytest.mark.parametrize("path", CONTRIB, ids=_contrib_name)
def test_contrib_uses_the_public_api_only(path: Path) -> None:
    """The integrations import only ``crsync``'s public names (and each other), run no SQL
    on crsync's metadata and use no private member of crsync's objects: what they do, an app
    can do by hand."""
    source = path.read_text(encoding="utf-8")
    tree = ast.parse(source)
    bad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            bad += [
                a.name
                for a in node.names
                if a.name.startswith("crsync.") and not a.name.startswith("crsync.contrib")
            ]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            module = node.module or ""
            if module == "crsync":
                bad += [a.name for a in node.names if a.name not in crsync.__all__]
            elif module.startswith("crsync.") and not module.startswith("crsync.contrib"):
                bad.append(module)
    assert bad == []
    violations = [
        v for v in _violations(source) if not any(ok in v for ok in _THIRD_PARTY_PUBLIC)
    ]
    assert violations == []


def test_every_contrib_module_is_in_the_code_map() -> None:
    text = (PACKAGE.parent / "docs" / "code-map.md").read_text(encoding="utf-8")
    assert [n for n in map(_contrib_name, CONTRIB) if f"`{n}`" not in text] == []
