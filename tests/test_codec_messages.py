"""The message history's encoding (specs/crdt.md §7, "Messages"): round trips of histories in
conversation maps and of the storage records, every refusal by name, and hostile input that
decodes to a canonical state or raises DecodeError and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import message_strategies as ms
import pytest
import strategies as s
from hypothesis import given
from hypothesis import strategies as st

from crdtim import codec
from crdtim.codec import (
    DEFAULT_LIMITS,
    FORMAT_VERSION,
    MAX_COUNTER,
    MAX_INT,
    MAX_MESSAGE_ID_BYTES,
    STORAGE_LIMITS,
    Limits,
    decode_choice,
    decode_map,
    decode_message,
    encode_choice,
    encode_map,
    encode_message,
)
from crdtim.crdt import (
    DEFAULT_MESSAGE_LIMITS,
    DEFAULT_SCHEMA,
    Append,
    ConversationMap,
    Header,
    History,
    Hlc,
    Lww,
    MessageState,
    Schema,
    Stamp,
)
from crdtim.errors import DecodeError

A, B = Stamp(5, 0, "A"), Stamp(6, 1, "B")


def history_map(h: History, cid: str = "c1") -> ConversationMap:
    return ConversationMap({cid: {"messages": h}})


def posted(mid: str = "m1", text: str = "hi", stamp: Stamp = A, **kw: Any) -> History:
    return History().post(mid, text, stamp, **kw)


def raw_map(history: Any, rids: list[str] | None = None) -> bytes:
    """A map whose conversation c1 holds `history` as the encoding of field 15."""
    return codec.pack([FORMAT_VERSION, ["A", "B"] if rids is None else rids,
                       {"c1": {15: history}}])


def raw_message(message: Any) -> bytes:
    return raw_map([{"m1": message}, {}])


HEADER = [None, None, "user", None, 5, None, 5, 0, 0]  # created A
BASE = [5, 0, 0, "hi"]  # made at A


def assert_canonical(h: History) -> None:
    """What every decoded history must be: canonical, with ids a store can key by."""
    assert not h.is_bottom()
    assert History.make(h.messages, h.choices) == h
    for mid, m in h.messages.items():
        assert not m.is_bottom()
        assert MessageState.make(m.header, m.base, m.appends, m.deleted) == m
        assert len(mid.encode()) <= MAX_MESSAGE_ID_BYTES and "\0" not in mid
    for group in h.choices:
        assert len(group.encode()) <= MAX_MESSAGE_ID_BYTES and "\0" not in group


# -- round trips -------------------------------------------------------------------------------


@s.FAST
@given(h=ms.encodable_histories())
def test_a_history_in_a_map_round_trips(h: History) -> None:
    # decode(encode(x)) = x, for states and deltas of the history as one conversation field
    m = ConversationMap({"c1": {"messages": h, "title": Lww(B, "t")}, "c2": {"messages": h}})
    assert decode_map(encode_map(m)) == m
    assert codec.decode_fields(codec.encode_fields(m.convs["c1"])) == m.convs["c1"]


@s.FAST
@given(h=ms.encodable_histories())
def test_message_and_choice_records_round_trip(h: History) -> None:
    for m in h.messages.values():
        assert decode_message(encode_message(m)) == m
    for c in h.choices.values():
        assert decode_choice(encode_choice(c)) == c


@s.FAST
@given(sim=ms.sim_runs())
def test_every_delta_a_replica_makes_round_trips(sim: ms.Sim) -> None:
    for delta in sim.deltas:
        assert decode_map(encode_map(history_map(delta))) == history_map(delta)


def test_the_wire_shape_of_a_history() -> None:
    h = posted("m1", "hi", A, author="ann", seq=7)
    h = h.join(h.append("m1", "!", B))
    h = h.join(h.regenerate("m1", "m2", "yo", Stamp(7, 0, "B")))
    assert codec.unpack(encode_map(history_map(h))) == [FORMAT_VERSION, ["A", "B"], {"c1": {15: [
        {"m1": [[None, None, "user", "ann", 5, 7, 5, 0, 0], [5, 0, 0, "hi"],
                [[6, 1, 1, 5, 0, 0, "!"]], False],
         "m2": [[None, "m1", "user", "ann", 7, None, 7, 0, 1], [7, 0, 1, "yo"], [], False]},
        {"m1": [7, 0, 1, "m2"]},
    ]}}]


def test_a_tombstone_and_a_message_known_only_by_its_appends_round_trip() -> None:
    h = posted("m1", "hi", A, author="ann")
    tomb = h.join(h.delete("m1"))
    assert codec.unpack(encode_map(history_map(tomb)))[2]["c1"][15][0]["m1"] == [
        [None, None, "user", None, 5, None, 5, 0, 0], None, [], True]
    pending = History({"m1": MessageState(appends=frozenset([Append(B, A, "x")]))})
    for x in (tomb, pending):
        assert decode_map(encode_map(history_map(x))) == history_map(x)


def test_the_largest_values_round_trip() -> None:
    big = Stamp(MAX_INT, MAX_COUNTER, "r" * 64)
    mid = "\U0001d11e" * (MAX_MESSAGE_ID_BYTES // 4)  # 63 code points, 252 bytes
    header = Header(mid, mid, "r" * 64, "a" * 256, MAX_INT, MAX_INT, big)
    text = "x" * DEFAULT_LIMITS.max_message_text
    appends = frozenset(Append(Stamp(MAX_INT, MAX_COUNTER - k, "B"), big, "y" * 65536)
                        for k in range(3))
    h = History({"m" * 128: MessageState(header, Lww(big, text), appends)},
                {mid: Lww(big, "m" * 128)})
    m = history_map(h)
    assert decode_map(encode_map(m)) == m
    assert decode_message(encode_message(h.messages["m" * 128])) == h.messages["m" * 128]


def test_an_empty_history_decodes_to_an_absent_field() -> None:
    assert decode_map(raw_map([{}, {}])) == ConversationMap()


def test_a_history_of_a_tag_the_schema_lacks_is_carried() -> None:
    # A replica whose schema lacks the field carries it, as it carries registers and flags.
    older = Schema([f for f in DEFAULT_SCHEMA.fields if f.name != "messages"])
    m = history_map(posted())
    carried = decode_map(encode_map(m), older)
    assert carried.convs["c1"] == {"#15": m.convs["c1"]["messages"]}
    assert decode_map(encode_map(carried)) == m


# -- what the rest of the map does with it -----------------------------------------------------


def test_stamp_bounds_cover_every_message_stamp_and_time() -> None:
    h = posted("m1", "hi", A, at=10**12)
    h = h.join(h.append("m1", "!", Stamp(9, 77, "B")))
    m = history_map(h).join(ConversationMap({"c1": {"title": Lww(Stamp(8, 3, "A"), "t")}}))
    assert m.stamp_bounds() == (Hlc(9, 77), 77, 10**12)
    assert (m.max_clock(), m.max_counter(), m.max_wall()) == m.stamp_bounds()


def test_the_view_leaves_messages_out() -> None:
    view = history_map(posted()).view("c1")
    assert view is not None and view.extra == {} and "messages" not in view.as_dict()


def test_a_received_conversation_with_messages_is_stored_as_decoded() -> None:
    m = history_map(posted()).join(ConversationMap({"c2": {"title": Lww(A, "t")}}))
    decoded, wire = codec.decode_map_as_received(encode_map(m))
    assert decoded == m
    assert codec.store_received(wire, "c1") is None  # messages: encode the decoded fields
    assert codec.decode_fields(codec.store_received(wire, "c2")) == m.convs["c2"]


def test_a_chunk_of_stored_values_with_messages_is_the_map_of_their_states() -> None:
    stored = [("c1", codec.encode_fields({"messages": posted()})),
              ("c2", codec.pack([FORMAT_VERSION, ["B", "A"], {15: [{}, {"g": [1, 0, 1, "m"]}]}]))]
    expected = ConversationMap({cid: codec.decode_fields(raw) for cid, raw in stored})
    assert decode_map(codec.encode_stored_map(stored)) == expected
    assert expected.convs["c2"]["messages"].choices == {"g": Lww(Stamp(1, 0, "A"), "m")}


# -- refusals, each named ----------------------------------------------------------------------

NUL_ID = "m\0"
WIDE_ID = "\U0001d11e" * 64  # 64 code points, 256 UTF-8 bytes
LONG_ID = "m" * (DEFAULT_MESSAGE_LIMITS.max_id + 1)


@pytest.mark.parametrize(("bad", "reason"), [
    (NUL_ID, "NUL"), (WIDE_ID, "256 UTF-8 bytes is over the limit of 255"),
    (LONG_ID, "length 129 is out of range 1..128"), ("", "length 0"),
    (7, "expected a string, got int"),
])
def test_bad_ids_are_refused_wherever_they_are(bad: Any, reason: str) -> None:
    def message(parent: Any = None, origin: Any = None) -> list[Any]:
        return [[parent, origin, *HEADER[2:]], BASE, [], False]

    cases = {
        "message id": [{bad: message()}, {}],
        "group id": [{}, {bad: [1, 0, 0, "m1"]}],
        "chosen id": [{}, {"m1": [1, 0, 0, bad]}],
        "parent": [{"m1": message(parent=bad)}, {}],
        "origin": [{"m1": message(origin=bad)}, {}],
    }
    for where, history in cases.items():
        with pytest.raises(DecodeError, match=f"conversation 'c1' messages.*{where}.*{reason}"):
            decode_map(raw_map(history))


def test_too_many_messages_and_choices_are_refused() -> None:
    h = posted("m1")
    h = h.join(h.regenerate("m1", "m2", "yo", B))  # two messages, one choice
    data = encode_map(history_map(h))
    assert decode_map(data, limits=Limits(max_messages=3)) == history_map(h)
    with pytest.raises(DecodeError, match="messages: 3 messages and choices is over the "
                                          "limit of 2"):
        decode_map(data, limits=Limits(max_messages=2))
    assert DEFAULT_LIMITS.max_messages == 10_000 and STORAGE_LIMITS.max_messages >= 2**62


@pytest.mark.parametrize(("message", "match"), [
    ("x", "message 'm1': expected \\[header, base, appends, deleted\\], got str"),
    ([HEADER, BASE, []], "message 'm1': expected .*got an array of 3"),
    ([HEADER, BASE, [], 1], "message 'm1' deleted: expected a boolean, got int"),
    ([HEADER[:8], BASE, [], False], "message 'm1' header: expected .*got an array of 8"),
    ([[None, None, "", *HEADER[3:]], BASE, [], False], "header role: length 0 is out"),
    ([[None, None, "r" * 65, *HEADER[3:]], BASE, [], False], "header role: length 65"),
    ([[None, None, "u", "", *HEADER[4:]], BASE, [], False], "header author: length 0"),
    ([[None, None, "u", "a" * 257, *HEADER[4:]], BASE, [], False], "header author: length 257"),
    ([[*HEADER[:4], -1, *HEADER[5:]], BASE, [], False], "header at: -1 is out of range"),
    ([[*HEADER[:4], None, *HEADER[5:]], BASE, [], False], "header at: expected an integer"),
    ([[*HEADER[:5], 2**63, *HEADER[6:]], BASE, [], False], "header seq: .* is out of range"),
    ([[*HEADER[:7], MAX_COUNTER + 1, 0], BASE, [], False],
     "header created counter: 4294967296 is out of range 0..4294967295"),
    ([[*HEADER[:8], 2], BASE, [], False], "header created replica index: 2 is out of range 0..1"),
    ([[*HEADER[:6], True, 0, 0], BASE, [], False],
     "created wall time: expected an integer, got bool"),
    ([HEADER, [5, 0, 0], [], False], "message 'm1' base: expected .*got an array of 3"),
    ([HEADER, [5, 0, 0, b"hi"], [], False], "message 'm1' base text: expected a string"),
    ([HEADER, BASE, {}, False], "message 'm1' appends: expected an array, got dict"),
    ([HEADER, BASE, [[6, 0, 1, 5, 0, 0]], False], "append 0: expected .*got an array of 6"),
    ([HEADER, BASE, [[6, 0, 1, 5, 0, 9, "x"]], False], "append 0 base replica index: 9"),
    ([HEADER, BASE, [[6, 0, 1, 5, 0, 0, None]], False], "append 0 text: expected a string"),
    # Not canonical (specs/crdt.md §8.2.4): refused, never canonicalized.
    ([None, None, [], False], "message 'm1': an empty message"),
    ([HEADER, BASE, [], True], "a deleted message holds text"),
    ([HEADER, None, [[6, 0, 1, 5, 0, 0, "x"]], True], "a deleted message holds text"),
    ([[*HEADER[:3], "ann", *HEADER[4:]], None, [], True], "a deleted message keeps its author"),
    ([HEADER, [7, 0, 0, "new"], [[8, 0, 1, 5, 0, 0, "x"]], False],
     "append 0: made on a base older than the message's"),
    ([HEADER, BASE, [[7, 0, 1, 5, 0, 0, "x"], [6, 0, 1, 5, 0, 0, "y"]], False],
     "append 1: appends are not in strictly increasing"),
    ([HEADER, BASE, [[6, 0, 1, 5, 0, 0, "x"], [6, 0, 1, 5, 0, 0, "x"]], False],
     "append 1: appends are not in strictly increasing"),
])
def test_bad_messages_are_refused_by_name(message: Any, match: str) -> None:
    with pytest.raises(DecodeError, match=f"conversation 'c1' messages.*{match}"):
        decode_map(raw_message(message))
    # The same message as a storage record: the same refusal, named "message".
    record = codec.pack([FORMAT_VERSION, ["A", "B"], message])
    with pytest.raises(DecodeError, match=f"message.*{match.split('m1')[-1].lstrip(chr(39))}"):
        decode_message(record)


@pytest.mark.parametrize(("history", "match"), [
    ({}, "messages: expected \\[messages, choices\\], got dict"),
    ([{}], "messages: expected \\[messages, choices\\], got an array of 1"),
    ([[], {}], "messages messages: expected a map of message id -> message, got an array"),
    ([{}, []], "messages choices: expected a map of group id -> choice"),
    ([{}, {"g": [1, 0, 0]}],
     "messages choice of 'g': expected \\[wall, counter, replica, message id\\]"),
    ([{}, {"g": [1, -1, 0, "m"]}], "messages choice of 'g' counter: -1 is out of range"),
])
def test_bad_histories_are_refused_by_name(history: Any, match: str) -> None:
    with pytest.raises(DecodeError, match=f"conversation 'c1' {match}"):
        decode_map(raw_map(history))


def test_text_and_append_bounds_are_in_utf8_bytes() -> None:
    limits = Limits(max_message_text=8, max_append_text=4, max_appends=1)
    fits = [HEADER, [5, 0, 0, "\u00e9" * 4], [[6, 0, 1, 5, 0, 0, "\u00e9" * 2]], False]
    decode_map(raw_message(fits), limits=limits)
    with pytest.raises(DecodeError, match="base text: 10 UTF-8 bytes is over the limit of 8"):
        decode_map(raw_message([HEADER, [5, 0, 0, "\u00e9" * 5], [], False]), limits=limits)
    with pytest.raises(DecodeError, match="append 0 text: 6 UTF-8 bytes is over the limit of 4"):
        decode_map(raw_message([HEADER, BASE, [[6, 0, 1, 5, 0, 0, "\u00e9" * 3]], False]),
                   limits=limits)
    two = [[6, 0, 1, 5, 0, 0, "a"], [7, 0, 1, 5, 0, 0, "b"]]
    with pytest.raises(DecodeError, match="message 'm1': 2 appends is over the limit of 1"):
        decode_map(raw_message([HEADER, BASE, two, False]), limits=limits)
    # The defaults: looser than the writer's, so that concurrent appenders fit.
    assert DEFAULT_LIMITS.max_message_text == 4 * DEFAULT_MESSAGE_LIMITS.max_text_bytes
    assert DEFAULT_LIMITS.max_append_text == DEFAULT_MESSAGE_LIMITS.max_text_bytes
    assert DEFAULT_LIMITS.max_appends == 4 * DEFAULT_MESSAGE_LIMITS.max_appends


@pytest.mark.parametrize("data", [
    b"", b"\xc1", codec.pack([2, [], [None, None, [], True]]), codec.pack([1, [""], None]),
    codec.pack([1, [], None]), codec.pack([1, ["A"], [None, BASE, [], "no"]]),
])
def test_garbage_records_are_decode_errors(data: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_message(data)
    with pytest.raises(DecodeError):
        decode_choice(data)


def test_a_choice_record_is_refused_by_name() -> None:
    with pytest.raises(DecodeError, match=r"choice chosen id 'm\\x00': holds a NUL"):
        decode_choice(codec.pack([FORMAT_VERSION, ["A"], [1, 0, 0, NUL_ID]]))
    with pytest.raises(DecodeError, match=r"choice replica index: 1 is out of range 0\.\.0"):
        decode_choice(codec.pack([FORMAT_VERSION, ["A"], [1, 0, 1, "m1"]]))


# -- hostile input -----------------------------------------------------------------------------

nasty = st.one_of(
    s.nasty_values,
    st.sampled_from([None, True, "", "\0", NUL_ID, WIDE_ID, LONG_ID, MAX_COUNTER + 1, -1,
                     2**63, [], {}, [None] * 4, [None] * 9, [0] * 7, [0] * 4]),
)


@st.composite
def history_encodings(draw: Callable) -> Any:
    """The msgpack object of a map holding a drawn history (and maybe another field)."""
    h = draw(ms.encodable_histories().filter(lambda h: not h.is_bottom()))
    fields: dict[str, Any] = {"messages": h}
    if draw(st.booleans()):
        fields["title"] = Lww(B, "t")
    return codec.unpack(encode_map(ConversationMap({"c1": fields})))


@st.composite
def history_mutants(draw: Callable) -> bytes:
    """A valid history encoding mutated as a tree inside the history (and now and then
    anywhere): wrong types and ranges, bad ids, dropped or extra items, subtrees moved."""
    obj = draw(history_encodings())
    for _ in range(draw(st.integers(1, 3))):
        everywhere = s.positions(obj)
        inside = [p for p in everywhere if p[:3] == (("item", 2), ("value", "c1"), ("value", 15))]
        path = draw(st.sampled_from(inside if inside and draw(st.integers(0, 4)) else everywhere))
        how = draw(st.sampled_from(("replace", "drop", "grow", "copy")))
        if path and path[-1][0] == "key":
            new_key = draw(st.one_of(s.nasty_keys, nasty))
            if isinstance(new_key, (list, dict)):
                continue  # not hashable: no map can have it as a key
            obj = s.replaced(obj, path, lambda _, k=new_key: k)
        elif how == "replace":
            new = draw(nasty)
            obj = s.replaced(obj, path, lambda _, v=new: v)
        elif how == "drop":
            obj = s.replaced(obj, path, s.drop_one)
        elif how == "grow":
            key, extra = draw(s.nasty_keys), draw(nasty)
            obj = s.replaced(obj, path, lambda node, k=key, v=extra: s.grow(node, k, v))
        else:
            source = draw(st.sampled_from(everywhere))
            if source and source[-1][0] != "key":
                subtree = s.node_at(obj, source)
                obj = s.replaced(obj, path, lambda _, v=subtree: v)
    return codec.pack(obj)


def _decoded_or_refused(decode: Callable[[], Any]) -> Any:
    try:
        return decode()
    except DecodeError as e:
        assert str(e)  # names what is wrong
        return None


@s.FAST
@given(data=history_mutants())
def test_mutated_histories_decode_to_canonical_states_or_raise_decode_error(data: bytes) -> None:
    m = _decoded_or_refused(lambda: decode_map(data))
    if m is None:
        return
    for fields in m.convs.values():
        h = fields.get("messages")
        if h is not None:
            assert_canonical(h)
    assert decode_map(encode_map(m)) == m  # and it is what it encodes


@s.FAST
@given(data=history_mutants(), pick=st.integers(0, 10))
def test_mutated_message_records_decode_to_canonical_states_or_raise_decode_error(
        data: bytes, pick: int) -> None:
    # The mutant's first message (or choice) as a storage record, with the map's table.
    obj = codec.unpack(data)
    try:
        history = obj[2]["c1"][15]
        messages, choices = list(history[0].values()), list(history[1].values())
    except (TypeError, KeyError, IndexError, AttributeError):
        return
    rids = obj[1]
    if messages:
        record = codec.pack([FORMAT_VERSION, rids, messages[pick % len(messages)]])
        m = _decoded_or_refused(lambda: decode_message(record))
        if m is not None:
            assert_canonical(History({"m": m}))
            assert decode_message(encode_message(m)) == m
    if choices:
        record = codec.pack([FORMAT_VERSION, rids, choices[pick % len(choices)]])
        c = _decoded_or_refused(lambda: decode_choice(record))
        if c is not None:
            assert not c.is_bottom() and decode_choice(encode_choice(c)) == c


@s.FAST
@given(data=st.builds(lambda obj: codec.pack(obj), history_encodings()).flatmap(
    lambda good: st.builds(lambda i, b: good[:i] + bytes([b]) + good[i + 1:],
                           st.integers(0, len(good) - 1), st.integers(0, 255))))
def test_byte_flipped_histories_decode_or_raise_decode_error(data: bytes) -> None:
    m = _decoded_or_refused(lambda: decode_map(data))
    if m is not None and "messages" in m.convs.get("c1", {}):
        assert_canonical(m.convs["c1"]["messages"])
