"""The session table of replica ids (specs/protocol.md §11, protocol version 4): each id a
COMPACT_DELTA refers to goes once per connection, then by index; a new connection starts a
new table; a peer cannot grow ours past MAX_SESSION_IDS; a version 3 peer is refused at HELLO.
"""

from __future__ import annotations

import pytest

from crdtim import codec
from crdtim.crdt import ConversationMap, Stamp
from crdtim.protocol import (
    MAX_SESSION_IDS,
    PROTOCOL_VERSION,
    CompactDelta,
    Delta,
    Error,
    Hello,
    RemoteProtocolError,
    State,
    SyncSession,
    encode_frame,
)
from crdtim.protocol import _table
from frames import frames_of
from test_protocol_sim import SIM_CONFIG, connect, handshake_only

NOW_MS = 1_700_000_000_000


def test_each_replica_id_goes_once_per_connection_then_by_index(a, b):
    a.set_title("c1", "first")
    wire = handshake_only(a, b)
    wire.run_until_quiet()
    a.set_title("c2", "second")
    a.pin("c1")
    wire.run_until_quiet()
    raw = frames_of(bytes(wire.sent_bytes[0]), as_sent=True)
    compact = [m for m in raw if isinstance(m, CompactDelta)]
    assert len(compact) == 2 and not any(isinstance(m, Delta) for m in raw)
    assert compact[0].new_ids == (a.id,) and compact[1].new_ids == ()
    assert a.id.encode() not in compact[1].body
    assert b.state() == a.state()
    assert b.received_from(a.id) == a.head == a.peer_ack(b.id)


def test_a_single_title_change_is_a_small_frame(a, b):
    # The figure of benchmarks sync.b: a set_title on a connection that already carried the
    # writer's id costs its body, with no replica id in it (nor, since version 5, the
    # conversation id: §15).
    a.set_title("conv-0000001", "first")
    wire = handshake_only(a, b)
    wire.run_until_quiet()
    before = len(wire.sent_bytes[0])
    a.set_title("conv-0000001", "Weekend plans 12")
    wire.run_until_quiet()
    (frame,) = [m for m in frames_of(bytes(wire.sent_bytes[0][before:]), as_sent=True)
                if isinstance(m, CompactDelta)]
    plain = codec.encode_map(ConversationMap.bottom().set_title(
        "conv-0000001", "Weekend plans 12", Stamp(NOW_MS, 0, a.id)))
    assert isinstance(frame, CompactDelta) and frame.new_ids == ()
    assert len(frame.body) <= len(plain) - len(a.id) - 3 - len("conv-0000001")


def test_a_new_connection_starts_a_new_table(a, b):
    a.set_title("c1", "first")
    first = handshake_only(a, b)
    first.run_until_quiet()
    a.set_title("c2", "after a reconnect")
    second = handshake_only(a, b)  # a new connection: both sides' tables start empty
    second.run_until_quiet()
    (m,) = [m for m in frames_of(bytes(second.sent_bytes[0]), as_sent=True)
            if isinstance(m, CompactDelta)]
    assert m.new_ids == (a.id,)
    assert b.state() == a.state()


def test_version_3_peer_is_refused_at_hello(a):
    assert PROTOCOL_VERSION == 5
    s = SyncSession(a, SIM_CONFIG)
    s.initiate()
    s.data_to_send()
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_data(encode_frame(Hello(version=3, replica_id="old")))
    assert info.value.reason == "protocol version 3 is not supported (this is 5)"
    (err,) = frames_of(s.data_to_send())
    assert isinstance(err, Error) and err.reason == info.value.reason
    assert s.state is State.CLOSED


def _open_on_b(a, b):
    """A session of b's, open to a (the frames we craft play a's part)."""
    wire = handshake_only(a, b)
    return wire.sessions[1]


def _title_body(cid: str, index: int) -> bytes:
    return codec.pack({cid: {0: [NOW_MS, 0, index, "t"]}})


def test_compact_delta_refused_before_hello(a):
    s = SyncSession(a, SIM_CONFIG)
    s.initiate()
    s.data_to_send()
    with pytest.raises(RemoteProtocolError, match="unexpected COMPACT_DELTA in state await_hello"):
        s.receive_data(encode_frame(CompactDelta(start=0, end=1, new_ids=("x",),
                                                 body=_title_body("c", 0))))


def test_peer_cannot_grow_the_table_past_its_limit(a, b):
    """protocol.md §11: a receiver holds at most MAX_SESSION_IDS ids from a peer."""
    s = _open_on_b(a, b)
    state = b.state()
    ids = tuple(f"r{i}" for i in range(MAX_SESSION_IDS))
    s.receive_data(encode_frame(CompactDelta(start=0, end=1, new_ids=ids,
                                             body=_title_body("c", MAX_SESSION_IDS - 1))))
    assert b.get("c").title == "t" and b.received_from(a.id) == 1
    with pytest.raises(RemoteProtocolError, match=f"over {MAX_SESSION_IDS} replica ids"):
        s.receive_data(encode_frame(CompactDelta(start=1, end=2, new_ids=("one-more",),
                                                 body=_title_body("d", 0))))
    assert b.get("d") is None and b.received_from(a.id) == 1
    assert s.state is State.CLOSED


def test_over_the_limit_in_one_frame_is_refused_by_the_decoder(a, b):
    s = _open_on_b(a, b)
    ids = tuple(f"r{i}" for i in range(MAX_SESSION_IDS + 1))
    with pytest.raises(RemoteProtocolError, match="COMPACT_DELTA new ids: expected an array"):
        s.receive_data(encode_frame(CompactDelta(start=0, end=1, new_ids=ids,
                                                 body=_title_body("c", 0))))
    assert b.get("c") is None


@pytest.mark.parametrize("new_ids, body, reason", [
    (("x", "x"), _title_body("c", 0), "COMPACT_DELTA: replica id 'x' is already in the session"),
    (("x",), _title_body("c", 1), "DELTA: "),  # an index past the table
    ((), _title_body("c", 0), "DELTA: "),  # no table at all yet
    (("x",), codec.pack([1, [], {}]), "COMPACT_DELTA: expected a map"),  # a whole map's array
    (("x",), _title_body("c", 0) + b"\x00", "DELTA: "),  # trailing bytes
    (("",), _title_body("c", 0), "COMPACT_DELTA new ids: a replica id"),
    (("a\x00b",), _title_body("c", 0), "COMPACT_DELTA new ids: a replica id"),
])
def test_bad_compact_delta_refused_and_nothing_applied(a, b, new_ids, body, reason):
    s = _open_on_b(a, b)
    with pytest.raises(RemoteProtocolError, match="^" + reason.replace("(", r"\(")):
        s.receive_data(encode_frame(CompactDelta(start=0, end=1, new_ids=new_ids, body=body)))
    assert b.get("c") is None and b.received_from(a.id) == 0
    assert s.state is State.CLOSED


def test_a_full_table_falls_back_to_plain_deltas(a, b, open_replica, monkeypatch):
    """protocol.md §11: a sender must keep to MAX_SESSION_IDS, what every receiver accepts."""
    # Relayed entries name other replicas: with room for two ids, the third goes plain.
    monkeypatch.setattr(_table, "MAX_SESSION_IDS", 2)
    c, d = open_replica("c"), open_replica("d")
    for other, cid in ((c, "from-c"), (d, "from-d")):
        other.set_title(cid, "relayed")
        wire = handshake_only(other, a)
        wire.run_until_quiet()
    a.set_title("own", "mine")
    wire = handshake_only(a, b)
    wire.run_until_quiet()
    sent = frames_of(bytes(wire.sent_bytes[0]), as_sent=True)
    assert any(isinstance(m, Delta) for m in sent)
    assert all(len(m.new_ids) <= 2 for m in sent if isinstance(m, CompactDelta))
    assert b.state() == a.state()
