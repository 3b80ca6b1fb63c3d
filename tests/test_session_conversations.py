"""Conversation ids in the session table (specs/protocol.md §15, protocol version 5): a
COMPACT_DELTA body names a conversation by its id the first time on a connection, by its index
in the sender's table after; a full table stops growing (ids go as strings); a body whose keys
do not fit the table is refused and nothing of it applied; a version 4 peer is refused at HELLO.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crdtim import codec
from crdtim.crdt import ConversationMap, Stamp
from crdtim.errors import DecodeError
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


# -- the key rewrite (codec.rekey_body) against a model -------------------------------------


def _int_key(i: int, width: str) -> bytes:
    """Index i in one of msgpack's integer encodings (a peer need not use the shortest)."""
    if width == "short":
        return codec.pack(i)
    code, size = {"u8": (0xcc, 1), "u16": (0xcd, 2), "u32": (0xce, 4), "u64": (0xcf, 8),
                  "i16": (0xd1, 2), "i32": (0xd2, 4), "i64": (0xd3, 8)}[width]
    return bytes((code,)) + i.to_bytes(size, "big", signed=code >= 0xd0)


_WIDTHS = st.sampled_from(["short", "u16", "u32", "u64", "i16", "i32", "i64"])


@given(size=st.integers(0, 300), data=st.data())
def test_rekey_body_rewrites_every_key_encoding_as_a_model_would(size, data):
    # The model: the body unpacked, each index replaced by the id at it; the ids sent as
    # strings appended. Covers the one-conversation fast path (a fixint index), indexes
    # past 127, non-shortest integer encodings, and keys read entry by entry.
    table = [f"id-{i}" for i in range(size)]  # past 127 too: indexes of 2 and 3 bytes
    keys = codec.ConversationKeys(MAX_SESSION_CONVERSATIONS)
    codec.rekey_body(_body(*table), keys, 4096)  # the ids go once, as strings
    assert keys.ids == table
    n = data.draw(st.integers(0, min(5, len(table))))
    picks = data.draw(st.lists(st.integers(0, len(table) - 1), unique=True, min_size=n,
                               max_size=n)) if table else []
    new = data.draw(st.lists(st.text(min_size=1, max_size=12).filter(
        lambda c: c not in table), unique=True, max_size=2))
    entries = [(_int_key(i, data.draw(_WIDTHS)), table[i]) for i in picks]
    entries += [(codec.pack(c), c) for c in new]
    order = data.draw(st.permutations(range(len(entries))))
    field = codec.pack({0: [NOW_MS, 0, 0, "t"]})
    body = codec.pack_map_header(len(entries)) + b"".join(entries[k][0] + field
                                                            for k in order)
    out = codec.rekey_body(body, keys, 4096, prefix=b"P")
    assert out[:1] == b"P"
    assert list(codec.unpack(out[1:]).items()) == [(entries[k][1], {0: [NOW_MS, 0, 0, "t"]})
                                                   for k in order]
    assert keys.ids == table + [entries[k][1] for k in order if entries[k][1] in new]


def test_a_body_ending_after_its_last_key_is_refused_as_ending_inside_the_map(a, b):
    s = _open_on_b(a, b)
    s.receive_data(encode_frame(CompactDelta(start=0, end=1, new_ids=(a.id,),
                                             body=_body("c"))))
    with pytest.raises(RemoteProtocolError, match="^COMPACT_DELTA: the bytes end inside"):
        s.receive_data(encode_frame(CompactDelta(start=1, end=2, new_ids=(), body=b"\x81\x00")))
    assert b.received_from(a.id) == 1


@pytest.mark.parametrize("keys", [(0,), ("d",), (0, "d")])
def test_a_last_value_cut_short_is_refused_by_the_decoder_and_nothing_applied(a, b, keys):
    # The rewrite does not read the last value (§15): the decoder refuses it, as it does any
    # malformed value, and nothing of the frame is applied.
    s = _open_on_b(a, b)
    s.receive_data(encode_frame(CompactDelta(start=0, end=1, new_ids=(a.id,),
                                             body=_body("c"))))
    with pytest.raises(RemoteProtocolError, match="^DELTA: not valid msgpack"):
        s.receive_data(encode_frame(CompactDelta(start=1, end=2, new_ids=(),
                                                 body=_body(*keys)[:-1])))
    assert b.get("d") is None and b.received_from(a.id) == 1


@pytest.mark.parametrize("width", ["short", "u8", "u16", "u32", "u64", "i16", "i32", "i64"])
@pytest.mark.parametrize("index", [0, 127, 128, 205, 255, 299])
def test_one_conversation_bodies_take_every_index_encoding(width, index):
    # A one-entry body keyed by a fixint, uint 8 or uint 16 index is rewritten without
    # msgpack (the fast path), which must read each from its bytes, and must not take a
    # key's first byte for an index (it may be below the table's length: 0xcd is 205); any
    # other key goes entry by entry.
    if width == "u8" and index > 255:
        pytest.skip("uint 8 holds 0..255")
    table = [f"id-{i}" for i in range(300)]
    keys = codec.ConversationKeys(MAX_SESSION_CONVERSATIONS)
    codec.rekey_body(_body(*table), keys, 4096)
    body = b"\x81" + _int_key(index, width) + codec.pack({0: [NOW_MS, 0, 0, "t"]})
    assert codec.unpack(codec.rekey_body(body, keys, 4096)) == {
        f"id-{index}": {0: [NOW_MS, 0, 0, "t"]}}


@pytest.mark.parametrize("full, keys, twice", [
    (False, (0, 0), "a"), (False, ("b", 1), "b"), (False, (0, "b", 1), "b"),
    (True, (1, 1), "b"), (True, ("x", "x"), "x"), (True, (0, "x", 1, "x"), "x")])
def test_one_id_twice_in_a_body_is_refused_however_it_is_keyed(full, keys, twice):
    # A table of capacity 2 holding "a" (and "b" when full): an id appended by a key is
    # the index after it; a full table's ids come as strings, and may come twice.
    table = codec.ConversationKeys(2)
    codec.rekey_body(_body(*("a", "b")[:1 + full]), table, 4096)
    with pytest.raises(DecodeError, match=f"^conversation '{twice}' twice in one body$"):
        codec.rekey_body(_body(*keys), table, 4096)
