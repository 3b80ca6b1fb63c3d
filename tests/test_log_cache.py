"""Decoded log entries (crdtim/replica/_log_cache.py): a replica relaying its log to several
peers decodes each entry once for all of them, not once per peer (issue #16), and an entry
this process wrote not at all; what the cache serves is always what the stored entry
decodes to."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import crdtim.replica._write
from crdtim import Replica, codec
from crdtim.crdt import DEFAULT_SCHEMA, ConversationMap, Lww, MaxReg, Stamp
from crdtim.errors import ClockDriftError, CrdtimError, DecodeError
from crdtim.protocol import RelayIndex
from crdtim.replica._core import STORAGE_LIMITS
from crdtim.replica._log_cache import LogCache
from crdtim.replica._write import as_decoded
from strategies import FAST, conversation_maps
from test_protocol_sim import connect
from test_relay import _settle

T0 = 1_700_000_000_000


def _stored_log(r: Replica) -> list[tuple[int, str, bytes]]:
    return r.store.read(lambda t: list(t.log_entries(0)))


def _count_log_decodes(r: Replica, monkeypatch) -> list[int]:
    calls = [0]
    decode = r._decode_log

    def counting(payload: bytes):
        calls[0] += 1
        return decode(payload)

    monkeypatch.setattr(r, "_decode_log", counting)
    return calls


def test_relaying_to_three_peers_decodes_each_log_entry_once(tmp_path, open_replica,
                                                              monkeypatch):
    # Fails before the cache: each session decoded each entry itself, 3 peers x 6 entries.
    path = tmp_path / "hub"
    with Replica.open(path, durability="nosync") as hub:
        for k in range(6):  # written before: as another process's entries would be
            hub.set_title(f"c{k}", f"title {k}")
    hub = Replica.open(path, durability="nosync")
    try:
        peers = [open_replica(name) for name in ("p1", "p2", "p3")]
        calls = _count_log_decodes(hub, monkeypatch)
        relay = RelayIndex()
        wires = [connect(hub, p, relays=(relay, RelayIndex())) for p in peers]
        _settle(*wires)
        assert all(p.get("c5").title == "title 5" for p in peers)
        assert calls[0] == 6
        # Written by this process: relayed as the map it encoded, decoded by nobody.
        hub.set_title("c0", "newer")
        hub.pin("c1")
        _settle(*wires)
        assert all(p.get("c0").title == "newer" and p.get("c1").pinned for p in peers)
        assert calls[0] == 6
    finally:
        hub.close()


def test_an_entry_from_a_peer_is_relayed_to_the_others_without_a_decode(open_replica,
                                                                       monkeypatch):
    hub, *peers = (open_replica(name) for name in ("hub", "p1", "p2", "p3"))
    relay = RelayIndex()
    wires = [connect(hub, p, relays=(relay, RelayIndex())) for p in peers]
    _settle(*wires)
    calls = _count_log_decodes(hub, monkeypatch)
    peers[0].set_title("x", "from p1")
    _settle(*wires)
    assert peers[1].get("x").title == peers[2].get("x").title == "from p1"
    assert calls[0] == 0


# -- what the cache serves is what the log holds ---------------------------------------------

_LOCAL_OPS = st.sampled_from(("title", "pin", "unpin", "arrive", "read", "delete", "archive",
                              "post", "append", "edit", "regenerate", "delete_message"))


def _local(r: Replica, op: str, cid: str, k: int) -> None:
    if op == "title":
        r.set_title(cid, f"t{k}")
    elif op == "pin":
        r.pin(cid)
    elif op == "unpin":
        r.unpin(cid)
    elif op == "arrive":
        r.message_arrived(cid, k, f"m{k}", at=T0 + k)
    elif op == "read":
        r.mark_read(cid, k)
    elif op == "delete":
        r.delete_conversation(cid)
    elif op == "archive":
        r.archive(cid)
    elif op == "post":
        r.post(cid, f"p{k}", id=f"m{k % 3}")
    elif r.message(cid, f"m{k % 3}") is not None:
        mid = f"m{k % 3}"
        if op == "append":
            r.append(cid, mid, "+")
        elif op == "edit":
            r.edit(cid, mid, f"e{k}")
        elif op == "regenerate":
            r.regenerate(cid, mid, f"r{k}")
        else:
            r.delete_message(cid, mid)


@FAST
@given(steps=st.lists(st.one_of(
    st.tuples(st.just("local"), _LOCAL_OPS, st.sampled_from(("c1", "c2")),
              st.integers(0, 6), st.booleans()),
    st.tuples(st.just("remote"), conversation_maps(), st.booleans())), max_size=12))
def test_every_cached_entry_is_what_its_stored_bytes_decode_to(steps):
    with tempfile.TemporaryDirectory() as d:
        clock = [T0]

        def now() -> int:
            clock[0] += 1
            return clock[0]

        with Replica.open(Path(d) / "r", durability="nosync", now_ms=now) as r:
            for step in steps:
                if step[0] == "remote":
                    try:
                        if step[2]:  # as bytes: logged as received when all of it is novel
                            r.apply_delta(codec.encode_map(step[1]), origin="peer")
                        else:
                            r.apply_map(step[1], origin="peer")
                    except (ClockDriftError, DecodeError):
                        pass
                    continue
                _, op, cid, k, batched = step
                try:
                    if batched:
                        with r.batch():
                            _local(r, op, cid, k)
                            _local(r, "title", "c3", k)
                    else:
                        _local(r, op, cid, k)
                except CrdtimError:  # refused (a read past the last message, say): no entry
                    pass
            for seq, _, payload in _stored_log(r):
                cached = r._log_cache.get(seq, payload)
                assert cached is not None  # every entry was written here
                assert cached == codec.decode_map(payload, r.schema, STORAGE_LIMITS)
            # And what a session is sent is what decoding would give, one entry or many.
            for after in range(r.head):
                for n in (1, 3):
                    end, delta = r.delta_interval(after, max_entries=n)
                    r._log_cache.clear()
                    assert r.delta_interval(after, max_entries=n) == (end, delta)


def test_an_aborted_write_leaves_no_wrong_entry_behind(a, monkeypatch):
    a.set_title("c", "one")

    def fail(*args, **kwargs):
        raise RuntimeError("the disk went away")

    # Logged, remembered, then the transaction aborts: its sequence number is used again.
    with monkeypatch.context() as m:
        m.setattr(crdtim.replica._write, "changed", fail)
        with pytest.raises(RuntimeError):
            a.set_title("c", "two")
    a.pin("c")
    seq, _, payload = _stored_log(a)[-1]
    assert seq == 2
    _, delta = a.delta_interval(1)
    assert delta == codec.decode_map(payload) and "title" not in delta.fields("c")


def test_trimming_forgets_the_entries_it_dropped(open_replica):
    a = open_replica("a", log_retention=2)
    for k in range(5):
        a.set_title("c", f"t{k}")
    assert len(a._log_cache) == 5
    a.trim_log()
    assert len(a._log_cache) == 2 and a.log_floor == 3


def test_a_write_puts_in_only_small_entries_and_a_relay_decodes_a_large_one_once(open_replica):
    """storage.md §4: building the map of a large entry (a state chunk, a big batch) as it
    is written costs more than it saves; a session that relays it decodes and shares it."""
    from crdtim.replica._log_cache import MAX_WRITTEN_ENTRY_BYTES

    a = open_replica("a")
    a.set_title("small", "t")
    with a.batch():
        for k in range(400):
            a.set_title(f"c{k:04}", "a title long enough to make the entry large " * 2)
    (_, _, small), (seq, _, large) = _stored_log(a)[-2:]
    assert len(small) <= MAX_WRITTEN_ENTRY_BYTES < len(large)
    assert a._log_cache.get(seq - 1, small) is not None and a._log_cache.get(seq, large) is None
    assert a.delta_interval(seq - 1, max_entries=1) == (seq, codec.decode_map(large,
                                                                         DEFAULT_SCHEMA))
    assert a._log_cache.get(seq, large) is not None


def test_the_cache_is_bounded_in_entries_and_bytes():
    m = ConversationMap()
    cache = LogCache(max_entries=2, max_bytes=10)
    cache.put(1, b"aaaa", m)
    cache.put(2, b"bbbb", m)
    cache.put(3, b"cccc", m)  # over two entries: the oldest goes
    assert cache.get(1, b"aaaa") is None and cache.get(3, b"cccc") is m
    assert cache.get(3, b"other") is None
    cache.put(4, b"dddddddd", m)  # over 10 bytes: older ones go until it fits
    assert len(cache) == 1 and cache.get(4, b"dddddddd") is m
    cache.put(5, b"x" * 11, m)  # larger than the whole cache: not kept
    assert cache.get(5, b"x" * 11) is None


def test_an_entry_is_remembered_as_the_decoder_would_read_it():
    # A part holding a last message at or before its own cleared_at is stored as is, and the
    # decoder drops that message (specs/crdt.md §6): the remembered map must drop it too.
    fields = {"cleared_at": MaxReg(T0 + 5), "last_message": Lww(Stamp(T0 + 3, 0, "A"), "old")}
    payload = codec.encode_map(codec.trusted_map({"c": fields}, DEFAULT_SCHEMA))
    decoded = codec.decode_map(payload, DEFAULT_SCHEMA, STORAGE_LIMITS)
    assert "last_message" not in decoded.fields("c")
    assert as_decoded({"c": fields}, DEFAULT_SCHEMA) == decoded


def test_a_peer_far_behind_does_not_push_out_the_newest_entries():
    m = ConversationMap()
    cache = LogCache(max_entries=2)
    cache.put(10, b"j", m)
    cache.put(11, b"k", m)
    cache.put(5, b"e", m)  # read by a session far behind: not kept at the others' expense
    assert cache.get(5, b"e") is None
    assert cache.get(10, b"j") is m and cache.get(11, b"k") is m
    cache.put(12, b"l", m)  # a new entry: the lowest goes
    assert cache.get(10, b"j") is None and cache.get(12, b"l") is m
