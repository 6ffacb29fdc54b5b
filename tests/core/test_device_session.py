"""A device's sync rules (crsync.device_session.DeviceSession), without sockets or a database."""

from __future__ import annotations

import pytest

from crsync import device_session as ds
from crsync import protocol as p
from crsync.change import COLLECTED_SITE, Change
from crsync.errors import AuthError, ProtocolError, SchemaMismatchError

SITE = b"\x01" * 16
OTHER = b"\x02" * 16
NEW = b"\x03" * 16
SCHEMA = {"t": p.TableSchema(("id",), ("a",))}
RECORDED = ds.Stored("E", 5, 20)  # epoch E, pushed up to 5, merged up to 20


def _c(v: int, seq: int = 0, site: bytes = SITE) -> Change:
    return Change("t", b"\x01\x09\x01", "a", v, 1, v, site, 1, seq)


def _session(**kw: int) -> ds.DeviceSession:
    return ds.DeviceSession("s", "tok", **kw)


def _connected(
    stored: ds.Stored = RECORDED,
    welcome: p.Welcome | None = None,
    local: int = 9,
    token: str | None = None,
    **kw: int,
) -> tuple[ds.DeviceSession, list[ds.Action]]:
    s = _session(**kw)
    s.connect(stored, SITE, b"k" * 16, token, SCHEMA)
    w = welcome or p.Welcome(p.PROTOCOL_VERSION, "E", 30, 5)
    actions = s.handshake(s.decode(p.encode(w)), local)
    return s, actions


def _sent(actions: list[ds.Action]) -> list[p.Message]:
    return [a.message for a in actions if isinstance(a, ds.Send)]


# ------------------------------------------------------------------ hello and welcome


def test_hello_names_the_site_schema_and_resume_cursor() -> None:
    s = _session()
    hello = s.connect(ds.Stored("E", 5, 20), SITE, b"k" * 16, None, SCHEMA)
    assert hello == p.Hello(p.PROTOCOL_VERSION, "s", SITE, SCHEMA, 20, "E", "tok", b"k" * 16)
    # No epoch recorded: nothing to resume from.
    assert s.connect(ds.Stored("", 0, 20), SITE, None, None, SCHEMA).cursor == 0


def test_only_welcome_or_error_may_answer_the_hello() -> None:
    s = _session()
    s.connect(ds.Stored(), SITE, None, None, SCHEMA)
    with pytest.raises(ProtocolError) as err:
        s.decode(p.encode(p.Ack(1, 1, 1)))
    assert err.value.code == p.ErrorCode.UNEXPECTED.value
    assert not s.connected


def test_resume_under_the_same_epoch_keeps_the_positions() -> None:
    s, actions = _connected()
    assert actions == []
    assert (s.epoch, s.push_upto, s.pull_upto, s.relay_head) == ("E", 5, 20, 30)
    assert s.connected and not s.full_push


def test_the_relay_holding_more_than_recorded_moves_the_push_position() -> None:
    s, actions = _connected(welcome=p.Welcome(p.PROTOCOL_VERSION, "E", 30, 8))
    assert actions == [ds.RecordPush("E", 8)]
    assert s.push_upto == 8


def test_an_epoch_change_resets_positions_and_pushes_everything() -> None:
    s, actions = _connected(welcome=p.Welcome(p.PROTOCOL_VERSION, "NEW", 3, 0))
    assert actions == [ds.ResetPositions("NEW", "E", 3, False)]
    assert (s.epoch, s.push_upto, s.pull_upto, s.relay_head) == ("NEW", 0, 0, 3)
    assert s.full_push


def test_a_store_restored_from_an_older_copy_is_an_epoch_change() -> None:
    """Same epoch but the head is behind what was merged here."""
    s, actions = _connected(welcome=p.Welcome(p.PROTOCOL_VERSION, "E", 12, 5))
    assert actions == [ds.ResetPositions("E", "E", 12, True)]
    assert (s.push_upto, s.pull_upto) == (0, 0) and s.full_push


@pytest.mark.parametrize(("head", "full"), [(0, True), (7, False)])
def test_first_connection_pushes_every_site_only_to_an_empty_store(head: int, full: bool) -> None:
    s, actions = _connected(ds.Stored(), p.Welcome(p.PROTOCOL_VERSION, "E", head, 0))
    assert actions == [ds.ResetPositions("E", "", head, False)]
    assert s.full_push is full


def test_the_local_version_is_needed_only_when_the_relay_holds_more_than_recorded() -> None:
    s = _session()
    s.connect(RECORDED, SITE, None, None, SCHEMA)  # epoch E, pushed 5, merged 20
    more = p.Welcome(p.PROTOCOL_VERSION, "E", 30, 8)
    assert s.needs_local_version(more)
    assert not s.needs_local_version(p.Welcome(p.PROTOCOL_VERSION, "E", 30, 5))
    assert not s.needs_local_version(p.Welcome(p.PROTOCOL_VERSION, "X", 30, 8))  # new epoch
    assert not s.needs_local_version(p.Welcome(p.PROTOCOL_VERSION, "E", 12, 8))  # went back
    assert not s.needs_local_version(p.Error("overloaded", "busy"))
    with pytest.raises(RuntimeError):
        s.handshake(more)
    assert s.handshake(p.Welcome(p.PROTOCOL_VERSION, "E", 30, 5)) == []


def test_relay_acked_beyond_the_local_version_resets_the_site() -> None:
    """The file was restored from a backup: continue under a new site id, full push."""
    s, actions = _connected(welcome=p.Welcome(p.PROTOCOL_VERSION, "E", 30, 12), local=9)
    assert actions == [
        ds.ResetSite("relay-acked-12-beyond-local"),
        ds.Reconnect("site id reset; reconnecting under the new identity"),
    ]
    assert not s.connected
    s.site_reset(NEW)
    s.connect(ds.Stored("E", 5, 20), NEW, None, None, SCHEMA)
    s.handshake(p.Welcome(p.PROTOCOL_VERSION, "E", 30, 0), 9)
    assert s.site_id == NEW and s.full_push


def test_site_forbidden_resets_the_site_once_then_is_fatal() -> None:
    s = _session()
    s.connect(ds.Stored("E", 5, 20), SITE, b"k" * 16, None, SCHEMA)
    refused = p.Error(p.ErrorCode.SITE_FORBIDDEN.value, "bound to another key")
    actions = s.handshake(refused, 9)
    assert [type(a) for a in actions] == [ds.ResetSite, ds.Reconnect]
    s.site_reset(NEW)
    s.connect(ds.Stored("E", 5, 20), NEW, b"k" * 16, None, SCHEMA)
    (fail,) = s.handshake(refused, 9)
    assert isinstance(fail, ds.Fail) and fail.fatal
    assert isinstance(fail.error, ProtocolError)
    assert fail.error.code == p.ErrorCode.SITE_FORBIDDEN.value


def test_a_welcome_forgives_an_earlier_site_reset() -> None:
    s = _session()
    refused = p.Error(p.ErrorCode.SITE_FORBIDDEN.value, "bound")
    s.connect(ds.Stored(), SITE, None, None, SCHEMA)
    s.handshake(refused, 0)
    s.connect(ds.Stored(), NEW, None, None, SCHEMA)
    s.handshake(p.Welcome(p.PROTOCOL_VERSION, "E", 0, 0), 0)
    s.connect(ds.Stored("E"), NEW, None, None, SCHEMA)
    assert [type(a) for a in s.handshake(refused, 0)] == [ds.ResetSite, ds.Reconnect]


@pytest.mark.parametrize(
    ("code", "kind", "fatal"),
    [
        (p.ErrorCode.UNAUTHORIZED, AuthError, True),
        (p.ErrorCode.SCHEMA_MISMATCH, SchemaMismatchError, True),
        (p.ErrorCode.QUOTA_EXCEEDED, ProtocolError, True),
        (p.ErrorCode.OVERLOADED, ProtocolError, False),
        (p.ErrorCode.INTERNAL, ProtocolError, False),
    ],
)
def test_relay_errors_are_fatal_unless_retrying_can_help(
    code: p.ErrorCode, kind: type[Exception], fatal: bool
) -> None:
    s = _session()
    s.connect(ds.Stored(), SITE, None, None, SCHEMA)
    (fail,) = s.handshake(p.Error(code.value, "why"), 0)
    assert isinstance(fail, ds.Fail) and isinstance(fail.error, kind) and fail.fatal is fatal
    s2, _ = _connected()
    (again,) = s2.receive(p.Error(code.value, "why"))  # the same after the welcome
    assert isinstance(again, ds.Fail)
    assert (type(again.error), str(again.error), again.fatal) == (kind, str(fail.error), fatal)


def test_a_1008_close_naming_a_fatal_code_is_that_refusal() -> None:
    s, _ = _connected()
    fail = s.closed(1008, p.ErrorCode.QUOTA_EXCEEDED.value)
    assert fail is not None and fail.fatal
    assert s.closed(1008, p.ErrorCode.OVERLOADED.value) is None
    assert s.closed(1000, p.ErrorCode.QUOTA_EXCEEDED.value) is None
    assert s.closed(None, "") is None


# ------------------------------------------------------------------ push rounds and acks


def test_a_push_round_sends_own_changes_in_units_and_waits_for_each_ack() -> None:
    s, _ = _connected(batch_cells=2)
    changes = [_c(6), _c(6, 1, OTHER), _c(7), _c(8), _c(8, 1)]
    actions = s.push_round(9, changes, SCHEMA)
    assert actions == [
        ds.Send(p.Push(1, 5, 7, [_c(6), _c(7)], False)),
        ds.AwaitAck(7),
        ds.Send(p.Push(2, 7, 9, [_c(8), _c(8, 1)], False)),  # the last unit ends at sealed
        ds.AwaitAck(9),
    ]
    assert s.local_sealed == 9 and not s.synced


def test_a_version_larger_than_a_frame_goes_in_parts_of_one_unit() -> None:
    s, _ = _connected(batch_cells=2)
    actions = s.push_round(6, [_c(6), _c(6, 1), _c(6, 2)], SCHEMA)
    assert actions == [
        ds.Send(p.Push(1, 5, 6, [_c(6), _c(6, 1)], True)),
        ds.Send(p.Push(2, 5, 6, [_c(6, 2)], False)),
        ds.AwaitAck(6),
    ]


def test_a_round_with_nothing_of_this_site_moves_the_position_locally() -> None:
    s, _ = _connected()
    assert s.push_round(9, [_c(7, 0, OTHER)], SCHEMA) == [ds.RecordPush("E", 9)]
    assert s.push_upto == 9
    assert s.push_round(9, [], SCHEMA) == []


def test_a_full_push_sends_every_sites_changes_once() -> None:
    s, _ = _connected(welcome=p.Welcome(p.PROTOCOL_VERSION, "NEW", 0, 0))
    first = s.push_round(2, [_c(1, 0, OTHER), _c(2)], SCHEMA)
    assert _sent(first) == [p.Push(1, 0, 2, [_c(1, 0, OTHER), _c(2)], False)]
    again = s.push_round(3, [_c(3, 0, OTHER)], SCHEMA)
    assert again == [ds.RecordPush("NEW", 3)]  # later rounds push this site's only


def test_a_full_push_request_is_cleared_once_the_relay_acknowledged_it() -> None:
    s, _ = _connected(token="req")
    assert s.full_push
    s.push_round(9, [_c(7, 0, OTHER)], SCHEMA)
    assert s.receive(p.Ack(1, 8, 30)) == [ds.RecordPush("E", 8)]  # not all of it yet
    assert s.receive(p.Ack(1, 9, 30)) == [ds.RecordPush("E", 9), ds.ClearFullPush("req")]
    assert s.full_push_token is None


def test_a_full_push_request_with_nothing_to_push_is_cleared_at_once() -> None:
    s, _ = _connected(token="req")
    assert s.push_round(5, [], SCHEMA) == [ds.ClearFullPush("req")]


def test_acks_are_monotonic_and_raise_the_known_head() -> None:
    s, _ = _connected()
    assert s.receive(p.Ack(1, 7, 31)) == [ds.RecordPush("E", 7)]
    assert s.receive(p.Ack(2, 6, 40)) == []  # an older position is never recorded
    assert s.push_upto == 7 and s.relay_head == 40
    assert s.receive(p.Ack(3, 7, 35)) == [] and s.relay_head == 40


def test_a_changed_schema_is_announced_by_reconnecting() -> None:
    s, _ = _connected()
    wider = {**SCHEMA, "u": p.TableSchema(("id",), ())}
    assert s.push_round(9, [_c(6)], wider) == [ds.Reconnect("replicated schema changed")]
    assert s.push_upto == 5
    hello = s.connect(ds.Stored("E", 5, 20), SITE, None, None, wider)
    assert hello.schema == wider
    s.handshake(p.Welcome(p.PROTOCOL_VERSION, "E", 30, 5), 9)
    assert _sent(s.push_round(9, [_c(6)], wider)) == [p.Push(1, 5, 9, [_c(6)], False)]


def test_no_push_round_before_the_welcome() -> None:
    s = _session()
    s.connect(ds.Stored(), SITE, None, None, SCHEMA)
    with pytest.raises(RuntimeError):
        s.push_round(1, [], SCHEMA)


# ------------------------------------------------------------------ pulling


def test_changes_are_merged_then_received_is_sent() -> None:
    s, _ = _connected()
    (merge,) = s.receive(p.Changes(20, 25, [_c(21, 0, OTHER)]))
    assert merge == ds.MergeUnit([_c(21, 0, OTHER)], "E", 25)
    assert s.pull_upto == 20  # not merged yet
    assert s.merged() == [ds.Send(p.Received(25))]
    assert s.pull_upto == 25


def test_a_multi_part_unit_is_staged_then_merged_whole() -> None:
    s, _ = _connected()
    first = p.Changes(20, 21, [_c(21, 0, OTHER)], more=True)
    second = p.Changes(20, 21, [_c(21, 1, OTHER)], more=True)
    assert s.receive(first) == [ds.StagePart("E", first)]
    assert s.receive(second) == [ds.StagePart("E", second)]
    (merge,) = s.receive(p.Changes(20, 21, [_c(21, 2, OTHER)]))
    # The last part merges with the staged ones, as one unit.
    assert merge == ds.MergeUnit([_c(21, 2, OTHER)], "E", 21, staged=True)


def test_a_half_received_unit_is_dropped_with_the_connection() -> None:
    s, _ = _connected()
    s.receive(p.Changes(20, 21, [_c(21, 0, OTHER)], more=True))
    s.disconnected()
    s.connect(ds.Stored("E", 5, 20), SITE, None, None, SCHEMA)
    s.handshake(p.Welcome(p.PROTOCOL_VERSION, "E", 30, 5), 9)
    (merge,) = s.receive(p.Changes(20, 21, [_c(21, 1, OTHER)]))
    assert isinstance(merge, ds.MergeUnit) and [c.seq for c in merge.changes] == [1]


@pytest.mark.parametrize(
    "bad",
    [
        p.Changes(19, 25, []),  # not from this device's position
        p.Changes(21, 25, []),
        p.Changes(20, 19, []),  # ends before it starts
    ],
)
def test_changes_not_following_the_position_are_a_protocol_error(bad: p.Changes) -> None:
    s, _ = _connected()
    with pytest.raises(ProtocolError) as err:
        s.receive(bad)
    assert err.value.code == p.ErrorCode.UNEXPECTED.value


def test_parts_of_one_unit_must_agree_on_its_end() -> None:
    s, _ = _connected()
    s.receive(p.Changes(20, 21, [_c(21, 0, OTHER)], more=True))
    with pytest.raises(ProtocolError):
        s.receive(p.Changes(20, 22, [_c(22, 0, OTHER)]))


def test_nothing_is_received_while_a_unit_is_being_merged() -> None:
    s, _ = _connected()
    s.receive(p.Changes(20, 21, []))
    with pytest.raises(RuntimeError):
        s.receive(p.Changes(21, 22, []))
    with pytest.raises(RuntimeError):
        _session().merged()


# ------------------------------------------------------------------ synced, pings


def test_synced_needs_the_connection_the_head_and_every_sealed_change_pushed() -> None:
    s, _ = _connected(welcome=p.Welcome(p.PROTOCOL_VERSION, "E", 20, 5))
    assert s.synced
    s.push_round(6, [_c(6)], SCHEMA)
    assert not s.synced
    s.receive(p.Ack(1, 6, 21))
    assert not s.synced  # the head moved on
    s.receive(p.Changes(20, 21, []))
    s.merged()
    assert s.synced
    s.disconnected()
    assert not s.synced


def test_a_pong_nobody_waits_for_applies_its_horizon_and_is_not_kept() -> None:
    s, _ = _connected()
    ping = s.ping(answer=False)
    actions = s.receive(p.Pong(ping.id, 44, 3))
    assert [type(a) for a in actions] == [ds.ApplyHorizon]
    assert s.relay_head == 44
    assert s.pong(ping.id) is None  # nothing kept for it (one ping an hour, for weeks)


def test_pings_get_new_ids_and_pongs_are_taken_once() -> None:
    s, _ = _connected()
    a, b = s.ping(), s.ping()
    assert a.id != b.id
    assert s.pong(a.id) is None
    assert s.receive(p.Pong(a.id, 44)) == []
    assert s.relay_head == 44
    assert s.pong(a.id) == 44 and s.pong(a.id) is None


def test_synced_to_compares_both_positions() -> None:
    s, _ = _connected()  # push_upto 5, pull_upto 20
    assert s.synced_to(5, 20)
    assert not s.synced_to(6, 20)
    assert not s.synced_to(5, 21)


# ------------------------------------------------------------------ the horizon


def test_the_welcome_and_pongs_horizon_becomes_an_apply_horizon_action() -> None:
    s, actions = _connected(welcome=p.Welcome(p.PROTOCOL_VERSION, "E", 30, 5, horizon=12))
    assert actions == [ds.ApplyHorizon("E", 12)]
    assert s.horizon == 12
    # A pong with a higher horizon asks again; the same or none does not.
    assert s.receive(p.Pong(1, 30, 15)) == [ds.ApplyHorizon("E", 15)]
    assert s.receive(p.Pong(2, 30, 15)) == []
    assert s.receive(p.Pong(3, 30)) == []
    assert s.horizon == 15


def test_a_horizon_under_a_new_epoch_comes_after_the_reset() -> None:
    _, actions = _connected(welcome=p.Welcome(p.PROTOCOL_VERSION, "NEW", 3, 0, horizon=2))
    assert actions == [ds.ResetPositions("NEW", "E", 3, False), ds.ApplyHorizon("NEW", 2)]


def test_no_horizon_no_action() -> None:
    _, actions = _connected(welcome=p.Welcome(p.PROTOCOL_VERSION, "E", 30, 5))
    assert not any(isinstance(a, ds.ApplyHorizon) for a in actions)


def _collected_tomb(k: int) -> Change:
    return Change("t", bytes([1, 9, k]), "-1", None, 2, 0, COLLECTED_SITE, 2, 0)


def test_a_full_push_sends_collected_tombstones_first_in_the_first_unit() -> None:
    s, _ = _connected(welcome=p.Welcome(p.PROTOCOL_VERSION, "NEW", 0, 0), batch_cells=2)
    assert s.full_push
    collected = [_collected_tomb(k) for k in range(3)]
    sent = _sent(s.push_round(9, [_c(6), _c(7, site=OTHER), _c(8)], SCHEMA, collected))
    assert [(m.base, m.upto, m.more, list(m.changes)) for m in sent] == [
        (0, 7, True, collected[:2]),
        (0, 7, True, collected[2:]),
        (0, 7, False, [_c(6), _c(7, site=OTHER)]),
        (7, 9, False, [_c(8)]),
    ]


def test_a_full_push_of_collected_tombstones_alone_is_one_unit_up_to_sealed() -> None:
    s, _ = _connected(welcome=p.Welcome(p.PROTOCOL_VERSION, "NEW", 0, 0))
    actions = s.push_round(9, [], SCHEMA, [_collected_tomb(1)])
    assert actions[:2] == [
        ds.Send(p.Push(1, 0, 9, [_collected_tomb(1)], False)),
        ds.AwaitAck(9),
    ]


def test_collected_tombstones_are_not_pushed_outside_a_full_push() -> None:
    s, _ = _connected()
    assert not s.full_push
    sent = _sent(s.push_round(9, [_c(6)], SCHEMA, [_collected_tomb(1)]))
    assert sent == [p.Push(1, 5, 9, [_c(6)], False)]


# ------------------------------------------------------------------ resuming a unit

STAGED = ds.StagedUnit("E", 20, 21, 2, ("t", b"\x01\x09\x01", "a"))


def test_a_staged_unit_is_named_in_the_hello() -> None:
    s = _session()
    hello = s.connect(RECORDED, SITE, None, None, SCHEMA, STAGED)
    assert hello.resume == p.Resume(21, "t", b"\x01\x09\x01", "a")
    # A staged unit that does not start at the recorded position, or of another epoch, is
    # not resumable.
    for other in (
        ds.StagedUnit("E", 19, 21, 2, STAGED.last),
        ds.StagedUnit("F", 20, 21, 2, STAGED.last),
    ):
        assert s.connect(RECORDED, SITE, None, None, SCHEMA, other).resume is None


def test_a_resumed_unit_continues_and_merges_with_what_was_staged() -> None:
    s = _session()
    s.connect(RECORDED, SITE, None, None, SCHEMA, STAGED)
    w = p.Welcome(p.PROTOCOL_VERSION, "E", 30, 5, remaining=3, resumed=True)
    assert s.handshake(s.decode(p.encode(w)), 9) == []
    part = p.Changes(20, 21, [_c(21, 2, OTHER)], more=True)
    (stage,) = s.receive(part)
    assert stage == ds.StagePart("E", part)
    # Progress counts the two cells held before the welcome.
    assert stage.progress == (3, 5)
    (merge,) = s.receive(p.Changes(20, 21, [_c(21, 3, OTHER), _c(21, 4, OTHER)]))
    assert merge == ds.MergeUnit([_c(21, 3, OTHER), _c(21, 4, OTHER)], "E", 21, staged=True)
    assert merge.progress == (5, 5)
    assert s.merged() == [ds.Send(p.Received(21))]


def test_a_resumed_unit_must_keep_its_end() -> None:
    s = _session()
    s.connect(RECORDED, SITE, None, None, SCHEMA, STAGED)
    s.handshake(p.Welcome(p.PROTOCOL_VERSION, "E", 30, 5, resumed=True), 9)
    with pytest.raises(ProtocolError):
        s.receive(p.Changes(20, 22, [_c(22, 0, OTHER)]))


def test_a_unit_not_resumed_drops_the_staging() -> None:
    s = _session()
    s.connect(RECORDED, SITE, None, None, SCHEMA, STAGED)
    assert s.handshake(p.Welcome(p.PROTOCOL_VERSION, "E", 30, 5), 9) == [ds.DropStaged()]
    # The unit then arrives whole, staged again part by part.
    assert isinstance(s.receive(p.Changes(20, 21, [_c(21, 0, OTHER)], more=True))[0], ds.StagePart)


def test_an_epoch_change_drops_the_staging() -> None:
    s = _session()
    s.connect(RECORDED, SITE, None, None, SCHEMA, STAGED)
    actions = s.handshake(p.Welcome(p.PROTOCOL_VERSION, "NEW", 3, 0), 9)
    assert actions == [ds.DropStaged(), ds.ResetPositions("NEW", "E", 3, False)]


def test_resumed_without_a_resume_is_a_protocol_error() -> None:
    s = _session()
    s.connect(RECORDED, SITE, None, None, SCHEMA)
    with pytest.raises(ProtocolError):
        s.handshake(p.Welcome(p.PROTOCOL_VERSION, "E", 30, 5, resumed=True), 9)


# ------------------------------------------------------------------ progress


def test_progress_counts_cells_against_the_welcomes_remaining() -> None:
    s, _ = _connected(welcome=p.Welcome(p.PROTOCOL_VERSION, "E", 30, 5, remaining=4))
    assert s.progress() == (0, 4)
    (merge,) = s.receive(p.Changes(20, 22, [_c(21, 0, OTHER), _c(22, 0, OTHER)]))
    assert isinstance(merge, ds.MergeUnit) and merge.progress == (2, 4)
    s.merged()
    (merge,) = s.receive(p.Changes(22, 31, [_c(k, 0, OTHER) for k in range(23, 26)]))
    # Changes written after the welcome arrive too: total never stays below done.
    assert isinstance(merge, ds.MergeUnit) and merge.progress == (5, 5)


def test_progress_ends_at_its_total_when_the_welcomes_head_is_merged() -> None:
    # remaining counted this device's own changes too (the relay does not send them back):
    # merging up to the head the relay had at the welcome ends the catch-up all the same.
    s, _ = _connected(welcome=p.Welcome(p.PROTOCOL_VERSION, "E", 30, 5, remaining=10))
    (merge,) = s.receive(p.Changes(20, 25, [_c(21, 0, OTHER)]))
    assert isinstance(merge, ds.MergeUnit) and merge.progress == (1, 10)
    s.merged()
    (merge,) = s.receive(p.Changes(25, 30, [_c(26, 0, OTHER), _c(27, 0, OTHER)]))
    assert isinstance(merge, ds.MergeUnit) and merge.progress == (3, 3)


def test_progress_without_remaining_counts_relay_versions() -> None:
    s, _ = _connected()  # relay head 30, merged up to 20, no remaining
    (merge,) = s.receive(p.Changes(20, 25, [_c(21, 0, OTHER)]))
    assert isinstance(merge, ds.MergeUnit) and merge.progress == (5, 10)
    s.merged()
    assert s.progress() == (5, 10)
