"""Behaviour the specs state precisely for a second implementation, in the parts added since
test_specs_gaps.py (issue #17: message histories, conversation features, catch-up, the HTTP
API and change feed), each test naming the section that states it."""

from __future__ import annotations

import hashlib
import time

import msgpack
import pytest
from test_protocol_sim import connect
from test_reconcile import CONFIG

from crdtim import Replica, codec
from crdtim import InvalidArgument
from crdtim.errors import DecodeError
from crdtim.protocol import ReconRanges, StateTransferStarted

T0 = 1_700_000_000_000


def _history_delta(rid: str, mid: str, *, counter: int = 1, at: int = T0,
                   cid: str = "c") -> bytes:
    """A delta posting message `mid` on replica `rid` (specs/crdt.md §7, "Messages")."""
    header = [None, None, "user", None, at, None, at, counter, 0]
    return msgpack.packb([1, [rid], {cid: {15: [{mid: [header, [at, counter, 0, "hi"], [],
                                                       False]}, {}]}}])


def _id_of_bytes(n: int) -> str:
    """A message id of exactly n UTF-8 bytes within 128 code points (4-byte characters)."""
    four, rest = divmod(n, 4)
    return "\U0001F600" * four + "x" * rest


# --- Message index keys: ids within their own bounds can pass LMDB's key size together -----

def test_storage_md_2_a_post_whose_index_key_is_over_511_bytes_is_invalid_argument(
        open_replica) -> None:
    """specs/storage.md §2 (`mindex`) and crdt.md §8.7: a post's group key is 23 bytes
    around its group id, its replica id and its own id; over 511 bytes the post is refused
    with InvalidArgument naming the bound (it was a StoreError, MDB_BAD_VALSIZE), and at
    511 exactly it is stored."""
    r = open_replica("r")
    rid = len(r.id.encode())
    at_bound = (511 - 23 - rid) // 2  # a plain post is its own group: its id counts twice
    over = _id_of_bytes(at_bound + 1)
    assert len(over.encode()) <= codec.MAX_MESSAGE_ID_BYTES  # within the id's own bound
    with pytest.raises(InvalidArgument, match=r"index key would be \d+ bytes, over 511"):
        r.post("c", "hi", id=over)
    assert r.head == 0
    fits = _id_of_bytes(at_bound)
    r.post("c", "hi", id=fits)
    assert [m.id for m in r.history("c").items] == [fits]


def test_crdt_md_7_refusal_order_2_message_index_key_over_511_bytes_is_a_decode_error(
        open_replica) -> None:
    """specs/crdt.md §7 "Order of refusals" 2 and storage.md §2: a remote message whose
    index key would pass 511 bytes (a 252-byte id from a 256-byte replica id, each within
    the decoder's bounds) refuses the delta whole with DecodeError, changing nothing; it
    was a StoreError that stopped the link on every retry."""
    r = open_replica("r", now_ms=lambda: T0)
    rid, mid = "\U0001F600" * 64, "\U0001F600" * 63
    with pytest.raises(DecodeError, match=r"message .*: its index key would be 783 bytes"):
        r.apply_delta(_history_delta(rid, mid))
    assert r.head == 0 and r.state().convs == {}
    # Checked before the clock counter bound (step 3): a DecodeError, not ClockDriftError.
    with pytest.raises(DecodeError, match="index key"):
        r.apply_delta(_history_delta(rid, mid, counter=2**31))
    # 23 + 1 + 2 x 244 = 512: even a one-byte replica id leaves a plain message 243 bytes.
    with pytest.raises(DecodeError, match="512 bytes, over 511"):
        r.apply_delta(_history_delta("p", _id_of_bytes(244)))
    assert r.apply_delta(_history_delta("p", _id_of_bytes(243))) == {"c"}


# --- Catch-up: a history over the records a peer decodes in one map -----------------------

def test_protocol_md_13_3_a_history_over_max_messages_falls_back_to_the_whole_transfer(
        open_replica) -> None:
    """specs/protocol.md §13.3: a conversation whose history holds more message and choice
    records than a receiver decodes in one map (`max_messages`, 10,000) is not sent whole by
    a reconciliation, even when it fits a frame: the sender falls back to the whole transfer
    of §5, which splits it across chunks. It was sent whole and refused, on every
    reconnection, so the peer never caught up."""
    a = open_replica("a", log_retention=0)
    b = open_replica("b")
    a.set_title("x", "x")
    connect(a, b, CONFIG).run_until_quiet()  # b has received from a: a reconciliation next
    for part in range(2):
        with a.batch():
            for i in range(5001):
                a.post("long", "m", id=f"m{part}-{i}")
    assert a.trim_log() > 0
    wire = connect(a, b, CONFIG)
    events_a, _ = wire.run_until_quiet()
    assert any(isinstance(m, ReconRanges) for m in wire.frames[0])  # reconciled first
    assert StateTransferStarted(outbound=True) in events_a
    assert b.state() == a.state()
    assert b.received_from(a.id) == a.head
