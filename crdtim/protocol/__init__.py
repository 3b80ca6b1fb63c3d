"""The sans-IO sync protocol: a `SyncSession` is fed bytes and returns events and bytes to
send (specs/protocol.md, specs/security.md).

This is the public face; the code lives in private modules, one concern each: `_messages`
(wire messages and framing), `_budget` (the decoded work a frame may cost), `_auth` (keys,
scopes, the handshake MAC), `_events`, `_errors`, `_port` (the replica contract),
`_session` (the state machine), `_table` (the session tables of replica ids) and `_relay`
(not relaying what a peer holds). Nothing in
this package touches a socket, a database, trio or the clock.
"""

from ._auth import MAX_KEY_ID, MIN_SECRET_BYTES, SecurityConfig, valid_key_id
from ._budget import MAX_FRAME_CONVERSATIONS, MAX_FRAME_ITEMS
from ._errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from ._events import (
    DeltaApplied,
    Event,
    HandshakeComplete,
    PeerAcked,
    PeerClosed,
    PongReceived,
    StateTransferFinished,
    StateTransferStarted,
)
from ._messages import (
    MAX_FRAME_BYTES,
    MAX_REPLICA_ID_BYTES,
    MAX_SESSION_CONVERSATIONS,
    MAX_SESSION_IDS,
    MIN_FRAME_BYTES,
    NONCE_BYTES,
    PROTOCOL_VERSION,
    Ack,
    Auth,
    ChunkAck,
    CompactDelta,
    Delta,
    Error,
    FrameDecoder,
    Have,
    Hello,
    Message,
    Ping,
    Pong,
    StateChunk,
    StateEnd,
    encode_frame,
)
from ._port import ReplicaPort
from ._reconcile import RangeQuery, ReconAnswer, ReconRanges
from ._relay import MAX_RELAY_ENTRIES, RelayIndex
from ._session import SessionConfig, State, SyncSession

__all__ = [
    "MAX_FRAME_BYTES",
    "MAX_FRAME_CONVERSATIONS",
    "MAX_FRAME_ITEMS",
    "MAX_KEY_ID",
    "MAX_RELAY_ENTRIES",
    "MAX_REPLICA_ID_BYTES",
    "MAX_SESSION_CONVERSATIONS",
    "MAX_SESSION_IDS",
    "MIN_FRAME_BYTES",
    "MIN_SECRET_BYTES",
    "NONCE_BYTES",
    "PROTOCOL_VERSION",
    "Ack",
    "Auth",
    "ChunkAck",
    "CompactDelta",
    "Delta",
    "DeltaApplied",
    "Error",
    "Event",
    "FrameDecoder",
    "HandshakeComplete",
    "Have",
    "Hello",
    "LocalProtocolError",
    "Message",
    "PeerAcked",
    "PeerClosed",
    "Ping",
    "Pong",
    "PongReceived",
    "ProtocolError",
    "RangeQuery",
    "ReconAnswer",
    "ReconRanges",
    "RelayIndex",
    "RemoteProtocolError",
    "ReplicaPort",
    "SecurityConfig",
    "SessionConfig",
    "State",
    "StateChunk",
    "StateEnd",
    "StateTransferFinished",
    "StateTransferStarted",
    "SyncSession",
    "encode_frame",
    "valid_key_id",
]
