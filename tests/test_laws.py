"""The laws of the pure core, one property suite parametrized over every lattice.

A join-semilattice's join is commutative, associative and idempotent, with bottom as its
identity; a delta mutator's delta, joined into the state, gives the mutated state; the codec
is the identity after a round trip; the novel part of a delta changes a state exactly as the
whole delta does. Each law is written once and run against every type (riak_dt and
rust-crdt style), never copied per type. Equality is structural (`==` on the states), which is
exactly what convergence needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

import message_strategies as ms
import strategies as s
from crdtim import codec
from crdtim.crdt import (
    CausalContext,
    ConversationMap,
    Flag,
    History,
    Lww,
    LwwInt,
    MaxMap,
    MaxReg,
    MessageState,
    Stamp,
    join_fields,
)


LATTICES = [
    s.LatticeCase("Lww", s.lwws(), Lww.bottom()),
    s.LatticeCase("MaxReg", s.maxregs(), MaxReg.bottom()),
    s.LatticeCase("LwwInt", s.lww_ints(), LwwInt.bottom()),
    s.LatticeCase("MaxMap", s.maxmaps(), MaxMap.bottom()),
    # The join's top-k truncation, reached with a bound of 3 members (specs/crdt.md §3a).
    s.LatticeCase("MaxMap[limit 3]", s.maxmaps(s.SmallMaxMap), s.SmallMaxMap.bottom()),
    s.LatticeCase("Flag", s.flags(), Flag.bottom()),
    s.LatticeCase("CausalContext", s.contexts(), CausalContext()),
    s.LatticeCase("ConversationMap", s.conversation_maps(), ConversationMap.bottom()),
    # The message history (specs/crdt.md §8): one message, the map, the reachable map.
    s.LatticeCase("MessageState", ms.messages(), MessageState.bottom()),
    s.LatticeCase("History", ms.histories(), History.bottom()),
    s.LatticeCase("History[reachable]", ms.reachable_histories(), History.bottom()),
    s.LatticeCase(
        "ConversationMap[archived]",
        s.conversation_maps(s.EXTENDED_SCHEMA),
        ConversationMap.bottom(s.EXTENDED_SCHEMA),
    ),
]

lattices = pytest.mark.parametrize("case", LATTICES, ids=str)


# -- join-semilattice laws -----------------------------------------------------------------


@lattices
@s.FAST
@given(data=st.data())
def test_join_is_commutative(case: s.LatticeCase, data: st.DataObject) -> None:
    # a ⊔ b = b ⊔ a
    a, b = data.draw(case.states, "a"), data.draw(case.states, "b")
    assert a.join(b) == b.join(a)


@lattices
@s.FAST
@given(data=st.data())
def test_join_is_associative(case: s.LatticeCase, data: st.DataObject) -> None:
    # (a ⊔ b) ⊔ c = a ⊔ (b ⊔ c)
    a, b, c = (data.draw(case.states, name) for name in "abc")
    assert a.join(b).join(c) == a.join(b.join(c))


@lattices
@s.FAST
@given(data=st.data())
def test_join_is_idempotent(case: s.LatticeCase, data: st.DataObject) -> None:
    # a ⊔ a = a
    a = data.draw(case.states, "a")
    assert a.join(a) == a


@lattices
@s.FAST
@given(data=st.data())
def test_bottom_is_identity(case: s.LatticeCase, data: st.DataObject) -> None:
    # ⊥ ⊔ a = a = a ⊔ ⊥
    a = data.draw(case.states, "a")
    assert case.bottom.join(a) == a
    assert a.join(case.bottom) == a


@lattices
@s.FAST
@given(data=st.data())
def test_join_is_an_upper_bound(case: s.LatticeCase, data: st.DataObject) -> None:
    # a ⊑ a ⊔ b, i.e. a ⊔ (a ⊔ b) = a ⊔ b; and the same for b
    a, b = data.draw(case.states, "a"), data.draw(case.states, "b")
    ab = a.join(b)
    assert a.join(ab) == ab
    assert b.join(ab) == ab


@pytest.mark.parametrize("schema", [s.DEFAULT_SCHEMA, s.EXTENDED_SCHEMA], ids=["default", "archived"])
@s.FAST
@given(data=st.data())
def test_join_all_is_the_fold_of_join(schema, data: st.DataObject) -> None:
    # a.join_all([b1, ..., bn]) = (((a ⊔ b1) ⊔ b2) ... ⊔ bn), and it leaves its inputs alone;
    # the many maps share conversations often, so that joins inside one id are exercised.
    maps = s.conversation_maps(schema)
    a = data.draw(maps, "a")
    bs = data.draw(st.lists(maps, max_size=6), "bs")
    before = [ConversationMap(dict(m.convs), schema) for m in [a, *bs]]
    # The fold, by the field-level join (ConversationMap.join is join_all of one map).
    folded_convs = dict(a.convs)
    for b in bs:
        for cid, fields in b.convs.items():
            folded_convs[cid] = join_fields(folded_convs.get(cid, {}), fields)
    folded = ConversationMap(folded_convs, schema)
    joined = a.join_all(bs)
    assert joined == folded
    assert joined.convs == ConversationMap(joined.convs, schema).convs  # normalized
    assert [a, *bs] == before

# -- delta mutators ------------------------------------------------------------------------
#
# Each case draws a state and the mutator's arguments and returns a Mutation: the delta the
# mutator made, the mutated state computed by a plain model (Python max on tuples, set
# algebra on dots -- not the join under test), and the footprint the delta may touch.


@dataclass(frozen=True)
class Mutation:
    state: Any
    delta: Any
    expected: Any  # the mutated state, from the plain model
    footprint: dict[str, set[str]] | None = None  # maps: cid -> fields the delta may hold


@dataclass(frozen=True)
class MutatorCase:
    name: str
    mutations: st.SearchStrategy[Mutation]

    def __str__(self) -> str:
        return self.name


def flag_sets(f: Flag) -> tuple[frozenset, frozenset]:
    """A flag as plain sets: (alive dots, every dot in its context)."""
    return frozenset(f.dots), frozenset(f.context.dots())


def flag_from_sets(alive: set, seen: set) -> Flag:
    return Flag(frozenset(alive), CausalContext.of_dots(seen))


def model_enable(f: Flag, replica: str) -> Flag:
    # A fresh dot: one past every dot of `replica` the flag has seen; it replaces all enables.
    alive, seen = flag_sets(f)
    dot = (replica, 1 + max((n for r, n in seen if r == replica), default=0))
    return flag_from_sets({dot}, seen | {dot})


def model_disable(f: Flag) -> Flag:
    # No dots survive; the knowledge stays.
    return flag_from_sets(set(), flag_sets(f)[1])


def newest(a: Lww, b: Lww) -> Lww:
    return max(a, b, key=lambda x: (x.stamp, x.value))


@st.composite
def fresh_stamps(draw: Callable, after: Stamp) -> Stamp:
    """A stamp larger than `after`, as a replica's ticking clock makes."""
    return Stamp(after.wall + draw(st.integers(1, 3)), draw(st.integers(0, 2)), draw(s.replica_ids))


@st.composite
def lww_set(draw: Callable) -> Mutation:
    state = draw(s.lwws())
    value, stamp = draw(s.texts), draw(fresh_stamps(state.stamp))
    return Mutation(state, state.set(value, stamp), Lww(stamp, value))


@st.composite
def maxreg_raise(draw: Callable) -> Mutation:
    state, n = draw(s.maxregs()), draw(st.integers(0, 10))
    return Mutation(state, state.raise_to(n), MaxReg(max(state.value, n)))


@st.composite
def flag_enable(draw: Callable) -> Mutation:
    state, replica = draw(s.flags()), draw(s.replica_ids)
    return Mutation(state, state.enable(replica), model_enable(state, replica))


@st.composite
def flag_disable(draw: Callable) -> Mutation:
    state = draw(s.flags())
    return Mutation(state, state.disable(), model_disable(state))


def with_fields(m: ConversationMap, cid: str, changed: dict[str, Any]) -> ConversationMap:
    """The plain-model mutated map: `m` with some fields of `cid` replaced."""
    return ConversationMap({**m.convs, cid: {**m.fields(cid), **changed}}, m.schema)


def current(m: ConversationMap, cid: str, name: str) -> Any:
    state = m.fields(cid).get(name)
    return m.schema.by_name[name].lattice.bottom() if state is None else state


@st.composite
def map_set_title(draw: Callable) -> Mutation:
    m, cid, text = draw(s.conversation_maps()), draw(s.conversation_ids), draw(s.texts)
    stamp = draw(fresh_stamps(current(m, cid, "title").stamp))
    expected = with_fields(m, cid, {"title": Lww(stamp, text)})
    return Mutation(m, m.set_title(cid, text, stamp), expected, {cid: {"title"}})


@st.composite
def map_enable(draw: Callable) -> Mutation:
    m, cid, replica = draw(s.conversation_maps()), draw(s.conversation_ids), draw(s.replica_ids)
    name = draw(st.sampled_from(["pinned", "muted"]))
    expected = with_fields(m, cid, {name: model_enable(current(m, cid, name), replica)})
    return Mutation(m, m.enable(cid, name, replica), expected, {cid: {name}})


@st.composite
def map_disable(draw: Callable) -> Mutation:
    m, cid = draw(s.conversation_maps()), draw(s.conversation_ids)
    name = draw(st.sampled_from(["pinned", "muted"]))
    expected = with_fields(m, cid, {name: model_disable(current(m, cid, name))})
    return Mutation(m, m.disable(cid, name), expected, {cid: {name}})


@st.composite
def map_raise_to(draw: Callable) -> Mutation:
    m, cid, n = draw(s.conversation_maps()), draw(s.conversation_ids), draw(st.integers(0, 10))
    name = draw(st.sampled_from(["last_seq", "read_seq"]))
    expected = with_fields(m, cid, {name: MaxReg(max(current(m, cid, name).value, n))})
    return Mutation(m, m.raise_to(cid, name, n), expected, {cid: {name}})


@st.composite
def map_message_arrived(draw: Callable) -> Mutation:
    m, cid = draw(s.conversation_maps()), draw(s.conversation_ids)
    seq, preview = draw(st.integers(1, 10)), draw(s.texts)
    at, replica = draw(st.integers(0, 5)), draw(s.replica_ids)
    arrived = Lww(Stamp(at, seq, replica), preview)
    expected = with_fields(m, cid, {
        "last_seq": MaxReg(max(current(m, cid, "last_seq").value, seq)),
        "last_message": newest(current(m, cid, "last_message"), arrived),
    })
    delta = m.message_arrived(cid, seq, preview, at, replica)
    return Mutation(m, delta, expected, {cid: {"last_seq", "last_message"}})


@st.composite
def map_mark_read(draw: Callable) -> Mutation:
    # Reads up to n and removes the marks as unread seen so far.
    m, cid, n = draw(s.conversation_maps()), draw(s.conversation_ids), draw(st.integers(0, 10))
    expected = with_fields(m, cid, {
        "read_seq": MaxReg(max(current(m, cid, "read_seq").value, n)),
        "marked_unread": model_disable(current(m, cid, "marked_unread")),
    })
    return Mutation(m, m.mark_read(cid, n), expected, {cid: {"read_seq", "marked_unread"}})


@st.composite
def lww_int_set(draw: Callable) -> Mutation:
    state = draw(s.lww_ints())
    value, stamp = draw(st.integers(0, 9)), draw(fresh_stamps(state.stamp))
    return Mutation(state, state.set(value, stamp), LwwInt(stamp, value))


@st.composite
def maxmap_raise(draw: Callable) -> Mutation:
    cls = draw(st.sampled_from([MaxMap, s.SmallMaxMap]))
    state, member, n = draw(s.maxmaps(cls)), draw(st.sampled_from(s.MEMBERS)), draw(st.integers(0, 6))
    # The model: the member's position is max(old, n), then the top LIMIT by (seq, member).
    entries = dict(state.entries)
    entries[member] = max(entries.get(member, 0), n)
    ranked = sorted(((v, k) for k, v in entries.items() if v), reverse=True)[: cls.LIMIT]
    return Mutation(state, state.raise_to(member, n), cls({k: v for v, k in ranked}))


def last_at(m: ConversationMap, cid: str) -> int:
    return current(m, cid, "last_message").stamp.wall


def seq_of(m: ConversationMap, cid: str, name: str) -> int:
    return current(m, cid, name).value


@st.composite
def map_archive(draw: Callable) -> Mutation:
    m, cid, replica = draw(s.conversation_maps()), draw(s.conversation_ids), draw(s.replica_ids)
    keep = draw(st.booleans())
    keep_flag = current(m, cid, "archive_keep")
    expected = with_fields(m, cid, {
        "archived": model_enable(current(m, cid, "archived"), replica),
        "archived_seq": MaxReg(max(seq_of(m, cid, "archived_seq"), seq_of(m, cid, "last_seq"))),
        "archived_at": MaxReg(max(seq_of(m, cid, "archived_at"), last_at(m, cid))),
        "archive_keep": model_enable(keep_flag, replica) if keep else model_disable(keep_flag),
    })
    names = {"archived", "archived_seq", "archived_at", "archive_keep"}
    return Mutation(m, m.archive(cid, replica, keep), expected, {cid: names})


@st.composite
def map_unarchive(draw: Callable) -> Mutation:
    m, cid = draw(s.conversation_maps()), draw(s.conversation_ids)
    expected = with_fields(m, cid, {
        "archived": model_disable(current(m, cid, "archived")),
        "archive_keep": model_disable(current(m, cid, "archive_keep")),
    })
    return Mutation(m, m.unarchive(cid), expected, {cid: {"archived", "archive_keep"}})


@st.composite
def map_delete(draw: Callable) -> Mutation:
    # cleared_at = max(now, last_at), read_seq = last_seq; the last message is dropped (the
    # constructor's normalization, i.e. the plain model of clear_covered). `now` from 1: a
    # replica's wall clock is never 0, and cleared_at 0 is bottom (nothing cleared), so a
    # delete at 0 of a message at 0 would clear nothing.
    m, cid, now = draw(s.conversation_maps()), draw(s.conversation_ids), draw(st.integers(1, 5))
    expected = with_fields(m, cid, {
        "cleared_at": MaxReg(max(seq_of(m, cid, "cleared_at"), now, last_at(m, cid))),
        "read_seq": MaxReg(max(seq_of(m, cid, "read_seq"), seq_of(m, cid, "last_seq"))),
    })
    assert "last_message" not in expected.fields(cid)
    return Mutation(m, m.delete(cid, now), expected, {cid: {"cleared_at", "read_seq"}})


@st.composite
def map_mark_unread(draw: Callable) -> Mutation:
    m, cid, replica = draw(s.conversation_maps()), draw(s.conversation_ids), draw(s.replica_ids)
    expected = with_fields(
        m, cid, {"marked_unread": model_enable(current(m, cid, "marked_unread"), replica)})
    return Mutation(m, m.mark_unread(cid, replica), expected, {cid: {"marked_unread"}})


@st.composite
def map_mute(draw: Callable) -> Mutation:
    m, cid, replica = draw(s.conversation_maps()), draw(s.conversation_ids), draw(s.replica_ids)
    until = draw(st.integers(0, 9))
    stamp = draw(fresh_stamps(current(m, cid, "muted_until").stamp))
    expected = with_fields(m, cid, {
        "muted": model_enable(current(m, cid, "muted"), replica),
        "muted_until": LwwInt(stamp, until),
    })
    return Mutation(m, m.mute(cid, replica, until, stamp), expected, {cid: {"muted", "muted_until"}})


@st.composite
def map_mark_read_by(draw: Callable) -> Mutation:
    m, cid = draw(s.conversation_maps()), draw(s.conversation_ids)
    member, n = draw(st.sampled_from(s.MEMBERS)), draw(st.integers(0, 6))
    entries = dict(current(m, cid, "read_by").entries)
    entries[member] = max(entries.get(member, 0), n)
    expected = with_fields(m, cid, {"read_by": MaxMap.bounded(entries)})
    return Mutation(m, m.mark_read_by(cid, member, n), expected, {cid: {"read_by"}})


MUTATORS = [
    MutatorCase("Lww.set", lww_set()),
    MutatorCase("MaxReg.raise_to", maxreg_raise()),
    MutatorCase("Flag.enable", flag_enable()),
    MutatorCase("Flag.disable", flag_disable()),
    MutatorCase("ConversationMap.set_title", map_set_title()),
    MutatorCase("ConversationMap.enable", map_enable()),
    MutatorCase("ConversationMap.disable", map_disable()),
    MutatorCase("ConversationMap.raise_to", map_raise_to()),
    MutatorCase("ConversationMap.message_arrived", map_message_arrived()),
    MutatorCase("ConversationMap.mark_read", map_mark_read()),
    MutatorCase("LwwInt.set", lww_int_set()),
    MutatorCase("MaxMap.raise_to", maxmap_raise()),
    MutatorCase("ConversationMap.archive", map_archive()),
    MutatorCase("ConversationMap.unarchive", map_unarchive()),
    MutatorCase("ConversationMap.delete", map_delete()),
    MutatorCase("ConversationMap.mark_unread", map_mark_unread()),
    MutatorCase("ConversationMap.mute", map_mute()),
    MutatorCase("ConversationMap.mark_read_by", map_mark_read_by()),
]


@pytest.mark.parametrize("case", MUTATORS, ids=str)
@s.FAST
@given(data=st.data())
def test_delta_mutator_gives_the_mutated_state(case: MutatorCase, data: st.DataObject) -> None:
    # x ⊔ mδ(x) = m(x), with m(x) from a plain model
    m = data.draw(case.mutations)
    assert m.state.join(m.delta) == m.expected
    # mδ(x) ⊑ m(x): the delta is a state of the same type, below the mutated state
    assert m.delta.join(m.expected) == m.expected


@pytest.mark.parametrize("case", MUTATORS, ids=str)
@s.FAST
@given(data=st.data())
def test_delta_is_small(case: MutatorCase, data: st.DataObject) -> None:
    m = data.draw(case.mutations)
    if isinstance(m.delta, Flag):
        # An enable's delta holds one dot and knows only that dot and the dots it replaces;
        # a disable's delta knows only the dots it removes.
        alive, seen = flag_sets(m.state)
        new_alive, new_seen = flag_sets(m.delta)
        assert len(new_alive) <= 1
        assert new_seen <= alive | new_alive
    elif isinstance(m.delta, ConversationMap):
        # Only the touched conversation and field(s), and only fields that change the state.
        for cid, fields in m.delta.convs.items():
            assert set(fields) <= m.footprint.get(cid, set())
            for name, d in fields.items():
                mine = current(m.state, cid, name)
                assert mine.join(d) != mine, f"{cid}.{name} in the delta changes nothing"
    # Lww and MaxReg deltas are one register: small by construction.


# -- codec ---------------------------------------------------------------------------------


@s.FAST
@given(m=st.one_of(s.conversation_maps(), s.conversation_maps(s.EXTENDED_SCHEMA)))
def test_map_encoding_round_trips(m: ConversationMap) -> None:
    # decode(encode(x)) = x
    assert codec.decode_map(codec.encode_map(m), m.schema) == m


@s.FAST
@given(m=st.one_of(s.conversation_maps(), s.conversation_maps(s.EXTENDED_SCHEMA)))
def test_fields_encoding_round_trips(m: ConversationMap) -> None:
    # decode_fields(encode_fields(f)) = f, for every conversation's fields
    for fields in m.convs.values():
        assert codec.decode_fields(codec.encode_fields(fields, m.schema), m.schema) == fields


# -- novel part ----------------------------------------------------------------------------


@st.composite
def state_and_delta(draw: Callable) -> tuple[ConversationMap, ConversationMap]:
    """A state and a delta that overlaps it in part: some of the delta is old news."""
    state = draw(s.conversation_maps())
    fresh = draw(st.one_of(s.conversation_maps(), s.map_deltas(state)))
    old = draw(s.sub_maps(state))
    return state, draw(st.sampled_from([fresh, old, fresh.join(old)]))


@s.FAST
@given(pair=state_and_delta())
def test_novel_part_changes_the_state_like_the_delta(pair) -> None:
    # x ⊔ novel(x, d) = x ⊔ d
    state, d = pair
    assert state.join(state.novel(d)) == state.join(d)


@s.FAST
@given(pair=state_and_delta())
def test_novel_part_is_no_larger_than_the_delta(pair) -> None:
    # novel(x, d) ⊆ d field by field, and |encode(novel(x, d))| ≤ |encode(d)|
    state, d = pair
    part = state.novel(d)
    assert set(part.convs) <= set(d.convs)
    for cid, fields in part.convs.items():
        assert set(fields) <= set(d.convs[cid])
        assert all(d.convs[cid][name] == f for name, f in fields.items())
    assert len(codec.encode_map(part)) <= len(codec.encode_map(d))


@s.FAST
@given(state=s.conversation_maps(), data=st.data())
def test_novel_part_of_old_news_is_bottom(state: ConversationMap, data: st.DataObject) -> None:
    # d ⊑ x  ⇒  novel(x, d) = ⊥
    assert state.novel(data.draw(s.sub_maps(state))).is_bottom()


@s.FAST
@given(m=st.one_of(s.conversation_maps(), s.conversation_maps(s.EXTENDED_SCHEMA)))
def test_stamp_bounds_are_the_three_maxima(m: ConversationMap) -> None:
    # The one-pass bounds a receiver checks are exactly the three separate maxima.
    assert m.stamp_bounds() == (m.max_clock(), m.max_counter(), m.max_wall())


# -- canonical states ----------------------------------------------------------------------


def rebuilt(x: Any) -> Any:
    """`x` made again from what it knows, by its type's canonicalizing constructor: the
    context from its set of dots, the map's entries through `bounded`, a message and a
    history through `make`, a conversation map through its constructor (no bottom field, no
    empty conversation). Registers hold one value: canonical as they are."""
    if isinstance(x, CausalContext):
        return CausalContext.of_dots(x.dots())
    if isinstance(x, Flag):
        return Flag(frozenset(x.dots), rebuilt(x.context))
    if isinstance(x, MaxMap):
        return type(x).bounded(dict(x.entries))
    if isinstance(x, MessageState):
        return MessageState.make(x.header, x.base, x.appends, x.deleted)
    if isinstance(x, History):
        return History.make({mid: rebuilt(m) for mid, m in x.messages.items()}, x.choices)
    if isinstance(x, ConversationMap):
        return ConversationMap({cid: {name: rebuilt(f) for name, f in fields.items()}
                                for cid, fields in x.convs.items()}, x.schema)
    return x


@lattices
@s.FAST
@given(data=st.data())
def test_a_join_is_canonical(case: s.LatticeCase, data: st.DataObject) -> None:
    """crdt.md §0: an implementation must keep states canonical, so that `==` on states
    means "same knowledge": a join, made again from what it knows, is the same structure."""
    a, b = data.draw(case.states, "a"), data.draw(case.states, "b")
    ab = a.join(b)
    assert rebuilt(ab) == ab
    if isinstance(ab, CausalContext):  # and it knows exactly what its sides knew
        assert set(ab.dots()) == set(a.dots()) | set(b.dots())


@pytest.mark.parametrize("case", MUTATORS, ids=str)
@s.FAST
@given(data=st.data())
def test_a_delta_and_the_mutated_state_are_canonical(case: MutatorCase,
                                                     data: st.DataObject) -> None:
    """crdt.md §0: what a delta mutator makes is canonical too, delta and mutated state."""
    m = data.draw(case.mutations)
    assert rebuilt(m.delta) == m.delta
    mutated = m.state.join(m.delta)
    assert rebuilt(mutated) == mutated
