"""What every part of a Replica shares: its store, schema, clock source and change feed.

`ReplicaCore` holds the state a replica is made of and the few helpers every concern uses
(loading and decoding what this replica stored itself, notifying subscribers). The
concerns -- local writes, remote deltas, reads, peers -- are mixins over it, assembled into
`Replica` in this package's `__init__`. Nothing here writes to the store.
"""

from __future__ import annotations

import base64
import itertools
import logging
import os
import secrets
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar

from .. import codec
from ..crdt import ConversationMap, Schema
from ..crdt.conversation import Fields
from ..errors import CorruptStoreError, DecodeError, ReplicaClosedError
from ..store import Store, Txn
from ._checks import InvalidArgument, check_seq
from ._clock import LeasedClock
from ._log_cache import LogCache
from ._state_cache import StateCache
from ._subscriptions import Change, Changed, ChangeFeed, Subscription, changed
from ._write import LocalOp

log = logging.getLogger("crdtim.replica")
T = TypeVar("T")

#: Log entries kept for peers that have not acknowledged them, at most; a peer further behind
#: gets a state transfer instead of deltas (specs/storage.md §10).
DEFAULT_LOG_RETENTION = 100_000
#: Decoding what this replica stored itself (specs/storage.md §11): one definition, the codec's.
STORAGE_LIMITS = codec.STORAGE_LIMITS
#: Origin recorded for a delta applied without saying where it came from (forwarded to every
#: peer). Local writes are recorded with the replica's own id.
UNKNOWN_ORIGIN = ""

#: Environment variable: milliseconds added to this process's wall clock (specs/crdt.md §1),
#: so that a test can run replicas whose clocks disagree, as real machines' do.
CLOCK_OFFSET_ENV = "CRDTIM_CLOCK_OFFSET_MS"
#: The largest offset accepted, either way (a week).
MAX_CLOCK_OFFSET_MS = 7 * 24 * 3600 * 1000


def clock_offset_ms() -> int:
    """$CRDTIM_CLOCK_OFFSET_MS as an integer (0 if unset or empty); InvalidArgument naming
    the variable for anything else. Read once, when a replica is opened: not on the hot
    path of every write."""
    text = os.environ.get(CLOCK_OFFSET_ENV, "").strip()
    if not text:
        return 0
    try:
        offset = int(text)
    except ValueError:
        offset = None
    if offset is None or not -MAX_CLOCK_OFFSET_MS <= offset <= MAX_CLOCK_OFFSET_MS:
        raise InvalidArgument(
            f"{CLOCK_OFFSET_ENV} must be an integer number of milliseconds from "
            f"-{MAX_CLOCK_OFFSET_MS} to {MAX_CLOCK_OFFSET_MS}, not {text!r:.40}")
    return offset


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_replica_id() -> str:
    """Random, short, printable: 13 lowercase base32 characters (64 random bits)."""
    return base64.b32encode(secrets.token_bytes(8)).decode().rstrip("=").lower()


class ReplicaCore:
    """The state of a replica and what its concerns share. Not thread-safe: use a replica
    from one thread (trio task or plain code) at a time."""

    def __init__(self, store: Store, replica_id: str, *, schema: Schema, max_clock_drift_ms: int,
                 log_retention: int, now_ms: Callable[[], int], limits: codec.Limits):
        self._store: Store | None = store
        self.id = replica_id
        self.schema = schema
        self.max_clock_drift_ms = max_clock_drift_ms
        self.log_retention = log_retention
        self.limits = limits
        self._now = now_ms
        #: The hybrid clock in memory, and the lease on it stored in meta (_clock.py).
        self._leased_clock = LeasedClock()
        #: Decoded states by the exact bytes they came from (_state_cache.py).
        self._states = StateCache()
        #: Decoded log entries, shared by the sessions that relay them (_log_cache.py).
        self._log_cache = LogCache()
        # The open batch belongs to the task (or thread) that opened it, not to the replica:
        # another trio task writing meanwhile commits on its own, and is not lost if the
        # batch raises. Context variables are per task in trio and asyncio, per thread else.
        self._batch: ContextVar[list[tuple[str, LocalOp]] | None] = \
            ContextVar(f"crdtim_batch_{id(self)}", default=None)
        #: True when open() made this replica (and its id) just now.
        self.created = False
        self._pending_acks: dict[str, int] = {}  # peer -> ack not yet written (record_ack)
        #: (conversation, origin) already warned of a claim on our own dots (_remote.py).
        self._claims_warned: set[tuple[str, str]] = set()
        self._feed = ChangeFeed()
        # Delivering other processes' writes (deliver_other_processes_changes): the log
        # position delivered up to (None: not asked yet), the entries this process wrote
        # after it (delivered at their commit already), and the entry of the transaction
        # now committing (WriteTxn.finish notes it; it is ours once the commit succeeded).
        self._delivered_upto: int | None = None
        self._own_entries: set[int] = set()
        self._committing_entry: int | None = None

    @property
    def closed(self) -> bool:
        return self._store is None

    @property
    def store(self) -> Store:
        if self._store is None:
            raise ReplicaClosedError("the replica is closed")
        return self._store

    @property
    def path(self) -> str:
        return self.store.path

    # -- subscriptions -----------------------------------------------------------------------

    def subscribe(self, callback: Callable[[Change], Any] | None = None, *,
                  max_buffer: int = 10_000) -> Subscription:
        """Change events after each commit of this process, and for other processes' writes
        once deliver_other_processes_changes() finds them (a serving Node calls it): to
        `callback`, called synchronously, or (no callback) on a trio channel: `async for
        change in sub`."""
        return self._feed.subscribe(callback, max_buffer)

    def changes_since(self, seq: int, limit: int | None = None) -> Iterator[tuple[int, Change]]:
        """Changes recorded in the log after `seq` by any process (for `crdtim watch`), from
        at most `limit` log entries (None: all retained), so that a reader that goes a page
        at a time (the HTTP change feed) holds one page in memory, not the log."""
        check_seq(seq, "seq")
        entries = self.store.read(lambda t: list(itertools.islice(t.log_entries(seq), limit)))
        for s, origin, payload in entries:
            local = origin == self.id
            for cid, fields in self._decode_log(payload).convs.items():
                _, names, messages = changed(cid, fields)
                yield s, Change(cid, names, "local" if local else "remote",
                                None if local else (origin or None), messages)

    def _notify(self, changes: list[Changed], origin: str,
                peer: str | None) -> None:
        # Called once the transaction committed: its log entry is this process's.
        if self._committing_entry is not None and self._delivered_upto is not None:
            self._own_entries.add(self._committing_entry)
        self._committing_entry = None
        self._feed.notify(changes, origin, peer)

    def _note_logged(self, seq: int | None) -> None:
        self._committing_entry = seq

    def deliver_other_processes_changes(self) -> int:
        """Hand subscribers the changes other processes (the CLI, say) logged since the
        last call, in log order; returns how many log entries that was. The first call only
        marks where delivery starts. A Node serving this replica calls it whenever it
        notices the log head move (every `poll_interval`); without one, other processes'
        writes are never delivered. A write of another process is a "local" change (this
        replica made it); a delta that another process applied is "remote"."""
        head = self.store.read(lambda t: t.head())
        if self._delivered_upto is None:
            self._delivered_upto = head
            return 0
        if head <= self._delivered_upto:
            return 0
        after, own = self._delivered_upto, self._own_entries
        floor, entries = self.store.read(
            lambda t: (t.log_floor(), list(t.log_entries(after, head))))
        if floor > after:  # (only a trim between two polls could drop them: a Node polls first)
            log.warning("%d log entries were trimmed before their changes were delivered",
                        floor - after)
        delivered = 0
        for seq, origin, payload in entries:
            if seq in own:
                continue
            delivered += 1
            changes = [changed(cid, fields)
                       for cid, fields in self._decode_log(payload).convs.items()]
            if origin == self.id:
                self._feed.notify(changes, "local", None)
            else:
                self._feed.notify(changes, "remote", origin or None)
        self._delivered_upto = head
        self._own_entries = {seq for seq in own if seq > head}
        return delivered

    def _write(self, fn: Callable[[Txn], T]) -> T:
        """store.write for a transaction that may move the clock: the clock learns whether
        the lease it wrote was committed (specs/storage.md §3a)."""
        try:
            result = self.store.write(fn)
        except BaseException:
            self._leased_clock.aborted()
            raise
        self._leased_clock.committed()
        return result

    # -- decoding what this replica stored ---------------------------------------------------

    def _load(self, t: Txn, cid: str) -> Fields:
        sealed = t.sealed_conversation(cid)
        if sealed is None:
            return {}
        # Bytes already decoded (or encoded) by this process are not decoded again; any
        # other bytes are checked and decoded (_state_cache.py).
        fields = self._states.get(cid, sealed)
        if fields is None:
            fields = self._decode(cid, t.unseal_conversation(cid, sealed))
            self._states.put(cid, sealed, fields)
        return fields

    def _decode(self, cid: str, raw: bytes) -> Fields:
        try:
            return codec.decode_fields(raw, self.schema, STORAGE_LIMITS, cid)
        except DecodeError as e:
            raise CorruptStoreError(
                f"{self.store.path}: cannot read a stored conversation ({e}): the file is "
                f"damaged, or was written with a schema that has more fields (open it with "
                f"that schema)") from None

    def _decode_log_entry(self, seq: int, payload: bytes) -> ConversationMap:
        """_decode_log of log entry `seq`, decoded once for every session that relays it
        (_log_cache.py): the map returned is shared, and must not be changed."""
        m = self._log_cache.get(seq, payload)
        if m is None:
            m = self._decode_log(payload)
            self._log_cache.put(seq, payload, m)
        return m

    def _decode_log(self, payload: bytes) -> ConversationMap:
        try:
            return codec.decode_map(payload, self.schema, STORAGE_LIMITS)
        except DecodeError as e:
            raise CorruptStoreError(f"{self.store.path}: delta log entry is damaged: {e}") from None
