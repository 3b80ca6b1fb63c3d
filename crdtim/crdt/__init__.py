"""Pure lattices of crdtim (specs/crdt.md): no I/O, no clock reads, no third-party imports.

Nothing here imports the rest of the package but crdtim.errors, the bottom layer (exception
classes only), so that the clock raises the same ClockDriftError the replica does.
"""

from . import features
from .conversation import (
    DEFAULT_SCHEMA,
    Conversation,
    ConversationMap,
    Field,
    Schema,
    clear_covered,
    conversation_view,
    join_fields,
    novel_fields,
    trusted_map,
)
from .flag import CausalContext, Flag
from .history import History, versions, visible_path
from .hlc import DEFAULT_MAX_DRIFT_MS, ClockDriftError, Hlc
from .lattice import Lattice
from .lww import BOTTOM_STAMP, Lww, LwwInt, Stamp
from .maxmap import MAX_READ_BY_MEMBERS, MaxMap
from .maxreg import MaxReg
from .message import (
    DEFAULT_MESSAGE_LIMITS,
    Append,
    Header,
    MessageError,
    MessageLimits,
    MessageState,
)

__all__ = [
    "BOTTOM_STAMP",
    "DEFAULT_MAX_DRIFT_MS",
    "DEFAULT_MESSAGE_LIMITS",
    "DEFAULT_SCHEMA",
    "MAX_READ_BY_MEMBERS",
    "Append",
    "CausalContext",
    "ClockDriftError",
    "Conversation",
    "ConversationMap",
    "Field",
    "Flag",
    "Header",
    "History",
    "Hlc",
    "Lattice",
    "Lww",
    "LwwInt",
    "MaxMap",
    "MaxReg",
    "MessageError",
    "MessageLimits",
    "MessageState",
    "Schema",
    "Stamp",
    "clear_covered",
    "conversation_view",
    "features",
    "join_fields",
    "novel_fields",
    "trusted_map",
    "versions",
    "visible_path",
]
