"""What a peer's bytes may cost before they are refused (specs/security.md §7, "decoded work
per frame"): a frame body or payload of the wrong shape is refused from its headers, before
it is built. Measured with tracemalloc, which counts the objects msgpack builds: the old
decoding built 8 million lists (about 520 MiB) for each of the two 8 MiB inputs below.
"""

from __future__ import annotations

import struct
import tracemalloc

from hypothesis import given
from hypothesis import strategies as st

from crdtim import codec
from crdtim.codec._census import _nested
from crdtim.codec._msgpack import MAX_FRAME_VALUES
from crdtim.codec._msgpack import count_headers as _count_headers
from crdtim.protocol import RemoteProtocolError
from crdtim.protocol._budget import MAX_FRAME_ITEMS, over_budget
from crdtim.protocol._messages import FrameDecoder

N = 8 * 1024 * 1024 - 64
MIB = 1024 * 1024


def peak_bytes(fn) -> tuple[object, int]:
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def empty_arrays(n: int) -> bytes:
    return b"\xdd" + struct.pack(">I", n) + b"\x90" * n


def test_a_frame_whose_field_is_a_huge_array_is_refused_before_it_is_built():
    """protocol.md §2: a frame holds at most MAX_FRAME_VALUES values; an 8 MiB array of empty
    arrays in place of a DELTA's payload is refused having built almost nothing."""
    body = b"\x94\x02\x00\x01" + empty_arrays(N)
    frame = struct.pack(">I", len(body)) + body
    decoder = FrameDecoder(max_frame_bytes=16 * MIB)
    decoder.feed(frame)

    def parse():
        try:
            decoder.next_message()
        except RemoteProtocolError as e:
            return str(e)
        return None

    reason, peak = peak_bytes(parse)
    assert reason is not None and f"over {MAX_FRAME_VALUES} values" in reason
    assert peak < MIB


def test_a_frame_of_nested_small_arrays_is_refused_from_its_headers():
    body = b"\x94\x02\x00\x01" + (b"\x9f" + b"\x00" * 14) * 2000
    frame = struct.pack(">I", len(body)) + body
    decoder = FrameDecoder(max_frame_bytes=MIB)
    decoder.feed(frame)
    try:
        decoder.next_message()
    except RemoteProtocolError as e:
        assert f"over {MAX_FRAME_VALUES} values" in str(e)
    else:
        raise AssertionError("a nested frame body was accepted")


def test_a_map_in_a_frame_is_refused():
    body = b"\x94\x02\x00\x01\x81\x00\x00"
    decoder = FrameDecoder(max_frame_bytes=MIB)
    decoder.feed(struct.pack(">I", len(body)) + body)
    try:
        decoder.next_message()
    except RemoteProtocolError as e:
        assert "holds a map" in str(e)
    else:
        raise AssertionError("a map in a frame was accepted")


def test_a_payload_with_one_huge_field_is_refused_from_its_headers():
    """security.md §7: two conversations, one holding a field of 8 million empty arrays,
    is over the item budget; counting it must not build it."""
    payload = (b"\x93\x01\x91\xa1a\x82" + b"\xa2c1\x81\x03" + empty_arrays(N)
               + b"\xa2c2\x80")
    reason, peak = peak_bytes(lambda: over_budget(payload))
    assert reason is not None and f"over {MAX_FRAME_ITEMS} items" in reason
    assert peak < 4 * len(payload)


def test_a_payload_of_a_single_conversation_is_not_held_to_the_item_budget():
    """security.md §7: a payload of a single conversation must always be sendable, so it is
    not counted against MAX_FRAME_ITEMS (its fields' decoders bound it); the same field
    beside a second conversation is over the budget."""
    field = b"\x81\x03" + empty_arrays(2 * MAX_FRAME_ITEMS)
    alone = b"\x93\x01\x91\xa1a\x81" + b"\xa2c1" + field
    assert over_budget(alone) is None
    beside = b"\x93\x01\x91\xa1a\x82" + b"\xa2c1" + field + b"\xa2c2\x80"
    assert f"over {MAX_FRAME_ITEMS} items" in (over_budget(beside) or "")


ints = st.integers(-2**63, 2**64 - 1)
msgpack_values = st.recursive(
    st.none() | st.booleans() | ints | st.floats()
    | st.text(max_size=40) | st.binary(max_size=300),
    lambda inner: st.lists(inner, max_size=20)
    | st.dictionaries(st.text(max_size=5) | ints, inner, max_size=20),
    max_leaves=200)


@given(msgpack_values)
def test_counting_from_headers_agrees_with_counting_the_built_value(value):
    data = codec.pack(value)
    assert _count_headers(data, 0, 10**9) == _nested(value)


@given(msgpack_values, st.integers(0, 50))
def test_counting_from_headers_stops_once_past_the_bound(value, bound):
    counted = _count_headers(codec.pack(value), 0, bound)
    assert counted == _nested(value) or bound < counted <= _nested(value)
