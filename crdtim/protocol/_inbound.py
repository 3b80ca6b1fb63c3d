"""The peer's log, applied here: DELTAs that must chain from our resume point, or the peer's
whole state in STATE_CHUNKs up to a STATE_END (specs/protocol.md §4-§5).

Almeida et al. 2018, Algorithm 2, with Enes et al., ICDE 2019: a delta is applied in one
transaction that logs only its novel part, with the peer as origin, and records the peer's
log position; then ACK. Nothing of a refused frame is applied. No I/O here: replies are
handed to the session's `send`, refusals raised as RemoteProtocolError.
"""

from __future__ import annotations

from collections.abc import Callable

from .. import codec
from ..crdt import ConversationMap
from ..errors import ClockDriftError, DecodeError
from ._auth import outside_scope
from ._budget import MAX_FRAME_CONVERSATIONS, over_budget
from ._errors import RemoteProtocolError
from ._events import DeltaApplied, Event, StateTransferFinished, StateTransferStarted
from ._messages import Ack, ChunkAck, Delta, Message, StateChunk
from ._port import ReplicaPort
from ._relay import PeerRelay
from ._state import Receiving, accepts, after

__all__ = ["Inbound"]


class Inbound:
    """What we receive from one peer, once the session is open. `send` queues a frame."""

    def __init__(self, replica: ReplicaPort, limits: codec.Limits,
                 send: Callable[[Message], object], relay: PeerRelay | None = None):
        self.replica = replica
        self._relay = relay  # what came from where, for relaying (specs/protocol.md §12)
        self.state = Receiving.DELTAS
        self._limits = limits
        self._send = send
        self._peer = ""
        self._identity: str | None = None
        self._scope: tuple[str, ...] | None = None
        self._expect_from = 0  # the next DELTA must start here
        self._chunks_received = 0  # STATE_CHUNKs of the current transfer applied

    def open(self, peer: str, identity: str | None, scope: tuple[str, ...] | None) -> None:
        """Start receiving: our first ACK tells the peer where to resume its log."""
        self._peer, self._identity, self._scope = peer, identity, scope
        self._expect_from = self.replica.received_from(peer)
        self._send(Ack(seq=self._expect_from))

    def _scope_refusal(self, what: str, cid: str) -> str:
        return (f"{what}: conversation {cid!r:.80} is outside the scope of "
                f"{self._identity!r} ({', '.join(map(repr, self._scope or ()))})")

    def _refused(self, apply: Callable[[], set[str]]) -> set[str]:
        try:
            return apply()
        except (ClockDriftError, DecodeError) as e:  # DecodeError: e.g. an unstorable id
            raise RemoteProtocolError(f"refused: {e}") from None

    def on_deltas(self, group: list[Delta]) -> list[Event]:
        """Apply consecutive DELTAs as one: their join, in one transaction, one ACK.

        The intervals must chain from the resume point; the first that does not, or whose
        payload is invalid, is refused after the ones before it are applied.
        """
        if not accepts(self.state, "DELTA"):
            raise RemoteProtocolError("DELTA during a state transfer")
        start = end = self._expect_from
        deltas: list[ConversationMap] = []
        nbytes = conversations = 0
        # message and choice records per (conversation, history field); appends per message
        messages: dict[tuple[str, str], int] = {}
        appended: dict[tuple[str, str, str], int] = {}
        error = None
        rest: list[Delta] = []
        for i, m in enumerate(group):
            if m.start != end:
                error = f"DELTA starts at {m.start}, expected {end}"
                break
            # Counted before decoding: decoding is what a frame of tiny items amplifies.
            over = over_budget(m.payload)
            if over is not None:
                error = f"DELTA: {over}"
                break
            try:
                delta = codec.decode_map(m.payload, self.replica.schema, self._limits)
            except DecodeError as e:
                error = f"DELTA: {e}"
                break
            outside = outside_scope(delta, self._scope)
            if outside is not None:  # refused whole: nothing of this frame is applied
                error = self._scope_refusal("DELTA", outside)
                break
            records, appends = _message_records(delta)
            if deltas and (conversations + len(delta.convs) > MAX_FRAME_CONVERSATIONS
                           or any(messages.get(key, 0) + n > self._limits.max_messages
                                  for key, n in records.items())
                           or any(appended.get(message, 0) + n > self._limits.max_appends
                                  for message, n in appends.items())):
                # The join is one transaction and one log entry, which we forward: it must
                # stay within a frame's conversations, and within the message records a
                # peer decodes per conversation, too. The rest is the next group.
                rest = group[i:]
                break
            deltas.append(delta)
            conversations += len(delta.convs)
            for key, n in records.items():
                messages[key] = messages.get(key, 0) + n
            for message, n in appends.items():
                appended[message] = appended.get(message, 0) + n
            end, nbytes = m.end, nbytes + len(m.payload)
        events: list[Event] = []
        if deltas:
            # One pass over the group (folding join would copy the growing map per frame).
            joined = deltas[0] if len(deltas) == 1 else deltas[0].join_all(deltas[1:])
            try:
                # apply_map records the resume point only if it moves forward: a second
                # connection to the same peer (net.py keeps one, but two overlap for a
                # moment) may deliver an interval older than one already applied.
                head = self.replica.head if self._relay is not None else 0
                changed = self.replica.apply_map(joined, self._peer, received=(self._peer, end))
                if self._relay is not None:
                    self._relay.applied(head, self.replica.head, end)
            except (ClockDriftError, DecodeError) as e:
                if len(group) == 1:
                    raise RemoteProtocolError(f"refused: {e}") from None
                # Refused as a whole: apply one by one, so the frames before the refused one
                # still count (and the peer resumes after them); that one is refused alone.
                for m in group:
                    try:
                        events.extend(self.on_deltas([m]))
                    except RemoteProtocolError as alone:
                        alone.events = events + alone.events
                        raise
                return events
            self._expect_from = end
            self._send(Ack(seq=end))
            events.append(DeltaApplied(start=start, end=end, changed=frozenset(changed),
                                       nbytes=nbytes))
        if rest:
            try:
                events.extend(self.on_deltas(rest))
            except RemoteProtocolError as later:
                later.events = events + later.events
                raise
        if error is not None:
            refusal = RemoteProtocolError(error)
            refusal.events = events  # the frames before it were applied
            raise refusal
        return events

    def on_state_chunk(self, m: StateChunk) -> list[Event]:
        events: list[Event] = []
        if self.state is Receiving.DELTAS:
            self._chunks_received = 0
            events.append(StateTransferStarted(outbound=False))
        self.state = after(self.state, "STATE_CHUNK")
        over = over_budget(m.payload)
        if over is not None:
            raise RemoteProtocolError(f"STATE_CHUNK: {over}")
        try:
            chunk, wire = codec.decode_map_as_received(m.payload, self.replica.schema,
                                                       self._limits)
        except DecodeError as e:
            raise RemoteProtocolError(f"STATE_CHUNK: {e}") from None
        outside = outside_scope(chunk, self._scope)
        if outside is not None:
            raise RemoteProtocolError(self._scope_refusal("STATE_CHUNK", outside))
        changed = self._refused(lambda: self.replica.apply_state_chunk(chunk, wire, self._peer))
        self._chunks_received += 1
        self._send(ChunkAck(count=self._chunks_received))
        events.append(DeltaApplied(start=self._expect_from, end=self._expect_from,
                                   changed=frozenset(changed), nbytes=len(m.payload)))
        return events

    def on_state_end(self, seq: int) -> list[Event]:
        # The peer's whole state up to `seq` is now here: resume its log from there.
        bottom = ConversationMap.bottom(self.replica.schema)
        self._refused(lambda: self.replica.apply_map(bottom, self._peer,
                                                     received=(self._peer, seq)))
        self.state = after(self.state, "STATE_END")
        if self._relay is not None and self._relay.linked_here:
            self._relay.index.applied(self._peer, seq)
        self._expect_from = seq
        self._send(Ack(seq=seq))
        return [StateTransferFinished(outbound=False, seq=seq)]


def _message_records(delta: ConversationMap
                     ) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str, str], int]]:
    """Message and choice records per history field of each conversation of `delta`, and
    appends per message (specs/crdt.md §8.7): what a joined, forwarded entry must keep
    within a peer's bounds. `messages` and an app's own histories alike."""
    records: dict[tuple[str, str], int] = {}
    appends: dict[tuple[str, str, str], int] = {}
    for cid, fields in delta.convs.items():
        for name, _ in delta.schema.histories:
            history = fields.get(name)
            if history is None:
                continue
            records[cid, name] = len(history.messages) + len(history.choices)
            for mid, m in history.messages.items():
                if m.appends:
                    appends[cid, name, mid] = len(m.appends)
    return records, appends
