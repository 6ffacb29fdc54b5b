"""The deployment files in server/deploy/ stay in step with ``crsync-relay serve``.

The example TOML must document every ``serve`` setting under its real name (the relay ignores
unknown keys, so a misspelt key would silently do nothing) and must start a relay as written;
the systemd unit must carry the settings a production service needs and pass only options that
``serve`` accepts.
"""

from __future__ import annotations

import configparser
import json
import re
import secrets
import shlex
import ssl
import tomllib
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trustme
from crsync_relay.cli import serve
from crsync_relay.process import RelayLauncher
from relay_harness import running

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "server" / "deploy"
EXAMPLE = DEPLOY / "crsync-relay.toml"
UNIT = DEPLOY / "crsync-relay.service"
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_LISTENING = re.compile(r"relay\.listening .*\bport=(\d+)")
_COMMENTED_KEY = re.compile(r"^#\s*([a-z_]+)\s*=", re.MULTILINE)

# serve's option names as config keys (``--max-frame-bytes`` -> ``max_frame_bytes``).
SERVE_KEYS = {p.name for p in serve.params if p.name} - {"config_path"}
SERVE_FLAGS = {opt for p in serve.params for opt in p.opts if opt.startswith("--")}


@contextmanager
def relay_process(args: list[str], cwd: Path) -> Iterator[RelayLauncher]:
    """Run ``serve`` configured by ``args`` alone (the launcher adds no option); yield it once
    it listens; SIGTERM on exit, which must end it cleanly (status 0, ``relay.stopped``)."""
    with running(
        RelayLauncher(
            None, args=args, cwd=cwd, ready_timeout=READY_TIMEOUT, stop_timeout=STOP_TIMEOUT
        )
    ) as relay:
        yield relay


def _healthz(relay: RelayLauncher, scheme: str = "http", ctx: ssl.SSLContext | None = None) -> None:
    """GET /healthz. An answer also means the relay's SIGTERM handler is installed: the relay
    logs relay.listening a few statements before it installs it, and a SIGTERM in between
    kills it without a clean shutdown."""
    url = f"{scheme}://127.0.0.1:{relay.port}/healthz"
    with urllib.request.urlopen(url, timeout=READY_TIMEOUT, context=ctx) as resp:
        assert resp.status == 200
        assert resp.read() == b"ok\n"


def _listening(lines: list[str], log_format: str) -> str:
    """The text of the ``relay.listening`` event, checking the line's format."""
    line = next(line for line in lines if _LISTENING.search(line))
    if log_format == "json":
        event = json.loads(line)
        assert event["level"] == "info"
        return str(event["msg"])
    return line


def _relay_table() -> dict[str, object]:
    with EXAMPLE.open("rb") as f:
        data = tomllib.load(f)
    assert set(data) == {"relay"}, "settings belong in the [relay] table"
    relay = data["relay"]
    assert isinstance(relay, dict)
    return relay


def _unit() -> configparser.ConfigParser:
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str  # type: ignore[assignment,method-assign]
    cp.read(UNIT, encoding="utf-8")
    return cp


def test_example_config_names_every_serve_setting_and_nothing_else() -> None:
    active = set(_relay_table())
    commented = set(_COMMENTED_KEY.findall(EXAMPLE.read_text()))
    assert active <= SERVE_KEYS, f"keys serve ignores: {active - SERVE_KEYS}"
    assert commented <= SERVE_KEYS, f"commented keys serve ignores: {commented - SERVE_KEYS}"
    # --dev is a development switch, deliberately absent from a production example.
    assert active | commented == SERVE_KEYS - {"dev"}
    assert "dev" not in active


@pytest.mark.e2e
def test_example_config_starts_a_relay_as_written(tmp_path: Path) -> None:
    relay = _relay_table()
    secret = tmp_path / "secret"
    secret.write_text(secrets.token_urlsafe(48))
    secret.chmod(0o600)
    data_dir = tmp_path / "data"
    args = ["--config", str(EXAMPLE)]
    args += ["--data-dir", str(data_dir), "--port", "0", "--secret-file", str(secret)]
    with relay_process(args, tmp_path) as launched:
        event = _listening(launched.lines, str(relay["log_format"]))
        _healthz(launched)
    assert f"host={relay['host']} " in event
    assert f"data_dir={data_dir}" in event
    assert "tls=False" in event and "dev=False" in event


@pytest.mark.e2e
def test_example_config_tls_keys_serve_wss_when_uncommented(tmp_path: Path) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_path, key_path = tmp_path / "fullchain.pem", tmp_path / "privkey.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
    cert.private_key_pem.write_to_path(str(key_path))
    secret = tmp_path / "secret"
    secret.write_text(secrets.token_urlsafe(48))
    secret.chmod(0o600)
    data_dir = tmp_path / "data"
    # The operator's edit for recipe 2: uncomment the TLS lines and point them at real files;
    # data_dir, port and secret_file are set in the file too (no command-line overrides).
    text = EXAMPLE.read_text()
    edits = {
        "tls_cert": cert_path,
        "tls_key": key_path,
        "data_dir": data_dir,
        "secret_file": secret,
        "port": 0,
    }
    for key, value in edits.items():
        literal = str(value) if isinstance(value, int) else json.dumps(str(value))
        text, n = re.subn(
            rf"^(# )?{key} = .*$", f"{key} = {literal}", text, count=1, flags=re.MULTILINE
        )
        assert n == 1, f"{key} not found in {EXAMPLE}"
    config = tmp_path / "relay.toml"
    config.write_text(text)
    args = ["--config", str(config)]
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with relay_process(args, tmp_path) as launched:
        event = _listening(launched.lines, str(_relay_table()["log_format"]))
        _healthz(launched, "https", ctx)
    assert "tls=True" in event
    assert f"data_dir={data_dir}" in event


def test_systemd_unit_has_the_production_settings() -> None:
    unit = _unit()
    assert {"Unit", "Service", "Install"} <= set(unit.sections())
    u, s = unit["Unit"], unit["Service"]
    assert u.get("Description")
    assert "network-online.target" in u.get("After", "")
    assert s.get("User") not in (None, "", "root")
    assert s.get("StateDirectory")
    assert s.get("LoadCredential") or s.get("EnvironmentFile")
    assert s.get("ProtectSystem") == "strict"
    assert s.get("NoNewPrivileges") == "yes"
    assert s.get("Restart") == "on-failure"
    assert s.get("KillSignal") == "SIGTERM"
    for hardening in ("ProtectHome", "PrivateTmp", "PrivateDevices", "RestrictSUIDSGID"):
        assert s.get(hardening) == "yes", hardening
    assert unit["Install"].get("WantedBy") == "multi-user.target"


def test_systemd_unit_exec_start_passes_only_serve_options_consistently() -> None:
    s = _unit()["Service"]
    argv = shlex.split(s["ExecStart"])
    assert "serve" in argv
    opts = argv[argv.index("serve") + 1 :]
    flags = [a for a in opts if a.startswith("-")]
    assert set(flags) <= SERVE_FLAGS, f"options serve does not know: {set(flags) - SERVE_FLAGS}"
    values = dict(zip(opts[::2], opts[1::2], strict=True))
    # The data dir is the unit's StateDirectory (%S = /var/lib), the only writable path.
    assert values["--data-dir"] == f"%S/{s['StateDirectory']}"
    # The secret is the credential the unit loads, never a path the service user can read.
    cred_id = s["LoadCredential"].split(":", 1)[0]
    assert values["--secret-file"] == f"${{CREDENTIALS_DIRECTORY}}/{cred_id}"
    # The config lives in the unit's ConfigurationDirectory.
    assert values["--config"] == f"/etc/{s['ConfigurationDirectory']}/crsync-relay.toml"
