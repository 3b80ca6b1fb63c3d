"""Replica: one durable copy of a user's conversation state, and the embedding API.

Local mutators, remote deltas, the delta log with each entry's origin, per-peer acks and
change subscriptions. Every mutation -- one local op, a batch, or one received delta -- is a
single LMDB write transaction that moves state, ordering index, log, clock and acks together,
so a crash at any instant leaves either all of it or none (durable once the call returns, in
`sync` mode). Encoding is codec.py's job and storage store.py's; this module holds what the
bytes mean. Not thread-safe: use a replica from one thread (trio task or plain code) at a time.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import time
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import trio

from . import codec
from .crdt import (
    DEFAULT_MAX_DRIFT_MS,
    DEFAULT_SCHEMA,
    Flag,
    Conversation,
    ConversationMap,
    Hlc,
    Lww,
    Schema,
    Stamp,
    conversation_view,
    join_fields,
    novel_fields,
)
from .crdt import hlc
from .crdt.conversation import Fields, message_arrived_delta
from .errors import (
    ClockDriftError,
    CorruptStoreError,
    CrdtimError,
    DecodeError,
    LogTrimmedError,
    PeerIdentityError,
    ReplicaClosedError,
)
from .store import MAX_CID_BYTES, MAX_ORIGIN_BYTES, Store, Txn, order_key

__all__ = ["Replica", "Page", "Change", "Subscription", "InvalidArgument", "UNKNOWN_ORIGIN"]

log = logging.getLogger("crdtim.replica")

#: Log entries kept for peers that have not acknowledged them, at most; a peer further behind
#: gets a state transfer instead of deltas (DESIGN.md, Replication, 4).
DEFAULT_LOG_RETENTION = 100_000
#: Decoding what this replica stored itself: the same checks of structure and type, without
#: the per-message caps that protect it from peers (a large local batch, or the join of many
#: deltas, may be over them and must still read back).
STORAGE_LIMITS = codec.Limits(max_bytes=2**62, max_conversations=2**62, max_replicas=2**62,
                              max_dots=2**62)
MAX_CID = codec.DEFAULT_LIMITS.max_cid
MAX_TEXT = codec.DEFAULT_LIMITS.max_text
MAX_SEQ = codec.MAX_INT
#: The stored clock's counter has 32 bits (specs/storage.md). A remote reading with a counter
#: past half of that is refused like one from the far future: it could only come from a
#: broken or hostile peer, and accepting it would leave no room for our own ticks.
MAX_REMOTE_COUNTER = 2**31 - 1
#: Origin recorded for a delta applied without saying where it came from (forwarded to every
#: peer). Local writes are recorded with the replica's own id.
UNKNOWN_ORIGIN = ""


class InvalidArgument(CrdtimError, ValueError):
    """A caller passed a value crdtim cannot accept (bad id, text too long, negative seq...)."""


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


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_replica_id() -> str:
    """Random, short, printable: 13 lowercase base32 characters (64 random bits)."""
    return base64.b32encode(secrets.token_bytes(8)).decode().rstrip("=").lower()


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Conversation]
    cursor: str | None  # pass back to list() for the next page; None on the last page
    has_more: bool


@dataclass(frozen=True, slots=True)
class Change:
    """One conversation changed, in one committed transaction."""

    conversation: str
    fields: frozenset[str]
    origin: str  # "local" or "remote"
    peer: str | None = None  # for remote changes, the replica the delta came from, if known


class Subscription:
    """Change events for one subscriber: a callback, or a trio channel to iterate.

    `async for change in sub` works when no callback was given. If the consumer falls more
    than `max_buffer` events behind, further events are dropped and counted in `dropped`
    rather than growing memory without bound; re-read with get()/list() after a drop.
    """

    def __init__(self, replica: Replica, callback: Callable[[Change], Any] | None, max_buffer: int):
        self._replica = replica
        self.callback = callback
        self.dropped = 0
        self._send: trio.MemorySendChannel | None = None
        self.receive_channel: trio.MemoryReceiveChannel | None = None
        if callback is None:
            self._send, self.receive_channel = trio.open_memory_channel(max_buffer)

    def _deliver(self, change: Change) -> None:
        if self.callback is not None:
            self.callback(change)
            return
        try:
            self._send.send_nowait(change)
        except trio.WouldBlock:
            self.dropped += 1
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            self.close()

    def close(self) -> None:
        self._replica._subscriptions.discard(self)
        if self._send is not None:
            self._send.close()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> Any:
        if self.receive_channel is None:
            raise TypeError("this subscription delivers to a callback")
        return self.receive_channel.__aiter__()


class _Write:
    """The changes of one write transaction, accumulated before they are written."""

    __slots__ = ("replica", "txn", "old", "new", "delta", "clock", "clock_moved", "stored",
                 "log_payload")

    def __init__(self, replica: Replica, txn: Txn):
        self.replica = replica
        self.txn = txn
        self.old: dict[str, Fields] = {}
        self.new: dict[str, Fields] = {}
        self.delta: dict[str, Fields] = {}
        self.clock: Hlc | None = None
        self.clock_moved = False
        self.stored: dict[str, bytes] = {}  # cid -> its new state's bytes, when known already
        self.log_payload: bytes | None = None  # the log entry's bytes, when known already

    def fields(self, cid: str) -> Fields:
        state = self.new.get(cid)
        if state is None:
            state = self.replica._load(self.txn, cid)
            self.old[cid] = self.new[cid] = state
        return state

    def _clock(self) -> Hlc:
        if self.clock is None:
            self.clock = Hlc(*self.txn.clock())
        return self.clock

    def stamp(self) -> Stamp:
        """A fresh hybrid-clock stamp for a local write, larger than every one seen."""
        self.clock = hlc.tick(self._clock(), self.replica._now())
        self.clock_moved = True
        return Stamp(self.clock.wall, self.clock.counter, self.replica.id)

    def observe(self, remote: Hlc) -> None:
        """Advance the clock past a remote reading; ClockDriftError aborts the transaction."""
        r = self.replica
        if remote.counter > MAX_REMOTE_COUNTER:
            raise ClockDriftError(f"remote clock counter {remote.counter} is over the limit "
                                  f"of {MAX_REMOTE_COUNTER}")
        try:
            self.clock = hlc.receive(self._clock(), remote, r._now(), r.max_clock_drift_ms)
        except hlc.ClockDriftError as e:
            raise ClockDriftError(str(e)) from None
        self.clock_moved = True

    def join(self, cid: str, part: Fields) -> None:
        if not part:
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

    def finish(self, origin: str) -> list[tuple[str, frozenset[str]]]:
        """Write states, index, log entry and clock; return what changed."""
        t, schema = self.txn, self.replica.schema
        stored = self.stored
        for cid in self.delta:
            state = self.new[cid]
            raw = stored.get(cid) if stored else None
            t.put_conversation(cid, codec.encode_fields(state, schema) if raw is None else raw)
            t.replace_order_key(_order_key_of(cid, self.old[cid]), _order_key_of(cid, state))
        if self.delta:
            if self.log_payload is None:
                # Every part joined here is non-bottom (a normalized map's, or a mutator's
                # non-empty delta), so the map needs no normalizing pass.
                self.log_payload = codec.encode_map(codec.trusted_map(self.delta, schema))
            t.append_log(origin, self.log_payload)
        if self.clock_moved:
            t.put_clock(*self.clock)
        return [(cid, frozenset(part)) for cid, part in self.delta.items()]


def _order_key_of(cid: str, fields: Fields) -> bytes | None:
    if not fields:
        return None
    pinned = fields.get("pinned")
    last = fields.get("last_message")
    return order_key(
        pinned is not None and pinned.value, 0 if last is None else last.stamp.wall, cid
    )


class Replica:
    """A durable replica in an LMDB directory. Open with `Replica.open(path)`."""

    def __init__(self, store: Store, replica_id: str, *, schema: Schema, max_clock_drift_ms: int,
                 log_retention: int, now_ms: Callable[[], int], limits: codec.Limits):
        self._store: Store | None = store
        self.id = replica_id
        self.schema = schema
        self.max_clock_drift_ms = max_clock_drift_ms
        self.log_retention = log_retention
        self.limits = limits
        self._now = now_ms
        # The open batch belongs to the task (or thread) that opened it, not to the replica:
        # another trio task writing meanwhile commits on its own, and is not lost if the
        # batch raises. Context variables are per task in trio and asyncio, per thread else.
        self._batch: ContextVar[list[tuple[str, Callable[[_Write, Fields], Fields]]] | None] = \
            ContextVar(f"crdtim_batch_{id(self)}", default=None)
        #: True when open() made this replica (and its id) just now.
        self.created = False
        self._pending_acks: dict[str, int] = {}  # peer -> ack not yet written (record_ack)
        self._subscriptions: set[Subscription] = set()

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
            rid, created = store.init_meta(new_replica_id)
        except BaseException:
            store.close()
            raise
        replica = cls(store, rid, schema=schema, max_clock_drift_ms=max_clock_drift_ms,
                      log_retention=log_retention, now_ms=now_ms, limits=limits)
        replica.created = created
        return replica

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
        for sub in list(self._subscriptions):
            sub.close()

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

    def __repr__(self) -> str:
        return f"<Replica {self.id} at {self._store.path if self._store else '(closed)'}>"

    # -- local mutators ----------------------------------------------------------------------

    def set_title(self, cid: str, text: str) -> None:
        _check_cid(cid)
        _check_text(text, "title")
        self._local(cid, lambda w, cur: {"title": Lww(w.stamp(), text)})

    def set_register(self, cid: str, name: str, text: str) -> None:
        """Write a last-writer-wins text field an app added to the schema with
        `clocked=True` (its stamps are hybrid-clock readings that receivers advance their
        clocks past; without that, a causally later write could lose)."""
        _check_cid(cid)
        _check_text(text, name)
        if not self._field_of(name, Lww).clocked:
            raise InvalidArgument(f"field {name!r} is not a clocked register; declare it "
                                  f"with Field(..., Lww, clocked=True)")
        self._local(cid, lambda w, cur: {name: Lww(w.stamp(), text)})

    def pin(self, cid: str) -> None:
        self.enable(cid, "pinned")

    def unpin(self, cid: str) -> None:
        self.disable(cid, "pinned")

    def mute(self, cid: str) -> None:
        self.enable(cid, "muted")

    def unmute(self, cid: str) -> None:
        self.disable(cid, "muted")

    def enable(self, cid: str, flag: str) -> None:
        """Set an add-wins flag (pinned, muted, or one an app added to the schema)."""
        _check_cid(cid)
        bottom = self._field_of(flag, Flag).lattice.bottom()
        self._local(cid, lambda w, cur: {flag: cur.get(flag, bottom).enable(self.id)})

    def disable(self, cid: str, flag: str) -> None:
        _check_cid(cid)
        bottom = self._field_of(flag, Flag).lattice.bottom()

        def op(w: _Write, cur: Fields) -> Fields:
            d = cur.get(flag, bottom).disable()
            return {} if d.is_bottom() else {flag: d}

        self._local(cid, op)

    def message_arrived(self, cid: str, seq: int, preview: str = "", at: int | None = None) -> None:
        _check_cid(cid)
        _check_seq(seq, "seq")
        _check_text(preview, "preview")
        if at is None:
            at = self._now()
        elif _check_seq(at, "at") > self._now() + self.max_clock_drift_ms:
            raise InvalidArgument(f"message time {at} ms is more than "
                                  f"{self.max_clock_drift_ms} ms in the future")
        self._local(cid, lambda w, cur: message_arrived_delta(cur, seq, preview, at, self.id))

    def mark_read(self, cid: str, seq: int) -> None:
        _check_cid(cid)
        _check_seq(seq, "seq")

        def op(w: _Write, cur: Fields) -> Fields:
            d = cur.get("read_seq", self.schema.by_name["read_seq"].lattice.bottom()).raise_to(seq)
            return {} if d.is_bottom() else {"read_seq": d}

        self._local(cid, op)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Many ops, one commit: `with r.batch(): ...`.

        The ops are checked as they are called and written together, in one transaction,
        when the block exits; reads inside the block see the state before it. If the block
        raises, nothing is written.
        """
        if self._batch.get() is not None:
            yield  # nested: part of the outer batch
            return
        ops: list[tuple[str, Callable[[_Write, Fields], Fields]]] = []
        token = self._batch.set(ops)
        try:
            yield
        finally:
            self._batch.reset(token)
        if ops:
            self._commit_local(ops)

    def _local(self, cid: str, op: Callable[[_Write, Fields], Fields]) -> None:
        self.store  # fail now, not at the end of a batch, if closed
        ops = self._batch.get()
        if ops is not None:
            ops.append((cid, op))
        else:
            self._commit_local([(cid, op)])

    def _commit_local(self, ops: list[tuple[str, Callable[[_Write, Fields], Fields]]]) -> None:
        def txn(t: Txn) -> list[tuple[str, frozenset[str]]]:
            w = _Write(self, t)
            for cid, op in ops:
                w.join(cid, op(w, w.fields(cid)))
            return w.finish(self.id)

        self._notify(self.store.write(txn), "local", None)

    # -- remote deltas -----------------------------------------------------------------------

    def apply_delta(self, data: bytes, origin: str | None = None) -> set[str]:
        """Join an encoded delta from anywhere, in one transaction; returns the ids changed.

        Only the part that was new here is logged, with `origin` (the replica it came from,
        if known) so that it is forwarded to others but not back. Raises DecodeError or
        ClockDriftError, changing nothing, for a delta that is malformed or from the future.
        """
        delta = codec.decode_map(data, self.schema, self.limits)
        return self.apply_map(delta, origin)

    def apply_map(self, delta: ConversationMap, origin: str | None = None,
                  *, received: tuple[str, int] | None = None) -> set[str]:
        """apply_delta for a decoded map; `received=(peer, seq)` records, in the same
        transaction, that the peer's log up to `seq` is now applied here (if that is
        further than recorded)."""
        return self._apply_remote(delta, origin, received, None)

    def apply_state_chunk(self, chunk: ConversationMap, wire: codec.Received,
                          origin: str | None = None) -> set[str]:
        """apply_map for a map decoded with codec.decode_map_as_received (a STATE_CHUNK):
        the same result, cheaper when conversations are new here. A new conversation is
        stored from its bytes as received; when every conversation of the chunk is new,
        the novel part is the whole chunk, and the payload as received is the log entry."""
        return self._apply_remote(chunk, origin, None, wire)

    def _apply_remote(self, delta: ConversationMap, origin: str | None,
                      received: tuple[str, int] | None, wire: codec.Received | None) -> set[str]:
        if origin is not None and (type(origin) is not str
                                   or not _storable(origin, MAX_ORIGIN_BYTES)):
            raise InvalidArgument(f"origin must be a replica id, not {origin!r:.80}")
        for cid in delta.convs:  # the codec counts characters; LMDB keys are bounded in bytes
            if not _storable(cid, MAX_CID_BYTES):
                raise DecodeError(f"conversation id {cid!r:.80} is over {MAX_CID_BYTES} bytes")

        def txn(t: Txn) -> list[tuple[str, frozenset[str]]]:
            w = _Write(self, t)
            # Bound every counter, not only the largest reading's: whether a delta is refused
            # must not depend on what else it was joined with (group commit), and a stamp
            # accepted here must be acceptable where it is forwarded.
            remote, counter, latest = delta.stamp_bounds()
            if counter > MAX_REMOTE_COUNTER:
                raise ClockDriftError(f"remote clock counter {counter} is over the limit "
                                      f"of {MAX_REMOTE_COUNTER}")
            if remote is not None:
                w.observe(remote)
            # `latest`: message times are not clocked, but bounded alike.
            if latest > self._now() + self.max_clock_drift_ms:
                raise ClockDriftError(f"a register stamp of {latest} ms is more than "
                                      f"{self.max_clock_drift_ms} ms in the future")
            whole = wire is not None
            # A state chunk's ids come in order, and a newcomer holds none of them: one cursor
            # probe then says that none is here, for a lookup per conversation. And only a
            # message whose replica table names this replica can claim one of its dots.
            fresh = wire is not None and bool(delta.convs) and not t.has_conversation_between(
                min(delta.convs), max(delta.convs))
            check_dots = wire is None or self.id in wire.rids
            for cid, fields in delta.convs.items():
                current = {} if fresh else w.fields(cid)
                if check_dots:
                    self._refuse_forged_dots(cid, current, fields)
                if not current and wire is not None:
                    w.adopt(cid, fields, codec.store_received(wire, cid))
                else:
                    part = novel_fields(current, fields)
                    whole = whole and part == fields
                    w.join(cid, part)
            if whole and w.delta:
                # All of the chunk was novel: the novel part is what was received. (Parts
                # the decoder dropped, bottom fields or empty conversations, decode away
                # again when the entry is read.)
                w.log_payload = wire.payload
            # Resume points only move forward: two overlapping connections to one peer may
            # deliver an older interval after a newer one.
            if received is not None and received[1] > t.received(received[0]):
                t.put_received(*received)
            return w.finish(origin or UNKNOWN_ORIGIN)

        changes = self.store.write(txn)
        self._notify(changes, "remote", origin)
        return {cid for cid, _ in changes}

    def _refuse_forged_dots(self, cid: str, current: Fields, delta: Fields) -> None:
        """Refuse a flag delta claiming enables of *this* replica that it never made.

        Only this replica makes its own dots, and each is in its state from the moment it is
        made; a larger one is forged or corrupt. Accepted, it would make this replica's next
        enable reuse a counter (silently lost) or run past what the codec can decode.
        """
        for name, state in delta.items():
            if not isinstance(state, Flag):
                continue
            own = current.get(name, Flag.bottom()).context.next_dot(self.id)[1] - 1
            claimed = state.context.vv.get(self.id, 0)
            for replica, n in state.context.cloud:
                if replica == self.id and n > claimed:
                    claimed = n
            if claimed > own:
                raise DecodeError(f"conversation {cid!r:.80} {name}: claims enable {claimed} of "
                                  f"this replica, which made only {own}")

    # -- reads -------------------------------------------------------------------------------

    def get(self, cid: str) -> Conversation | None:
        _check_cid(cid)
        fields = self.store.read(lambda t: self._load(t, cid))
        return conversation_view(cid, fields, self.schema) if fields else None

    def list(self, limit: int = 50, cursor: str | None = None) -> Page:
        """One page of conversations: pinned first, then newest message first, then by id.

        Costs O(limit) through the ordering index, whatever the number of conversations.
        """
        if type(limit) is not int or not 1 <= limit <= 10_000:
            raise InvalidArgument(f"limit must be an integer from 1 to 10000, not {limit!r}")
        after = _decode_cursor(cursor)

        def read(t: Txn) -> tuple[list[tuple[bytes, Fields]], bool]:
            keys = t.order_keys(after)
            items = []
            for key in keys:
                if len(items) == limit:
                    return items, True
                cid = key[9:].decode()
                items.append((key, self._load(t, cid)))
            return items, False

        rows, has_more = self.store.read(read)
        items = [conversation_view(key[9:].decode(), f, self.schema) for key, f in rows]
        next_cursor = _encode_cursor(rows[-1][0]) if has_more else None
        return Page(items, next_cursor, has_more)

    def __iter__(self) -> Iterator[Conversation]:
        """Every conversation, in list order, a page at a time."""
        cursor = None
        while True:
            page = self.list(500, cursor)
            yield from page.items
            if not page.has_more:
                return
            cursor = page.cursor

    def __len__(self) -> int:
        return self.store.read(lambda t: t.conversation_count())

    @property
    def head(self) -> int:
        """Sequence number of the newest delta-log entry (0 for none)."""
        return self.store.read(lambda t: t.head())

    @property
    def log_floor(self) -> int:
        """Entries at or below this sequence have been dropped from the log."""
        return self.store.read(lambda t: t.log_floor())

    def state(self) -> ConversationMap:
        """The whole state as one map (reads every conversation: for tests and small replicas)."""
        return self.store.read(lambda t: ConversationMap(
            {cid: self._decode(cid, raw) for cid, raw in t.conversations()}, self.schema))

    def delta_since(self, seq: int) -> bytes:
        """Encoded delta of everything logged after `seq`, for a custom transport.

        If entries after `seq` were already dropped from the log, the whole state is returned
        instead (a state is a delta too), so the receiver still converges.
        """
        _check_seq(seq, "seq")
        return self.store.read(lambda t: codec.encode_map(self._delta_since(t, seq)))

    def _delta_since(self, t: Txn, seq: int) -> ConversationMap:
        if seq < t.log_floor():
            return ConversationMap(
                {cid: self._decode(cid, raw) for cid, raw in t.conversations()}, self.schema)
        acc: dict[str, Fields] = {}
        for _, _, payload in t.log_entries(seq):
            _join_into(acc, self._decode_log(payload))
        return ConversationMap(acc, self.schema)

    # -- replication support (used by protocol.py through a narrow interface) -----------------

    def delta_interval(self, after: int, *, skip_origin: str | None = None,
                       max_entries: int = 1000, max_bytes: int | None = None
                       ) -> tuple[int, ConversationMap | None]:
        """(to, delta): the join of log entries in (after, to], leaving out those that came
        from `skip_origin` (no back-propagation); at most `max_entries` entries, and no more
        than `max_bytes` of encoded entries unless the first alone is larger. `delta` is
        None when every entry in the range was left out or there are none (then to == after).

        Raises LogTrimmedError if entries after `after` were already dropped: checked in the
        same read transaction, so a trim can never make a gap go unnoticed.
        """
        _check_seq(after, "after")

        def read(t: Txn) -> tuple[int, ConversationMap | None]:
            if after < t.log_floor():
                raise LogTrimmedError(f"log entries after {after} were dropped "
                                      f"(log floor {t.log_floor()})")
            acc: dict[str, Fields] = {}
            to = after
            size = 0
            for i, (seq, origin, payload) in enumerate(t.log_entries(after)):
                if i == max_entries:
                    break
                if skip_origin is None or origin != skip_origin:
                    size += len(payload)
                    if max_bytes is not None and size > max_bytes and acc:
                        break
                    _join_into(acc, self._decode_log(payload))
                to = seq
            return to, ConversationMap(acc, self.schema) if acc else None
        return self.store.read(read)

    def state_chunk(self, after: str | None, max_conversations: int = 1000,
                    max_bytes: int | None = None) -> tuple[ConversationMap, str | None]:
        """Up to `max_conversations` conversations after id `after` (and, but for the first,
        no more than `max_bytes` of them encoded), as a delta, and the id to continue after
        (None when this was the last chunk)."""
        def read(t: Txn) -> tuple[ConversationMap, str | None]:
            convs = {}
            last = None
            size = 0
            for cid, raw in t.conversations(after):
                size += len(raw)
                if len(convs) == max_conversations or (
                        max_bytes is not None and size > max_bytes and convs):
                    return ConversationMap(convs, self.schema), last
                convs[cid] = self._decode(cid, raw)
                last = cid
            return ConversationMap(convs, self.schema), None
        return self.store.read(read)

    def encoded_state_chunk(self, after: str | None, max_conversations: int = 1000,
                            max_bytes: int | None = None, scope: tuple[str, ...] | None = None
                            ) -> tuple[bytes | None, str | None]:
        """state_chunk, encoded (codec.encode_map), of the conversations in `scope` (id
        prefixes; None: all): the stored values go into the message without being decoded
        and encoded again (codec.encode_stored_map). None for a chunk with none in scope."""
        def read(t: Txn) -> tuple[list[tuple[str, bytes]], str | None]:
            stored = []
            last = None
            count = size = 0
            for cid, raw in t.conversations(after):
                size += len(raw)
                if count == max_conversations or (
                        max_bytes is not None and size > max_bytes and count):
                    return stored, last
                if scope is None or cid.startswith(scope):
                    stored.append((cid, raw))
                count += 1
                last = cid
            return stored, None

        stored, after = self.store.read(read)
        if not stored:
            return None, after
        try:
            return codec.encode_stored_map(stored, self.schema), after
        except DecodeError as e:
            raise CorruptStoreError(f"{self.store.path}: cannot read a stored conversation "
                                    f"({e}): the file is damaged, or was written with a "
                                    f"schema that has more fields") from None

    def peer_ack(self, peer: str) -> int | None:
        """Highest sequence of this replica's log that `peer` acknowledged (None: unknown)."""
        stored = self.store.read(lambda t: t.ack(peer))
        pending = self._pending_acks.get(peer)
        return stored if pending is None else max(pending, stored or 0)

    def record_ack(self, peer: str, seq: int) -> None:
        """Note that `peer` holds everything in our log up to `seq` (never moves back).

        Kept in memory and written by the next flush_acks() or trim_log() (net.py trims
        every second), not with an fsync per ACK: an ack lost in a crash costs only a
        harmless resend, since resuming follows what the peer says it has.
        """
        _check_peer(peer)
        _check_seq(seq, "seq")
        if seq > self._pending_acks.get(peer, -1):
            self._pending_acks[peer] = seq

    def flush_acks(self) -> None:
        """Write the acknowledgements record_ack() noted, in one transaction."""
        if self._pending_acks:
            self.store.write(self._write_pending_acks)
            self._pending_acks.clear()

    def _write_pending_acks(self, t: Txn) -> None:
        for peer, seq in self._pending_acks.items():
            stored = t.ack(peer)
            if stored is None or seq > stored:
                t.put_ack(peer, seq)

    def received_from(self, peer: str) -> int:
        """Highest sequence of `peer`'s log that has been applied here."""
        return self.store.read(lambda t: t.received(peer))

    def bind_peer(self, peer: str, identity: str) -> None:
        """Bind `peer`'s replica id to the identity it authenticated as (a key id or a
        certificate name), on first sight, durably; raise PeerIdentityError if the id is
        already bound to another identity.

        A replica keeps its resume point and ack per replica id. Without this, a peer that
        authenticated as one user could claim another user's device id and move that
        device's resume point, so the device's writes would be skipped (specs/security.md).
        """
        _check_peer(peer)
        if type(identity) is not str or not identity:
            raise InvalidArgument(f"identity must be a non-empty string, not {identity!r:.80}")

        def bind(t: Txn) -> str:
            bound = t.identity(peer)
            if bound is None:
                t.put_identity(peer, identity)
                return identity
            return bound

        bound = self.store.read(lambda t: t.identity(peer))
        if bound is None:
            bound = self.store.write(bind)
        if bound != identity:
            raise PeerIdentityError(f"replica id {peer} belongs to identity {bound!r}, "
                                    f"not {identity!r}")

    def sent_scope(self, peer: str) -> tuple[str, ...] | None:
        """The conversation id prefixes `peer` was limited to when it acknowledged what it
        has of our log (None: it was sent everything). See set_sent_scope."""
        _check_peer(peer)
        raw = self.store.read(lambda t: t.sent_scope(peer))
        if raw is None:
            return None
        try:
            prefixes = json.loads(raw)
        except ValueError:
            prefixes = None
        if type(prefixes) is not list or not all(type(p) is str for p in prefixes):
            raise CorruptStoreError(f"the recorded scope of peer {peer} is damaged")
        return tuple(prefixes)

    def set_sent_scope(self, peer: str, scope: tuple[str, ...] | None) -> None:
        """Record that what `peer` acknowledges of our log from now on was filtered to
        `scope` (None: not filtered). A session compares it with the peer's scope at the
        next handshake: a wider scope needs a state transfer, since the acknowledged
        entries left out what was outside the old one."""
        _check_peer(peer)
        raw = None if scope is None else json.dumps(list(scope)).encode()
        if raw != self.store.read(lambda t: t.sent_scope(peer)):
            self.store.write(lambda t: t.put_sent_scope(peer, raw))

    def unbind_peer(self, peer: str) -> None:
        """Forget which identity `peer`'s replica id is bound to (after an operator moved
        that device to another key or certificate on purpose)."""
        _check_peer(peer)
        self.store.write(lambda t: t.delete_identity(peer))

    def peers(self) -> dict[str, int]:
        """Known peers and the sequence of our log each acknowledged."""
        return self.store.read(lambda t: _merged_acks(t.acks(), self._pending_acks))

    def trim_log(self) -> int:
        """Drop log entries every known peer acknowledged, and any beyond the retention
        bound (a peer that never returns must not pin the log forever: it gets a state
        transfer instead). Returns how many entries were dropped."""
        def write(t: Txn) -> int:
            self._write_pending_acks(t)
            head = t.head()
            acks = t.acks()
            floor = min(acks.values()) if acks else t.log_floor()
            floor = max(floor, head - self.log_retention)
            if floor <= t.log_floor():
                return 0
            return t.drop_log_upto(min(floor, head))
        dropped = self.store.write(write)
        self._pending_acks.clear()
        return dropped

    def status(self) -> dict[str, Any]:
        def read(t: Txn) -> dict[str, Any]:
            head = t.head()
            return {
                "id": self.id,
                "path": self.store.path,
                "conversations": t.conversation_count(),
                "head": head,
                "log_floor": t.log_floor(),
                "clock": list(t.clock()),
                "peers": {
                    peer: {"ack": ack, "missing": _missing(t, peer, ack), "received": t.received(peer)}
                    for peer, ack in sorted(_merged_acks(t.acks(), self._pending_acks).items())
                },
            }
        return self.store.read(read)

    # -- subscriptions -----------------------------------------------------------------------

    def subscribe(self, callback: Callable[[Change], Any] | None = None, *,
                  max_buffer: int = 10_000) -> Subscription:
        """Change events after each commit of this process: to `callback`, called
        synchronously, or (no callback) on a trio channel: `async for change in sub`."""
        sub = Subscription(self, callback, max_buffer)
        self._subscriptions.add(sub)
        return sub

    def changes_since(self, seq: int) -> Iterator[tuple[int, Change]]:
        """Changes recorded in the log after `seq` by any process (for `crdtim watch`)."""
        _check_seq(seq, "seq")
        entries = self.store.read(lambda t: list(t.log_entries(seq)))
        for s, origin, payload in entries:
            local = origin == self.id
            for cid, fields in self._decode_log(payload).convs.items():
                yield s, Change(cid, frozenset(fields), "local" if local else "remote",
                                None if local else (origin or None))

    def _notify(self, changes: list[tuple[str, frozenset[str]]], origin: str, peer: str | None) -> None:
        if not self._subscriptions:
            return
        for cid, fields in changes:
            change = Change(cid, fields, origin, peer)
            for sub in list(self._subscriptions):
                try:
                    sub._deliver(change)
                except Exception:
                    # The write is committed: a subscriber's bug must not make it look
                    # failed to the caller, nor end a Node that applied a remote delta.
                    log.exception("change subscriber failed on %s", change)

    # -- helpers -----------------------------------------------------------------------------

    def _field_of(self, name: str, lattice: type) -> Any:
        f = self.schema.by_name.get(name)
        if f is None or f.lattice is not lattice:
            raise InvalidArgument(f"no {lattice.__name__} field {name!r} in the schema")
        return f

    def _load(self, t: Txn, cid: str) -> Fields:
        raw = t.conversation(cid)
        return {} if raw is None else self._decode(cid, raw)

    def _decode(self, cid: str, raw: bytes) -> Fields:
        try:
            return codec.decode_fields(raw, self.schema, STORAGE_LIMITS, cid)
        except DecodeError as e:
            raise CorruptStoreError(
                f"{self.store.path}: cannot read a stored conversation ({e}): the file is "
                f"damaged, or was written with a schema that has more fields (open it with "
                f"that schema)") from None

    def _decode_log(self, payload: bytes) -> ConversationMap:
        try:
            return codec.decode_map(payload, self.schema, STORAGE_LIMITS)
        except DecodeError as e:
            raise CorruptStoreError(f"{self.store.path}: delta log entry is damaged: {e}") from None


def _merged_acks(stored: dict[str, int], pending: Mapping[str, int]) -> dict[str, int]:
    for peer, seq in dict(pending).items():  # a copy: the metrics thread reads this too
        stored[peer] = max(seq, stored.get(peer, seq))
    return stored


def _missing(t: Txn, peer: str, ack: int) -> int:
    """Log entries after `ack` that `peer` still lacks (those it sent us are not sent back)."""
    return sum(1 for _, origin, _ in t.log_entries(ack) if origin != peer)


def _join_into(acc: dict[str, Fields], delta: ConversationMap) -> None:
    for cid, fields in delta.convs.items():
        acc[cid] = join_fields(acc.get(cid, {}), fields)


def _storable(s: str, max_bytes: int | None = None) -> bool:
    """True if `s` has a UTF-8 encoding (no lone surrogate) of at most `max_bytes` bytes."""
    if s.isascii():
        return max_bytes is None or len(s) <= max_bytes
    try:
        n = len(s.encode())
    except UnicodeEncodeError:
        return False
    return max_bytes is None or n <= max_bytes


def _check_cid(cid: Any) -> None:
    if type(cid) is not str or not 1 <= len(cid) <= MAX_CID or not _storable(cid, MAX_CID_BYTES):
        raise InvalidArgument(
            f"conversation id must be a string of 1 to {MAX_CID} characters and at most "
            f"{MAX_CID_BYTES} bytes in UTF-8, not {cid!r:.80}")


def _check_text(text: Any, what: str) -> None:
    if type(text) is not str or len(text) > MAX_TEXT or not _storable(text):
        raise InvalidArgument(
            f"{what} must be a string of at most {MAX_TEXT} characters, valid in UTF-8")


def _check_peer(peer: Any) -> None:
    if type(peer) is not str or not peer or not _storable(peer, MAX_ORIGIN_BYTES):
        raise InvalidArgument(f"peer must be a replica id, not {peer!r:.80}")


def _check_seq(n: Any, what: str) -> int:
    if type(n) is not int or not 0 <= n <= MAX_SEQ:
        raise InvalidArgument(f"{what} must be an integer from 0 to {MAX_SEQ}, not {n!r:.40}")
    return n


def _encode_cursor(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> bytes | None:
    if cursor is None:
        return None
    try:
        key = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (ValueError, TypeError):
        key = b""
    if len(key) < 10 or key[0] not in (0, 1):
        raise InvalidArgument(f"invalid cursor {cursor!r:.60}: pass back a cursor that an "
                              f"earlier page returned")
    return key
