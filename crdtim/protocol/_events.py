"""What a session reports to its owner: small frozen, slotted, keyword-only values.

No behaviour and no I/O here; see specs/protocol.md for when each happens.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DeltaApplied", "Event", "HandshakeComplete", "PeerAcked", "PeerClosed",
           "PongReceived", "StateTransferFinished", "StateTransferStarted"]


@dataclass(frozen=True, slots=True, kw_only=True)
class HandshakeComplete:
    peer_id: str
    identity: str | None = None  # the key id the peer proved, else its TLS identity
    scope: tuple[str, ...] | None = None  # conversation id prefixes it may replicate; None: all


@dataclass(frozen=True, slots=True, kw_only=True)
class DeltaApplied:
    start: int
    end: int
    changed: frozenset[str]  # conversation ids whose state changed here
    nbytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerAcked:
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class StateTransferStarted:
    outbound: bool  # True: we are sending our state to the peer


@dataclass(frozen=True, slots=True, kw_only=True)
class StateTransferFinished:
    outbound: bool
    seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PongReceived:
    rtt: float


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerClosed:
    reason: str  # the peer's ERROR reason


Event = (HandshakeComplete | DeltaApplied | PeerAcked | StateTransferStarted
         | StateTransferFinished | PongReceived | PeerClosed)

