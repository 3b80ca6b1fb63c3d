"""Our log, streamed to the peer: DELTAs from its resume point, or our whole state in
STATE_CHUNKs when the log no longer reaches back that far (specs/protocol.md §4-§5, §8).

Enes et al., ICDE 2019: an interval leaves out the entries that came from the peer ("avoiding
back-propagation"). The in-flight window bounds what is unacknowledged. No I/O here: frames
are handed to the session's `send`.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable

from .. import codec
from ..crdt import ConversationMap
from ..errors import LogTrimmedError
from ._auth import covers, within_scope
from ._budget import MAX_FRAME_CONVERSATIONS, over_budget
from ._errors import RemoteProtocolError
from ._events import Event, PeerAcked, StateTransferStarted
from ._messages import CompactDelta, Delta, Message, StateChunk, StateEnd
from ._port import ReplicaPort
from ._reconcile import MAX_RANGE_BYTES, SALT_BYTES, ReconAnswer, ReconcileSender
from ._relay import PeerRelay
from ._state import Sending, after
from ._table import SentIds

__all__ = ["DELTA_OVERHEAD", "Outbound"]

DELTA_OVERHEAD = 64  # frame header and DELTA fields around the payload, generously
_NO_TABLE = codec.table_prefix([])


class Outbound:
    """What we send one peer, once the session is open. `send` queues a frame."""

    def __init__(self, replica: ReplicaPort, *, max_frame_bytes: int, max_delta_bytes: int,
                 send: Callable[[Message], object], relay: PeerRelay | None = None):
        self.replica = replica
        self._relay = relay  # what the peer holds already (specs/protocol.md §12)
        self.state = Sending.WAIT_RESUME
        self._send = send
        self.events: list[Event] = []  # happened in pump(); the session reports them
        self._max_delta_bytes = max_delta_bytes
        self.peer_frame_bytes = max_frame_bytes  # until the peer's HELLO says
        self.frame_budget = max_delta_bytes
        self._peer = ""
        self._scope: tuple[str, ...] | None = None
        self._widened = False  # the peer's scope is wider than its acks were earned under
        self._sent_upto = 0  # our log is streamed up to here
        self.acked = 0  # ...and the peer acknowledged up to here
        self._inflight: list[int] = []  # `end` of each DELTA/STATE_END not yet acknowledged
        self._chunks_sent = 0  # the current transfer's STATE_CHUNKs sent...
        self._chunks_acked = 0  # ...and acknowledged
        self._transfer_after: str | None = None
        self._transfer_head = 0
        self.ids = SentIds()  # our session table of replica ids (specs/protocol.md §11)
        # Reconciliation (specs/protocol.md §13): its settings once allowed, the running one,
        # and the ids it found the peer needs, sent as the transfer's chunks.
        self._reconcile_settings: dict[str, int] | None = None
        self.reconciler: ReconcileSender | None = None
        self._transfer_ids: list[bytes] | None = None

    def allow_reconcile(self, *, branching: int, leaf_items: int,
                        ranges_per_frame: int) -> None:
        """Reconcile instead of a whole state transfer where specs/protocol.md §13 says."""
        self._reconcile_settings = {"branching": branching, "leaf_items": leaf_items,
                                    "max_ranges_per_frame": ranges_per_frame}

    def peer_limits(self, max_frame_bytes: int) -> None:
        """What we send must fit the peer's frame limit as well as our budget per frame."""
        self.frame_budget = min(self._max_delta_bytes, max_frame_bytes - DELTA_OVERHEAD)
        self.peer_frame_bytes = max_frame_bytes

    def open(self, peer: str, scope: tuple[str, ...] | None) -> None:
        """Compare the peer's scope with the one its acknowledgements were earned under.

        A DELTA to a scoped peer still covers its whole interval, so what the peer has
        acknowledged left out everything outside its scope at the time. If the scope is now
        wider, resuming from that ack would never send what was left out: the peer gets a
        state transfer (within its new scope) instead, and the new scope is recorded once it
        has acknowledged the transfer. A narrower or equal scope is recorded at once.
        """
        self._peer, self._scope = peer, scope
        earned = self.replica.sent_scope(peer)
        if covers(earned, scope):
            if earned != scope:
                self.replica.set_sent_scope(peer, scope)
        else:
            self._widened = True

    # -- the peer's acknowledgements ----------------------------------------------------------

    def on_ack(self, seq: int) -> list[Event]:
        if self.state is Sending.WAIT_RESUME:
            return self._resume_from(seq)
        if seq > self._sent_upto or seq < self.acked:
            raise RemoteProtocolError(f"ACK {seq} outside the unacknowledged range "
                                      f"[{self.acked}, {self._sent_upto}]")
        while self._inflight and self._inflight[0] <= seq:
            self._inflight.pop(0)
        if seq > self.acked:
            self.acked = seq
            self.replica.record_ack(self._peer, seq)
        if self._widened and self.state is Sending.DELTAS and seq >= self._transfer_head:
            # The peer holds everything in its new scope as of the transfer: acks are now
            # earned under that scope.
            self._widened = False
            self.replica.set_sent_scope(self._peer, self._scope)
        return [PeerAcked(seq=seq)]

    def on_chunk_ack(self, count: int) -> None:
        if not self._chunks_acked < count <= self._chunks_sent:
            raise RemoteProtocolError(f"CHUNK_ACK {count} for {self._chunks_sent} chunks sent")
        self._chunks_acked = count

    def _resume_from(self, seq: int) -> list[Event]:
        head, floor = self.replica.head, self.replica.log_floor
        if floor <= seq <= head and not self._widened:
            self.state = after(self.state, "first ACK")
            self._sent_upto = self.acked = seq
            self.replica.record_ack(self._peer, seq)
            return [PeerAcked(seq=seq)]
        if self._reconcile_settings is not None and 0 < seq <= head and not self._widened:
            # It has received from us before, only not what was trimmed since: it holds most
            # of our state, so find what it lacks instead of sending it all (§13).
            return [self._start_reconcile()]
        # Entries after `seq` were dropped (or the peer claims more than we have, as after a
        # restore from backup): send the whole state, then stream from the head we started at.
        self._sent_upto = self.acked = 0
        return [self._start_transfer("first ACK, log not enough")]

    def _start_reconcile(self) -> StateTransferStarted:
        assert self._reconcile_settings is not None
        self.state = after(self.state, "first ACK, reconcile")
        self._sent_upto = self.acked = 0
        head, ids, digests = self.replica.conversation_digests(self._scope)
        self.reconciler = ReconcileSender(head, ids, digests, salt=secrets.token_bytes(SALT_BYTES),
                                          **self._reconcile_settings)
        return StateTransferStarted(outbound=True)

    def on_recon_answer(self, m: ReconAnswer) -> None:
        if self.state is not Sending.RECONCILE or self.reconciler is None:
            raise RemoteProtocolError("RECON_ANSWER when no reconciliation is running")
        self.reconciler.on_answer(m)

    def _next_ranges(self) -> int:
        """Queue the reconciliation's next RECON_RANGES; once nothing is in question, start
        the transfer of what the peer needs (§13). Returns the frames queued; -1 when none
        can be, waiting on answers."""
        r = self.reconciler
        assert r is not None
        # Bounds that differ little cost a few bytes each, but a frame is sized by the worst
        # case so that it fits the peer's limit whatever the ids.
        frame = r.next_frame(max(self.frame_budget - DELTA_OVERHEAD, MAX_RANGE_BYTES))
        if frame is not None:
            self._send(frame)
            return 1
        if not r.done:
            return -1
        self.state = after(self.state, "reconciled")
        self._transfer_after = None
        self._transfer_head = r.head  # our digests held the log up to here
        self._transfer_ids = r.needed_ids()
        self._chunks_sent = self._chunks_acked = 0
        return 0

    def _start_transfer(self, trigger: str) -> StateTransferStarted:
        self.state = after(self.state, trigger)
        self._transfer_ids = None
        self._transfer_after = None
        self._transfer_head = self.replica.head
        self._chunks_sent = self._chunks_acked = 0
        return StateTransferStarted(outbound=True)

    # -- producing frames ---------------------------------------------------------------------

    @property
    def unacked_frames(self) -> int:
        asking = 0 if self.reconciler is None else self.reconciler.outstanding
        return len(self._inflight) + self._chunks_sent - self._chunks_acked + asking

    @property
    def caught_up(self) -> bool:
        """True when the peer holds everything in our log as of now: it acknowledged it, or
        the entries after its ack came from the peer itself (specs/protocol.md §4).

        Those are never sent back, only covered by a DELTA whose ACK the peer may never get
        to send (it can leave first): waiting for that ACK could wait forever for entries
        the peer already has."""
        if self.state is not Sending.DELTAS or self.unacked_frames:
            return False
        after, head = self.acked, self.replica.head
        try:
            while after < head:
                end, delta = self.replica.delta_interval(
                    after, skip_origin=self._peer,
                    skip=self._relay.holds if self._relay is not None else None)
                if delta is not None:
                    return False
                if end == after:
                    break
                after = end
        except LogTrimmedError:  # dropped before the peer acknowledged them
            return False
        return True

    def pump(self, *, max_unacked_frames: int, max_entries_per_delta: int,
             max_conversations_per_chunk: int) -> int:
        """Queue DELTA (or STATE_CHUNK) frames for log entries the peer has not been sent,
        as far as the in-flight window allows; returns how many frames were queued."""
        if self.state is Sending.WAIT_RESUME:
            return 0
        queued = 0
        max_entries = max_entries_per_delta
        while self.unacked_frames < max_unacked_frames:
            if self.state is Sending.RECONCILE:
                sent = self._next_ranges()
                if sent < 0:
                    break
                queued += sent
                continue
            if self.state is Sending.STATE_TRANSFER:
                queued += self._next_chunk(
                    min(max_conversations_per_chunk, MAX_FRAME_CONVERSATIONS))
                continue
            relay = self._relay
            entries = max_entries
            if relay is not None:
                # Not past an entry the peer is about to get from its origin (§12).
                entries = relay.held_back_from(self._sent_upto, max_entries)
                if not entries:
                    break
            try:
                end, delta = self.replica.delta_interval(
                    self._sent_upto, skip_origin=self._peer,
                    max_entries=entries, max_bytes=self.frame_budget,
                    skip=relay.holds if relay is not None else None)
                if end == self._sent_upto:
                    break
                if delta is not None:
                    # The interval still advances over what the peer may not see: its ACK
                    # covers the whole interval, as for entries left out as its own.
                    delta = within_scope(delta, self._scope)
                message, payload, size, new_ids = self._delta_message(
                    end, delta or ConversationMap.bottom(self.replica.schema))
                if size > self.peer_frame_bytes - DELTA_OVERHEAD:
                    self.ids.take_back(new_ids)
                    raise LogTrimmedError("one log entry is larger than the peer's frames")
                if over_budget(payload) is not None:
                    self.ids.take_back(new_ids)
                    # Over the decoded work a frame may cost (_budget.py): join fewer
                    # entries; one entry alone over it (a huge batch) goes by state transfer.
                    if end - self._sent_upto <= 1:
                        raise LogTrimmedError("one log entry is over a frame's conversations")
                    max_entries = (end - self._sent_upto) // 2
                    continue
                max_entries = max_entries_per_delta
            except LogTrimmedError:
                # Entries not yet sent were dropped meanwhile (the retention bound), or one is
                # too large for a frame: a DELTA would skip them silently and its ACK cover
                # them, or be refused forever. Send the state instead, once what is in flight
                # is acknowledged (chunk counts restart per transfer).
                if self.unacked_frames:
                    break
                self.events.append(self._start_transfer("log not enough"))
                continue
            self._send(message)
            self._inflight.append(end)
            self._sent_upto = end
            queued += 1
        return queued

    def _delta_message(self, end: int, m: ConversationMap
                       ) -> tuple[Delta | CompactDelta, bytes, int, tuple[str, ...]]:
        """The frame carrying `m` for our log after what was sent up to `end`: a
        COMPACT_DELTA, its ids in our session table, or a DELTA once the table is full
        (specs/protocol.md §11). With it: the payload as a map, for the budget check (an
        empty table in front of a body: the census does not look at indexes), the bytes
        it adds to a frame, and the ids it added to the table."""
        compact = self.ids.encode(m)
        if compact is None:
            payload = codec.encode_map(m)
            return Delta(start=self._sent_upto, end=end, payload=payload), payload, \
                len(payload), ()
        new_ids, body = compact
        size = len(body) + (len(codec.pack(new_ids)) if new_ids else 1)
        return (CompactDelta(start=self._sent_upto, end=end, new_ids=new_ids, body=body),
                _NO_TABLE + body, size, new_ids)

    def _next_chunk(self, max_conversations: int) -> int:
        """Queue the transfer's next STATE_CHUNK, and its STATE_END after the last; returns
        the frames queued."""
        queued = 0
        if self._transfer_ids is not None:
            return self._next_reconciled_chunk(max_conversations)
        # The stored bytes go out as they are, filtered to the peer's scope.
        while True:
            payload, after_id = self.replica.encoded_state_chunk(
                self._transfer_after, max_conversations, self.frame_budget, self._scope)
            if max_conversations == 1 or payload is None or over_budget(payload) is None:
                break
            max_conversations //= 2  # too many items (_budget.py): fewer conversations
        if payload is not None:
            self._send(StateChunk(payload=payload))
            self._chunks_sent += 1
            queued += 1
        self._transfer_after = after_id
        if after_id is None:
            queued += self._end_transfer()
        return queued

    def _end_transfer(self) -> int:
        """Send STATE_END at the head the transfer began at (§5); the frames queued."""
        self._send(StateEnd(seq=self._transfer_head))
        self.state = after(self.state, "STATE_END sent")
        self._sent_upto = self._transfer_head
        self._inflight.append(self._transfer_head)
        return 1

    def _next_reconciled_chunk(self, max_conversations: int) -> int:
        """_next_chunk for a reconciled transfer: the next of the conversations the peer
        needs, whole (specs/protocol.md §13)."""
        ids = self._transfer_ids
        assert ids is not None
        queued = 0
        while ids:
            payload, taken = self.replica.encoded_conversations(ids, max_conversations,
                                                                self.frame_budget)
            too_large = payload is not None and (
                len(payload) > self.peer_frame_bytes - DELTA_OVERHEAD
                or over_budget(payload) is not None
                or _over_history_records(payload))
            if too_large and taken > 1:
                max_conversations = taken // 2  # fewer conversations (_budget.py)
                continue
            if too_large:
                # One conversation alone over the peer's frames, or its history over the
                # records a peer decodes in one (specs/protocol.md §13.3): its history must
                # be split across chunks, which only the whole transfer does (§5); it
                # restarts here.
                self._transfer_ids = None
                self.reconciler = None
                return queued
            del ids[:taken]
            if payload is not None:
                self._send(StateChunk(payload=payload))
                self._chunks_sent += 1
                queued += 1
                break
        if not ids:
            self._transfer_ids = None
            self.reconciler = None
            queued += self._end_transfer()
        return queued


def _over_history_records(payload: bytes) -> bool:
    """Whether a history in `payload` holds more message and choice records than a peer
    decodes in one map (codec.Limits.max_messages, at its default as the peer's is not
    known; specs/crdt.md §7): sent whole, it would be refused, and again on every
    reconnection."""
    most = codec.most_history_records(payload)
    return most is not None and most > codec.DEFAULT_LIMITS.max_messages
