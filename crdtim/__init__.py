"""crdtim: coordination-free replication of instant-messaging conversation state.

Every replica accepts writes at once, offline too; replicas exchange delta-states and
converge whatever the order, loss or duplication of messages. See README.md and specs/.

The public names, by room. The lattices and the errors are pure and imported at once; the
rest (LMDB, msgpack, trio, ssl behind them) is imported on first use of a name, so that
`import crdtim.crdt` or `from crdtim import Lww` costs no I/O library at all.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

# Pure: the lattices (specs/crdt.md) and the errors.
from .crdt import (  # the conversation features' lattices
    DEFAULT_SCHEMA,
    MAX_READ_BY_MEMBERS,
    Conversation,
    ConversationMap,
    Field,
    Flag,
    Lww,
    LwwInt,
    MaxMap,
    MaxReg,
    Schema,
)
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

# The one place the version is written: pyproject.toml reads it from here.
__version__ = "0.1.0"

#: Imported on first use: public name -> the module that defines it.
_LAZY = {
    # The replica, the embedding API (specs/storage.md): LMDB and msgpack.
    "Change": ".replica",
    "InvalidArgument": ".replica",
    "Message": ".replica",
    "Page": ".replica",
    "Replica": ".replica",
    "Subscription": ".replica",
    # The sans-IO sync session (specs/protocol.md).
    "LocalProtocolError": ".protocol",
    "ProtocolError": ".protocol",
    "RemoteProtocolError": ".protocol",
    "SecurityConfig": ".protocol",
    "SessionConfig": ".protocol",
    "SyncSession": ".protocol",
    # The trio transport.
    "Node": ".net",
    "NodeConfig": ".net",
    # TLS (specs/security.md): ssl.
    "TlsConfig": ".security",
    "load_tls": ".security",
}

if TYPE_CHECKING:
    from .net import Node, NodeConfig
    from .protocol import (
        LocalProtocolError,
        ProtocolError,
        RemoteProtocolError,
        SecurityConfig,
        SessionConfig,
        SyncSession,
    )
    from .replica import Change, InvalidArgument, Message, Page, Replica, Subscription
    from .security import TlsConfig, load_tls


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(module, __name__), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "DEFAULT_SCHEMA",
    "MAX_READ_BY_MEMBERS",
    "Change",
    "ClockDriftError",
    "ConfigError",
    "Conversation",
    "ConversationMap",
    "CorruptStoreError",
    "CrdtimError",
    "DecodeError",
    "Field",
    "Flag",
    "FormatVersionError",
    "InvalidArgument",
    "LocalProtocolError",
    "LogTrimmedError",
    "Lww",
    "LwwInt",
    "MaxMap",
    "MaxReg",
    "Message",
    "Node",
    "NodeConfig",
    "NotAReplicaError",
    "Page",
    "PeerIdentityError",
    "ProtocolError",
    "RemoteProtocolError",
    "Replica",
    "ReplicaClosedError",
    "Schema",
    "SecurityConfig",
    "SessionConfig",
    "StoreError",
    "Subscription",
    "SyncSession",
    "TlsConfig",
    "__version__",
    "load_tls",
]
