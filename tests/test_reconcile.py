"""Catch-up by range-based set reconciliation (specs/protocol.md §13).

The named tests drive two real replicas over in-memory sessions (test_protocol_sim's Wire):
a peer that synced before and fell behind the log floor is reconciled, gets only the
conversations that differ, and the result is the join of both states (nothing lost, nothing
resurrected). The properties check the reconciliation alone, sender against responder, over
generated sets of (id, digest): it finds exactly the ids whose digest the peer lacks, for any
branching and leaf size. The bad-input tests feed a session frames no honest peer sends.
"""

from __future__ import annotations

import hashlib

import pytest
from frames import frames_of
from hypothesis import given, settings
from hypothesis import strategies as st
from test_protocol_sim import connect, handshaken

from crdtim import codec
from crdtim.protocol import (
    PROTOCOL_VERSION,
    Ack,
    Hello,
    RemoteProtocolError,
    SessionConfig,
    StateChunk,
    StateEnd,
    StateTransferStarted,
    SyncSession,
    encode_frame,
)
from crdtim.protocol._reconcile import (
    MAX_RECON_RANGES,
    RangeQuery,
    ReconAnswer,
    ReconcileResponder,
    ReconcileSender,
    ReconRanges,
    encode_ranges,
    parse_ranges,
)

SALT = bytes(range(16))
CONFIG = SessionConfig(max_conversations_per_chunk=8, max_unacked_frames=2,
                       reconcile_branching=4, reconcile_leaf_items=4)
FULL_TRANSFER = SessionConfig(max_conversations_per_chunk=8, max_unacked_frames=2,
                              reconcile=False)


def _fell_behind(open_replica, n: int = 120):
    """A and B in sync over n conversations; then apart, each writes; A trims its log."""
    a = open_replica("a", log_retention=0)
    b = open_replica("b")
    with a.batch():
        for i in range(n):
            a.set_title(f"c{i:04}", f"t{i}")
    a.post("c0007", "a message", id="m1")
    connect(a, b, CONFIG).run_until_quiet()
    assert b.state() == a.state()
    a.set_title("c0003", "changed on a")
    a.pin("c0050")
    a.post("c0007", "another", id="m2")
    a.set_title("new-on-a", "fresh")
    b.set_title("c0003", "changed on b")  # concurrent with a's: the join decides
    b.unpin("c0050")  # has not seen a's pin: a's pin survives (add-wins)
    b.set_title("c0090", "only on b")
    assert a.trim_log() > 0
    return a, b


def test_peer_behind_the_log_floor_is_reconciled_and_gets_only_what_differs(open_replica):
    a, b = _fell_behind(open_replica)
    expected = a.state().join(b.state())
    wire = connect(a, b, CONFIG)
    events_a, _ = wire.run_until_quiet()
    assert StateTransferStarted(outbound=True) in events_a
    sent = wire.frames[0]
    assert any(isinstance(m, ReconRanges) for m in sent)
    chunks = [codec.decode_map(m.payload, a.schema) for m in sent if isinstance(m, StateChunk)]
    sent_ids = {cid for chunk in chunks for cid in chunk.convs}
    # c0090 differs too (b changed it), but a holds less of it: sending it is harmless, and
    # the range test cannot tell which side is ahead.
    assert {"c0003", "c0050", "c0007", "new-on-a"} <= sent_ids <= {
        "c0003", "c0050", "c0007", "new-on-a", "c0090"}
    (end,) = [m for m in sent if isinstance(m, StateEnd)]
    head_before = end.seq  # a's head when it read its digests; b's writes then came in
    assert head_before < a.head
    assert a.state() == b.state() == expected
    assert b.get("c0050").pinned and b.message("c0007", "m2") is not None
    assert b.received_from(a.id) == a.head and a.peer_ack(b.id) == a.head
    # Deltas resume from there.
    a.set_title("c0001", "after")
    wire.run_until_quiet()
    assert b.get("c0001").title == "after"


def test_reconciliation_sends_far_less_than_a_state_transfer(open_replica):
    a, b = _fell_behind(open_replica, n=600)
    reconciled = connect(a, b, CONFIG)
    reconciled.run_until_quiet()
    fresh = open_replica("fresh")
    transferred = connect(a, fresh, FULL_TRANSFER)  # what a whole state transfer costs
    transferred.run_until_quiet()
    assert a.state() == b.state() == fresh.state()
    assert reconciled.sessions[0].bytes_sent * 5 < transferred.sessions[0].bytes_sent


def test_equal_replicas_reconcile_in_one_round(open_replica):
    a, b = _fell_behind(open_replica, n=50)
    connect(b, a, CONFIG).run_until_quiet()  # a gets b's writes by deltas; b still behind
    wire = connect(a, b, CONFIG)
    wire.run_until_quiet()
    assert a.state() == b.state()
    # Now equal: a later reconciliation (the log trimmed again) is one range and no chunk.
    a.set_title("c0001", "x")
    connect(a, b, CONFIG).run_until_quiet()
    a.trim_log()
    b.set_title("c0002", "y")
    connect(b, a, CONFIG).run_until_quiet()
    a.set_title("c0001", "z")  # past b's ack, then trimmed away
    a.trim_log()
    wire = connect(a, b, CONFIG)
    wire.run_until_quiet()
    ranges = [m for m in wire.frames[0] if isinstance(m, ReconRanges)]
    assert ranges and a.state() == b.state()


def test_interrupted_reconciliation_is_restarted(open_replica):
    a, b = _fell_behind(open_replica)
    expected = a.state().join(b.state())
    wire = connect(a, b, CONFIG)
    for _ in range(4):  # hellos, acks, then the first ranges and answers; then it drops
        wire.pump()
        wire.deliver(0)
        wire.deliver(1)
    assert b.received_from(a.id) < a.head
    again = connect(a, b, CONFIG)
    again.run_until_quiet()
    assert a.state() == b.state() == expected


# -- the reconciliation alone, sender against responder ---------------------------------------

def _digests(items: dict[bytes, int]) -> tuple[list[bytes], bytes]:
    ids = sorted(items)
    return ids, b"".join(hashlib.blake2b(i + bytes([items[i]]), digest_size=16).digest()
                         for i in ids)


def _reconcile(ours: dict[bytes, int], theirs: dict[bytes, int], branching: int,
               leaf: int, per_frame: int = 7) -> tuple[list[bytes], int]:
    ids, digests = _digests(ours)
    sender = ReconcileSender(1, ids, digests, salt=SALT, branching=branching,
                             leaf_items=leaf, max_ranges_per_frame=per_frame)
    responder = ReconcileResponder(lambda: (0, *_digests(theirs)))
    rounds = 0
    while not sender.done:
        frames = []
        while sender.outstanding < 3 and (frame := sender.next_frame()) is not None:
            frames.append(frame)
        for frame in frames:
            sender.on_answer(responder.answer(frame))
        rounds += 1
        assert rounds < 1000
    return sender.needed_ids(), rounds


_ids = st.dictionaries(st.binary(min_size=1, max_size=4), st.integers(0, 3), max_size=120)


@settings(max_examples=150, deadline=None)
@given(ours=_ids, theirs=_ids, branching=st.integers(2, 20), leaf=st.integers(1, 20))
def test_reconciliation_finds_exactly_the_items_the_peer_lacks(ours, theirs, branching, leaf):
    needed, _ = _reconcile(ours, theirs, branching, leaf)
    assert needed == sorted(i for i, v in ours.items() if theirs.get(i) != v)


@settings(max_examples=50, deadline=None)
@given(ours=_ids, branching=st.integers(2, 20), leaf=st.integers(1, 20))
def test_equal_sets_need_nothing_in_one_round(ours, branching, leaf):
    needed, rounds = _reconcile(ours, dict(ours), branching, leaf)
    assert needed == [] and rounds <= 1


# -- bad input ---------------------------------------------------------------------------------

def _open_session(a, b) -> SyncSession:
    s = SyncSession(a, CONFIG)
    s.initiate()
    s.receive_data(encode_frame(Hello(version=PROTOCOL_VERSION, replica_id=b.id)))
    s.data_to_send()
    return s


def _frame(tag: int, *fields) -> bytes:
    body = codec.pack([tag, *fields])
    return len(body).to_bytes(4, "big") + body


_WHOLE = b"\x04" + bytes(8)  # flags END: from b"" to the end, a fingerprint


@pytest.mark.parametrize(("fields", "reason"), [
    ([SALT, b""], "not binary"),
    ([SALT, [_WHOLE]], "not binary"),
    ([b"short", _WHOLE], "salt is not 16 bytes"),
    ([SALT, b"\x04" + bytes(5)], "end inside a range"),
    ([SALT, b"\x0c" + bytes(8)], "unknown range flags"),
    ([SALT, _WHOLE + _WHOLE], "starts after the end"),
    ([SALT, b"\x00\x00\x00" + bytes(8)], "not above its lower"),  # upper b"" = lower
    ([SALT, b"\x02\x00\x01b\x00\x00" + bytes(8)], "not above its lower"),  # lower b, upper b""
    ([SALT, b"\x02\x01\x01b\x00\x01c" + bytes(8)], "1 is over 0"),  # shares past b""
    ([SALT, b"\x06\x00\x82\x04" + b"x" * 600 + bytes(8)], "over 502"),
    ([SALT, b"\x06\x00\xff\xff\xff\x01" + bytes(8)], "longer than 3 bytes"),
    ([SALT, b"\x05\x81\x80\x01" + bytes(8 * 16385)], "over 16384"),
    ([SALT, b"\x03\x00\x01m\x01\x01n\x80\x80\x01" + bytes(8 * 16384) + b"\x05\x01" + bytes(8)],
     "1 is over 0"),  # item hashes over the frame's limit
    ([SALT, encode_ranges(tuple(RangeQuery(i.to_bytes(2), (i + 1).to_bytes(2), 0, bytes(8))
                                for i in range(MAX_RECON_RANGES + 1)))],
     "more than 4096 ranges"),
])
def test_malformed_recon_ranges_refused(a, b, fields, reason):
    """protocol.md §13.2: RECON_RANGES as specified, else refused; among them, an upper
    bound must be above its range's lower bound."""
    s = _open_session(a, b)
    with pytest.raises(RemoteProtocolError, match=reason):
        s.receive_data(_frame(16, *fields))


def test_recon_answer_nobody_asked_for_is_refused(a, b):
    s = _open_session(a, b)
    with pytest.raises(RemoteProtocolError, match="no reconciliation is running"):
        s.receive_data(encode_frame(ReconAnswer(differs=b"", needed=b"")))


def test_recon_answer_with_wrong_bit_counts_is_refused():
    ids, digests = _digests({bytes([i]): 0 for i in range(40)})
    sender = ReconcileSender(1, ids, digests, salt=SALT, branching=4, leaf_items=4,
                             max_ranges_per_frame=10)
    frame = sender.next_frame()
    assert frame is not None and len(frame.ranges) == 1
    with pytest.raises(RemoteProtocolError, match="differs bitmap is not 1 bits"):
        sender.on_answer(ReconAnswer(differs=b"", needed=b""))
    sender = ReconcileSender(1, ids, digests, salt=SALT, branching=4, leaf_items=4,
                             max_ranges_per_frame=10)
    sender.next_frame()
    with pytest.raises(RemoteProtocolError, match="not 1 bits"):
        sender.on_answer(ReconAnswer(differs=b"\xc0", needed=b""))  # a padding bit set


def test_recon_ranges_after_a_transfer_ended_is_refused(a, b):
    # A peer reconciles once per session, before any transfer: it cannot make us read all
    # our digests again and again.
    a.set_title("c", "x")
    s = _open_session(a, b)
    query = ReconRanges(salt=SALT, ranges=(RangeQuery(b"", None, 0, bytes(8)),))
    s.receive_data(encode_frame(query))
    s.receive_data(encode_frame(StateEnd(seq=0)))
    with pytest.raises(RemoteProtocolError, match="after a state transfer ended"):
        s.receive_data(encode_frame(query))


def test_recon_ranges_during_a_state_transfer_is_refused(a, b):
    s = _open_session(a, b)
    s.receive_data(encode_frame(StateChunk(payload=codec.encode_map(a.state()))))
    query = ReconRanges(salt=SALT, ranges=(RangeQuery(b"", None, 0, bytes(8)),))
    with pytest.raises(RemoteProtocolError, match="during a state transfer"):
        s.receive_data(encode_frame(query))


def test_a_fresh_peer_gets_a_whole_state_transfer_not_a_reconciliation(open_replica):
    a = open_replica("a", log_retention=0)
    b = open_replica("b")
    a.set_title("c", "x")
    a.trim_log()
    wire = handshaken(a, b)
    assert not any(isinstance(m, ReconRanges) for m in wire.frames[0])
    assert b.state() == a.state()
    assert isinstance(wire.frames[1][1], Ack) and wire.frames[1][1].seq == 0


@settings(max_examples=100, deadline=None)
@given(ids=st.lists(st.binary(min_size=1, max_size=300), min_size=2, max_size=30,
                    unique=True),
       leaf=st.integers(1, 4))
def test_ranges_survive_the_wire(ids, leaf):
    # Bounds are sent relative to the range before (nil lower, shared-length upper), long
    # shared prefixes included: what the peer parses is what was sent.
    ids = sorted(ids)
    digests = b"".join(hashlib.blake2b(i, digest_size=16).digest() for i in ids)
    sender = ReconcileSender(1, ids, digests, salt=SALT, branching=3, leaf_items=leaf,
                             max_ranges_per_frame=50)
    nobody = ReconcileResponder(lambda: (0, [], b""))  # holds nothing: every range differs
    while (frame := sender.next_frame()) is not None:
        assert frames_of(encode_frame(frame)) == [frame]
        sender.on_answer(nobody.answer(frame))
    assert sender.needed_ids() == ids


def test_a_scoped_peer_is_reconciled_within_its_scope_only(open_replica):
    # specs/security.md: a peer's scope limits what it is sent. Reconciliation reads only the
    # digests in scope, so ranges, answers and chunks never reach past it.
    from test_security import serve_alice

    server = open_replica("server", log_retention=0)
    phone = open_replica("phone")
    with server.batch():
        for i in range(40):
            server.set_title(f"u1/c{i:02}", "mine")
            server.set_title(f"u2/c{i:02}", "not mine")
    assert serve_alice(server, phone).run().open
    assert set(phone.state()) == {f"u1/c{i:02}" for i in range(40)}
    server.set_title("u1/c07", "changed")
    server.set_title("u2/c07", "changed, not mine")
    server.set_title("u1/new", "new")
    server.trim_log()
    pipe = serve_alice(server, phone).run()
    assert pipe.open and pipe.errors == [None, None]
    sent = pipe.frames[1]
    ranges = [r for m in sent if isinstance(m, ReconRanges) for r in m.ranges]
    assert ranges and all(r.lower in (b"", b"u") or r.lower.startswith(b"u1/")
                          for r in ranges)
    chunks = [codec.decode_map(m.payload, server.schema) for m in sent
              if isinstance(m, StateChunk)]
    assert {cid for chunk in chunks for cid in chunk.convs} == {"u1/c07", "u1/new"}
    assert phone.get("u1/c07").title == "changed" and phone.get("u2/c07") is None
    assert set(phone.state()) == {f"u1/c{i:02}" for i in range(40)} | {"u1/new"}


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 60), data=st.data())
def test_a_range_fingerprint_is_the_xor_of_its_digests(n, data):
    # The prefix XOR on machine words (DigestIndex) against the bytewise definition.
    from crdtim.protocol._reconcile import DigestIndex

    digests = data.draw(st.binary(min_size=16 * n, max_size=16 * n))
    index = DigestIndex([k.to_bytes(2, "big") for k in range(n)], digests)
    i = data.draw(st.integers(0, n))
    j = data.draw(st.integers(i, n))
    expected = bytearray(16)
    for k in range(i, j):
        for b in range(16):
            expected[b] ^= digests[16 * k + b]
    assert index.xor(i, j) == bytes(expected)


def test_ranges_are_sized_to_the_peers_frames(open_replica):
    # A peer that announces small frames (HELLO's max_frame_bytes) gets RECON_RANGES that
    # fit them: else it would refuse every one, and the link would never catch up.
    small = SessionConfig(max_frame_bytes=4096, max_conversations_per_chunk=8,
                          max_unacked_frames=2)
    a = open_replica("a", log_retention=0)
    b = open_replica("b")
    with a.batch():
        for i in range(3000):
            a.set_title(f"a-long-conversation-id-{i:06}", "t")
    connect(a, b, small).run_until_quiet()
    for i in range(0, 3000, 7):
        a.set_title(f"a-long-conversation-id-{i:06}", "changed")
    a.trim_log()
    wire = connect(a, b, small)
    wire.run_until_quiet()
    sizes = [len(encode_frame(m)) for m in wire.frames[0] if isinstance(m, ReconRanges)]
    assert sizes and max(sizes) <= 4096
    assert a.state() == b.state()


def test_ranges_in_any_order_overlapping_or_not_minimally_encoded_are_each_answered():
    """protocol.md §13.2: a reader must accept every range the grammar allows, in any order,
    overlapping, repeated or not minimally encoded, and answer each on its own."""
    theirs = {b"a": 0, b"b": 1, b"c": 2}
    ids, digests = _digests(theirs)
    sender = ReconcileSender(1, ids, digests, salt=SALT, branching=2, leaf_items=1,
                             max_ranges_per_frame=8)
    honest = sender.next_frame()  # the whole key space, fingerprinted as the peer holds it
    assert honest is not None and len(honest.ranges) == 1
    same = honest.ranges[0].data
    ranges = (RangeQuery(b"b", b"c", 0, bytes(8)), RangeQuery(b"a", b"c", 0, bytes(8)),
              RangeQuery(b"", None, 0, same), RangeQuery(b"", None, 0, same),
              RangeQuery(b"", b"b", 1, bytes(8)))
    assert parse_ranges(encode_ranges(ranges)) == ranges
    responder = ReconcileResponder(lambda: (0, ids, digests))
    answer = responder.answer(ReconRanges(salt=SALT, ranges=ranges))
    assert answer.differs == bytes([0b11000000])  # the made-up ones differ, the true ones not
    assert answer.needed == bytes([0b10000000])  # a hash of none of its items
    # [b"ab", b"ac"), fingerprinted: `shared` 0 where 1 was possible, a length as 0x82 0x00.
    loose = bytes([0x02, 0x80, 0x00, 2]) + b"ab" + bytes([0, 0x82, 0x00]) + b"ac" + bytes(8)
    assert parse_ranges(loose) == (RangeQuery(b"ab", b"ac", 0, bytes(8)),)
