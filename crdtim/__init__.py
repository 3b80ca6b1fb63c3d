"""crdtim: coordination-free replication of instant-messaging conversation state.

Every replica accepts writes at once, offline too; replicas exchange delta-states and
converge whatever the order, loss or duplication of messages. See README.md and specs/.
"""

from .crdt import Conversation, ConversationMap, DEFAULT_SCHEMA, Field, Flag, Lww, MaxReg, Schema
from .errors import (
    ClockDriftError,
    ConfigError,
    CorruptStoreError,
    CrdtimError,
    DecodeError,
    FormatVersionError,
    LogTrimmedError,
    NotAReplicaError,
    PeerIdentityError,
    ReplicaClosedError,
    StoreError,
)
from .net import Node, NodeConfig
from .protocol import (
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
    SecurityConfig,
    SessionConfig,
    SyncSession,
)
from .security import TlsConfig, load_tls
from .replica import Change, InvalidArgument, Page, Replica, Subscription

__version__ = "0.1.0"

__all__ = [
    "Change",
    "ClockDriftError",
    "ConfigError",
    "Conversation",
    "ConversationMap",
    "CorruptStoreError",
    "CrdtimError",
    "DEFAULT_SCHEMA",
    "DecodeError",
    "Field",
    "Flag",
    "LocalProtocolError",
    "LogTrimmedError",
    "Lww",
    "MaxReg",
    "Node",
    "NodeConfig",
    "ProtocolError",
    "RemoteProtocolError",
    "SecurityConfig",
    "SessionConfig",
    "SyncSession",
    "TlsConfig",
    "load_tls",
    "FormatVersionError",
    "InvalidArgument",
    "NotAReplicaError",
    "PeerIdentityError",
    "Page",
    "Replica",
    "ReplicaClosedError",
    "Schema",
    "StoreError",
    "Subscription",
    "__version__",
]
