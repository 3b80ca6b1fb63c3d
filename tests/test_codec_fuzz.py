"""The decoder on hostile input: a valid map or DecodeError, never any other exception.

Inputs are random bytes, valid encodings with bytes flipped, inserted or deleted, and valid
encodings mutated as msgpack objects (wrong types, out-of-range integers, unknown tags,
replica indexes past the table, dots outside their context, huge declared lengths). Whatever
decodes must be a valid state: flags' dots inside their contexts, and re-encoding it decodes
to the same state. The named tests at the end pin down the error messages a peer or an
operator will read.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

import strategies as s
from crdtim import codec
from crdtim.codec import DEFAULT_LIMITS, FORMAT_VERSION, Limits, decode_fields, decode_map
from crdtim.crdt import (
    DEFAULT_SCHEMA, MAX_READ_BY_MEMBERS, ConversationMap, Flag, History, Lww, LwwInt, MaxMap,
    MaxReg, Stamp,
)
from crdtim.crdt.maxmap import valid_member
from crdtim.crdt.conversation import carried_tag
from crdtim.errors import DecodeError

SCHEMAS = [DEFAULT_SCHEMA, s.EXTENDED_SCHEMA]


def check_valid_fields(fields: dict[str, Any], schema) -> None:
    for name, state in fields.items():
        tag = carried_tag(name)  # a field of another schema, carried (specs/crdt.md §7)
        lattice = type(state) if tag is not None else schema.by_name[name].lattice
        assert tag is None or (tag not in schema.by_tag and lattice in (Flag, Lww, MaxReg,
                                                                        History))
        assert type(state) is lattice
        assert not state.is_bottom()
        if lattice is Flag:
            assert all(state.context.contains(d) for d in state.dots)
        elif lattice is Lww:
            assert type(state.value) is str and state.stamp.replica
        elif lattice is LwwInt:
            assert type(state.value) is int and state.value >= 0 and state.stamp.replica
        elif lattice is History:  # canonical, every message's state too
            assert History.make(state.messages, state.choices) == state
            assert all(type(m.text) is str for m in state.messages.values())
        elif lattice is MaxMap:
            assert len(state.entries) <= MAX_READ_BY_MEMBERS
            assert all(valid_member(m) and type(n) is int and n > 0
                       for m, n in state.entries.items())
        else:
            assert type(state.value) is int and state.value > 0


def decodes_or_refuses(data: bytes, schema=DEFAULT_SCHEMA, limits: Limits = DEFAULT_LIMITS) -> None:
    """The property: decode_map and decode_fields either refuse with DecodeError or return a
    valid value that survives a second round trip unchanged."""
    try:
        m = decode_map(data, schema, limits)
    except DecodeError as e:
        assert str(e)  # every refusal says what was wrong
    else:
        assert isinstance(m, ConversationMap)
        for cid, fields in m.convs.items():
            assert type(cid) is str and 1 <= len(cid) <= limits.max_cid
            check_valid_fields(fields, schema)
        assert decode_map(codec.encode_map(m), schema) == m
    try:
        fields = decode_fields(data, schema, limits)
    except DecodeError as e:
        assert str(e)
    else:
        check_valid_fields(fields, schema)
        assert decode_fields(codec.encode_fields(fields, schema), schema) == fields


# -- random and byte-mutated input -----------------------------------------------------------


@s.FAST
@given(data=st.binary(max_size=300), schema=st.sampled_from(SCHEMAS))
def test_random_bytes_decode_or_raise_decode_error(data: bytes, schema) -> None:
    decodes_or_refuses(data, schema)


@s.FAST
@given(data=s.byte_mutants(), schema=st.sampled_from(SCHEMAS))
def test_byte_mutated_encodings_decode_or_raise_decode_error(data: bytes, schema) -> None:
    decodes_or_refuses(data, schema)


# -- structurally mutated msgpack objects ----------------------------------------------------


@s.FAST
@given(data=s.object_mutants(), schema=st.sampled_from(SCHEMAS))
def test_structurally_mutated_objects_decode_or_raise_decode_error(data: bytes, schema) -> None:
    decodes_or_refuses(data, schema)


@st.composite
def hostile_flags(draw: Callable) -> bytes:
    """A one-flag map whose dots and version vector are drawn freely: replica indexes past the
    table, zero or huge counters, dots outside the context, odd-length pair lists."""
    rids = draw(st.lists(st.sampled_from(s.REPLICA_IDS), min_size=0, max_size=3))
    pair_lists = st.lists(st.integers(-1, 4) | st.sampled_from(s.INT_EDGES), max_size=7)
    flag = [draw(pair_lists), draw(pair_lists), draw(pair_lists)]
    return codec.pack([FORMAT_VERSION, rids, {"c": {1: flag}}])


@s.FAST
@given(data=hostile_flags())
def test_hostile_flags_decode_or_raise_decode_error(data: bytes) -> None:
    decodes_or_refuses(data)


# Declared lengths far beyond the data: array32, map32, str32, bin32 headers.
HUGE_HEADERS = [b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff",
                b"\xc6\xff\xff\xff\xff", b"\xdc\xff\xff", b"\xde\xff\xff"]


@s.FAST
@given(
    header=st.sampled_from(HUGE_HEADERS),
    prefix=st.sampled_from([b"", b"\x93\x01\x91\xa1A", b"\x93\x01\x90\x81\xa1c"]),
    tail=st.binary(max_size=20),
)
def test_huge_declared_lengths_raise_decode_error(header: bytes, prefix: bytes, tail: bytes):
    # e.g. [1, ["A"], <array of 2**32-1 items>] with 20 bytes behind it
    with pytest.raises(DecodeError):
        decode_map(prefix + header + tail)


# -- named tests: refusals say what was wrong ------------------------------------------------


def one_field(tag: Any, value: Any, rids: list = ["A"], cid: Any = "c") -> bytes:
    return codec.pack([FORMAT_VERSION, rids, {cid: {tag: value}}])


def test_unknown_field_tag_names_the_tag():
    # A tag the schema lacks is carried (specs/crdt.md §7), if it is a tag and its value has
    # the shape of a register, a flag or a counter.
    with pytest.raises(DecodeError, match=r"conversation 'c': field tag 99 is not a register"):
        decode_map(one_field(99, "x"))
    with pytest.raises(DecodeError, match=r"field tag 'title' is not in 0\.\.127"):
        decode_map(one_field("title", [1, 0, 0, "x"]))
    with pytest.raises(DecodeError, match=r"field tag 128 is not in 0\.\.127"):
        decode_map(one_field(128, 1))


def test_unsupported_version_names_both_versions():
    data = codec.pack([2, [], {}])
    with pytest.raises(DecodeError, match=r"unsupported format version 2 \(this is 1\)"):
        decode_map(data)
    with pytest.raises(DecodeError, match="unsupported format version True"):
        decode_map(codec.pack([True, [], {}]))


def test_replica_index_out_of_range_is_named():
    with pytest.raises(DecodeError, match=r"title replica index: 1 is out of range 0\.\.0"):
        decode_map(one_field(0, [5, 0, 1, "x"]))


def test_dot_outside_the_context_is_refused():
    # dots [(A, 3)], version vector {A: 2}: the flag would hold an enable it has not seen
    with pytest.raises(DecodeError, match=r"dot \('A', 3\) is not in the flag's causal context"):
        decode_map(one_field(1, [[0, 3], [0, 2], []]))


def test_version_vector_with_a_replica_twice_is_refused():
    with pytest.raises(DecodeError, match="a replica appears twice"):
        decode_map(one_field(1, [[], [0, 1, 0, 2], []]))


def test_wrong_types_name_what_was_expected():
    with pytest.raises(DecodeError, match="last_seq: expected an integer, got float"):
        decode_map(one_field(3, 1.5))
    with pytest.raises(DecodeError, match="last_seq: -1 is out of range"):
        decode_map(one_field(3, -1))
    with pytest.raises(DecodeError, match="title: expected 4 items, got 3"):
        decode_map(one_field(0, [1, 2, 0]))
    with pytest.raises(DecodeError, match="title value: expected a string, got bytes"):
        decode_map(one_field(0, [1, 2, 0, b"x"]))
    with pytest.raises(DecodeError, match="conversation id: expected a string, got int"):
        decode_map(one_field(0, [1, 2, 0, "x"], cid=7))
    with pytest.raises(DecodeError, match="expected a map of conversations, got list"):
        decode_map(codec.pack([1, [], []]))
    with pytest.raises(DecodeError, match="expected bytes, got str"):
        decode_map("not bytes")  # type: ignore[arg-type]


def test_malformed_msgpack_is_a_decode_error():
    good = codec.encode_map(ConversationMap().mark_read("c", 3))
    with pytest.raises(DecodeError, match="not valid msgpack"):
        decode_map(good[:-1])
    with pytest.raises(DecodeError, match="trailing bytes"):
        decode_map(good + b"\x00")
    with pytest.raises(DecodeError, match="extension type 5 is not allowed"):
        decode_map(b"\xd4\x05\x00")


def test_limits_are_enforced_and_named():
    m = ConversationMap().set_title("c", "hello", Stamp(1, 0, "A")).join(
        ConversationMap().mark_read("d", 1)
    )
    data = codec.encode_map(m)
    with pytest.raises(DecodeError, match="over the limit of 10"):
        decode_map(data, limits=Limits(max_bytes=10))
    with pytest.raises(DecodeError, match="2 conversations is over the limit of 1"):
        decode_map(data, limits=Limits(max_conversations=1))
    with pytest.raises(DecodeError, match=r"title value: length 5 is out of range 0\.\.4"):
        decode_map(data, limits=Limits(max_text=4))
    with pytest.raises(DecodeError, match=r"conversation id: length 1 is out of range 1\.\.0"):
        decode_map(data, limits=Limits(max_cid=0))
    with pytest.raises(DecodeError, match="replica ids is over the limit of 0"):
        decode_map(data, limits=Limits(max_replicas=0))
    two_dots = one_field(1, [[0, 1, 1, 2], [], [0, 1, 1, 2]], rids=["A", "B"])
    with pytest.raises(DecodeError, match="at most 1 "):
        decode_map(two_dots, limits=Limits(max_dots=1))
    with pytest.raises(DecodeError, match=r"replica id: length 0 is out of range 1\.\.64"):
        decode_map(one_field(3, 1, rids=[""]))


def test_decode_fields_names_the_conversation():
    data = codec.pack([FORMAT_VERSION, [], {42: "x"}])
    with pytest.raises(DecodeError, match="conversation 'inbox': field tag 42 is not a"):
        decode_fields(data, cid="inbox")


def test_explicit_bottom_fields_decode_to_absent_fields():
    # A peer may send a field at bottom; it must not become a stored, non-canonical field.
    data = codec.pack([FORMAT_VERSION, [], {"c": {3: 0, 1: [[], [], []]}}])
    assert decode_map(data) == ConversationMap()
    assert decode_fields(codec.pack([FORMAT_VERSION, [], {3: 0}])) == {}


def test_last_message_with_sequence_above_2_pow_32_round_trips():
    # Regression: the Lww counter was capped at 2**32-1 on decode, but last_message's stamp
    # carries the message sequence there, so message_arrived(seq=2**32) made a delta that
    # every peer refused.
    delta = ConversationMap().message_arrived("c", 2**32, "hi", 1_700_000_000_000, "A")
    assert decode_map(codec.encode_map(delta)) == delta
    fields = delta.fields("c")
    assert fields["last_message"].stamp.counter == 2**32
    assert decode_fields(codec.encode_fields(fields)) == fields


def test_largest_values_round_trip():
    top = 2**63 - 1
    m = ConversationMap({"c" * DEFAULT_LIMITS.max_cid: {
        "title": Lww(Stamp(top, top, "r" * 64), "x" * DEFAULT_LIMITS.max_text),
        "last_seq": MaxReg(top),
    }})
    assert decode_map(codec.encode_map(m)) == m
    with pytest.raises(DecodeError, match="out of range"):
        decode_map(one_field(3, top + 1))


# -- a state transfer's shortcuts: stored bytes in, received bytes stored ----------------------


@st.composite
def stored_values(draw: Callable, schema=DEFAULT_SCHEMA) -> list[tuple[str, bytes]]:
    """A replica's stored (cid, value) pairs, in id order: each value made by encode_fields
    (a table of its own ids) or by store_received from a message (the message's table, in
    its order, ids the conversation does not use included), so tables agree, extend or
    disagree with each other in every way."""
    stored: dict[str, bytes] = {}
    for _ in range(draw(st.integers(0, 4), "messages")):
        m = draw(s.conversation_maps(schema), "map")
        shared = draw(st.booleans(), "store as received")
        data = codec.encode_map(m)
        decoded, wire = codec.decode_map_as_received(data, schema)
        for cid, fields in decoded.convs.items():
            raw = codec.store_received(wire, cid) if shared else None
            stored[cid] = raw if raw is not None else codec.encode_fields(fields, schema)
    return sorted(stored.items())


@s.FAST
@given(data=st.data(), schema=st.sampled_from(SCHEMAS))
def test_a_chunk_of_stored_values_is_the_map_of_their_states(data, schema) -> None:
    # encode_stored_map copies a stored value's field map when the tables line up and
    # re-encodes it otherwise: either way the receiver decodes exactly the stored states.
    stored = data.draw(stored_values(schema))
    expected = ConversationMap({cid: decode_fields(raw, schema) for cid, raw in stored}, schema)
    assert decode_map(codec.encode_stored_map(stored, schema), schema) == expected


@s.FAST
@given(m=st.one_of(s.conversation_maps(), s.conversation_maps(s.EXTENDED_SCHEMA)))
def test_a_received_conversation_stored_as_received_reads_back_the_same(m) -> None:
    decoded, wire = codec.decode_map_as_received(codec.encode_map(m), m.schema)
    assert decoded == m and wire.payload and decode_map(wire.payload, m.schema) == m
    for cid, fields in decoded.convs.items():
        raw = codec.store_received(wire, cid)
        # None (encode the decoded fields) for a long table, or for messages, which the
        # store keeps in records of their own.
        if len(wire.rids) > codec.MAX_SHARED_TABLE or "messages" in fields:
            assert raw is None
        else:
            assert decode_fields(raw, m.schema) == fields


def test_a_damaged_stored_value_in_a_chunk_is_a_decode_error_naming_it() -> None:
    # (A value shaped right but wrong inside is copied as it is: the receiver refuses it.)
    good = codec.encode_fields({"last_seq": MaxReg(3)})
    with pytest.raises(DecodeError, match="stored conversation 'b'"):
        codec.encode_stored_map([("a", good), ("b", b"\x92\x01\x02")])
    with pytest.raises(DecodeError, match="stored conversation 'a': not valid msgpack"):
        codec.encode_stored_map([("a", b"\xc1")])


def test_a_chunk_of_stored_values_with_every_kind_of_table() -> None:
    # Tables that start the chunk's, extend it, repeat an id, name it in another order, or
    # are empty: copied where the indexes keep their meaning, re-encoded where they do not.
    def value(rids: list[str], body: dict) -> bytes:
        return codec.pack([FORMAT_VERSION, rids, body])

    flag = [[0, 1], [0, 1], []]  # enabled once by the replica at index 0
    stored = [
        ("a", value(["A"], {1: flag})),
        ("b", value(["A", "B"], {0: [5, 0, 1, "by B"]})),  # extends the table
        ("c", value(["B", "A"], {1: flag, 0: [6, 0, 0, "by B"]})),  # another order
        ("d", value([], {3: 7})),  # no table
        ("e", value(["A", "A"], {5: [1, 2, 1, "x"]})),  # an id twice
        ("f", value(["A", "B", "C"], {2: [[2, 4], [2, 4], []]})),  # extends it again
        ("g", value(["C"], {0: [1, 0, 0, "by C"]})),  # not a prefix
        ("h", value(["A", "B", "C", "A"], {0: [1, 0, 3, "by A"]})),  # extends with an old id
        ("i", value(["D"], {0: [1, 0, 0, "by D"]})),  # a new id, after that
    ]
    expected = ConversationMap({cid: decode_fields(raw) for cid, raw in stored})
    got = decode_map(codec.encode_stored_map(stored))
    assert got == expected
    assert got.view("c").title == "by B" and got.view("c").pinned
    assert got.view("g").title == "by C" and got.convs["f"]["muted"].dots == {("C", 4)}
    assert got.view("i").title == "by D"
