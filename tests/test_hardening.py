"""Hardening against hostile peers and wrong clocks (specs/security.md §1, §7; specs/crdt.md
§1, §5): what a peer can no longer do to replicas it is not talking to.

- A forged causal-context claim about another replica's dots is confined to the one flag of
  the one conversation it was sent in, and healed by that replica's next enable: it never
  cuts a link (regression for the forged-dot attack, issue 12, finding 1).
- A value stamped beyond the drift bound waits alone, durably, until time reaches it;
  everything else of its delta and of later ones is applied at once (finding 4).
"""

from __future__ import annotations

import logging
import struct
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st


from crdtim import codec
from crdtim.crdt import CausalContext, ConversationMap, Flag, Lww, Stamp
from crdtim.net import Node
from nodes import FAST, LOCAL, settle, wait_until
from crdtim.errors import CorruptStoreError, DecodeError
from crdtim.replica import InvalidArgument, Replica


def forged_claim(cid: str, victim: str, n: int, *, cloud: bool = False,
                 flag: str = "pinned") -> ConversationMap:
    """A context-only flag delta claiming dot (victim, n): what a forging peer sends."""
    context = (CausalContext.compact({}, [(victim, n)]) if cloud
               else CausalContext({victim: n}, frozenset()))
    return ConversationMap({cid: {flag: Flag(frozenset(), context)}})


# -- finding 1: claims about a replica's own dots --------------------------------------------


def test_a_claim_on_our_own_dots_is_joined_and_our_next_enable_comes_after_it(a, caplog):
    a.pin("shared/a")
    # At WARNING on the logger itself: another test (the demo) may have quieted "crdtim".
    caplog.set_level(logging.WARNING, logger="crdtim.replica")
    a.apply_delta(codec.encode_map(forged_claim("shared/a", a.id, 1_000_000)), origin="m")
    assert not a.get("shared/a").pinned  # the claim covers our pin: as an unpin would
    a.apply_delta(codec.encode_map(forged_claim("shared/a", a.id, 1_000_001)), origin="m")
    warnings = [r for r in caplog.records if "claims enable" in r.getMessage()]
    assert len(warnings) == 1  # once per conversation and peer
    a.pin("shared/a")
    flag = a.state().fields("shared/a")["pinned"]
    assert flag.dots == {(a.id, 1_000_002)} and a.get("shared/a").pinned


def test_a_claim_at_the_codec_bound_refuses_only_that_flags_next_local_enable(a):
    # Regression: a forged context (our id, 2**63-1) made our next pin unreadable for good;
    # then it was refused whole, which let a peer cut links (specs/crdt.md §5).
    a.apply_delta(codec.encode_map(forged_claim("c", a.id, codec.MAX_INT)))
    before = (a.head, a.state())
    with pytest.raises(InvalidArgument, match="'c' pinned: this replica's enables of it"):
        a.pin("c")
    assert (a.head, a.state()) == before
    a.mute("c")
    a.pin("d")
    assert a.get("c").muted and a.get("d").pinned


def test_a_dot_counter_over_the_codec_bound_is_refused_at_decode(a):
    over = codec.encode_map(forged_claim("c", a.id, codec.MAX_INT)).replace(
        b"\xcf\x7f\xff\xff\xff\xff\xff\xff\xff", b"\xcf\x80\x00\x00\x00\x00\x00\x00\x00")
    assert over != codec.encode_map(forged_claim("c", a.id, codec.MAX_INT))
    with pytest.raises(DecodeError, match="pinned"):
        a.apply_delta(over)
    assert a.get("c") is None


# The property: whatever forged claims are injected where, replicas that exchange
# everything converge, and an enable made after the exchange holds on every replica.
N = 3
OPS = st.one_of(
    st.tuples(st.just("pin"), st.integers(0, N - 1), st.sampled_from(["c1", "c2"])),
    st.tuples(st.just("unpin"), st.integers(0, N - 1), st.sampled_from(["c1", "c2"])),
    st.tuples(st.just("title"), st.integers(0, N - 1), st.sampled_from(["c1", "c2"])),
    st.tuples(st.just("sync"), st.integers(0, N - 1), st.integers(0, N - 1)),
    st.tuples(st.just("forge"), st.integers(0, N - 1), st.integers(0, N - 1),
              st.sampled_from(["c1", "c2"]), st.integers(1, 10**6), st.booleans()),
)


@settings(max_examples=40)
@given(ops=st.lists(OPS, max_size=25))
def test_replicas_converge_whatever_forged_claims_are_injected(ops):
    with tempfile.TemporaryDirectory() as root:
        rs = [Replica.open(Path(root) / f"r{i}", durability="nosync") for i in range(N)]
        try:
            def sync(src: int, dst: int) -> None:
                if src != dst:
                    rs[dst].apply_delta(rs[src].delta_since(0), origin=rs[src].id)

            for op in ops:
                kind, i = op[0], op[1]
                if kind == "pin":
                    rs[i].pin(op[2])
                elif kind == "unpin":
                    rs[i].unpin(op[2])
                elif kind == "title":
                    rs[i].set_title(op[2], f"t{len(ops)}")
                elif kind == "sync":
                    sync(i, op[2])
                else:  # forge: replica i receives a claim on replica victim's dots
                    _, _, victim, cid, n, cloud = op
                    rs[i].apply_delta(codec.encode_map(
                        forged_claim(cid, rs[victim].id, n, cloud=cloud)), origin="mallory")
            for _ in range(2):  # everything everywhere
                for src in range(N):
                    for dst in range(N):
                        sync(src, dst)
            states = [r.state() for r in rs]
            assert states[0] == states[1] == states[2]
            # Healed: a pin made now is a fresh dot, past every claim, and holds everywhere.
            rs[0].pin("c1")
            for dst in range(1, N):
                sync(0, dst)
            assert all(r.get("c1").pinned for r in rs)
        finally:
            for r in rs:
                r.close()


# -- finding 4: a clock that was ahead once ------------------------------------------------

HOUR = 3600 * 1000
DRIFT = 5 * 60 * 1000


async def test_one_write_from_a_clock_an_hour_ahead_does_not_stall_what_follows(open_replica):
    # Regression (issue 12, finding 4): B refused A's delta holding the title with
    # ClockDriftError, and every later entry of A waited behind it for an hour.
    base = 1_700_000_000_000
    a_offset, b_offset = [HOUR], [0]
    a = open_replica("a", now_ms=lambda: base + a_offset[0])
    b = open_replica("b", now_ms=lambda: base + b_offset[0])
    a.set_title("t", "written an hour ahead")
    a_offset[0] = 0  # the clock is fixed; A's hybrid clock stays ahead (specs/crdt.md §1)
    a.pin("p")
    a.message_arrived("m", 1, "hi")
    a.set_title("u", "also stamped ahead: A's clock never goes back")
    async with Node(a, listen=(LOCAL, 0), config=FAST) as na, \
            Node(b, peers=[(LOCAL, na.port)], config=FAST) as nb:
        await settle((na, 1), (nb, 1))
        assert b.get("p").pinned and b.get("m").last_seq == 1
        assert b.get("t") is None and b.get("u") is None
        assert b.status()["pending"] == {"count": 2, "earliest": base + HOUR}
        assert b.status()["clock"][0] < base + HOUR
        assert na.stats.errors == nb.stats.errors == 0
        b_offset[0] = HOUR - DRIFT  # time has caught up: the Node's housekeeping applies them
        # The replica's own count, not the Node's snapshot: a snapshot taken before the held
        # values arrived also says 0.
        await wait_until(nb, lambda: b.status()["pending"]["count"] == 0)
        await settle((na, 1), (nb, 1))
        assert b.get("t").title == "written an hour ahead" and b.get("u") is not None
        assert a.state() == b.state() and b.status()["clock"][0] >= base + HOUR


T0 = 1_700_000_000_000


def _title(cid: str, wall: int, counter: int, rid: str, text: str) -> ConversationMap:
    return ConversationMap({cid: {"title": Lww(Stamp(T0 + wall, counter, rid), text)}})


DELTAS = st.lists(st.lists(st.one_of(
    st.builds(_title, st.sampled_from(["c1", "c2", "c3"]), st.integers(-DRIFT, 3 * DRIFT),
              st.integers(0, 3), st.sampled_from(["p", "q"]), st.sampled_from(["x", "y"])),
    st.builds(lambda cid, seq, at: ConversationMap().message_arrived(cid, seq, "m", T0 + at, "p"),
              st.sampled_from(["c1", "c2"]), st.integers(1, 5), st.integers(-DRIFT, 3 * DRIFT)),
    st.builds(lambda cid: ConversationMap().enable(cid, "pinned", "q"),
              st.sampled_from(["c1", "c3"])),
), min_size=1, max_size=4), max_size=8)


@settings(max_examples=40)
@given(deltas=DELTAS, wake=st.lists(st.integers(0, 4 * DRIFT), max_size=3))
def test_held_values_applied_later_converge_to_applying_everything_once_time_has_passed(
        deltas, wake):
    # A replica whose wall clock is at T0 holds what is past T0 + drift and applies it as
    # its clock moves (`wake`: housekeeping at those times); once past every stamp it
    # equals a replica that took everything at once, and so does one that got only its log.
    t0 = T0
    with tempfile.TemporaryDirectory() as root:
        now = [t0]
        late = Replica.open(Path(root) / "late", durability="nosync", now_ms=lambda: now[0])
        at_once = Replica.open(Path(root) / "once", durability="nosync",
                               now_ms=lambda: t0 + 4 * DRIFT)
        relay = Replica.open(Path(root) / "relay", durability="nosync",
                             now_ms=lambda: t0 + 4 * DRIFT)
        try:
            for i, parts in enumerate(deltas):
                payload = codec.encode_map(ConversationMap().join_all(parts))
                late.apply_delta(payload, origin="peer")
                at_once.apply_delta(payload, origin="peer")
                if i < len(wake):
                    now[0] = max(now[0], t0 + wake[i])
                    late.housekeeping()
            now[0] = t0 + 4 * DRIFT
            late.housekeeping()
            assert late.status()["pending"]["count"] == 0
            assert late.state() == at_once.state()
            relay.apply_delta(late.delta_since(0), origin=late.id)
            assert relay.state() == at_once.state()
        finally:
            for r in (late, at_once, relay):
                r.close()


def test_held_values_are_in_the_metrics():
    pytest.importorskip("prometheus_client", reason="the crdtim[metrics] extra is not installed")
    from types import SimpleNamespace

    from crdtim.metrics import NodeCollector
    from crdtim.net import NodeStats

    node = SimpleNamespace(stats=NodeStats(), status_snapshot={
        "head": 7, "conversations": 3, "peers": {},
        "pending": {"count": 2, "earliest": T0}})
    metrics = {m.name: m for m in NodeCollector(node).collect()}
    assert metrics["crdtim_pending_values"].samples[0].value == 2
    assert metrics["crdtim_pending_earliest_ms"].samples[0].value == T0


# -- finding 8 (wire part): every msgpack error names its problem ------------------------------


@pytest.mark.parametrize("data, reason", [
    (b"\x91" * 5000, "nested too deeply"),
    (b"\x81" * 3000 + b"\x00", "nested too deeply"),
    (b"\xc1", "reserved type 0xc1"),
    (b"\x92\x01", "incomplete input"),
])
def test_msgpack_errors_name_the_problem(data, reason):
    # Regression: StackError and FormatError have no text, so the reason read
    # "not valid msgpack: " and nothing more.
    with pytest.raises(DecodeError, match=reason):
        codec.unpack(data)


def _held_replica(path: Path, now: list[int]) -> Replica:
    r = Replica.open(path, durability="nosync", now_ms=lambda: now[0])
    r.apply_delta(codec.encode_map(_title("c1", 2 * DRIFT, 0, "p", "later")), origin="peer")
    assert r.status()["pending"]["count"] == 1
    return r


def test_a_damaged_held_value_is_reported_not_applied(tmp_path):
    import lmdb
    now = [T0]
    _held_replica(tmp_path / "r", now).close()
    env = lmdb.open(str(tmp_path / "r"), max_dbs=16)
    with env.begin(write=True) as t:
        db = env.open_db(b"pending", txn=t)
        ((k, v),) = list(t.cursor(db=db))
        t.put(k, v[:-6] + bytes([v[-6] ^ 0x20]) + v[-5:], db=db)  # one bit of the text
    env.close()
    now[0] = T0 + 4 * DRIFT
    with Replica.open(tmp_path / "r", now_ms=lambda: now[0]) as r:
        with pytest.raises(CorruptStoreError, match="pending"):
            r.apply_pending()
        assert r.get("c1") is None


def test_a_format_2_directory_gets_its_held_values_sealed(tmp_path):
    """Format 2 kept `pending` values unsealed: rewrite a copy that way and open it."""
    import lmdb
    now = [T0]
    _held_replica(tmp_path / "r", now).close()
    env = lmdb.open(str(tmp_path / "r"), max_dbs=16)
    with env.begin(write=True) as t:
        db = env.open_db(b"pending", txn=t)
        for k, v in list(t.cursor(db=db)):
            t.put(k, v[:-4], db=db)
        t.put(b"format", struct.pack(">Q", 2), db=env.open_db(b"meta", txn=t))
    env.close()
    now[0] = T0 + 4 * DRIFT
    with Replica.open(tmp_path / "r", now_ms=lambda: now[0]) as r:
        assert r.store.read(lambda t: t.meta(b"format")) == struct.pack(">Q", 3)
        r.apply_pending()
        assert r.get("c1").title == "later"
