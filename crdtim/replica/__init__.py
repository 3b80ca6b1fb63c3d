"""Replica: one durable copy of a user's conversation state, and the embedding API.

Every mutation -- one local op, a batch, or one received delta -- is a single LMDB write
transaction that moves state, ordering index, log, clock and acks together, so a crash at
any instant leaves either all of it or none (durable once the call returns, in `sync` mode;
specs/storage.md §3). `Replica` is one public class assembled from one mixin per concern,
each in its own module: local writes (`_local`), remote deltas (`_remote`), reads
(`_reads`), peers and log trimming (`_peers`), over the shared core (`_core`); change
events are `_subscriptions`. Encoding is crdtim/codec/'s job and storage store.py's; this package
holds what the bytes mean. It never opens a socket, and imports trio only for a
subscription's channel. Not thread-safe: use a replica from one thread at a time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from .. import codec
from ..crdt import DEFAULT_MAX_DRIFT_MS, DEFAULT_SCHEMA, Schema
from ..store import Store
from ._checks import MAX_CID, MAX_SEQ, MAX_TEXT, InvalidArgument
from ._core import (
    CLOCK_OFFSET_ENV,
    DEFAULT_LOG_RETENTION,
    MAX_CLOCK_OFFSET_MS,
    STORAGE_LIMITS,
    UNKNOWN_ORIGIN,
    clock_offset_ms,
    new_replica_id,
)
from ._core import now_ms as _now_ms
from ._digests import Digests
from ._messages import PREVIEW_CHARS, Message, Messages
from ._peers import Peers
from ._reads import Page, Reads
from ._remote import RemoteApply
from ._subscriptions import Change, Subscription
from ._write import MAX_REMOTE_COUNTER

__all__ = [
    "CLOCK_OFFSET_ENV",
    "DEFAULT_LOG_RETENTION",
    "MAX_CID",
    "MAX_CLOCK_OFFSET_MS",
    "MAX_REMOTE_COUNTER",
    "MAX_SEQ",
    "MAX_TEXT",
    "PREVIEW_CHARS",
    "STORAGE_LIMITS",
    "UNKNOWN_ORIGIN",
    "Change",
    "InvalidArgument",
    "Message",
    "Page",
    "Replica",
    "Subscription",
    "clock_offset_ms",
    "new_replica_id",
]


class Replica(Messages, RemoteApply, Reads, Peers, Digests):
    """A durable replica in an LMDB directory. Open with `Replica.open(path)`."""

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        durability: str = "sync",
        *,
        create: bool = True,
        schema: Schema = DEFAULT_SCHEMA,
        max_clock_drift_ms: int = DEFAULT_MAX_DRIFT_MS,
        log_retention: int = DEFAULT_LOG_RETENTION,
        now_ms: Callable[[], int] = _now_ms,
        limits: codec.Limits = codec.DEFAULT_LIMITS,
    ) -> Replica:
        """Open the replica in `path`, creating it (with a new id) if missing and `create`.

        Raises NotAReplicaError, FormatVersionError or CorruptStoreError, having written
        nothing, for a path that is not a usable crdtim replica.
        """
        if now_ms is _now_ms and (offset := clock_offset_ms()):
            def now_ms() -> int:
                return time.time_ns() // 1_000_000 + offset
        store = Store(os.fspath(path), durability, create=create)
        try:
            # Looked up in this module at each call, so that a test can make ids predictable.
            rid, created = store.init_meta(new_replica_id)
        except BaseException:
            store.close()
            raise
        replica = cls(store, rid, schema=schema, max_clock_drift_ms=max_clock_drift_ms,
                      log_retention=log_retention, now_ms=now_ms, limits=limits)
        replica.created = created
        return replica

    #: The README's name for list_conversations, kept so that the public surface does not
    #: break; inside the class `list` would shadow the builtin, hence the longer name.
    list = Reads.list_conversations

    def __enter__(self) -> Replica:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._store is not None:
            try:
                self.flush_acks()
            finally:
                self._store.close()
                self._store = None
        self._feed.close_all()

    def __repr__(self) -> str:
        return f"<Replica {self.id} at {self._store.path if self._store else '(closed)'}>"
