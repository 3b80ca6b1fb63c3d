"""Hardening against hostile peers and wrong clocks (specs/security.md §1, §7; specs/crdt.md
§1, §5): what a peer can no longer do to replicas it is not talking to.

- A forged causal-context claim about another replica's dots is confined to the one flag of
  the one conversation it was sent in, and healed by that replica's next enable: it never
  cuts a link (regression for the forged-dot attack, issue 12, finding 1).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtim import codec
from crdtim.crdt import CausalContext, ConversationMap, Flag
from crdtim.errors import DecodeError
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
