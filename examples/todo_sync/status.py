"""The status line of a todo window, from a :class:`crsync.SyncStatus` (no GUI toolkit here,
so the Tk and the Qt windows share it and the tests check it without a screen)."""

from __future__ import annotations

from crsync.peer import PeerState
from crsync.sync_thread import SyncStatus

TEXT = {
    PeerState.CONNECTING: "connecting…",
    PeerState.SYNCING: "syncing…",
    PeerState.SYNCED: "synced",
    PeerState.OFFLINE: "offline, retrying",
    PeerState.STANDBY: "standby: another window syncs this file",
    PeerState.ERROR: "sync stopped",
    PeerState.STOPPED: "not syncing",
}
COLOURS = {
    PeerState.SYNCED: "#2e9d4f",
    PeerState.SYNCING: "#d99a00",
    PeerState.CONNECTING: "#d99a00",
    PeerState.OFFLINE: "#8a8a8a",
    PeerState.STANDBY: "#3b78c4",
    PeerState.ERROR: "#c62828",
    PeerState.STOPPED: "#8a8a8a",
}


def describe(status: SyncStatus) -> str:
    """A short status line: the state, and why for OFFLINE and ERROR."""
    text = TEXT[status.state]
    if status.reason and status.state in (PeerState.OFFLINE, PeerState.ERROR):
        return f"{text}: {status.reason}"
    return text


def colour(status: SyncStatus) -> str:
    """The colour of the status dot."""
    return COLOURS[status.state]
