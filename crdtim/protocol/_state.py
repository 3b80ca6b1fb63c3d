"""The states of a sync session and every transition between them, in one table.

A session has one connection state (`State`) and, once OPEN, one state per direction: what we
send (`Sending`) and what we receive (`Receiving`). Every move of any of them is a row of
`TRANSITIONS`, keyed by the state it leaves and what triggers it: a message received (named
as specs/protocol.md §2 names it) or something we did (in lower case). A message whose row is
missing for the current state is a protocol error. Pure data: no I/O here.
"""

from __future__ import annotations

import enum
from typing import overload

from ._errors import LocalProtocolError

__all__ = ["TRANSITIONS", "Receiving", "Sending", "State", "accepts", "after"]


class State(enum.Enum):
    AWAIT_HELLO = "await_hello"
    AWAIT_AUTH = "await_auth"
    OPEN = "open"
    CLOSED = "closed"


class Sending(enum.Enum):
    WAIT_RESUME = "wait_resume"  # until the peer's first ACK says where to resume
    DELTAS = "deltas"
    STATE_TRANSFER = "state_transfer"
    RECONCILE = "reconcile"  # finding what of our state the peer lacks (§13)


class Receiving(enum.Enum):
    DELTAS = "deltas"
    STATE = "state"  # between the first STATE_CHUNK of a transfer and its STATE_END


AnyState = State | Sending | Receiving

_OPEN_MESSAGES = ("DELTA", "ACK", "STATE_CHUNK", "STATE_END", "PING", "PONG", "CHUNK_ACK",
                  # version 4: HAVE (specs/protocol.md §12), reconciliation (§13)
                  "HAVE", "RECON_RANGES", "RECON_ANSWER")

TRANSITIONS: dict[tuple[AnyState, str], AnyState] = {
    # The handshake (specs/protocol.md §3, specs/security.md §3).
    (State.AWAIT_HELLO, "HELLO"): State.OPEN,  # no key named: authorized at once
    (State.AWAIT_HELLO, "HELLO naming a key"): State.AWAIT_AUTH,  # the dialer sends AUTH
    (State.AWAIT_AUTH, "AUTH"): State.OPEN,  # it verifies; the acceptor answers with AUTH
    # Open: every message but the handshake's, each handled by a direction below.
    **{(State.OPEN, name): State.OPEN for name in _OPEN_MESSAGES},
    # Closing: the peer's ERROR; or ours, queued by close() -- on a refusal of the peer's
    # input, a timeout, or at the owner's request.
    **{(s, trigger): State.CLOSED for s in (State.AWAIT_HELLO, State.AWAIT_AUTH, State.OPEN)
       for trigger in ("ERROR", "close")},
    # What we send (specs/protocol.md §4-§5). The peer's first ACK is its resume point.
    (Sending.WAIT_RESUME, "first ACK"): Sending.DELTAS,
    # ...behind our log floor, past our head, or with the peer's scope widened since its
    # acks were earned: it gets our whole state first.
    (Sending.WAIT_RESUME, "first ACK, log not enough"): Sending.STATE_TRANSFER,
    (Sending.STATE_TRANSFER, "STATE_END sent"): Sending.DELTAS,
    # Entries not yet sent were trimmed (or one is too large for a frame), nothing in flight.
    (Sending.DELTAS, "log not enough"): Sending.STATE_TRANSFER,
    # ...behind our log floor, having received from us before: reconcile first (§13), then
    # send what it lacks as a state transfer of those conversations alone.
    (Sending.WAIT_RESUME, "first ACK, reconcile"): Sending.RECONCILE,
    (Sending.RECONCILE, "RECON_ANSWER"): Sending.RECONCILE,
    (Sending.RECONCILE, "reconciled"): Sending.STATE_TRANSFER,
    # What we receive (specs/protocol.md §4-§5): a DELTA during a transfer is refused.
    (Receiving.DELTAS, "DELTA"): Receiving.DELTAS,
    (Receiving.DELTAS, "STATE_CHUNK"): Receiving.STATE,
    (Receiving.STATE, "STATE_CHUNK"): Receiving.STATE,
    (Receiving.STATE, "STATE_END"): Receiving.DELTAS,
    (Receiving.DELTAS, "STATE_END"): Receiving.DELTAS,  # a transfer of an empty state
    # The peer's reconciliation asks before its STATE_CHUNKs (§13).
    (Receiving.DELTAS, "RECON_RANGES"): Receiving.DELTAS,
}


def accepts(current: AnyState, trigger: str) -> bool:
    """True if `trigger` may happen in state `current`."""
    return (current, trigger) in TRANSITIONS


@overload
def after(current: State, trigger: str) -> State: ...
@overload
def after(current: Sending, trigger: str) -> Sending: ...
@overload
def after(current: Receiving, trigger: str) -> Receiving: ...
def after(current: AnyState, trigger: str) -> AnyState:
    """The state that `trigger` leads to from `current`. The caller checked the peer's part
    with `accepts`: a missing row here is our own bug."""
    new = TRANSITIONS.get((current, trigger))
    if new is None or type(new) is not type(current):
        raise LocalProtocolError(f"no transition from {current} on {trigger!r}")
    return new
