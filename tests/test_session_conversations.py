"""Conversation ids in the session table (specs/protocol.md §15, protocol version 5): a
COMPACT_DELTA body names a conversation by its id the first time on a connection, by its index
in the sender's table after; a full table stops growing (ids go as strings); a body whose keys
do not fit the table is refused and nothing of it applied; a version 4 peer is refused at HELLO.
"""

from __future__ import annotations

import re

import pytest

from crdtim import codec
from crdtim.crdt import ConversationMap, Stamp
from crdtim.protocol import (
    MAX_SESSION_CONVERSATIONS,
    PROTOCOL_VERSION,
    CompactDelta,
    Hello,
    RemoteProtocolError,
    State,
    SyncSession,
    encode_frame,
)
from crdtim.protocol import _table
from frames import frames_of
from test_protocol_sim import SIM_CONFIG, handshake_only

NOW_MS = 1_700_000_000_000


def _sent(wire) -> list[CompactDelta]:
    return [m for m in frames_of(bytes(wire.sent_bytes[0]), as_sent=True)
            if isinstance(m, CompactDelta)]


def test_each_conversation_id_goes_once_per_connection_then_by_index(a, b):
    a.set_title("conv-one", "first")
    wire = handshake_only(a, b)
    wire.run_until_quiet()
    a.set_title("conv-two", "second")
    wire.run_until_quiet()
    a.pin("conv-one")
    a.set_title("conv-two", "again")
    wire.run_until_quiet()
    sent = _sent(wire)
    assert b"conv-one" in sent[0].body and b"conv-two" in sent[1].body
    assert all(b"conv-" not in m.body for m in sent[2:]) and len(sent) >= 3
    assert codec.unpack(sent[0].body).keys() == {"conv-one"}
    assert set(codec.unpack(sent[-1].body)) <= {0, 1}
    assert b.state() == a.state()
    assert b.received_from(a.id) == a.head == a.peer_ack(b.id)


def test_a_single_title_change_payload_is_at_most_40_bytes(a, b):
    # Issue #16's goal for benchmarks sync.b: a set_title (17-character text) on a settled
    # connection costs at most 40 B of payload (it was 46 B in version 4).
    cid = "conv-0000001"
    a.set_title(cid, "first")
    wire = handshake_only(a, b)
    wire.run_until_quiet()
    before = len(wire.sent_bytes[0])
    a.set_title(cid, "Weekend plans 123")
    wire.run_until_quiet()
    (frame,) = [m for m in frames_of(bytes(wire.sent_bytes[0][before:]), as_sent=True)
                if isinstance(m, CompactDelta)]
    assert frame.new_ids == () and len(frame.body) <= 40
    assert b.get(cid).title == "Weekend plans 123"


def test_a_full_table_sends_ids_as_strings(a, b, monkeypatch):
    monkeypatch.setattr(_table, "MAX_SESSION_CONVERSATIONS", 2)
    for cid in ("c1", "c2", "c3"):
        a.set_title(cid, "first")
    wire = handshake_only(a, b)
    wire.run_until_quiet()
    for cid in ("c1", "c2", "c3"):
        a.set_title(cid, "second")
    wire.run_until_quiet()
    keys = [k for m in _sent(wire)[1:] for k in codec.unpack(m.body)]
    assert sorted(keys, key=str) == [0, 1, "c3"]
    assert b.state() == a.state()


def test_a_frame_not_sent_takes_its_conversation_ids_back(a):
    table = _table.SentIds()
    m = ConversationMap.bottom().set_title("c", "t", Stamp(NOW_MS, 0, a.id))
    new, body = table.encode(m)
    table.take_back(new)
    again = table.encode(m)
    assert again is not None and again[1] == body  # "c" still goes as a string


def _open_on_b(a, b) -> SyncSession:
    return handshake_only(a, b).sessions[1]


def _body(*keys) -> bytes:
    field = codec.pack({0: [NOW_MS, 0, 0, "t"]})
    return b"".join([codec.pack_map_header(len(keys))]
                    + [codec.pack(k) + field for k in keys])


@pytest.mark.parametrize("keys, reason", [
    ((0,), "COMPACT_DELTA: conversation index 0 is not in the session table (0 conversations)"),
    (("c", 1), "COMPACT_DELTA: conversation index 1 is not in the session table"),
    (("c", -1), "COMPACT_DELTA: conversation index -1 is not in the session table"),
    ((True,), "COMPACT_DELTA: a conversation key must be an id or an index, got bool"),
    ((1.5,), "COMPACT_DELTA: a conversation key must be an id or an index, got float"),
    ((b"c",), "COMPACT_DELTA: a conversation key must be an id or an index, got bytes"),
    (("c", 0), "COMPACT_DELTA: conversation 'c' twice in one body"),
    (("c", "c"), "COMPACT_DELTA: conversation id 'c' is already in the session table"),
])
def test_bad_conversation_keys_refused_and_nothing_applied(a, b, keys, reason):
    s = _open_on_b(a, b)
    with pytest.raises(RemoteProtocolError, match="^" + re.escape(reason)):
        s.receive_data(encode_frame(CompactDelta(start=0, end=1, new_ids=(a.id,),
                                                 body=_body(*keys))))
    assert b.get("c") is None and b.received_from(a.id) == 0
    assert s.state is State.CLOSED


def test_a_key_that_is_a_container_is_refused_before_it_is_built(a, b):
    s = _open_on_b(a, b)
    body = b"\x81\xdd\xff\xff\xff\xff"  # {array of 2^32-1 items: ...}, 6 bytes
    with pytest.raises(RemoteProtocolError, match="^COMPACT_DELTA: a map key is an array"):
        s.receive_data(encode_frame(CompactDelta(start=0, end=1, new_ids=(), body=body)))


def test_a_body_over_a_frames_conversations_is_refused_from_its_header(a, b):
    s = _open_on_b(a, b)
    body = b"\xdf\xff\xff\xff\xff"  # a map of 2^32-1 entries, 5 bytes
    with pytest.raises(RemoteProtocolError, match="over the limit of 4096"):
        s.receive_data(encode_frame(CompactDelta(start=0, end=1, new_ids=(), body=body)))


def test_a_peer_cannot_grow_the_table_past_its_limit(a, b):
    s = _open_on_b(a, b)
    n = MAX_SESSION_CONVERSATIONS
    s.receive_data(encode_frame(CompactDelta(start=0, end=1, new_ids=(a.id,),
                                             body=_body(*[f"c{i}" for i in range(n + 5)]))))
    assert b.get(f"c{n + 4}").title == "t"
    assert len(s._peer_ids._convs) == n
    # Past the limit an id is not added, so it may come again as a string; an index past
    # the limit is refused.
    s.receive_data(encode_frame(CompactDelta(start=1, end=2, new_ids=(),
                                             body=_body(f"c{n + 4}", n - 1))))
    with pytest.raises(RemoteProtocolError, match=f"conversation index {n} is not"):
        s.receive_data(encode_frame(CompactDelta(start=2, end=3, new_ids=(), body=_body(n))))


def test_version_4_peer_is_refused_at_hello(a):
    assert PROTOCOL_VERSION == 5
    s = SyncSession(a, SIM_CONFIG)
    s.initiate()
    s.data_to_send()
    with pytest.raises(RemoteProtocolError) as info:
        s.receive_data(encode_frame(Hello(version=4, replica_id="old")))
    assert info.value.reason == "protocol version 4 is not supported (this is 5)"
    assert s.state is State.CLOSED
