"""The relay's sync rules (crsync.relay_session.RelaySession), without sockets or a store."""

from __future__ import annotations

import pytest

from crsync import protocol as p
from crsync import relay_session as rs
from crsync.change import Change
from crsync.errors import ProtocolError

SITE = b"\x01" * 16
OTHER = b"\x02" * 16
SCHEMA = {"t": p.TableSchema(("id",), ("a",))}


def _hello(
    cursor: int = 0, epoch: str = "", schema: dict[str, p.TableSchema] | None = None
) -> bytes:
    return p.encode(
        p.Hello(
            p.PROTOCOL_VERSION, "s", SITE, SCHEMA if schema is None else schema, cursor, epoch, None
        )
    )


def _change(v: int, seq: int = 0, site: bytes = SITE) -> Change:
    return Change("t", b"\x01\x09\x01", "a", v, 1, v, site, 1, seq)


def _open(
    cursor: int = 0,
    epoch: str = "E",
    view: rs.StoreView | None = None,
    **kw: int,
) -> tuple[rs.RelaySession, list[rs.Action]]:
    s = rs.RelaySession(**kw)
    raw = _hello(cursor, epoch)
    (admit,) = s.receive(s.decode(raw), len(raw))
    assert isinstance(admit, rs.Admit)
    actions = s.admitted(view or rs.StoreView("E", 10, pushed_upto=7, received_upto=3))
    return s, actions


def _sent(actions: list[rs.Action]) -> list[p.Message]:
    return [a.message for a in actions if isinstance(a, rs.Send)]


# ------------------------------------------------------------------ hello and admission


def test_hello_comes_first_and_is_admitted_before_anything_is_sent() -> None:
    s = rs.RelaySession()
    with pytest.raises(ProtocolError) as err:
        s.decode(p.encode(p.Ping(1)))
    assert err.value.code == p.ErrorCode.UNEXPECTED.value
    raw = _hello()
    actions = s.receive(s.decode(raw), len(raw))
    assert actions == [rs.Admit(s.hello)] and s.state is rs.RelayState.ADMITTING
    # While the store is being opened nothing of the peer's is handled.
    with pytest.raises(ProtocolError):
        s.receive(p.Ping(1))
    assert s.next_read() is None


def test_the_hello_frame_is_capped_small_until_admitted() -> None:
    s = rs.RelaySession(max_frame=10 << 20)
    assert s.frame_cap == p.MAX_HELLO_BYTES
    with pytest.raises(ProtocolError) as err:
        s.decode(b"\x80" * (p.MAX_HELLO_BYTES + 1))
    assert err.value.code == p.ErrorCode.FRAME_TOO_LARGE.value
    raw = _hello()
    s.receive(s.decode(raw), len(raw))
    assert s.frame_cap == 20 << 20


def test_a_second_hello_is_refused() -> None:
    s, _ = _open()
    with pytest.raises(ProtocolError) as err:
        s.decode(_hello())
    assert err.value.code == p.ErrorCode.UNEXPECTED.value


def test_admitted_requires_a_hello() -> None:
    with pytest.raises(RuntimeError):
        rs.RelaySession().admitted(rs.StoreView("E", 0))


@pytest.mark.parametrize(
    ("view", "code"),
    [
        (rs.StoreView("E", 0, own_site=True), p.ErrorCode.FORBIDDEN),
        (rs.StoreView("E", 0, site_claim="bound to another key"), p.ErrorCode.SITE_FORBIDDEN),
        (rs.StoreView("E", 0, schema_problem="column a missing"), p.ErrorCode.SCHEMA_MISMATCH),
    ],
)
def test_store_checks_refuse_with_their_code(view: rs.StoreView, code: p.ErrorCode) -> None:
    s = rs.RelaySession()
    raw = _hello()
    s.receive(s.decode(raw), len(raw))
    with pytest.raises(rs.Refused) as err:  # logged as a refusal, not a protocol error
        s.admitted(view)
    assert err.value.code == code.value
    assert s.state is rs.RelayState.ADMITTING  # never opened: no welcome


# ------------------------------------------------------------------ resume and epochs


def test_welcome_resumes_from_the_cursor_and_tells_the_recorded_push_position() -> None:
    s, actions = _open(cursor=4, epoch="E")
    assert _sent(actions) == [p.Welcome(p.PROTOCOL_VERSION, "E", 10, 7)]
    assert s.epoch_matched
    assert s.next_read() == rs.ReadChanges(4, None)


def test_an_epoch_change_restarts_catch_up_and_forgets_acked_pushes() -> None:
    """A restored or reset store has a new epoch: the device's cursor and pushed positions are
    no longer true, so catch-up starts at 0 and ``acked`` 0 makes the device push again."""
    s, actions = _open(cursor=4, epoch="OLD")
    assert _sent(actions) == [p.Welcome(p.PROTOCOL_VERSION, "E", 10, 0)]
    assert not s.epoch_matched
    assert s.next_read() == rs.ReadChanges(0, None)


def test_a_cursor_past_the_head_restarts_catch_up() -> None:
    """Same epoch but a cursor past the head (a store copied back): serve from 0."""
    s, _ = _open(cursor=11, epoch="E")
    assert s.next_read() == rs.ReadChanges(0, None)


def test_catch_up_then_live_changes() -> None:
    s, _ = _open(cursor=4, batch_cells=2)
    sent = _sent(s.page_read([_change(5), _change(6), _change(6, 1)], 6, None))
    assert [(m.base, m.upto, len(m.changes), m.more) for m in sent if isinstance(m, p.Changes)] == [
        (4, 6, 2, True),
        (4, 6, 1, False),
    ]
    assert s.next_read() == rs.ReadChanges(6, None)
    assert _sent(s.page_read([], 10, None)) == [p.Changes(6, 10, [], False)]
    assert s.next_read() is None  # current: wait for the head to move
    s.store_advanced(12)
    assert s.next_read() == rs.ReadChanges(10, None)
    s.store_advanced(5)  # a stale head never moves it back
    assert s.head == 12


def test_a_version_read_in_parts_is_one_unit() -> None:
    s, _ = _open(cursor=0)
    resume = (3, "t", b"\x01", "a")
    first = _sent(s.page_read([_change(3)], 3, resume))
    assert first == [p.Changes(0, 3, [_change(3)], True)]
    assert s.next_read() == rs.ReadChanges(0, resume)  # the same unit goes on
    last = _sent(s.page_read([_change(3, 1)], 3, None))
    assert last == [p.Changes(0, 3, [_change(3, 1)], False)]
    assert s.next_read() == rs.ReadChanges(3, None)


# ------------------------------------------------------------------ pushes and acks


def test_a_multi_part_unit_is_merged_whole_and_acked_only_once_durable() -> None:
    s, _ = _open()
    a = s.receive(p.Push(1, 7, 9, [_change(8)], more=True), 100)
    assert a == [rs.CheckQuota()]  # checked before the unit is held in memory
    assert s.receive(p.Push(2, 7, 9, [_change(9)], more=True), 100) == []
    (merge,) = s.receive(p.Push(3, 7, 9, [_change(9, 1)]), 100)
    assert merge == rs.MergeUnit(3, 9, [_change(8), _change(9), _change(9, 1)])
    assert _sent(s.unit_merged(head=11)) == [p.Ack(3, 9, 11)]
    assert s.head == 11


def test_a_single_part_unit_is_not_quota_checked_separately() -> None:
    """(The merge itself checks the quota under the store's write lock.)"""
    s, _ = _open()
    assert s.receive(p.Push(1, 7, 8, [_change(8)]), 10) == [rs.MergeUnit(1, 8, [_change(8)])]


def test_no_push_is_handled_while_a_unit_is_being_merged() -> None:
    s, _ = _open()
    s.receive(p.Push(1, 7, 8, [_change(8)]), 10)
    with pytest.raises(RuntimeError):
        s.receive(p.Push(2, 8, 9, [_change(9)]), 10)
    with pytest.raises(RuntimeError):
        rs.RelaySession().unit_merged(3)


@pytest.mark.parametrize(("cells", "frame_bytes"), [(3, 1), (100, 150)])
def test_an_oversized_multi_part_unit_is_refused(cells: int, frame_bytes: int) -> None:
    s, _ = _open(max_unit_cells=cells, max_unit_bytes=200)
    s.receive(p.Push(1, 7, 9, [_change(8), _change(8, 1)], more=True), frame_bytes)
    with pytest.raises(rs.Refused) as err:
        s.receive(p.Push(2, 7, 9, [_change(9), _change(9, 1)], more=True), frame_bytes)
    assert err.value.code == p.ErrorCode.INVALID_CHANGES.value


def test_acks_never_go_back() -> None:
    s, _ = _open()  # the site's recorded push position is 7
    s.receive(p.Push(1, 0, 5, [_change(5)]), 10)
    assert _sent(s.unit_merged(11)) == [p.Ack(1, 7, 11)]
    s.receive(p.Push(2, 7, 9, [_change(9)]), 10)
    assert _sent(s.unit_merged(10)) == [p.Ack(2, 9, 11)]  # head never back either
    s.receive(p.Push(3, 0, 8, []), 10)
    assert _sent(s.unit_merged(11)) == [p.Ack(3, 9, 11)]


# ------------------------------------------------------------------ received, pings


def test_received_is_recorded_when_it_advances_and_never_past_what_was_sent() -> None:
    s, actions = _open(cursor=4)  # the store recorded 3 for the site
    # The honoured cursor is what the device merged: recorded at the handshake (a received
    # the last connection sent may have been lost), so the horizon does not lag behind it.
    assert actions[1:] == [rs.RecordReceived(4)]
    assert s.receive(p.Received(4)) == []
    assert s.receive(p.Received(2)) == []
    assert s.receive(p.Received(9)) == []  # nothing past 4 was sent on this connection
    s.page_read([_change(5)], 9, None)
    assert s.receive(p.Received(12)) == [rs.RecordReceived(9)]


def test_pong_carries_the_latest_head() -> None:
    s, _ = _open()
    s.store_advanced(15)
    assert _sent(s.receive(p.Ping(3))) == [p.Pong(3, 15)]


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("code", "ws_code"),
    [(p.ErrorCode.INTERNAL.value, 1011), (p.ErrorCode.QUOTA_EXCEEDED.value, 1008)],
)
def test_fail_closes_with_the_code_and_a_bounded_reason(code: str, ws_code: int) -> None:
    s, _ = _open()
    close = s.fail(code, "x" * 2000)
    assert (close.code, close.ws_code) == (code, ws_code)
    assert len(close.reason) == rs.MAX_REASON and close.reason.endswith("...")
    assert s.state is rs.RelayState.CLOSED
    with pytest.raises(ProtocolError):
        s.receive(p.Ping(1))
    assert s.next_read() is None


def test_refusal_codes_of_the_relay_are_protocol_codes() -> None:
    """Every relay refusal class carries a code of the protocol (what ``fail`` sends)."""
    from crsync_relay.auth import TokenExpired, TokenInvalid
    from crsync_relay.datadir import BadStoreId
    from crsync_relay.hub import Overloaded, QuotaExceeded
    from crsync_relay.session import Forbidden

    codes = {c.value for c in p.ErrorCode}
    for cls in (TokenExpired, TokenInvalid, BadStoreId, Overloaded, QuotaExceeded, Forbidden):
        assert cls.code in codes, cls
        close = rs.RelaySession().fail(cls.code, str(cls("why")))
        assert close.code == cls.code and close.reason == "why"


# ------------------------------------------------------------------ horizon, progress, resume


def _open_resuming(
    resume: p.Resume | None, cursor: int = 4, epoch: str = "E", head: int = 10
) -> rs.RelaySession:
    s = rs.RelaySession()
    raw = p.encode(
        p.Hello(p.PROTOCOL_VERSION, "s", SITE, SCHEMA, cursor, epoch, None, resume=resume)
    )
    (admit,) = s.receive(s.decode(raw), len(raw))
    assert isinstance(admit, rs.Admit)
    return s


def test_welcome_carries_the_horizon_and_what_remains() -> None:
    s, actions = _open(cursor=4, view=rs.StoreView("E", 10, pushed_upto=7, horizon=3, remaining=42))
    (welcome,) = _sent(actions)
    assert welcome == p.Welcome(p.PROTOCOL_VERSION, "E", 10, 7, 3, 42, False)
    assert not s.resumed


def test_pong_carries_the_horizon_which_never_moves_back() -> None:
    s, _ = _open(view=rs.StoreView("E", 10, horizon=3))
    assert _sent(s.receive(p.Ping(1))) == [p.Pong(1, 10, 3)]
    s.store_advanced(12, 8)
    assert _sent(s.receive(p.Ping(2))) == [p.Pong(2, 12, 8)]
    s.store_advanced(12, 5)  # a stale figure
    s.store_advanced(12)  # not told
    assert _sent(s.receive(p.Ping(3))) == [p.Pong(3, 12, 8)]


def test_a_relay_that_does_not_collect_sends_no_horizon() -> None:
    s, actions = _open()
    (welcome,) = _sent(actions)
    assert isinstance(welcome, p.Welcome)
    assert (welcome.horizon, welcome.remaining, welcome.resumed) == (None, None, False)
    assert _sent(s.receive(p.Ping(1))) == [p.Pong(1, 10, None)]


def test_a_half_received_unit_is_resumed_after_the_key_it_names() -> None:
    resume = p.Resume(6, "t", b"\x01\x09\x05", "a")
    s = _open_resuming(resume)
    assert s.catch_up_from("E", 10) == (4, None)  # the store not asked yet
    assert s.catch_up_from("E", 10, 6) == (4, (6, "t", b"\x01\x09\x05", "a"))
    actions = s.admitted(rs.StoreView("E", 10, horizon=2, remaining=17, next_version=6))
    (welcome,) = _sent(actions)
    assert isinstance(welcome, p.Welcome) and welcome.resumed and welcome.remaining == 17
    assert s.resumed
    # The first read continues the unit: base = the cursor, after the named key.
    assert s.next_read() == rs.ReadChanges(4, (6, "t", b"\x01\x09\x05", "a"))
    rest = _sent(s.page_read([_change(6, 3)], 6, None))
    assert rest == [p.Changes(4, 6, [_change(6, 3)], False)]
    assert s.next_read() == rs.ReadChanges(6, None)


@pytest.mark.parametrize(
    ("epoch", "cursor", "next_version", "why"),
    [
        ("OLD", 4, 6, "another epoch"),
        ("E", 11, 6, "a cursor past the head"),
        ("E", 4, 5, "another version comes first now"),
        ("E", 4, None, "nothing after the cursor any more"),
        ("E", 6, 6, "the unit is not after the cursor"),
    ],
)
def test_a_unit_that_no_longer_stands_is_not_resumed(
    epoch: str, cursor: int, next_version: int | None, why: str
) -> None:
    s = _open_resuming(p.Resume(6, "t", b"\x01", "a"), cursor=cursor, epoch=epoch)
    actions = s.admitted(rs.StoreView("E", 10, next_version=next_version))
    (welcome,) = _sent(actions)
    assert isinstance(welcome, p.Welcome) and not welcome.resumed, why
    read = s.next_read()
    assert read is not None and read.resume is None, why
    assert read.cursor == (cursor if epoch == "E" and cursor <= 10 else 0), why
