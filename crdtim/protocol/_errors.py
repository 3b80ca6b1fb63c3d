"""The protocol's errors: ours (LocalProtocolError) apart from the peer's (RemoteProtocolError).

A peer's bad input must surface as a RemoteProtocolError with a reason it can be told, never as
an exception from deep inside (specs/protocol.md §7). No I/O here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import CrdtimError

if TYPE_CHECKING:
    from ._events import Event

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(CrdtimError):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class LocalProtocolError(ProtocolError):
    """We were asked to do something the protocol does not allow (a bug in the caller)."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol or sent bad data. The session has queued an ERROR frame
    with the reason (take it with data_to_send() and send it before closing) and applied
    nothing from the offending frame. `events` holds what the frames before it in the same
    `receive_data` call did (they were valid and stay applied)."""

    def __init__(self, reason: str, told: str | None = None):
        super().__init__(reason)
        self.told = told or reason  # what the ERROR frame said: less, where reason tells much
        self.events: list[Event] = []
