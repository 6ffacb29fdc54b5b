"""Refusals carry their protocol error code; both CLIs' exit statuses (one table)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import crsync_relay.cli as relay_cli_module
import pytest
from click.testing import CliRunner
from crsync_relay.auth import TokenExpired, TokenInvalid, issue_token, verify_token
from crsync_relay.cli import main as relay_cli
from crsync_relay.datadir import BadStoreId, check_store_id
from crsync_relay.hub import Hub, Overloaded, QuotaExceeded
from crsync_relay.refusal import Refusal

from crsync.errors import AuthError, ExitStatus
from crsync.protocol import ErrorCode

SECRET = b"s" * 32


def test_each_refusal_class_knows_its_error_code() -> None:
    assert BadStoreId("x").code == ErrorCode.BAD_STORE
    assert Overloaded("x").code == ErrorCode.OVERLOADED
    assert QuotaExceeded("x").code == ErrorCode.QUOTA_EXCEEDED
    assert TokenInvalid("x").code == ErrorCode.UNAUTHORIZED
    assert TokenExpired("x").code == ErrorCode.TOKEN_EXPIRED
    for cls in (BadStoreId, Overloaded, QuotaExceeded, TokenInvalid, TokenExpired):
        assert issubclass(cls, Refusal)


def test_refusals_raised_by_the_checks_carry_their_codes(tmp_path: Path) -> None:
    with pytest.raises(BadStoreId) as bad:
        check_store_id("../etc")
    assert bad.value.code == "bad_store" and "invalid store id" in bad.value.reason
    with pytest.raises(BadStoreId):
        Hub(tmp_path).path_for("a/b")
    with pytest.raises(TokenInvalid) as invalid:
        verify_token(SECRET, "not-a-token")
    assert invalid.value.code == "unauthorized" and isinstance(invalid.value, AuthError)
    old = issue_token(SECRET, ["s"], 60, now=time.time() - 3600)
    with pytest.raises(TokenExpired) as expired:
        verify_token(SECRET, old)
    assert expired.value.code == "token_expired" and isinstance(expired.value, AuthError)


def test_relay_cli_exit_statuses_follow_one_table(tmp_path: Path) -> None:
    assert [int(s) for s in ExitStatus] == [0, 1, 2]
    runner = CliRunner()
    missing = runner.invoke(
        relay_cli,
        ["backup", "--data-dir", str(tmp_path), "--store", "nope", "--to", str(tmp_path / "x.bak")],
    )
    assert missing.exit_code == ExitStatus.ERROR, missing.output
    no_dir = runner.invoke(relay_cli, ["serve", "--dev"], env={"CRSYNC_RELAY_DATA_DIR": None})
    assert no_dir.exit_code == ExitStatus.USAGE, no_dir.output
    unknown = runner.invoke(relay_cli, ["stores", "--no-such-option"])
    assert unknown.exit_code == ExitStatus.USAGE, unknown.output
    listed = runner.invoke(relay_cli, ["stores", "--data-dir", str(tmp_path)])
    assert listed.exit_code == ExitStatus.OK, listed.output


def test_both_clis_use_the_same_exit_status_table(tmp_path: Path) -> None:
    """``crsync`` ends with the statuses of ``crsync-relay``: one table (crsync.errors)."""
    from crsync.cli import main as crsync_main

    assert relay_cli_module.ExitStatus is ExitStatus
    assert crsync_main(["status", str(tmp_path / "missing.db")]) == ExitStatus.ERROR
    assert crsync_main(["status", "--no-such-option"]) == ExitStatus.USAGE
    db = tmp_path / "app.db"
    sqlite3.connect(db).close()
    assert crsync_main(["status", str(db)]) == ExitStatus.OK
