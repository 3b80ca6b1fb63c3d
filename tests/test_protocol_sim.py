"""The sync protocol, driven with no sockets: SyncSessions over simulated TCP byte queues.

A `Wire` is one connection: a session at each end and a byte queue per direction. Delivery
keeps order within a connection but may split the bytes at any offset (as TCP may); a dropped
connection loses whatever was still queued. The named tests at the top pin down single
behaviours (handshake refusals, bad input, heartbeats, state transfer, resume, no
back-propagation). The Hypothesis state machine at the bottom runs 3-4 real LMDB replicas
through local ops, connects, partial deliveries, pumps, drops, partitions, log trims,
restarts and clock ticks, and checks after every step that no ACK ever covers a delta the
acknowledging replica has not applied; at the end it heals everything, runs every pair to
quiescence and compares every replica with a plain model of the ops.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from crdtim import codec
from crdtim.crdt import Conversation, ConversationMap, Stamp
from crdtim.protocol import (
    PROTOCOL_VERSION,
    Ack,
    DeltaApplied,
    Delta,
    Error,
    FrameDecoder,
    HandshakeComplete,
    Hello,
    Ping,
    Pong,
    PongReceived,
    RelayIndex,
    RemoteProtocolError,
    SessionConfig,
    State,
    StateChunk,
    StateEnd,
    StateTransferFinished,
    StateTransferStarted,
    SyncSession,
    encode_frame,
)
from tests.faults.sim import SESSION_CONFIG as SIM_CONFIG  # the fault simulation's, shared
from tests.faults.sim import START_WALL_MS
from crdtim.replica import Replica
from frames import Tap, frames_of


# -- harness ----------------------------------------------------------------------------------


class Wire:
    """One connection: `sessions[k]` runs on replica `ends[k]`; `queues[k]` holds the bytes
    sent by side k and not yet delivered to side 1-k. `frames[k]` is a decoded copy of
    everything side k sent (for assertions)."""

    def __init__(self, ends: tuple[Any, Any], sessions: tuple[SyncSession, SyncSession]):
        self.ends = ends
        self.sessions = sessions
        self.queues = (bytearray(), bytearray())
        self.frames: tuple[list, list] = ([], [])
        self._taps = (Tap(), Tap())  # COMPACT_DELTAs read as the DELTAs they stand for
        self.sent_bytes = (bytearray(), bytearray())  # everything side k sent, as sent

    def collect(self, now: float = 0.0) -> None:
        """Move what each session wants sent onto its queue (the app 'sends' at once)."""
        for k in (0, 1):
            data = self.sessions[k].data_to_send()
            if data:
                self.queues[k].extend(data)
                self.sessions[k].sent_at(now)
                self.frames[k].extend(self._taps[k].feed(data))
                self.sent_bytes[k].extend(data)

    def deliver(self, k: int, n: int | None = None, now: float = 0.0) -> list:
        """Deliver the first `n` queued bytes (all by default) from side k to side 1-k."""
        q = self.queues[k]
        n = len(q) if n is None else n
        chunk = bytes(q[:n])
        del q[:n]
        try:
            return self.sessions[1 - k].receive_data(chunk, now)
        finally:
            self.collect(now)

    def pump(self, now: float = 0.0) -> int:
        queued = self.sessions[0].pump() + self.sessions[1].pump()
        self.collect(now)
        return queued

    def quiet(self) -> bool:
        return not self.queues[0] and not self.queues[1]

    def run_until_quiet(self, now: float = 0.0, max_rounds: int = 10_000) -> tuple[list, list]:
        """Pump and deliver everything both ways until nothing moves; events seen by each side."""
        events: tuple[list, list] = ([], [])
        for _ in range(max_rounds):
            moved = self.pump(now)
            for k in (0, 1):
                if self.queues[k]:
                    events[1 - k].extend(self.deliver(k, now=now))
                    moved += 1
            if not moved and self.quiet():
                return events
        raise AssertionError("the two sessions never went quiet")


def connect(a: Replica, b: Replica, config: SessionConfig = SIM_CONFIG, now: float = 0.0,
            relays: tuple[Any, Any] = (None, None)) -> Wire:
    """A new connection; `relays`: each side's RelayIndex (specs/protocol.md §12), if any."""
    wire = Wire((a, b), (SyncSession(a, config, relay=relays[0]),
                         SyncSession(b, config, relay=relays[1])))
    for s in wire.sessions:
        s.initiate(now)
    wire.collect(now)
    return wire


def handshaken(a: Replica, b: Replica) -> Wire:
    """A wire whose HELLOs and resume ACKs have crossed; both sessions OPEN and quiet."""
    wire = connect(a, b)
    wire.run_until_quiet()
    assert all(s.state is State.OPEN for s in wire.sessions)
    return wire


def handshake_only(a: Replica, b: Replica) -> Wire:
    """A wire whose HELLOs and resume ACKs have crossed, with nothing pumped yet."""
    wire = connect(a, b)
    for _ in range(2):
        wire.deliver(0)
        wire.deliver(1)
    assert wire.quiet() and all(s.state is State.OPEN for s in wire.sessions)
    return wire


def snapshot(r: Replica) -> tuple[int, ConversationMap]:
    return r.head, r.state()


# -- handshake ------------------------------------------------------------------------------


def test_self_connection_refused_with_error(a):
    s = SyncSession(a, SIM_CONFIG)
    s.initiate()
    hello = s.data_to_send()
    with pytest.raises(RemoteProtocolError, match="itself"):
        s.receive_data(hello)
    assert s.state is State.CLOSED
    (err,) = frames_of(s.data_to_send())
    assert isinstance(err, Error) and "itself" in err.reason


def test_wrong_protocol_version_refused_naming_both_versions(a):
    s = SyncSession(a, SIM_CONFIG)
    s.initiate()
    s.data_to_send()
    bad = PROTOCOL_VERSION + 41
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_data(encode_frame(Hello(version=bad, replica_id="other")))
    (err,) = frames_of(s.data_to_send())
    assert isinstance(err, Error) and err.reason == info.value.reason
    assert str(bad) in err.reason and str(PROTOCOL_VERSION) in err.reason
    assert s.state is State.CLOSED


def test_delta_before_hello_refused(a):
    s = SyncSession(a, SIM_CONFIG)
    s.initiate()
    s.data_to_send()
    payload = codec.encode_map(ConversationMap.bottom().raise_to("c", "last_seq", 3))
    before = snapshot(a)
    with pytest.raises(RemoteProtocolError, match="DELTA"):
        s.receive_data(encode_frame(Delta(start=0, end=1, payload=payload)))
    assert isinstance(frames_of(s.data_to_send())[-1], Error)
    assert snapshot(a) == before


def test_nothing_is_processed_after_close(a, b):
    wire = handshaken(a, b)
    wire.sessions[1].close("bye")
    wire.collect()
    a.set_title("c", "late")
    wire.sessions[0].pump()
    wire.collect()
    (closed,) = wire.deliver(1)
    assert closed.reason == "bye" and wire.sessions[0].state is State.CLOSED
    # What the closed side is sent afterwards is ignored, and it sends nothing more.
    assert wire.deliver(0) == []
    assert wire.sessions[1].pump() == 0 and wire.sessions[1].data_to_send() == b""


# -- bad input: RemoteProtocolError, an ERROR frame queued, nothing applied -----------------


def test_oversized_length_prefix_refused_as_soon_as_it_arrives(a):
    config = SessionConfig(max_frame_bytes=1000)
    s = SyncSession(a, config)
    s.initiate()
    s.data_to_send()
    with pytest.raises(RemoteProtocolError, match="over the limit"):
        s.receive_data((1001).to_bytes(4, "big"))  # the prefix alone, no payload at all
    assert s.state is State.CLOSED
    assert isinstance(frames_of(s.data_to_send())[-1], Error)
    # The prefix may also arrive split: refused when its 4th byte comes, still unbuffered.
    s2 = SyncSession(a, config)
    s2.initiate()
    assert s2.receive_data(b"\x00\x00") == []
    with pytest.raises(RemoteProtocolError, match="over the limit"):
        s2.receive_data(b"\x10\x00")


def test_frame_at_the_limit_is_accepted(a):
    frame = encode_frame(Hello(version=PROTOCOL_VERSION, replica_id="p" * 64, key_id=None))
    s = SyncSession(a, SessionConfig(max_frame_bytes=len(frame) - 4))
    s.initiate()
    (done,) = s.receive_data(frame)
    assert isinstance(done, HandshakeComplete)


def _body(fields: list) -> bytes:
    body = codec.pack(fields)
    return len(body).to_bytes(4, "big") + body


GOOD_PAYLOAD = codec.encode_map(ConversationMap.bottom().raise_to("c", "last_seq", 3))
BAD_FRAMES = {
    "not msgpack": len(b"\xc1\xc1").to_bytes(4, "big") + b"\xc1\xc1",
    # A good PING but for the byte after it (it once was an ACK missing its field as well).
    "trailing bytes": len(b"\x92\x06\x01\x00").to_bytes(4, "big") + b"\x92\x06\x01\x00",
    "truncated body": (lambda f: (len(f) - 5).to_bytes(4, "big") + f[4:-1])(
        encode_frame(Delta(start=0, end=1, payload=GOOD_PAYLOAD))),
    "empty body": b"\x00\x00\x00\x00",
    "not a list": _body({"type": 2}),
    "empty list": _body([]),
    "tag not an int": _body(["DELTA", 0, 1, GOOD_PAYLOAD]),
    "unknown tag": _body([99, 0]),
    "wrong arity": _body([2, 0, 1]),
    "extra field": _body([3, 0, 0]),
    "negative seq": _body([2, -1, 1, GOOD_PAYLOAD]),
    "seq not an int": _body([2, 0, 1.5, GOOD_PAYLOAD]),
    "huge seq": _body([2, 0, 2**64 - 1, GOOD_PAYLOAD]),
    "reversed interval": _body([2, 1, 1, GOOD_PAYLOAD]),
    "payload not binary": _body([2, 0, 1, "text"]),
    "delta payload malformed": encode_frame(Delta(start=0, end=1, payload=b"\x93\x01")),
    # (A tag the schema lacks is carried, specs/crdt.md §7; a tag past 127 is no tag at all.)
    "delta payload out of schema": encode_frame(Delta(start=0, end=1, payload=codec.pack(
        [codec.FORMAT_VERSION, ["r"], {"c": {177: 1}}]))),
    "delta payload unknown field shape": encode_frame(Delta(start=0, end=1, payload=codec.pack(
        [codec.FORMAT_VERSION, ["r"], {"c": {77: "text"}}]))),
    "delta payload bad flag": encode_frame(Delta(start=0, end=1, payload=codec.pack(
        [codec.FORMAT_VERSION, ["r"], {"c": {1: [[0, 5], [], []]}}]))),
    "delta with a gap": encode_frame(Delta(start=1, end=2, payload=GOOD_PAYLOAD)),
    "state chunk malformed": encode_frame(StateChunk(payload=b"junk")),
    "ack never sent": encode_frame(Ack(seq=7)),
    "second hello": encode_frame(Hello(version=PROTOCOL_VERSION, replica_id="again")),
    "pong nonce not an int": _body([7, "x"]),
    # Only the decoding is wrong in these: an ERROR's reason may be anything, a PING's nonce
    # any seq (specs/protocol.md §1).
    "string not utf-8": (lambda b: len(b).to_bytes(4, "big") + b)(b"\x92\x08\xa2\xff\xfe"),
    "extension type": (lambda b: len(b).to_bytes(4, "big") + b)(b"\x92\x08\xd4\x01\x00"),
    "bool as a seq": (lambda b: len(b).to_bytes(4, "big") + b)(b"\x92\x06\xc3"),
}


@pytest.mark.parametrize("name", sorted(BAD_FRAMES))
def test_bad_frame_refused_and_nothing_applied(a, b, name):
    """protocol.md §1: a body decodes strictly (one msgpack value, valid UTF-8, no extension
    types, binary apart from strings) and every seq, count and nonce is an integer in
    0..2^63-1, not a float or a bool. protocol.md §2: a body is an array of an integer tag
    from the table and exactly its fields. Anything else is refused, nothing applied."""
    wire = handshaken(a, b)
    before = snapshot(a)
    received = a.received_from(b.id)
    session = wire.sessions[0]
    with pytest.raises(RemoteProtocolError) as info:
        session.receive_data(BAD_FRAMES[name])
    assert session.state is State.CLOSED
    (err,) = frames_of(session.data_to_send())
    assert isinstance(err, Error) and err.reason == info.value.reason and err.reason
    assert snapshot(a) == before
    assert a.received_from(b.id) == received
    assert session.receive_data(encode_frame(Ping(nonce=1))) == []  # dead: ignores the rest


def test_unstorable_conversation_id_refused(a, b):
    # Regression: the codec bounds ids in characters, the store in UTF-8 bytes; the store's
    # refusal (a DecodeError from apply_map) escaped the session instead of closing it.
    wire = handshaken(a, b)
    before = snapshot(a)
    delta = ConversationMap.bottom().raise_to("\U0001F600" * 256, "last_seq", 3)
    with pytest.raises(RemoteProtocolError, match="refused"):
        wire.sessions[0].receive_data(
            encode_frame(Delta(start=0, end=1, payload=codec.encode_map(delta))))
    assert isinstance(frames_of(wire.sessions[0].data_to_send())[-1], Error)
    assert snapshot(a) == before and a.received_from(b.id) == 0


def test_hello_replica_id_bounded_in_bytes(a):
    """protocol.md §2: a HELLO's replica id must fit as a log entry's origin."""
    # Regression: 64 characters passed, but 64 emoji are 256 bytes, more than the log can
    # record as an entry's origin (one length byte).
    for rid, ok in [("x" * 64, True), ("\u00e9" * 64, True), ("\U0001F600" * 63, True),
                    ("\U0001F600" * 64, False), ("x" * 65, False), ("", False)]:
        s = SyncSession(a, SIM_CONFIG)
        s.initiate()
        hello = encode_frame(Hello(version=PROTOCOL_VERSION, replica_id=rid))
        if ok:
            assert s.receive_data(hello) == [HandshakeComplete(peer_id=rid)]
        else:
            with pytest.raises(RemoteProtocolError, match="replica id"):
                s.receive_data(hello)


def test_overlapping_connections_never_move_the_resume_point_back(a, b):
    """protocol.md §4: the resume point must not move back."""
    # Regression: two connections to one peer (net.py has them for a moment when both dial)
    # each stream the log; an older interval applied after a newer one moved the recorded
    # resume point back below what the peer had already been acknowledged.
    a.set_title("c1", "x")
    a.set_title("c2", "x")
    old = handshake_only(a, b)
    old.pump()  # DELTA (0, 2] queued on the old connection
    a.set_title("c3", "x")
    new = handshaken(a, b)  # (0, 3] applied and acknowledged on the new one
    assert a.peer_ack(b.id) == b.received_from(a.id) == 3
    old.deliver(0)  # now the stale (0, 2] arrives
    assert b.received_from(a.id) == 3 >= a.peer_ack(b.id)
    old.run_until_quiet()
    new.run_until_quiet()
    assert b.state() == a.state() and b.received_from(a.id) == 3


def test_a_delta_from_the_future_is_acknowledged_and_its_future_value_held(a, b):
    # Was refused whole, stalling what came after it (specs/crdt.md §1, protocol.md §4).
    # protocol.md §4: the ACK covers the held value too, so the sender must not resend it.
    from crdtim.crdt import Stamp

    wire = handshaken(a, b)
    future = ConversationMap.bottom().set_title("c", "x", Stamp(START_WALL_MS * 10, 0, b.id))
    future = future.join(ConversationMap.bottom().raise_to("d", "last_seq", 2))
    wire.sessions[0].receive_data(
        encode_frame(Delta(start=0, end=1, payload=codec.encode_map(future))))
    assert isinstance(frames_of(wire.sessions[0].data_to_send())[-1], Ack)
    assert a.get("c") is None and a.get("d").last_seq == 2 and a.received_from(b.id) == 1
    assert a.status()["pending"]["count"] == 1


def test_a_delta_with_a_clock_counter_over_the_limit_is_refused(a, b):
    from crdtim.crdt import Stamp

    wire = handshaken(a, b)
    before = snapshot(a)
    bad = ConversationMap.bottom().set_title("c", "x", Stamp(START_WALL_MS, 2**31, b.id))
    with pytest.raises(RemoteProtocolError, match="refused"):
        wire.sessions[0].receive_data(
            encode_frame(Delta(start=0, end=1, payload=codec.encode_map(bad))))
    assert isinstance(frames_of(wire.sessions[0].data_to_send())[-1], Error)
    assert snapshot(a) == before


def test_bad_frame_after_good_ones_in_the_same_chunk(a, b):
    # The good frames before the bad one are processed; the bad one is not.
    wire = handshaken(a, b)
    good = encode_frame(Delta(start=0, end=1, payload=GOOD_PAYLOAD))
    bad = encode_frame(Delta(start=5, end=6, payload=codec.encode_map(
        ConversationMap.bottom().raise_to("d", "last_seq", 9))))
    with pytest.raises(RemoteProtocolError, match="starts at 5"):
        wire.sessions[0].receive_data(good + bad)
    assert a.get("c").last_seq == 3 and a.get("d") is None
    assert a.received_from(b.id) == 1


def test_garbage_split_at_every_offset_is_refused_once_complete(a, b):
    frame = BAD_FRAMES["delta payload malformed"]
    for cut in range(1, len(frame)):
        wire = handshaken(a, b)
        assert wire.sessions[0].receive_data(frame[:cut]) == []
        with pytest.raises(RemoteProtocolError):
            wire.sessions[0].receive_data(frame[cut:])


def test_error_frame_from_peer_closes_with_its_reason(a, b):
    wire = handshaken(a, b)
    (closed,) = wire.sessions[0].receive_data(encode_frame(Error(reason="going away")))
    assert closed.reason == "going away" and wire.sessions[0].state is State.CLOSED
    assert wire.sessions[0].data_to_send() == b""  # no ERROR in reply to an ERROR


# -- heartbeats ---------------------------------------------------------------------------


def test_heartbeat_ping_pong_and_idle_timeout(a, b):
    cfg = SIM_CONFIG
    wire = connect(a, b, now=0.0)
    wire.run_until_quiet(now=0.0)
    pinger, _ = wire.sessions
    pinger.tick(cfg.ping_interval - 0.1)
    wire.collect(cfg.ping_interval - 0.1)
    assert wire.quiet()  # not yet
    t = cfg.ping_interval
    pinger.tick(t)
    wire.collect(t)
    assert isinstance(wire.frames[0][-1], Ping)
    assert wire.deliver(0, now=t + 0.25) == []
    assert isinstance(wire.frames[1][-1], Pong)
    (pong,) = wire.deliver(1, now=t + 0.5)
    assert isinstance(pong, PongReceived) and pong.rtt == pytest.approx(0.5)
    # An unsolicited or stale PONG is ignored.
    assert pinger.receive_data(encode_frame(Pong(nonce=12345)), t + 0.6) == []
    # Silence: nothing more arrives, then the idle timeout fires with an ERROR queued.
    pinger.tick(t + 0.6 + cfg.idle_timeout)  # exactly at the limit: still alive
    wire.collect(t + 0.6 + cfg.idle_timeout)
    with pytest.raises(RemoteProtocolError, match="silent"):
        pinger.tick(t + 0.7 + cfg.idle_timeout)
    assert pinger.state is State.CLOSED
    assert isinstance(frames_of(pinger.data_to_send())[-1], Error)


def test_idle_timeout_during_handshake(a):
    s = SyncSession(a, SIM_CONFIG)
    s.initiate(now=100.0)
    s.tick(100.0 + SIM_CONFIG.ping_interval)  # no PING before the handshake
    assert [type(m) for m in frames_of(s.data_to_send())] == [Hello]
    with pytest.raises(RemoteProtocolError):
        s.tick(100.0 + SIM_CONFIG.idle_timeout + 1)


# -- streaming, resume, state transfer ------------------------------------------------------


def _delta_frames(frames: list) -> list[Delta]:
    return [m for m in frames if isinstance(m, Delta)]


def test_deltas_stream_in_bounded_batches_within_the_window(a, b):
    for i in range(10):
        a.set_title(f"c{i}", "t")
    wire = handshake_only(a, b)
    assert wire.sessions[0].pump() == SIM_CONFIG.max_unacked_frames  # window full
    assert wire.sessions[0].pump() == 0
    wire.run_until_quiet()
    deltas = _delta_frames(wire.frames[0])
    assert [(d.start, d.end) for d in deltas] == [(0, 3), (3, 6), (6, 9), (9, 10)]
    assert b.state() == a.state()
    assert a.peer_ack(b.id) == 10 and b.received_from(a.id) == 10
    assert wire.sessions[0].caught_up and wire.sessions[1].caught_up


def test_reconnect_resumes_where_the_acks_stopped(a, b):
    for i in range(5):
        a.set_title(f"c{i}", "first")
    first = handshaken(a, b)
    first.run_until_quiet()
    assert a.peer_ack(b.id) == 5
    del first  # dropped
    a.set_title("c0", "second")
    a.pin("c9")
    second = handshaken(a, b)
    deltas = _delta_frames(second.frames[0])
    assert [(d.start, d.end) for d in deltas] == [(5, 7)]
    # Exactly the join of the two new entries, and not a byte of the first five.
    _, new = a.delta_interval(5)
    assert sum(len(d.payload) for d in deltas) == len(codec.encode_map(new))
    assert b.state() == a.state()


def test_resume_after_partial_delivery_and_drop(a, b):
    # The connection dies with a DELTA half delivered: nothing of it is applied or acked,
    # and the next connection sends it again.
    for i in range(3):
        a.set_title(f"c{i}", "x")
    wire = handshake_only(a, b)
    wire.pump()
    assert wire.queues[0]
    wire.deliver(0, len(wire.queues[0]) - 1)
    assert b.received_from(a.id) == 0 and a.peer_ack(b.id) == 0 and len(b) == 0
    again = handshaken(a, b)
    assert [(d.start, d.end) for d in _delta_frames(again.frames[0])] == [(0, 3)]
    assert b.state() == a.state()


def test_ack_lost_in_flight_means_resend_not_loss(a, b):
    a.set_title("c", "x")
    wire = handshake_only(a, b)
    wire.pump()
    wire.deliver(0)  # B applies and queues ACK(1), which is then lost with the connection
    assert b.received_from(a.id) == 1 and a.peer_ack(b.id) == 0
    again = handshaken(a, b)
    # B's resume point says it has entry 1 already: nothing is resent.
    assert _delta_frames(again.frames[0]) == []
    assert a.peer_ack(b.id) == 1


def test_no_back_propagation(open_replica):
    a, b, c = open_replica("a"), open_replica("b"), open_replica("c")
    a.set_title("c1", "from a")
    a.pin("c1")
    ab = handshaken(a, b)
    assert b.state() == a.state() and b.head == 1  # one DELTA, one log entry at B
    # What B received from A is not sent back to A: B streams that range as an empty delta.
    b_to_a = _delta_frames(ab.frames[1])
    assert [(d.start, d.end) for d in b_to_a] == [(0, 1)]
    assert codec.decode_map(b_to_a[0].payload).is_bottom()
    assert a.head == 2  # A's two writes, nothing logged for B's empty delta
    # ...but it is forwarded to a third replica.
    bc = handshaken(b, c)
    (to_c,) = _delta_frames(bc.frames[0])
    assert codec.decode_map(to_c.payload) == a.state()
    assert c.state() == a.state()


def test_redundant_delta_is_not_logged(open_replica):
    # Removing redundant state: C gets A's write directly and again through B; only the first
    # copy goes into C's log.
    a, b, c = open_replica("a"), open_replica("b"), open_replica("c")
    a.set_title("c1", "x")
    handshaken(a, b)
    handshaken(a, c)
    assert c.head == 1
    bc = handshaken(b, c)
    assert _delta_frames(bc.frames[0])  # B forwarded A's write...
    assert c.head == 1  # ...and C had it already


def test_peer_behind_the_log_floor_gets_a_state_transfer(open_replica):
    a = open_replica("a", log_retention=2)
    b = open_replica("b")
    for i in range(7):
        a.set_title(f"c{i}", f"t{i}")
    a.pin("c3")
    assert a.trim_log() > 0 and a.log_floor > 0
    wire = connect(a, b)
    events_a, events_b = wire.run_until_quiet()
    kinds = [type(m) for m in wire.frames[0]]
    # HELLO, the resume ACK for B's log, then chunks of at most 2 conversations, STATE_END
    # (and ACKs for the empty deltas B streams back: what it logged came from A).
    assert [k for k in kinds if k is not Ack] == [Hello, *[StateChunk] * 4, StateEnd]
    assert kinds[:2] == [Hello, Ack]
    (end,) = [m for m in wire.frames[0] if isinstance(m, StateEnd)]
    assert end.seq == a.head
    assert StateTransferStarted(outbound=True) in events_a
    assert StateTransferStarted(outbound=False) in events_b
    assert StateTransferFinished(outbound=False, seq=a.head) in events_b
    assert b.state() == a.state()
    assert b.received_from(a.id) == a.head and a.peer_ack(b.id) == a.head
    assert wire.sessions[0].caught_up and wire.sessions[1].caught_up
    # Then it streams deltas again, from the head the transfer started at.
    a.set_title("c0", "after")
    wire.run_until_quiet()
    assert [(d.start, d.end) for d in _delta_frames(wire.frames[0])] == [(a.head - 1, a.head)]
    assert b.state() == a.state()


def test_log_trimmed_past_what_a_connected_peer_was_sent(open_replica):
    # Regression: the retention bound dropped entries a connected peer had not been sent yet;
    # the next DELTA started before them and silently left them out, and the peer's ACK then
    # covered them: lost for good on that link. Now the sender switches to a state transfer.
    a = open_replica("a", log_retention=0)
    b = open_replica("b")
    wire = handshake_only(a, b)
    a.set_title("c1", "dropped before it was sent")
    a.trim_log()
    a.pin("c2")
    events, _ = wire.run_until_quiet()
    assert StateTransferStarted(outbound=True) in events
    assert [type(m) for m in wire.frames[0]][2:4] == [StateChunk, StateEnd]
    assert b.state() == a.state() and b.get("c1").title == "dropped before it was sent"
    # With frames in flight, the transfer waits for their ACKs (chunk counts restart).
    a.set_title("c3", "in flight")
    wire.pump()
    assert isinstance(wire.frames[0][-1], Delta)
    a.set_title("c4", "dropped")
    a.trim_log()
    a.set_title("c5", "after")
    assert wire.sessions[0].pump() == 0
    wire.run_until_quiet()
    assert b.state() == a.state() and b.get("c4").title == "dropped"
    assert a.peer_ack(b.id) == b.received_from(a.id) == a.head


def test_state_transfer_interrupted_is_restarted(open_replica):
    a = open_replica("a", log_retention=0)
    b = open_replica("b")
    for i in range(6):
        a.set_title(f"c{i}", "x")
    a.trim_log()
    wire = handshake_only(a, b)
    wire.pump()
    wire.deliver(0)  # the first two chunks (a full window) arrive; then the connection drops
    assert [type(m) for m in wire.frames[0]][-2:] == [StateChunk, StateChunk]
    assert len(b) == 4
    assert b.received_from(a.id) == 0  # no STATE_END yet: the resume point has not moved
    again = connect(a, b)
    again.run_until_quiet()
    assert StateChunk in [type(m) for m in again.frames[0]]
    assert b.state() == a.state() and b.received_from(a.id) == a.head


def test_peer_claiming_more_than_we_have_gets_a_state_transfer(a, b):
    # As after a restore from backup: B says it has A's log up to 50, A's head is 2.
    a.set_title("c", "x")
    a.mute("c")
    s = SyncSession(a, SIM_CONFIG)
    s.initiate()
    s.receive_data(encode_frame(Hello(version=PROTOCOL_VERSION, replica_id=b.id)))
    events = s.receive_data(encode_frame(Ack(seq=50)))
    assert events == [StateTransferStarted(outbound=True)]
    s.pump()
    kinds = frames_of(s.data_to_send())
    assert isinstance(kinds[-1], StateEnd) and kinds[-1].seq == 2


def test_ack_outside_the_unacknowledged_range_refused(a, b):
    """protocol.md §3, protocol.md §4: a later ACK must lie in [last acked, last sent end]."""
    a.set_title("c", "x")
    wire = handshake_only(a, b)
    wire.pump()  # DELTA (0, 1] in flight
    with pytest.raises(RemoteProtocolError, match="ACK 2"):
        wire.sessions[0].receive_data(encode_frame(Ack(seq=2)))
    assert a.peer_ack(b.id) == 0


def test_chunk_ack_for_chunks_never_sent_refused(a, b):
    """protocol.md §3: a CHUNK_ACK's count must be at most the chunks sent."""
    from crdtim.protocol import ChunkAck

    wire = handshaken(a, b)
    with pytest.raises(RemoteProtocolError, match="CHUNK_ACK"):
        wire.sessions[0].receive_data(encode_frame(ChunkAck(count=1)))


def test_an_ack_below_the_last_acknowledged_seq_is_refused(a, b):
    """protocol.md §3, protocol.md §4: a later ACK must not go below the last one."""
    a.set_title("c", "x")
    wire = handshake_only(a, b)
    wire.run_until_quiet()
    assert a.peer_ack(b.id) == 1
    with pytest.raises(RemoteProtocolError, match="ACK 0 outside"):
        wire.sessions[0].receive_data(encode_frame(Ack(seq=0)))
    assert a.peer_ack(b.id) == 1


def test_a_chunk_ack_that_does_not_move_forward_is_refused(a, b):
    """protocol.md §3: a CHUNK_ACK's count must be greater than the last CHUNK_ACK's."""
    from crdtim.protocol import ChunkAck

    for cid in ("c1", "c2", "c3"):
        a.set_title(cid, "x")
    s = SyncSession(a, SessionConfig(max_conversations_per_chunk=1))
    s.initiate()
    s.receive_data(encode_frame(Hello(version=PROTOCOL_VERSION, replica_id=b.id)))
    s.receive_data(encode_frame(Ack(seq=50)))  # more than we have: a state transfer
    s.pump()
    assert sum(isinstance(m, StateChunk) for m in frames_of(s.data_to_send())) >= 2
    s.receive_data(encode_frame(ChunkAck(count=1)))
    with pytest.raises(RemoteProtocolError, match="CHUNK_ACK 1 for"):
        s.receive_data(encode_frame(ChunkAck(count=1)))


@pytest.mark.parametrize("first, start, end, refusal, received", [
    # protocol.md §3: a DELTA is accepted only while the inbound direction is in DELTAS.
    (StateChunk(payload=GOOD_PAYLOAD), 0, 1, "DELTA during a state transfer", 0),
    # protocol.md §3, protocol.md §4: a DELTA's start must equal the end of the last one
    # applied on this connection; an overlap is refused like a gap.
    (Delta(start=0, end=1, payload=GOOD_PAYLOAD), 0, 2, "starts at 0, expected 1", 1),
])
def test_a_delta_out_of_place_is_refused_and_changes_nothing(a, b, first, start, end, refusal,
                                                             received):
    wire = handshaken(a, b)
    session = wire.sessions[0]
    session.receive_data(encode_frame(first))
    before = snapshot(a)
    delta = ConversationMap.bottom().raise_to("d", "last_seq", 2)
    with pytest.raises(RemoteProtocolError, match=refusal):
        session.receive_data(encode_frame(Delta(start=start, end=end,
                                                payload=codec.encode_map(delta))))
    assert snapshot(a) == before and a.received_from(b.id) == received


def test_a_burst_whose_intervals_do_not_chain_is_refused_at_the_first_gap(a, b):
    """protocol.md §4: DELTAs group-committed together must chain; the first that does not
    is refused after the ones before it are applied and acknowledged."""
    wire = handshaken(a, b)
    first = ConversationMap.bottom().raise_to("g", "last_seq", 4)
    skipped = ConversationMap.bottom().raise_to("h", "last_seq", 5)
    with pytest.raises(RemoteProtocolError, match="starts at 2, expected 1"):
        wire.sessions[0].receive_data(
            encode_frame(Delta(start=0, end=1, payload=codec.encode_map(first)))
            + encode_frame(Delta(start=2, end=3, payload=codec.encode_map(skipped))))
    assert a.get("g").last_seq == 4 and a.get("h") is None
    assert a.received_from(b.id) == 1
    assert [f.seq for f in frames_of(wire.sessions[0].data_to_send())
            if isinstance(f, Ack)] == [1]


# -- the simulation ---------------------------------------------------------------------------

CIDS = ("c1", "c2", "c3")
TEXTS = ("", "hi", "yo")
FLAGS = ("pinned", "muted")
RETENTIONS = (0, 2, 100_000)


class ProtocolSimulation(RuleBasedStateMachine):
    """3-4 replicas, any number of connections between them (duplicates too, as net.py has
    for a moment when two nodes dial each other), and an adversarial but honest network."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = tempfile.mkdtemp(prefix="crdtim-sim-")
        self.now = 0.0  # session clock, seconds
        self.wall_ms = START_WALL_MS  # replicas' wall clock (hybrid clock input)
        self.replicas: list[Replica] = []
        self.relays: list[RelayIndex] = []  # what a Node's sessions share (§12)
        self.retention: list[int] = []
        self.wires: list[Wire] = []
        self.cut: frozenset[int] | None = None  # one side of a partition, while it lasts
        # The plain model: every op, with what the replica's log says about its stamp/dot.
        self.titles: list[tuple[str, tuple, str]] = []  # cid, stamp, text
        self.enables: list[tuple[str, str, tuple]] = []  # cid, flag, dot
        self.disables: list[tuple[str, str, Any]] = []  # cid, flag, causal context seen
        self.arrivals: list[tuple[str, int, int, str, str]] = []  # cid, seq, at, preview, rid
        self.reads: list[tuple[str, int]] = []
        # Every log entry each replica ever wrote (by replica index, then seq), copied before
        # any trim can drop it: an ACK must cover dropped entries too.
        self.logs: list[dict[int, ConversationMap]] = []

    # -- set-up and helpers --------------------------------------------------------------

    @initialize(retention=st.lists(st.sampled_from(RETENTIONS), min_size=3, max_size=4))
    def open_replicas(self, retention: list[int]) -> None:
        self.retention = retention
        for i in range(len(retention)):
            self.replicas.append(self._open(i))
            self.relays.append(RelayIndex())  # one per replica, shared by its sessions
            self.logs.append({})

    def _open(self, i: int) -> Replica:
        return Replica.open(Path(self.tmp) / f"r{i}", durability="nosync",
                            log_retention=self.retention[i], now_ms=lambda: self.wall_ms)

    def _index(self, data: st.DataObject, label: str = "replica") -> int:
        return data.draw(st.integers(0, len(self.replicas) - 1), label=label)

    def _wire(self, data: st.DataObject) -> Wire:
        return self.wires[data.draw(st.integers(0, len(self.wires) - 1), label="wire")]

    def _drop(self, wire: Wire) -> None:
        self.wires.remove(wire)
        for s in wire.sessions:  # as a Node does when a connection ends (§12)
            s.ended()

    def _connect(self, i: int, j: int) -> Wire:
        return connect(self.replicas[i], self.replicas[j], SIM_CONFIG, self.now,
                       (self.relays[i], self.relays[j]))

    def _across_cut(self, i: int, j: int) -> bool:
        return self.cut is not None and ((i in self.cut) != (j in self.cut))

    def _observe(self, events: list) -> None:  # coverage, in --hypothesis-show-statistics
        for e in events:
            if isinstance(e, StateTransferStarted):
                event("state transfer sent" if e.outbound else "state transfer received")
            elif isinstance(e, StateTransferFinished):
                event("state transfer finished")
            elif isinstance(e, PongReceived):
                event("pong")

    def _head_entry(self, r: Replica, before: int) -> ConversationMap:
        assert r.head == before + 1, "a local op that changes state is logged"
        end, delta = r.delta_interval(before, max_entries=1)
        assert end == before + 1 and delta is not None
        return delta

    # -- local ops (one rule, so that they are drawn as often as any one network rule) ------

    @rule(data=st.data(), kind=st.sampled_from(["title", "enable", "disable", "arrive", "read"]),
          cid=st.sampled_from(CIDS), then_trim=st.booleans())
    def local_op(self, data, kind, cid, then_trim):
        r = self.replicas[self._index(data)]
        before = r.head
        if kind == "title":
            text = data.draw(st.sampled_from(TEXTS), label="text")
            r.set_title(cid, text)
            stamp = self._head_entry(r, before).fields(cid)["title"].stamp
            self.titles.append((cid, tuple(stamp), text))
        elif kind == "enable":  # pin / mute
            flag = data.draw(st.sampled_from(FLAGS), label="flag")
            (r.pin if flag == "pinned" else r.mute)(cid)
            (dot,) = self._head_entry(r, before).fields(cid)[flag].dots
            self.enables.append((cid, flag, dot))
        elif kind == "disable":  # unpin / unmute: removes the enables it has seen
            flag = data.draw(st.sampled_from(FLAGS), label="flag")
            seen = r.state().fields(cid).get(flag)
            (r.unpin if flag == "pinned" else r.unmute)(cid)
            if seen is not None:
                self.disables.append((cid, flag, seen.context))
        elif kind == "arrive":
            seq = data.draw(st.integers(1, 6), label="seq")
            at = data.draw(st.integers(0, 3), label="at")
            preview = data.draw(st.sampled_from(TEXTS), label="preview")
            r.message_arrived(cid, seq, preview, at=at)
            self.arrivals.append((cid, seq, at, preview, r.id))
        else:
            # Only what has arrived here can be read (specs/crdt.md §6).
            seen = r.get(cid)
            seq = data.draw(st.integers(0, seen.last_seq if seen else 0), label="seq")
            r.mark_read(cid, seq)
            self.reads.append((cid, seq))
        if then_trim:  # a Node trims now and then, between any two writes
            self._copy_new_log_entries()
            if r.trim_log():
                event("log trimmed")

    # -- the network -------------------------------------------------------------------------

    @precondition(lambda self: len(self.wires) < 8)
    @rule(data=st.data())
    def connect_pair(self, data):
        i = self._index(data, "dialer")
        j = data.draw(st.sampled_from([j for j in range(len(self.replicas)) if j != i]),
                      label="acceptor")
        if self._across_cut(i, j):
            return
        self.wires.append(self._connect(i, j))

    @precondition(lambda self: any(not w.quiet() for w in self.wires))
    @rule(data=st.data())
    def deliver_some(self, data):
        busy = [(w, k) for w in self.wires for k in (0, 1) if w.queues[k]]
        wire, k = data.draw(st.sampled_from(busy), label="direction")
        n = data.draw(st.integers(1, len(wire.queues[k])), label="bytes")
        # An honest peer never sends anything to refuse: a RemoteProtocolError fails the test.
        self._observe(wire.deliver(k, n, self.now))

    @precondition(lambda self: self.wires)
    @rule(data=st.data(), side=st.sampled_from([0, 1, None]))
    def pump(self, data, side):
        wire = self._wire(data)
        for k in (0, 1) if side is None else (side,):
            if wire.sessions[k].pump():
                event("pumped frames")
        wire.collect(self.now)

    @precondition(lambda self: self.wires)
    @rule(data=st.data())
    def exchange_until_quiet(self, data):
        wire = self._wire(data)
        events = wire.run_until_quiet(self.now)
        for k in (0, 1):
            self._observe(events[k])

    @rule(data=st.data(), kind=st.sampled_from(["drop", "close", "partition", "crash"]))
    def fail(self, data, kind):
        # One rule for all failures, so that they are drawn no more often than any one kind
        # of progress: otherwise few connections live long enough to matter.
        if kind == "drop":  # both sessions discarded, undelivered bytes lost
            if self.wires:
                self._drop(self._wire(data))
        elif kind == "close":  # one side closes; what it had queued, then ERROR, arrives
            if self.wires:
                wire = self._wire(data)
                k = data.draw(st.sampled_from([0, 1]), label="closing side")
                wire.sessions[k].close("going away")
                wire.collect(self.now)
                events = wire.deliver(k, now=self.now)
                assert events and events[-1].reason == "going away"
                self._drop(wire)
        elif kind == "partition":  # drop every connection across a cut; no new ones until healed
            n = len(self.replicas)
            self.cut = frozenset(data.draw(
                st.sets(st.integers(0, n - 1), min_size=1, max_size=n - 1), label="side"))
            for wire in list(self.wires):
                i, j = (self.replicas.index(r) for r in wire.ends)
                if self._across_cut(i, j):
                    self._drop(wire)
        else:  # crash and restart: close and reopen from the directory; connections dropped
            i = self._index(data)
            old = self.replicas[i]
            for wire in list(self.wires):
                if old in wire.ends:
                    self._drop(wire)
            old.close()
            self.replicas[i] = self._open(i)
            self.relays[i] = RelayIndex()  # memory only: a restart forgets it
            assert self.replicas[i].id == old.id

    @precondition(lambda self: self.cut is not None)
    @rule()
    def heal(self):
        self.cut = None

    @rule(data=st.data())
    def trim_log(self, data):
        if self.replicas[self._index(data)].trim_log():
            event("log trimmed")

    @rule(dt=st.sampled_from([0.5, 3.0, 6.0, 21.0]))
    def tick(self, dt):
        self.now += dt
        self.wall_ms += int(dt * 1000)
        for r in self.replicas:  # as a Node does every trim_interval
            if r.trim_log():
                event("log trimmed")
        for wire in list(self.wires):
            try:
                for s in wire.sessions:
                    s.tick(self.now)
            except RemoteProtocolError as e:
                assert "silent" in e.reason or "no HELLO" in e.reason
                event("idle or handshake timeout")
                self._drop(wire)
                continue
            wire.collect(self.now)

    # -- the safety invariant ---------------------------------------------------------------

    def _copy_new_log_entries(self) -> None:
        # Runs after every step; no step both writes an entry and trims it.
        for i, x in enumerate(self.replicas):
            log = self.logs[i]
            for seq in range(max(log, default=0) + 1, x.head + 1):
                end, delta = x.delta_interval(seq - 1, max_entries=1)
                assert end == seq, f"entry {seq} of {x.id} was dropped before it was seen"
                log[seq] = delta if delta is not None else ConversationMap.bottom()

    @invariant()
    def acks_cover_only_applied_deltas(self):
        self._copy_new_log_entries()
        for i, x in enumerate(self.replicas):
            head = x.head
            for y in self.replicas:
                if y is x:
                    continue
                ack = x.peer_ack(y.id)
                if ack is None:
                    continue
                assert ack <= head
                assert ack <= y.received_from(x.id), (
                    f"{x.id} holds ack {ack} from {y.id}, which has applied only up to "
                    f"{y.received_from(x.id)}")
                # Every entry up to the ack -- dropped from x's log or not, and even those
                # that came from y -- is already in y's state.
                state = y.state()
                for seq in range(1, ack + 1):
                    assert state.join(self.logs[i][seq]) == state, (
                        f"{x.id} holds ack {ack} from {y.id}, which lacks entry {seq}")

    # -- the end: heal, connect everyone, run to quiescence, compare with the model ------------

    def teardown(self):
        try:
            if self.replicas:
                self._settle_and_check()
        finally:
            for r in self.replicas:
                r.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _settle_and_check(self):
        self.cut = None
        n = len(self.replicas)
        for wire in self.wires:
            for s in wire.sessions:
                s.ended()
        # A line, not every pair: each write must then be relayed, so an entry a relay held
        # back or left out for a link that no longer exists would never arrive
        # (specs/protocol.md §12).
        self.wires = [self._connect(i, i + 1) for i in range(n - 1)]
        for _ in range(100):
            moved = False
            for wire in self.wires:
                moved |= bool(wire.pump(self.now))
                for k in (0, 1):
                    if wire.queues[k]:
                        wire.deliver(k, now=self.now)
                        moved = True
            if not moved:
                break
        else:
            raise AssertionError("the replicas never went quiet")
        for wire in self.wires:
            assert all(s.caught_up for s in wire.sessions)
        first = self.replicas[0].state()
        for r in self.replicas:
            assert r.state() == first
        model = self._model()
        for r in self.replicas:
            for cid in CIDS:
                assert (r.get(cid) or Conversation(cid)) == model[cid], (r.id, cid)

    def _model(self) -> dict[str, Conversation]:
        out = {}
        for cid in CIDS:
            titles = [(stamp, text) for c, stamp, text in self.titles if c == cid]
            arrivals = [(at, seq, rid, p) for c, seq, at, p, rid in self.arrivals if c == cid]
            last_seq = max((a[1] for a in arrivals), default=0)
            read_seq = max((s for c, s in self.reads if c == cid), default=0)
            last = max(arrivals, default=None)

            def add_wins(flag: str) -> bool:
                # An enable survives unless a disable had seen it (concurrent: enable wins).
                seen = [ctx for c, f, ctx in self.disables if c == cid and f == flag]
                return any(not any(ctx.contains(dot) for ctx in seen)
                           for c, f, dot in self.enables if c == cid and f == flag)

            out[cid] = Conversation(
                id=cid,
                title=max(titles)[1] if titles else "",
                pinned=add_wins("pinned"),
                muted=add_wins("muted"),
                unread=max(0, last_seq - read_seq),
                last_seq=last_seq,
                read_seq=read_seq,
                last_preview=last[3] if last else "",
                last_at=last[0] if last else 0,
            )
        return out


ProtocolSimulation.TestCase.settings = settings(
    max_examples=30, stateful_step_count=40, deadline=None
)
TestProtocolSimulation = ProtocolSimulation.TestCase


def test_a_log_entry_larger_than_a_frame_is_sent_as_a_state_transfer(open_replica):
    # Regression: one big batch became one log entry whose DELTA was over max_frame_bytes;
    # the peer refused it, reconnected and was sent the same frame again, forever.
    a, b = open_replica("a"), open_replica("b")
    with a.batch():
        for i in range(300):
            a.set_title(f"c{i:03}", "x" * 200)
    small = SessionConfig(max_frame_bytes=16 * 1024, max_delta_bytes=4 * 1024,
                          max_conversations_per_chunk=50)
    wire = connect(a, b, small)
    events_a, events_b = wire.run_until_quiet()
    assert any(isinstance(e, StateTransferFinished) for e in events_b)
    assert not any(isinstance(f, Delta) and len(f.payload) > small.max_frame_bytes
                   for f in wire.frames[0])
    assert b.state() == a.state()
    assert wire.sessions[0].caught_up


def test_a_sender_sizes_its_frames_to_the_limit_the_receiver_announced(open_replica):
    # Regression (review): frames were sized by the sender's own limits only, so a replica
    # set to accept smaller frames than its peer sends refused them on every reconnect and
    # never received anything. HELLO now carries each side's limit.
    a, b = open_replica("a"), open_replica("b")
    for i in range(20):
        a.set_title(f"c{i:02}", "y" * 8000)  # ~160 KB of log, in entries of ~8 KB
    with a.batch():  # and one entry larger than b's frames: a state transfer
        for i in range(12):
            a.set_title(f"big{i:02}", "z" * 8000)
    small = SessionConfig(max_frame_bytes=64 * 1024)
    wire = Wire((a, b), (SyncSession(a), SyncSession(b, small)))
    for s in wire.sessions:
        s.initiate()
    wire.run_until_quiet()
    assert all(s.state is State.OPEN for s in wire.sessions)
    sent = [len(encode_frame(f)) for f in wire.frames[0]]
    assert max(sent) <= small.max_frame_bytes and sum(sent) > 3 * small.max_frame_bytes
    assert b.state() == a.state()


def test_deltas_and_state_chunks_are_bounded_in_bytes(open_replica):
    a, b = open_replica("a"), open_replica("b")
    for i in range(40):
        a.set_title(f"c{i:02}", "y" * 100)
    config = SessionConfig(max_delta_bytes=1024, max_entries_per_delta=1000,
                           max_conversations_per_chunk=1000)
    wire = connect(a, b, config)
    wire.run_until_quiet()
    deltas = _delta_frames(wire.frames[0])
    assert len(deltas) > 1
    # Each DELTA joins entries up to the budget (one entry may overshoot it alone).
    assert all(len(d.payload) <= 2 * config.max_delta_bytes for d in deltas)
    assert b.state() == a.state()
    chunk, after = a.state_chunk(None, 1000, max_bytes=1024)
    assert 1 < len(chunk) < 40 and after is not None


def test_acks_are_kept_in_memory_until_a_trim_or_close_writes_them(open_replica, tmp_path):
    a, b = open_replica("a"), open_replica("b")
    a.set_title("c", "t")
    handshaken(a, b).run_until_quiet()
    assert a.peer_ack(b.id) == 1  # seen at once by this process...
    assert a.store.read(lambda t: t.ack(b.id)) is None  # ...but no fsync per ACK
    a.trim_log()
    assert a.store.read(lambda t: t.ack(b.id)) == 1
    a.record_ack(b.id, 1)
    path = a.path
    a.close()
    with Replica.open(path) as again:
        assert again.peer_ack(b.id) == 1


def test_a_peer_that_never_finishes_its_hello_is_dropped(a):
    """protocol.md §10: the peer's HELLO must have arrived within handshake_timeout."""
    # A socket trickling a byte now and then must not hold a connection slot forever.
    session = SyncSession(a, SIM_CONFIG)
    session.initiate(now=0.0)
    session.data_to_send()
    session.receive_data(b"\x00\x00\x00\x64", now=0.5)  # a 100-byte frame announced...
    for t in range(1, 10):
        session.receive_data(b"\xc0", now=float(t))  # ...and never completed
        session.tick(float(t))
    with pytest.raises(RemoteProtocolError, match="no HELLO within"):
        session.tick(SIM_CONFIG.handshake_timeout + 1)
    assert any(isinstance(m, Error) for m in frames_of(session.data_to_send()))


def test_deltas_that_arrive_together_are_applied_in_one_transaction(a, b):
    # Group commit: a burst costs the receiver one commit (one fsync) and one ACK, not one
    # per frame.
    wire = connect(a, b, SessionConfig(max_unacked_frames=8))
    wire.run_until_quiet()
    for i in range(5):
        b.set_title(f"c{i}", "burst")
        wire.sessions[1].pump()  # one DELTA per write, queued without delivery
        wire.collect()
    assert len(_delta_frames(wire.frames[1])) == 5
    head = a.head
    wire.deliver(1)  # all five frames in one read
    assert a.head == head + 1  # one transaction, one log entry
    acks = [f for f in wire.frames[0] if isinstance(f, Ack)]
    assert acks[-1].seq == b.head and sum(1 for f in acks if f.seq > 0) <= 2
    wire.run_until_quiet()
    assert a.state() == b.state()


def test_a_refused_delta_in_a_burst_does_not_undo_the_ones_before_it(a, b):
    """protocol.md §4: the first frame of a group that does not decode is refused after the
    ones before it are applied and acknowledged."""
    wire = handshaken(a, b)
    wire.run_until_quiet()
    good = encode_frame(Delta(start=0, end=1, payload=codec.encode_map(
        ConversationMap.bottom().raise_to("g", "last_seq", 4))))
    drifting = encode_frame(Delta(start=1, end=2, payload=codec.encode_map(
        ConversationMap.bottom().set_title("h", "counter over the limit",
                                           Stamp(START_WALL_MS, 2**31, b.id)))))
    with pytest.raises(RemoteProtocolError, match="refused") as refused:
        wire.sessions[0].receive_data(good + drifting)
    assert a.get("g").last_seq == 4 and a.get("h") is None
    assert a.received_from(b.id) == 1
    # What the good frame did is reported with the refusal (the Node counts it).
    assert [type(e) for e in refused.value.events] == [DeltaApplied]
    assert refused.value.events[0].changed == {"g"}


def test_a_state_transfer_to_a_newcomer_logs_the_chunks_as_received_and_forwards_them(
        open_replica):
    # A newcomer holds none of a chunk: the novel part is the chunk, so its log entry is the
    # payload as it came (no decode and encode again); a third replica then gets it from the
    # newcomer as DELTAs, and everyone ends with the same state.
    a = open_replica("a", log_retention=0)
    other = open_replica("other")
    for i in range(5):
        other.set_title(f"c{i}", f"by other {i}")
    a.apply_delta(other.delta_since(0), other.id)
    a.pin("c1")
    a.message_arrived("c4", 7, "hi", at=START_WALL_MS)
    a.set_title("c9", "only a")
    assert a.trim_log() > 0
    b, c = open_replica("b"), open_replica("c")
    wire = connect(a, b)
    wire.run_until_quiet()
    chunks = [m.payload for m in wire.frames[0] if isinstance(m, StateChunk)]
    assert len(chunks) > 1
    logged = b.store.read(lambda t: list(t.log_entries(0)))
    assert [(origin, payload) for _, origin, payload in logged] == [(a.id, p) for p in chunks]
    assert b.state() == a.state()
    connect(b, c).run_until_quiet()
    assert c.state() == a.state()


def test_a_state_chunk_partly_known_logs_only_its_novel_part(open_replica):
    a = open_replica("a", log_retention=0)
    b = open_replica("b")
    for i in range(4):
        a.set_title(f"c{i}", f"t{i}")
    b.apply_delta(a.delta_since(0), a.id)  # B holds c0..c3 already
    a.set_title("c1", "renamed")
    a.set_title("c5", "new")
    assert a.trim_log() > 0
    before, head = b.state(), b.head
    wire = connect(a, b)
    wire.run_until_quiet()
    assert any(isinstance(m, StateChunk) for m in wire.frames[0])
    assert b.state() == a.state()
    logged = ConversationMap.bottom()
    for _, _, payload in b.store.read(lambda t: list(t.log_entries(head))):
        logged = logged.join(codec.decode_map(payload))
    assert logged == before.novel(a.state())
    assert set(logged.convs) == {"c1", "c5"}
