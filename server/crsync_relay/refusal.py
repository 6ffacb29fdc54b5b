"""Refusals: errors that end a peer's connection with an ``error`` frame. Each refusal class
knows the protocol code it is sent with, so the connection handler catches one base class."""

from __future__ import annotations

from crsync.errors import CrsyncError
from crsync.protocol import ErrorCode


class Refusal(CrsyncError):
    """The relay refuses a peer: ``code`` is the error frame's code, the message its reason."""

    code: str = ErrorCode.INTERNAL.value

    @property
    def reason(self) -> str:
        """Why (sent to the peer and logged)."""
        return str(self)
