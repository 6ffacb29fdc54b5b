"""The documentation's shell commands name real subcommands and options; mkdocs.yml is sound.

Every ```sh block of README.md and docs/**/*.md is split into simple commands; each command
run as ``crsync ...`` or ``crsync-relay ...`` must name an existing subcommand, and every long
option it uses must appear in that subcommand's ``--help``.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
import yaml
from click.testing import CliRunner
from crsync_relay.cli import main as relay_cli

from crsync.cli import cli as crsync_cli

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
PROGRAMS: dict[str, click.Group] = {"crsync": crsync_cli, "crsync-relay": relay_cli}
FENCE = re.compile(r"^([ \t]*)```sh[ \t]*\n(.*?)^\1```[ \t]*$", re.DOTALL | re.MULTILINE)
SEPARATORS = {";", "&", "&&", "|", "||", "(", ")", "$", "$(", "`"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def sh_blocks(text: str) -> list[str]:
    return [textwrap.dedent(m.group(2)) for m in FENCE.finditer(text)]


def logical_lines(block: str) -> list[str]:
    """Lines of a shell block, with backslash continuations joined and comments dropped."""
    out: list[str] = []
    for line in block.replace("\\\n", " ").splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            out.append(stripped)
    return out


def simple_commands(line: str) -> list[list[str]]:
    """Split a shell line into simple commands (at ; && || | & and around $( ... ))."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in SEPARATORS or set(token) <= set(";&|()"):
            commands.append([])
        elif token.endswith("$") and ASSIGNMENT.match(token):
            commands.append([])  # VAR=$( ... ): the command follows
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def cli_invocations(text: str) -> list[tuple[str, list[str]]]:
    """(program, arguments) of every crsync / crsync-relay command in the sh blocks."""
    found = []
    for block in sh_blocks(text):
        for line in logical_lines(block):
            for words in simple_commands(line):
                while words and ASSIGNMENT.match(words[0]):
                    words = words[1:]
                if words and Path(words[0]).name in PROGRAMS:
                    found.append((Path(words[0]).name, words[1:]))
    return found


def all_invocations() -> list[tuple[Path, str, list[str]]]:
    return [
        (path, prog, args)
        for path in doc_files()
        for prog, args in cli_invocations(path.read_text(encoding="utf-8"))
    ]


def help_text(prog: str, sub: str | None) -> str:
    args = [sub, "--help"] if sub else ["--help"]
    result = CliRunner().invoke(PROGRAMS[prog], args, prog_name=prog)
    assert result.exit_code == 0, f"{prog} {' '.join(args)} failed: {result.output}"
    return result.output


def problems_of(prog: str, args: list[str]) -> list[str]:
    """What is wrong with one documented invocation (empty if nothing)."""
    group = PROGRAMS[prog]
    sub = next((a for a in args if not a.startswith("-")), None)
    if sub is not None and sub not in group.commands:
        return [f"{prog}: no subcommand {sub!r}"]
    text = help_text(prog, sub)
    where = f"{prog} {sub}" if sub else prog
    problems = []
    for arg in args:
        if arg.startswith("--"):
            option = arg.split("=", 1)[0]
            if not re.search(rf"(^|[\s,]){re.escape(option)}([\s=,]|$)", text, re.MULTILINE):
                problems.append(f"{where}: no option {option}")
    return problems


def test_docs_show_crsync_and_relay_commands_in_sh_blocks() -> None:
    programs = {prog for _path, prog, _args in all_invocations()}
    assert programs == set(PROGRAMS)


def test_every_documented_command_uses_existing_subcommands_and_options() -> None:
    problems = [
        f"{path.relative_to(ROOT)}: {prog} {shlex.join(args)}: {p}"
        for path, prog, args in all_invocations()
        for p in problems_of(prog, args)
    ]
    assert problems == []


def test_every_subcommand_has_an_example_in_the_docs() -> None:
    used = {
        (prog, next((a for a in args if not a.startswith("-")), ""))
        for _, prog, args in all_invocations()
    }
    missing = [
        f"{prog} {name}"
        for prog, group in PROGRAMS.items()
        for name in group.commands
        if (prog, name) not in used
    ]
    assert missing == []


def test_checker_flags_unknown_options_and_subcommands() -> None:
    text = (
        "```sh\n"
        "TOKEN=$(crsync-relay token --store a --no-such-flag) && crsync sync x.db --url u \\\n"
        "  --bogus 1 | crsync nonsense\n"
        "```\n"
    )
    found = cli_invocations(text)
    assert [prog for prog, _ in found] == ["crsync-relay", "crsync", "crsync"]
    assert problems_of(*found[0]) == ["crsync-relay token: no option --no-such-flag"]
    assert problems_of(*found[1]) == ["crsync sync: no option --bogus"]
    assert problems_of(*found[2]) == ["crsync: no subcommand 'nonsense'"]


def test_checker_reads_sh_blocks_indented_in_lists() -> None:
    text = "1. Step:\n\n    ```sh\n    crsync status app.db --jsn\n    ```\n"
    found = cli_invocations(text)
    assert found == [("crsync", ["status", "app.db", "--jsn"])]
    assert problems_of(*found[0]) == ["crsync status: no option --jsn"]


def test_checker_accepts_quoted_arguments_and_env_prefixes() -> None:
    text = "```sh\nCRSYNC_TOKEN=x crsync sync a.db --url 'ws://h:1' --store \"s;1\" --watch\n```\n"
    found = cli_invocations(text)
    assert found == [("crsync", ["sync", "a.db", "--url", "ws://h:1", "--store", "s;1", "--watch"])]
    assert problems_of(*found[0]) == []


def nav_files(nav: object) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, list):
        return [f for item in nav for f in nav_files(item)]
    if isinstance(nav, dict):
        return [f for value in nav.values() for f in nav_files(value)]
    raise AssertionError(f"unexpected nav entry {nav!r}")


def load_mkdocs() -> dict[str, object]:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert isinstance(config, dict)
    return config


def test_mkdocs_nav_lists_existing_files() -> None:
    config = load_mkdocs()
    docs_dir = ROOT / str(config.get("docs_dir", "docs"))
    listed = nav_files(config["nav"])
    missing = [f for f in listed if not (docs_dir / f).is_file()]
    assert missing == []
    assert len(listed) == len(set(listed))


def test_mkdocs_nav_lists_every_page() -> None:
    config = load_mkdocs()
    docs_dir = ROOT / str(config.get("docs_dir", "docs"))
    pages = {p.relative_to(docs_dir).as_posix() for p in docs_dir.rglob("*.md")}
    assert pages - set(nav_files(config["nav"])) == set()


@pytest.mark.slow
def test_mkdocs_build_is_strict_clean(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "index.html").is_file()


CLI_REFERENCE = DOCS / "reference" / "cli.md"


def undocumented_in_reference(text: str) -> list[str]:
    """Subcommands without a ``### prog sub`` heading and long options missing from their
    section of the CLI reference."""
    missing = []
    for prog, group in PROGRAMS.items():
        for name, command in sorted(group.commands.items()):
            heading = re.search(
                rf"^### {re.escape(prog)} {re.escape(name)}\b.*?(?=^#{{2,3}} |\Z)",
                text,
                re.DOTALL | re.MULTILINE,
            )
            if heading is None:
                missing.append(f"{prog} {name}")
                continue
            section = heading.group(0)
            for param in command.params:
                for opt in param.opts:
                    if opt.startswith("--") and f"`{opt}" not in section:
                        missing.append(f"{prog} {name} {opt}")
    return missing


def test_cli_reference_documents_every_command_and_option() -> None:
    assert undocumented_in_reference(CLI_REFERENCE.read_text(encoding="utf-8")) == []


def test_reference_checker_flags_a_missing_option() -> None:
    text = CLI_REFERENCE.read_text(encoding="utf-8").replace("`--ttl", "`--tt1")
    assert "crsync-relay token --ttl" in undocumented_in_reference(text)
