"""server/deploy/Dockerfile stays in step with the tree and with ``crsync-relay serve``.

CI has no container engine, so the image is not built here; what can drift is checked instead:
every path the Dockerfile copies from the build context exists, the build stage runs
``server/build_binary.py`` with options it accepts, and the run stage passes only options
that ``serve`` accepts (test_binary.py builds and runs the executable itself).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from crsync_relay.cli import main, serve

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "server" / "deploy" / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_copies_only_paths_that_exist() -> None:
    copies = [rest for word, rest in _instructions() if word == "COPY" and "--from" not in rest]
    assert copies
    for rest in copies:
        *sources, _dest = shlex.split(rest)
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the tree"


def test_dockerfile_build_stage_runs_the_binary_builder() -> None:
    runs = " ".join(rest for word, rest in _instructions() if word == "RUN")
    assert "server/build_binary.py --output /out/crsync-relay" in runs
    # The extras that bring PyInstaller and the PostgreSQL client the binary bundles.
    assert "'.[binary,postgres]'" in runs
    copied = [rest for word, rest in _instructions() if word == "COPY" and "--from=build" in rest]
    assert copied == ["--from=build /out/crsync-relay /usr/local/bin/crsync-relay"]


def test_dockerfile_runs_serve_with_real_options_as_an_unprivileged_user() -> None:
    inst = dict(_instructions())
    assert json.loads(inst["ENTRYPOINT"]) == ["/usr/local/bin/crsync-relay"]
    cmd = json.loads(inst["CMD"])
    assert cmd[0] == "serve" and cmd[0] in main.commands
    flags = {opt for p in serve.params for opt in p.opts if opt.startswith("--")}
    for arg in cmd[1:]:
        if arg.startswith("--"):
            assert arg in flags, f"Dockerfile passes {arg}, which serve does not accept"
    assert "--secret-file" in cmd and "--dev" not in cmd
    assert inst["USER"] == "crsync-relay"
    final_from = [rest for word, rest in _instructions() if word == "FROM"][-1]
    assert "python" not in final_from  # the run stage has no Python


def test_dockerfile_documents_a_postgres_node_with_real_serve_options() -> None:
    # The commented `docker run` for a PostgreSQL node: the URL in the environment, a serve
    # command that passes only options serve accepts and no --data-dir (the backends exclude
    # each other, so the default command, which has one, cannot be used with the variable).
    text = re.sub(r"\\\n#\s*", " ", DOCKERFILE.read_text())
    runs = [line for line in text.splitlines() if "CRSYNC_RELAY_DATABASE=" in line]
    assert len(runs) == 1, runs
    args = shlex.split(runs[0].lstrip("# "))
    assert "crsync-relay" in args
    cmd = args[args.index("serve") :]
    flags = {opt for p in serve.params for opt in p.opts if opt.startswith("--")}
    for arg in cmd[1:]:
        if arg.startswith("--"):
            assert arg in flags, f"Dockerfile documents {arg}, which serve does not accept"
    assert "--data-dir" not in cmd and "--database" not in cmd and "--secret-file" in cmd
    assert any(a.startswith("CRSYNC_RELAY_DATABASE=postgresql://") for a in args)
