"""One write transaction of a replica: the changes it gathers, then writes all at once.

Local ops and remote deltas both go through `WriteTxn`: it loads each touched conversation
once, joins parts into it, tracks the novel part (the delta to log) and the hybrid clock,
and `finish` writes state, ordering key, one log entry and, when the clock passed it, the
clock's lease in the same LMDB transaction (specs/storage.md §3, §3a). It never commits,
notifies or reads the wall clock by itself: the replica passes in what it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .. import codec
from ..crdt import ConversationMap, Hlc, Schema, Stamp, hlc, join_fields
from ..crdt.conversation import Fields, clear_covered
from ..errors import ClockDriftError
from ..store import Txn, order_key_of
from ._clock import LeasedClock
from ._log_cache import MAX_WRITTEN_ENTRY_BYTES, LogCache
from ._message_index import MessageIndex
from ._state_cache import StateCache
from ._subscriptions import MESSAGES, Changed, changed

__all__ = ["MAX_REMOTE_COUNTER", "LocalOp", "WriteHost", "WriteTxn"]

#: The stored clock's counter has 32 bits (specs/storage.md). A remote reading with a counter
#: past half of that is refused like one from the far future: it could only come from a
#: broken or hostile peer, and accepting it would leave no room for our own ticks.
MAX_REMOTE_COUNTER = 2**31 - 1


class WriteHost(Protocol):
    """What a write transaction needs of its replica."""

    id: str
    schema: Schema
    max_clock_drift_ms: int
    _leased_clock: LeasedClock
    _states: StateCache
    _log_cache: LogCache

    def _now(self) -> int: ...

    def _load(self, t: Txn, cid: str) -> Fields: ...

    def _note_logged(self, seq: int | None) -> None: ...


#: A local op: given the transaction and the conversation's current state, its delta.
LocalOp = Callable[["WriteTxn", Fields], Fields]


class WriteTxn:
    """The changes of one write transaction, accumulated before they are written."""

    __slots__ = ("clock", "clock_moved", "delta", "histories", "lease", "log_payload", "new",
                 "old", "replica", "stored", "txn")

    def __init__(self, replica: WriteHost, txn: Txn):
        self.replica = replica
        self.txn = txn
        self.old: dict[str, Fields] = {}
        self.new: dict[str, Fields] = {}
        self.delta: dict[str, Fields] = {}
        self.clock: Hlc | None = None
        self.lease: Hlc | None = None  # meta.clock as read in this transaction
        self.clock_moved = False
        self.stored: dict[str, bytes] = {}  # cid -> its new state's bytes, when known already
        self.log_payload: bytes | None = None  # the log entry's bytes, when known already
        self.histories: dict[str, MessageIndex] = {}

    def history(self, cid: str) -> MessageIndex:
        """The conversation's stored message history, read and joined in this transaction
        (its records are not part of `fields`: a conversation loads without its messages)."""
        index = self.histories.get(cid)
        if index is None:
            index = self.histories[cid] = MessageIndex(self.txn, cid)
        return index

    def fields(self, cid: str) -> Fields:
        state = self.new.get(cid)
        if state is None:
            state = self.replica._load(self.txn, cid)
            self.old[cid] = self.new[cid] = state
        return state

    def _clock(self) -> Hlc:
        if self.clock is None:
            # The clock lives in memory; meta.clock is its lease (specs/storage.md §3a).
            self.lease = Hlc(*self.txn.clock())
            self.clock = self.replica._leased_clock.start(self.txn, self.lease)
        return self.clock

    def stamp(self) -> Stamp:
        """A fresh hybrid-clock stamp for a local write, larger than every one seen."""
        self.clock = clock = hlc.tick(self._clock(), self.replica._now())
        self.clock_moved = True
        return Stamp(clock.wall, clock.counter, self.replica.id)

    def observe(self, remote: Hlc) -> None:
        """Advance the clock past a remote reading; ClockDriftError aborts the transaction."""
        r = self.replica
        if remote.counter > MAX_REMOTE_COUNTER:
            raise ClockDriftError(f"remote clock counter {remote.counter} is over the limit "
                                  f"of {MAX_REMOTE_COUNTER}")
        self.clock = hlc.receive(self._clock(), remote, r._now(), r.max_clock_drift_ms)
        self.clock_moved = True

    def join(self, cid: str, part: Fields) -> None:
        if not part:
            return
        messages = part.get(MESSAGES)
        if messages is not None:
            # Joined record by record into the message databases, and only what was new there
            # goes to the log (specs/storage.md §2).
            part = {name: state for name, state in part.items() if name != MESSAGES}
            novel = self.history(cid).join(messages)
            current = self.fields(cid)
            if part:
                self.new[cid] = join_fields(current, part)
            elif not current:
                # A conversation known only by its messages still gets its record: listing
                # and state transfer go by conversation records.
                self.new[cid] = {}
            if not novel.is_bottom():
                part[MESSAGES] = novel
            if part:
                self.delta[cid] = join_fields(self.delta.get(cid, {}), part)
            return
        self.new[cid] = join_fields(self.fields(cid), part)
        self.delta[cid] = join_fields(self.delta.get(cid, {}), part)

    def adopt(self, cid: str, fields: Fields, stored: bytes | None) -> None:
        """A conversation with no state here (fields(cid) was {}, or the caller knows it has
        none) takes `fields` as its state, all of it novel; `stored`:
        its bytes as received (codec.store_received), or None to encode them."""
        self.old[cid] = {}
        self.new[cid] = self.delta[cid] = fields
        if stored is not None:
            self.stored[cid] = stored

    def finish(self, origin: str) -> list[Changed]:
        """Write states, index, log entry and clock; return what changed."""
        t, schema = self.txn, self.replica.schema
        stored = self.stored
        states = self.replica._states
        for cid in self.delta:
            state = self.new[cid]
            old = self.old[cid]
            if state is old:  # only its messages changed
                continue
            raw = stored.get(cid) if stored else None
            if raw is None:
                sealed = t.put_conversation(cid, codec.encode_fields(state, schema))
                if old:
                    # Remembered with the bytes it is stored as: the next write of it (in
                    # this process, if no other writes it first) need not decode them again.
                    # Not a new conversation's: a build of many would only churn the cache.
                    states.put(cid, sealed, state)
            else:
                t.put_conversation(cid, raw)
            # The order key follows pinned and last_message only (specs/storage.md §2): a
            # join keeps the very objects of the fields it did not change.
            if not old or state.get("pinned") is not old.get("pinned") \
                    or state.get("last_message") is not old.get("last_message"):
                t.replace_order_key(order_key_of(cid, old), order_key_of(cid, state))
        # Which log entry this process wrote (None: none), so that its change feed does not
        # deliver it a second time as another process's (specs/storage.md §3).
        self.replica._note_logged(None)
        if self.delta:
            if self.log_payload is None:
                # Every part joined here is non-bottom (a normalized map's, or a mutator's
                # non-empty delta), so the map needs no normalizing pass.
                self.log_payload = codec.encode_map(codec.trusted_map(self.delta, schema))
            seq = t.append_log(origin, self.log_payload)
            self.replica._note_logged(seq)
            # The entry as the map it holds, for the sessions that relay it: they need not
            # decode it (_log_cache.py). Kept by its bytes, so an abort leaves nothing wrong.
            # Not a large entry (a state chunk, a big batch): building its map costs a fifth
            # of a bootstrap, and a session that relays it decodes and shares it anyway.
            if len(self.log_payload) <= MAX_WRITTEN_ENTRY_BYTES:
                self.replica._log_cache.put(seq, self.log_payload,
                                            as_decoded(self.delta, schema))
        if self.clock_moved and self.clock is not None and self.lease is not None:
            # Written only when the reading passed the stored lease (specs/storage.md §3a), so
            # most commits leave meta untouched.
            lease = self.replica._leased_clock.lease_to_store(
                t, self.lease, self.clock, self.replica._now())
            if lease is not None:
                t.put_clock(lease.wall, lease.counter)
        return [changed(cid, part) for cid, part in self.delta.items()]


def as_decoded(delta: dict[str, Fields], schema: Schema) -> ConversationMap:
    """The map a log entry encoding `delta` decodes to: the decoder drops a last message
    covered by the conversation's cleared_at (specs/crdt.md §6, "Join"), which a lone
    mutator's delta may still hold. Every part is non-bottom already (see `finish`)."""
    out = {cid: clear_covered(fields) if "cleared_at" in fields else fields
           for cid, fields in delta.items()}
    return codec.trusted_map(out, schema)
