"""Remote deltas: joining what peers (or any transport) send, after validating it.

A delta is decoded with the peer-facing limits, checked (clock counters in range, ids
storable as LMDB keys; register values stamped too far ahead are held back, `_pending`) and
joined in one write transaction that logs only its novel part, with its origin, so that it
is forwarded to other peers but never back (Enes et al., ICDE 2019; specs/storage.md §3).
A delta that fails a check changes nothing: the transaction is aborted. A flag context
claiming dots of this replica that it never made is joined like any other (specs/crdt.md §5:
confined and healed, not refused) and logged.
"""

from __future__ import annotations

import logging

from .. import codec
from ..crdt import ConversationMap, Flag, novel_fields
from ..crdt.conversation import Fields
from ..errors import ClockDriftError, DecodeError
from ..store import MAX_CID_BYTES, Txn
from ._checks import check_origin, storable
from ._core import UNKNOWN_ORIGIN, ReplicaCore
from ._message_index import MAX_INDEX_KEY_BYTES, index_key_bytes
from ._pending import Changes, apply_due, hold, split_future
from ._subscriptions import MESSAGES
from ._write import MAX_REMOTE_COUNTER, WriteTxn

log = logging.getLogger("crdtim.replica")

#: (conversation, origin) pairs already warned about, at most this many remembered: the
#: warning is evidence, not a record, and a peer must not grow our memory without bound.
MAX_CLAIM_WARNINGS = 10_000


class RemoteApply(ReplicaCore):
    """Applying remote deltas and state chunks to a Replica."""

    def apply_delta(self, data: bytes, origin: str | None = None) -> set[str]:
        """Join an encoded delta from anywhere, in one transaction; returns the ids changed.

        Only the part that was new here is logged, with `origin` (the replica it came from,
        if known) so that it is forwarded to others but not back. Raises DecodeError or
        ClockDriftError, changing nothing, for a delta that is malformed or holds a clock
        counter over the limit; register values stamped more than the drift bound ahead are
        held and applied when their time comes (specs/crdt.md §1).
        """
        delta = codec.decode_map(data, self.schema, self.limits)
        return self._apply_remote(delta, origin, None, None, data)

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
                      received: tuple[str, int] | None, wire: codec.Received | None,
                      payload: bytes | None = None) -> set[str]:
        """Join `delta` in one transaction. `payload`: the bytes it was decoded from, logged
        as they are when all of them turn out novel (specs/storage.md §3), as a state
        chunk's are."""
        check_origin(origin)
        for cid in delta.convs:  # the codec counts characters; LMDB keys are bounded in bytes
            if not storable(cid, MAX_CID_BYTES):
                raise DecodeError(f"conversation id {cid!r:.80} is over {MAX_CID_BYTES} bytes")
        for cid, fields in delta.convs.items():
            _check_index_keys(cid, fields)

        def txn(t: Txn) -> tuple[list[tuple[str, Changes]], Changes]:
            now = self._now()
            due = apply_due(self, t, now)
            w = WriteTxn(self, t)
            # Bound every counter, not only the largest reading's: whether a delta is refused
            # must not depend on what else it was joined with (group commit), and a stamp
            # accepted here must be acceptable where it is forwarded.
            remote, counter, latest = delta.stamp_bounds()
            if counter > MAX_REMOTE_COUNTER:
                raise ClockDriftError(f"remote clock counter {counter} is over the limit "
                                      f"of {MAX_REMOTE_COUNTER}")
            # Register values stamped more than the drift bound ahead (`latest`: message
            # times too, which are not clocked) are held, the rest applied now
            # (specs/crdt.md §1): one wrong clock must not stall what comes after it.
            applied, received_wire = delta, wire
            if latest > now + self.max_clock_drift_ms:
                applied, later = split_future(delta, now + self.max_clock_drift_ms)
                hold(t, later, origin or UNKNOWN_ORIGIN, self.schema)
                remote, received_wire = applied.stamp_bounds()[0], None
            if remote is not None:
                w.observe(remote)
            # Whether the log entry can be the bytes as received: all of them novel, nothing
            # held back, no messages (their novel part is the index's to say).
            as_sent = received_wire.payload if received_wire is not None else \
                payload if applied is delta else None
            whole = as_sent is not None
            # A state chunk's ids come in order, and a newcomer holds none of them: one cursor
            # probe then says that none is here, for a lookup per conversation. And only a
            # message whose replica table names this replica can claim one of its dots.
            fresh = received_wire is not None and bool(applied.convs) \
                and not t.has_conversation_between(min(applied.convs), max(applied.convs))
            check_dots = received_wire is None or self.id in received_wire.rids
            for cid, fields in applied.convs.items():
                current = {} if fresh else w.fields(cid)
                if check_dots:
                    self._note_claims_on_own_dots(cid, current, fields, origin)
                if not current and received_wire is not None and MESSAGES not in fields:
                    # A conversation cleared through a time (delete for me) is stored as
                    # decoded, so that no last message it covers stays on disk as received
                    # (specs/crdt.md §6, "Join").
                    as_received = "cleared_at" not in fields
                    w.adopt(cid, fields,
                            codec.store_received(received_wire, cid) if as_received else None)
                    whole = whole and as_received
                else:
                    # Messages are joined record by record (their novel part is the
                    # message index's to say), so a chunk holding any is logged as joined.
                    part = novel_fields(current, fields)
                    # (A last message covered by a clear is kept off the disk: logged as
                    # decoded, as it is stored, specs/crdt.md §6.)
                    whole = whole and part == fields and MESSAGES not in fields \
                        and "cleared_at" not in fields
                    w.join(cid, part)
            if whole and w.delta and as_sent is not None:
                # All of it was novel: the novel part is what was received. (Parts the
                # decoder dropped, bottom fields or empty conversations, decode away again
                # when the entry is read.)
                w.log_payload = as_sent
            # Resume points only move forward: two overlapping connections to one peer may
            # deliver an older interval after a newer one.
            if received is not None and received[1] > t.received(received[0]):
                t.put_received(*received)
            return due, w.finish(origin or UNKNOWN_ORIGIN)

        due, changes = self._write(txn)
        self._notify_applied(due)
        self._notify(changes, "remote", origin)
        return {cid for cid, *_ in changes}

    def apply_pending(self) -> set[str]:
        """Apply the held values whose time has come (specs/crdt.md §1); the ids changed.
        A read probe first: no write transaction when nothing is due."""
        now = self._now()
        first = self.store.read(lambda t: t.first_pending_wall())
        if first is None or first > now + self.max_clock_drift_ms:
            return set()
        due = self._write(lambda t: apply_due(self, t, now))
        self._notify_applied(due)
        return {cid for _, changes in due for cid, *_ in changes}

    def _notify_applied(self, due: list[tuple[str, Changes]]) -> None:
        for held_origin, changes in due:
            self._notify(changes, "remote", held_origin or None)

    def _note_claims_on_own_dots(self, cid: str, current: Fields, delta: Fields,
                                 origin: str | None) -> None:
        """Warn (once per conversation and origin) about a flag context claiming enables of
        *this* replica beyond the ones it made.

        Only this replica makes its own dots, so such a claim is forged or corrupt. It is
        joined anyway (specs/crdt.md §5): refusing it would let any peer that can write the
        conversation cut this replica off from whoever relays the claim (specs/security.md
        §1), while the join keeps every replica convergent and our next enable of that flag,
        from next_dot, lands past the claim, so no counter is reused.
        """
        for name, state in delta.items():
            if not isinstance(state, Flag):
                continue
            own = current.get(name, Flag.bottom()).context.next_dot(self.id)[1] - 1
            claimed = state.context.next_dot(self.id)[1] - 1
            if claimed <= own:
                continue
            key = (cid, origin or UNKNOWN_ORIGIN)
            warned = self._claims_warned
            if key not in warned:
                if len(warned) >= MAX_CLAIM_WARNINGS:
                    warned.clear()
                warned.add(key)
                log.warning("conversation %r %s: a delta from %r claims enable %d of this "
                            "replica, which made only %d (a forging peer, or damage); joined, "
                            "so this replica's next enable of it comes after the claim",
                            cid[:80], name, origin or "an unknown origin", claimed, own)


def _check_index_keys(cid: str, fields: Fields) -> None:
    """DecodeError, before anything is written, for a message whose index keys LMDB could
    not store (specs/crdt.md §7, "Order of refusals" 2; specs/storage.md §2): ids within the
    decoder's bounds can together pass LMDB's key size, and the store would then fail the
    whole transaction as a disk error, on every retry of the link."""
    history = fields.get(MESSAGES)
    if history is None:
        return
    for mid, m in history.messages.items():
        if m.header is not None and index_key_bytes(mid, m.header) > MAX_INDEX_KEY_BYTES:
            raise DecodeError(
                f"conversation {cid!r:.80} message {mid!r:.80}: its index key would be "
                f"{index_key_bytes(mid, m.header)} bytes, over {MAX_INDEX_KEY_BYTES} (its id, "
                f"its group or parent id and its replica id together)")
