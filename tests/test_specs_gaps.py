"""Behaviour the specs state precisely for a second implementation (issue #17's gaps), each
test naming the section that states it."""

from __future__ import annotations

from pathlib import Path

import msgpack
import pytest

from crdtim import Replica
from crdtim.errors import DecodeError


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
