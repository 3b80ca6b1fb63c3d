"""Behaviour the specs state precisely for a second implementation (issue #17's gaps), each
test naming the section that states it."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from crdtim import Replica, codec
from crdtim.crdt import DEFAULT_SCHEMA
from crdtim.crdt.hlc import DEFAULT_MAX_DRIFT_MS
from crdtim.errors import ClockDriftError, DecodeError


def _pin_delta(cid: str) -> bytes:
    # specs/crdt.md §7's example shape: pinning `cid` on replica "phone-1"
    return msgpack.packb([1, ["phone-1"], {cid: {1: [[0, 1], [0, 1], []]}}])


def test_crdt_md_7_conversation_id_over_502_utf8_bytes_is_a_decode_error(tmp_path: Path) -> None:
    """crdt.md §7: a remote conversation id within 256 code points but over 502 UTF-8 bytes
    is refused whole with DecodeError, changing nothing; 502 bytes exactly is accepted."""
    with Replica.open(tmp_path / "r", durability="nosync") as r:
        head = r.head
        too_long = "é" * 252  # 252 code points, 504 bytes
        with pytest.raises(DecodeError, match="over 502 bytes"):
            r.apply_delta(_pin_delta(too_long))
        assert r.head == head and r.list().items == []
        at_bound = "é" * 251  # 502 bytes
        assert r.apply_delta(_pin_delta(at_bound)) == {at_bound}
        conv = r.get(at_bound)
        assert conv is not None and conv.pinned


@pytest.mark.parametrize("part, flag", [
    ("dots", [[0, 1, 0], [0, 1], []]),
    ("version vector", [[0, 1], [0, 1, 0], []]),
    ("context", [[0, 1], [0, 1], [0, 2, 0]]),
])
def test_crdt_md_7_odd_length_pair_array_names_the_odd_length(
        tmp_path: Path, part: str, flag: list[list[int]]) -> None:
    """crdt.md §7: a flag's pair array of odd length is refused with a DecodeError that says
    so (not "expected at most 10000 pairs"), and changes nothing."""
    data = msgpack.packb([1, ["phone-1"], {"chat-42": {1: flag}}])
    with Replica.open(tmp_path / "r", durability="nosync") as r:
        with pytest.raises(DecodeError, match=f"{part}: odd length 3") as refused:
            r.apply_delta(data)
        assert "at most" not in str(refused.value)
        assert r.head == 0


# --- Gap 3: the order in which a remote delta's refusals are checked (crdt.md §1, §7) ---

T0 = 1_700_000_000_000
FUTURE = T0 + 10**9  # far past the drift bound: held, not refused (crdt.md §1 step 2)


def _refused_by(r: Replica, delta: list[object]) -> tuple[type[BaseException], str]:
    head = r.head
    with pytest.raises((DecodeError, ClockDriftError)) as refused:
        r.apply_delta(msgpack.packb(delta))
    assert r.head == head and r.status()["pending"]["count"] == 0  # nothing changed
    return type(refused.value), str(refused.value)


def test_crdt_md_7_refusal_order_1_decode_error_before_2_cid_bytes(tmp_path: Path) -> None:
    """crdt.md §7 "Order of refusals": a decoder error (1) is reported before the id's byte
    bound (2): a conversation id over 502 bytes whose title names a replica index outside
    the table gives the decoder's message."""
    with Replica.open(tmp_path / "r", durability="nosync", now_ms=lambda: T0) as r:
        kind, message = _refused_by(r, [1, ["p"], {"é" * 252: {0: [T0, 1, 5, "t"]}}])
        assert kind is DecodeError and "replica index: 5 is out of range" in message


def test_crdt_md_7_refusal_order_2_cid_bytes_before_3_counter_bound(tmp_path: Path) -> None:
    """crdt.md §7 "Order of refusals": the id's byte bound (2) is checked before the clock
    counter bound (3): DecodeError "over 502 bytes", not ClockDriftError."""
    with Replica.open(tmp_path / "r", durability="nosync", now_ms=lambda: T0) as r:
        kind, message = _refused_by(r, [1, ["p"], {"é" * 252: {0: [T0, 2**31, 0, "t"]}}])
        assert kind is DecodeError and "is over 502 bytes" in message


@pytest.mark.parametrize("future", [
    {0: [FUTURE, 0, 0, "a title from the future"]},
    {5: [FUTURE, 1, 0, "a message time from the future"]},
])
def test_crdt_md_7_refusal_order_3_counter_bound_before_4_future_hold(
        tmp_path: Path, future: dict[int, list[object]]) -> None:
    """crdt.md §7 "Order of refusals" and §1 step 1: an over-limit counter (3) refuses the
    whole delta even when it also holds a value far in the future (4, which alone would be
    held): ClockDriftError with the counter message, nothing held."""
    over = {12: [T0, 2**31, 0, "draft"]}
    with Replica.open(tmp_path / "r", durability="nosync", now_ms=lambda: T0) as r:
        kind, message = _refused_by(r, [1, ["p"], {"c": {**future, **over}}])
        assert kind is ClockDriftError
        assert message == f"remote clock counter {2**31} is over the limit of {2**31 - 1}"


def test_crdt_md_7_refusal_order_4_future_hold_and_5_forged_dot_refuse_nothing(
        tmp_path: Path) -> None:
    """crdt.md §7 "Order of refusals" (4, 5) and §5: a value from the future is held and a
    context claiming this replica's dots is joined (with a warning): neither refuses, so a
    delta with both is accepted; the title is held, the flag joined."""
    with Replica.open(tmp_path / "r", durability="nosync", now_ms=lambda: T0) as r:
        delta = [1, [r.id], {"c": {1: [[0, 5], [0, 5], []], 0: [FUTURE, 0, 0, "later"]}}]
        assert r.apply_delta(msgpack.packb(delta)) == {"c"}
        conv = r.get("c")
        assert conv is not None and conv.pinned and conv.title == ""
        assert r.status()["pending"] == {"count": 1, "earliest": FUTURE}


# --- Gap 4: what a reader accepts, canonicalises or refuses (crdt.md §7) ---

def test_crdt_md_7_replica_table_listing_an_id_twice_is_accepted(tmp_path: Path) -> None:
    """crdt.md §7 "Reader's latitude": a replica table naming one id twice is accepted; both
    indices mean that id."""
    data = msgpack.packb([1, ["p", "p"], {"c": {1: [[0, 1, 1, 2], [0, 2], []]}}])
    pinned = codec.decode_map(data, DEFAULT_SCHEMA).convs["c"]["pinned"]
    assert pinned.dots == frozenset({("p", 1), ("p", 2)})
    assert pinned.context.vv == {"p": 2} and not pinned.context.cloud
    with Replica.open(tmp_path / "r", durability="nosync") as r:
        assert r.apply_delta(data) == {"c"}
        conv = r.get("c")
        assert conv is not None and conv.pinned


def test_crdt_md_7_version_vector_naming_one_id_by_two_indices_is_refused(
        tmp_path: Path) -> None:
    """crdt.md §7 "Reader's latitude": two indices of a version vector that name one id (a
    table listing it twice) are a replica listed twice in `vv`: DecodeError, nothing
    changes."""
    data = msgpack.packb([1, ["p", "p"], {"c": {1: [[0, 1], [0, 1, 1, 2], []]}}])
    with pytest.raises(DecodeError, match="version vector: a replica appears twice"):
        codec.decode_map(data, DEFAULT_SCHEMA)
    with Replica.open(tmp_path / "r", durability="nosync") as r:
        with pytest.raises(DecodeError, match="a replica appears twice"):
            r.apply_delta(data)
        assert r.head == 0


def test_crdt_md_7_duplicate_and_unsorted_dots_and_cloud_are_canonicalised(
        tmp_path: Path) -> None:
    """crdt.md §7 "Reader's latitude": `dots` and `cloud` pairs repeated or out of order are
    accepted and read as sets: a repeat counts once, order is lost, and re-encoding writes
    each array once per pair, sorted."""
    messy = msgpack.packb([1, ["q", "p"], {"c": {1: [[0, 5, 1, 3, 0, 5], [1, 1, 0, 1],
                                                     [0, 5, 1, 3, 1, 3]]}}])
    tidy = msgpack.packb([1, ["p", "q"], {"c": {1: [[0, 3, 1, 5], [0, 1, 1, 1],
                                                    [0, 3, 1, 5]]}}])
    pinned = codec.decode_map(messy, DEFAULT_SCHEMA).convs["c"]["pinned"]
    assert pinned.dots == pinned.context.cloud == frozenset({("p", 3), ("q", 5)})
    assert codec.decode_map(messy, DEFAULT_SCHEMA) == codec.decode_map(tidy, DEFAULT_SCHEMA)
    assert codec.encode_map(codec.decode_map(messy, DEFAULT_SCHEMA)) == tidy
    with Replica.open(tmp_path / "r", durability="nosync") as r:
        assert r.apply_delta(messy) == {"c"}
        assert r.state() == codec.decode_map(tidy, DEFAULT_SCHEMA)


def test_crdt_md_7_empty_replica_table_is_accepted(tmp_path: Path) -> None:
    """crdt.md §7 "Reader's latitude": an empty replica table is accepted, with an empty
    body (nothing changes) or with fields that name no replica (a max register)."""
    with Replica.open(tmp_path / "r", durability="nosync") as r:
        assert r.apply_delta(msgpack.packb([1, [], {}])) == set() and r.head == 0
        assert r.apply_delta(msgpack.packb([1, [], {"c": {3: 5}}])) == {"c"}
        conv = r.get("c")
        assert conv is not None and conv.last_seq == 5


def test_crdt_md_7_empty_conversation_is_accepted_and_not_stored(tmp_path: Path) -> None:
    """crdt.md §7 "Reader's latitude": an empty conversation `{cid: {}}` is accepted and
    dropped: not stored, not logged, not reported changed."""
    data = msgpack.packb([1, ["p"], {"c": {}}])
    assert codec.decode_map(data, DEFAULT_SCHEMA).convs == {}
    with Replica.open(tmp_path / "r", durability="nosync") as r:
        assert r.apply_delta(data) == set()
        assert r.head == 0 and r.get("c") is None and r.list().items == []


# --- Gap 7: a local message time at the drift bound, sent to a peer a few ms behind ---

@pytest.mark.parametrize("write", ["message_arrived", "post"])
def test_crdt_md_1_message_time_at_the_local_bound_is_held_by_a_slower_peer_not_refused(
        open_replica, write: str) -> None:
    """crdt.md §1 "A local message time at the bound": A accepts a message time of exactly
    now + max_drift (300000 ms by default); B, whose clock is 3 ms behind, refuses nothing:
    it holds the values stamped past its horizon (the last_message, or the message history),
    applies the rest at once, and applies the held ones once its clock has gained the 3 ms,
    ending with A's state."""
    drift = DEFAULT_MAX_DRIFT_MS
    behind = [3]
    a = open_replica("a", now_ms=lambda: T0)
    b = open_replica("b", now_ms=lambda: T0 - behind[0])
    at = T0 + drift
    if write == "message_arrived":
        a.message_arrived("c", 1, "hi", at=at)
    else:
        a.post("c", "hi", at=at)
    changed = b.apply_delta(codec.encode_map(a.state()))  # nothing refused
    assert b.status()["pending"] == {"count": 1, "earliest": at}
    held_state = b.state()
    if write == "message_arrived":  # last_seq (a max register) now, last_message held
        conv = b.get("c")
        assert changed == {"c"} and conv is not None
        assert conv.last_seq == 1 and conv.last_at == 0 and conv.last_preview == ""
    else:  # the message history: held whole
        assert changed == set() and b.get("c") is None
    behind[0] = 1  # B's horizon is still 1 ms short of `at`
    assert b.apply_pending() == set() and b.state() == held_state
    behind[0] = 0  # B's clock has caught up: now + max_drift reaches `at`
    assert b.apply_pending() == {"c"}
    assert b.status()["pending"]["count"] == 0
    assert b.state() == a.state()
