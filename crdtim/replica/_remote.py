"""Remote deltas: joining what peers (or any transport) send, after validating it.

A delta is decoded with the peer-facing limits, checked (clock readings not too far in the
future, no forged dots of this replica, ids storable as LMDB keys) and joined in one write
transaction that logs only its novel part, with its origin, so that it is forwarded to
other peers but never back (Enes et al., ICDE 2019; specs/storage.md §3). A delta that
fails a check changes nothing: the transaction is aborted.
"""

from __future__ import annotations

from .. import codec
from ..crdt import ConversationMap, Flag, novel_fields
from ..crdt.conversation import Fields
from ..errors import ClockDriftError, DecodeError
from ..store import MAX_CID_BYTES, Txn
from ._checks import check_origin, storable
from ._core import UNKNOWN_ORIGIN, ReplicaCore
from ._write import MAX_REMOTE_COUNTER, WriteTxn


class RemoteApply(ReplicaCore):
    """Applying remote deltas and state chunks to a Replica."""

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
        check_origin(origin)
        for cid in delta.convs:  # the codec counts characters; LMDB keys are bounded in bytes
            if not storable(cid, MAX_CID_BYTES):
                raise DecodeError(f"conversation id {cid!r:.80} is over {MAX_CID_BYTES} bytes")

        def txn(t: Txn) -> list[tuple[str, frozenset[str]]]:
            w = WriteTxn(self, t)
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
                    # A conversation cleared through a time (delete for me) is stored as
                    # decoded, so that no last message it covers stays on disk as received
                    # (specs/crdt.md §6, "Join").
                    as_received = "cleared_at" not in fields
                    w.adopt(cid, fields, codec.store_received(wire, cid) if as_received else None)
                    whole = whole and as_received
                else:
                    part = novel_fields(current, fields)
                    whole = whole and part == fields
                    w.join(cid, part)
            if whole and w.delta and wire is not None:
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
