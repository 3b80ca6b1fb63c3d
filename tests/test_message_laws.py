"""The laws of the message-history lattices (specs/crdt.md §8.2, §8.4, §8.5), as properties.

The join laws themselves run in tests/test_laws.py's one suite, over these types too; here:
the join's result is canonical, the message join matches its plain definition, each delta
mutator checked against a plain model of the mutated state; the novel part checked to change
a state exactly as the whole delta does. Equality is structural (canonical states).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import reduce

import message_strategies as ms
import pytest
import strategies as s
from hypothesis import given
from hypothesis import strategies as st

from crdtim.crdt import (
    BOTTOM_STAMP,
    Append,
    Header,
    History,
    Lww,
    MessageState,
    Stamp,
    versions,
    visible_path,
)


LATTICES = [
    s.LatticeCase("MessageState", ms.messages(), MessageState.bottom()),
    s.LatticeCase("History", ms.histories(), History.bottom()),
    s.LatticeCase("History[reachable]", ms.reachable_histories(), History.bottom()),
]
lattices = pytest.mark.parametrize("case", LATTICES, ids=str)


# Commutative, associative, idempotent, bottom as identity: tests/test_laws.py runs its one
# suite over these three types too (its LATTICES). What is particular to them is here.


@lattices
@s.FAST
@given(data=st.data())
def test_join_is_an_upper_bound_and_canonical(case: s.LatticeCase, data: st.DataObject) -> None:
    # a ⊑ a ⊔ b and b ⊑ a ⊔ b; and the join is already in canonical form (§8.2.4, §8.4.1)
    a, b = data.draw(case.states, "a"), data.draw(case.states, "b")
    ab = a.join(b)
    assert a.join(ab) == ab
    assert b.join(ab) == ab
    if isinstance(ab, MessageState):
        assert MessageState.make(ab.header, ab.base, ab.appends, ab.deleted) == ab
    else:
        assert History.make(ab.messages, ab.choices) == ab


@s.FAST
@given(data=st.data())
def test_message_join_matches_the_plain_definition(data: st.DataObject) -> None:
    # §8.2.4 written out: the smaller header, the larger base, the union of appends made on a
    # base no older than that base, deleted = or; a deleted result holds no text, no author.
    a, b = data.draw(ms.messages(), "a"), data.draw(ms.messages(), "b")
    def key(h: Header) -> tuple:  # the order of §8.2.1, written out: author last
        return (h.created, h.parent is not None, h.parent or "", h.origin is not None,
                h.origin or "", h.role, h.at, h.seq is not None, h.seq or 0,
                h.author is not None, h.author or "")

    heads = [h for h in (a.header, b.header) if h is not None]
    header = min(heads, key=key) if heads else None
    deleted = a.deleted or b.deleted
    base = max(a.base, b.base, key=lambda x: (x.stamp, x.value))
    if deleted:
        expected = MessageState(
            None if header is None else Header(header.parent, header.origin, header.role,
                                               None, header.at, header.seq, header.created),
            Lww.bottom(), frozenset(), True)
    else:
        kept = frozenset(x for x in a.appends | b.appends if x.base >= base.stamp)
        expected = MessageState(header, base, kept, False)
    assert a.join(b) == expected


# -- delta mutators against a plain model -------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    state: History
    delta: History
    expected: History | None  # the mutated state from a plain model (None: checked otherwise)


def with_message(h: History, mid: str, m: MessageState, **choices: Lww) -> History:
    return History({**h.messages, mid: m}, {**h.choices, **choices})


def live_ids(h: History) -> list[str]:
    return [mid for mid in ms.known_ids(h) if not h.messages[mid].deleted]


@st.composite
def post_after_newest(draw: Callable) -> Mutation:
    h = draw(ms.histories())
    mid = draw(st.sampled_from([i for i in (*ms.MESSAGE_IDS, "m9") if i not in h.messages]))
    text, stamp = draw(ms.texts), ms.fresh_stamp(h)
    header = Header(ms.last_visible(h), None, "user", None, stamp.wall, None, stamp)
    expected = with_message(h, mid, MessageState(header, Lww(stamp, text)))
    return Mutation(h, h.post(mid, text, stamp), expected)


@st.composite
def append_text(draw: Callable) -> Mutation:
    h = draw(ms.histories())
    # An append is made on a text: a message known by its header alone refuses it (§8.5.3).
    ids = [mid for mid in live_ids(h) if h.messages[mid].base.stamp != BOTTOM_STAMP]
    if not ids:
        return Mutation(h, History(), h)
    mid, text = draw(st.sampled_from(ids)), draw(st.sampled_from(("a", "bc")))
    stamp, m = ms.fresh_stamp(h), h.messages[mid]
    added = Append(stamp, m.base.stamp, text)
    expected = with_message(h, mid, MessageState(m.header, m.base, m.appends | {added}))
    return Mutation(h, h.append(mid, text, stamp), expected)


@st.composite
def edit_text(draw: Callable) -> Mutation:
    h = draw(ms.histories())
    ids = live_ids(h)
    if not ids:
        return Mutation(h, History(), h)
    mid, text, stamp = draw(st.sampled_from(ids)), draw(ms.texts), ms.fresh_stamp(h)
    m = h.messages[mid]
    # A fresh base is newer than every append's base: all of them go.
    expected = with_message(h, mid, MessageState(m.header, Lww(stamp, text)))
    return Mutation(h, h.edit(mid, text, stamp), expected)


@st.composite
def delete_message(draw: Callable) -> Mutation:
    h = draw(ms.histories())
    ids = ms.known_ids(h)
    if not ids:
        return Mutation(h, History(), h)
    mid = draw(st.sampled_from(ids))
    header = h.messages[mid].header
    assert header is not None
    tomb = Header(header.parent, header.origin, header.role, None, header.at, header.seq,
                  header.created)
    expected = with_message(h, mid, MessageState(tomb, Lww.bottom(), frozenset(), True))
    return Mutation(h, h.delete(mid), expected)


@st.composite
def regenerate_version(draw: Callable) -> Mutation:
    h = draw(ms.reachable_histories())
    ids = ms.known_ids(h)
    if not ids:
        return Mutation(h, History(), h)
    of, text, stamp = draw(st.sampled_from(ids)), draw(ms.texts), ms.fresh_stamp(h)
    old = h.messages[of].header
    assert old is not None
    group = old.origin or of
    header = Header(old.parent, group, old.role, old.author, stamp.wall, None, stamp)
    # The choices are checked by the visibility test below; the message is modelled here.
    delta = h.regenerate(of, "m9", text, stamp)
    expected = History({**h.messages, "m9": MessageState(header, Lww(stamp, text))},
                       {**h.choices, **delta.choices})
    assert delta.choices[group] == Lww(stamp, "m9")
    return Mutation(h, delta, expected)


@st.composite
def switch_version(draw: Callable) -> Mutation:
    h = draw(ms.reachable_histories())
    ids = ms.known_ids(h)
    if not ids:
        return Mutation(h, History(), h)
    mid = draw(st.sampled_from(ids))
    return Mutation(h, h.switch(mid, ms.fresh_stamp(h)), None)


MUTATORS = {
    "post": post_after_newest(),
    "append": append_text(),
    "edit": edit_text(),
    "delete": delete_message(),
    "regenerate": regenerate_version(),
    "switch": switch_version(),
}
mutators = pytest.mark.parametrize("name", sorted(MUTATORS))


@mutators
@s.FAST
@given(data=st.data())
def test_delta_mutator_gives_the_mutated_state(name: str, data: st.DataObject) -> None:
    # x ⊔ mδ(x) = m(x) from the plain model; mδ(x) ⊑ m(x)
    m = data.draw(MUTATORS[name])
    got = m.state.join(m.delta)
    if m.expected is not None:
        assert got == m.expected
    assert m.delta.join(got) == got


@mutators
@s.FAST
@given(data=st.data())
def test_delta_holds_only_what_changes(name: str, data: st.DataObject) -> None:
    # novel(x, mδ(x)) = mδ(x): nothing in a delta is old news; and it is small: one message
    # (a post, an append, an edit, a delete, a version) plus choices on one path
    m = data.draw(MUTATORS[name])
    assert m.state.novel(m.delta) == m.delta
    assert len(m.delta.messages) <= 1
    for part in m.delta.messages.values():
        assert len(part.appends) <= 1


def path_can_be_shown(h: History, mid: str) -> bool:
    """Whether `mid`'s path reaches a root through known messages, with no repeat and no
    two messages of one group (only forged states break this)."""
    seen, groups, cursor = set(), set(), mid
    while cursor is not None:
        m = h.messages.get(cursor)
        if m is None or m.header is None or cursor in seen:
            return False
        group = m.header.origin or cursor
        if group in groups:
            return False
        seen.add(cursor)
        groups.add(group)
        cursor = m.header.parent
    return True


@s.FAST
@given(h=ms.histories(), data=st.data())
def test_switch_and_regenerate_make_the_message_visible(h: History, data: st.DataObject) -> None:
    # §8.5.2, §8.5.5: after switch(m) (or regenerate into v), m (v) is on the visible path, when
    # m's path can be shown at all
    ids = [mid for mid in ms.known_ids(h) if path_can_be_shown(h, mid)]
    if not ids:
        return
    shown = visible_path(h)
    hidden = [mid for mid in ids if mid not in shown]  # the interesting ones, when there are
    mid = data.draw(st.sampled_from(hidden or ids))
    switched = h.join(h.switch(mid, ms.fresh_stamp(h)))
    assert mid in visible_path(switched)
    regenerated = h.join(h.regenerate(mid, "m9", "v", ms.fresh_stamp(h)))
    assert "m9" in visible_path(regenerated)  # same parent and group as mid
    assert versions(regenerated, "m9")[-1] == "m9"
    assert mid in versions(regenerated, "m9")


@s.FAST
@given(h=ms.reachable_histories(), data=st.data())
def test_append_fold_keeps_the_text(h: History, data: st.DataObject) -> None:
    # Appends past max_appends fold into an edit (§8.5.3): the visible text is the same as if
    # the append had been kept, and the delta is a new base, not an append.
    ids = live_ids(h)
    if not ids:
        return
    mid = data.draw(st.sampled_from(ids))
    limits = ms.SMALL_LIMITS
    text = h.messages[mid].text
    if len((text + "z").encode()) > limits.max_text_bytes:
        return
    after = h
    for i in range(limits.max_appends + 1):
        if len((after.messages[mid].text + "z").encode()) > limits.max_text_bytes:
            break
        delta = after.append(mid, "z", ms.fresh_stamp(after), limits)
        folded = len(after.messages[mid].current_appends()) >= limits.max_appends
        assert (delta.messages[mid].appends == frozenset()) is folded
        after = after.join(delta)
        assert after.messages[mid].text == text + "z" * (i + 1)


# -- novel part --------------------------------------------------------------------------------


@st.composite
def state_and_delta(draw: Callable) -> tuple[History, History]:
    """A state and a delta that overlaps it in part: some of the delta is old news."""
    sim = draw(ms.sim_runs())
    state = sim.states[draw(st.sampled_from(ms.REPLICAS))]
    picked = draw(st.lists(st.sampled_from(sim.deltas), max_size=4)) if sim.deltas else []
    other = draw(st.one_of(ms.valid_histories(), st.just(reduce(History.join, picked, History()))))
    return state, other


@s.FAST
@given(pair=state_and_delta())
def test_novel_part_changes_the_state_like_the_delta(pair: tuple[History, History]) -> None:
    # x ⊔ novel(x, d) = x ⊔ d
    state, d = pair
    assert state.join(state.novel(d)) == state.join(d)


@s.FAST
@given(pair=state_and_delta())
def test_novel_part_is_below_the_delta(pair: tuple[History, History]) -> None:
    # novel(x, d) ⊑ d, message by message and choice by choice
    state, d = pair
    part = state.novel(d)
    assert part.join(d) == d
    assert set(part.messages) <= set(d.messages)
    assert all(d.choices[g] == c for g, c in part.choices.items())


@s.FAST
@given(a=ms.messages(), b=ms.messages())
def test_message_novel_part_laws(a: MessageState, b: MessageState) -> None:
    # for one message: x ⊔ novel(x, d) = x ⊔ d, novel(x, d) ⊑ d, d ⊑ x ⇒ novel(x, d) = ⊥
    part = a.novel(b)
    assert a.join(part) == a.join(b)
    assert part.join(b) == b
    assert a.join(b).novel(b).is_bottom()


@s.FAST
@given(state=ms.histories(), data=st.data())
def test_novel_part_of_old_news_is_bottom(state: History, data: st.DataObject) -> None:
    # d ⊑ x ⇒ novel(x, d) = ⊥, for d any sub-history of x
    mids = data.draw(st.lists(st.sampled_from(sorted(state.messages) or ["m1"]), unique=True))
    groups = data.draw(st.lists(st.sampled_from(sorted(state.choices) or ["m1"]), unique=True))
    sub = History.make({m: state.messages[m] for m in mids if m in state.messages},
                       {g: state.choices[g] for g in groups if g in state.choices})
    assert state.novel(sub).is_bottom()


# -- the visible path is a function of the state ----------------------------------------------


@s.FAST
@given(h=ms.histories())
def test_visible_path_follows_the_rule(h: History) -> None:
    # visible_path = the plain recursive rule of §8.3.3, sorted by (created, id) (§8.3.4); every
    # visible message's parent is visible and comes before it when stamps respect causality.
    path = visible_path(h)
    assert path == ms.model_visible(h)
    assert len(set(path)) == len(path)


@s.FAST
@given(h=ms.reachable_histories())
def test_reachable_path_puts_parents_first(h: History) -> None:
    # Stamps of reachable states respect causality (a post's stamp is newer than all it has
    # seen), so each visible message comes after its parent: the history reads as a thread.
    path = visible_path(h)
    where = {mid: i for i, mid in enumerate(path)}
    for mid in path:
        parent = h.messages[mid].header.parent  # type: ignore[union-attr]
        assert parent is None or where[parent] < where[mid]


@s.FAST
@given(h=ms.histories())
def test_versions_partition_the_known_messages(h: History) -> None:
    # Every known message is in exactly one group, versions(m) holds m, oldest first, and a
    # group with known members has exactly one active member (§8.3.1, §8.3.2, §8.3.5).
    for mid in ms.known_ids(h):
        group = versions(h, mid)
        assert mid in group
        assert all(versions(h, other) == group for other in group)
        stamps = [(h.messages[g].header.created, g) for g in group]  # type: ignore[union-attr]
        assert stamps == sorted(stamps)


@s.FAST
@given(sim=ms.sim_runs(), data=st.data())
def test_any_delivery_order_gives_one_history(sim: ms.Sim, data: st.DataObject) -> None:
    # Joining the same deltas in two orders, with some delivered twice, gives one state and
    # one visible path (orders drawn with st.permutations, so failures shrink and replay).
    first = data.draw(st.permutations(sim.deltas))
    again = data.draw(st.lists(st.sampled_from(sim.deltas), max_size=3)) if sim.deltas else []
    second = data.draw(st.permutations(sim.deltas + again))
    a = reduce(History.join, first, History())
    b = reduce(History.join, second, History())
    assert a == b
    assert visible_path(a) == visible_path(b)


def test_stamps_cover_every_clocked_part() -> None:
    # max_clock sees created, base, append and choice stamps (a receiver advances past them)
    h = History.make(
        {"m1": MessageState(Header(None, None, "user", None, 0, None, Stamp(1, 0, "A")),
                            Lww(Stamp(2, 0, "A"), "x"),
                            frozenset([Append(Stamp(5, 1, "B"), Stamp(2, 0, "A"), "y")]))},
        {"m1": Lww(Stamp(4, 0, "C"), "m1")},
    )
    assert h.max_clock() == (5, 1)
