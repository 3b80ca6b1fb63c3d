"""Hypothesis strategies for the message-history lattices (specs/crdt.md §8).

As in strategies.py, alphabets are tiny (five message ids, three replicas, a few walls and
texts) so that collisions -- one id posted twice with different headers, two appends with one
stamp, a choice naming a message of another group -- are common. "Valid" states are any
canonical state (what a decoder may hand us); "reachable" states come from replaying the
delta mutators on three simulated replicas that exchange some of their deltas.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import reduce
from typing import Any

from hypothesis import strategies as st

from crdtim.crdt import (
    Append,
    Header,
    History,
    Lww,
    MessageError,
    MessageLimits,
    MessageState,
    Stamp,
    visible_path,
)

MESSAGE_IDS = ("m1", "m2", "m3", "m4", "m5")
REPLICAS = ("A", "B", "C")
TEXTS = ("", "a", "b", "hi")

message_ids = st.sampled_from(MESSAGE_IDS)
texts = st.sampled_from(TEXTS)
stamps = st.builds(Stamp, st.integers(1, 4), st.integers(0, 1), st.sampled_from(REPLICAS))
# Mostly roots and plain posts, so that drawn trees have visible paths, hidden branches and
# groups of a few versions rather than mostly dangling links.
parents = st.sampled_from((None, None, *MESSAGE_IDS))
origins = st.sampled_from((None, None, None, *MESSAGE_IDS))

headers = st.builds(
    Header,
    parent=parents,
    origin=origins,
    role=st.sampled_from(("user", "assistant")),
    author=st.sampled_from((None, "x", "y")),
    at=st.integers(0, 2),
    seq=st.sampled_from((None, 1, 2)),
    created=stamps,
)
appends = st.builds(Append, stamps, stamps, texts)


@st.composite
def near_headers(draw: Callable) -> Header:
    """A header that often differs from the other draws of one example in a single field:
    the headers of one id posted twice with different content (§8.2.1)."""
    h0 = draw(st.shared(headers, key="near-headers"))
    how = draw(st.sampled_from(("same", "author", "created", "at", "parent", "other")))
    if how == "author":
        return replace(h0, author=draw(st.sampled_from((None, "x", "y"))))
    if how == "created":
        return replace(h0, created=draw(stamps))
    if how == "at":
        return replace(h0, at=draw(st.integers(0, 2)))
    if how == "parent":
        return replace(h0, parent=draw(parents))
    return h0 if how == "same" else draw(headers)


@st.composite
def valid_messages(draw: Callable) -> MessageState:
    """Any canonical message state (§8.2.4), built here, not by MessageState.make, so that a
    bug in `make` cannot hide itself in the states the laws are checked on. Appends are
    often made on the base itself, or on a newer base not received yet (pending)."""
    base = draw(st.one_of(st.just(Lww.bottom()), st.builds(Lww, stamps, texts)))
    header = draw(st.one_of(st.none(), near_headers()))
    if draw(st.booleans()):
        tomb = None if header is None else Header(header.parent, header.origin, header.role,
                                                  None, header.at, header.seq, header.created)
        return MessageState(tomb, Lww.bottom(), frozenset(), True)
    on_base = st.builds(Append, stamps, st.just(base.stamp), texts)
    drawn = draw(st.frozensets(st.one_of(appends, on_base), max_size=3))
    return MessageState(header, base, frozenset(a for a in drawn if a.base >= base.stamp))


def messages() -> st.SearchStrategy[MessageState]:
    return st.one_of(st.just(MessageState.bottom()), valid_messages())


def valid_histories() -> st.SearchStrategy[History]:
    """Any canonical history: loose (links mostly dangling) or tree-shaped (§8.4.1)."""
    loose = st.builds(
        History.make,
        st.dictionaries(message_ids, valid_messages(), max_size=4),
        st.dictionaries(message_ids, st.builds(Lww, stamps, message_ids), max_size=2),
    )
    return st.one_of(loose, tree_histories(), tree_histories())


@st.composite
def tree_histories(draw: Callable) -> History:
    """A valid history shaped like a real one: each message a root, a reply to an earlier
    one or a version of an earlier one (same parent and group), with now and then a forged
    header; choices name members, strangers or unknown ids. Stamps are drawn freely, so
    they need not respect causality."""
    msgs: dict[str, MessageState] = {}
    for mid in MESSAGE_IDS[: draw(st.integers(0, len(MESSAGE_IDS)))]:
        m = draw(valid_messages())
        heads = {k: v.header for k, v in msgs.items() if v.header is not None}
        kind = draw(st.sampled_from(("root", "reply", "reply", "version", "version", "forged")))
        h = m.header or draw(headers)
        if kind == "root":
            h = replace(h, parent=None, origin=None)
        elif kind in ("reply", "version") and heads:
            near = draw(st.sampled_from(sorted(heads)))
            if kind == "reply":
                h = replace(h, parent=near, origin=None)
            else:
                h = replace(h, parent=heads[near].parent, origin=heads[near].origin or near)
        msgs[mid] = replace(m, header=replace(h, author=None) if m.deleted else h)
    choices = draw(st.dictionaries(
        st.sampled_from(sorted(msgs) or ["m1"]),
        st.builds(Lww, stamps, st.sampled_from(sorted(msgs) or ["m1"])), max_size=3))
    return History.make(msgs, choices)


# -- simulated replicas ------------------------------------------------------------------------

#: Low limits, so that folding appends and full version groups happen in small runs.
SMALL_LIMITS = MessageLimits(max_appends=2, max_versions=3, max_text_bytes=12)

OPS = ("post", "reply", "regenerate", "append", "edit", "switch", "delete")


@dataclass
class Sim:
    """Three replicas with Lamport-style clocks (walls that jump past what they receive, as
    an HLC does) and the deltas they made."""

    states: dict[str, History] = field(default_factory=lambda: {r: History() for r in REPLICAS})
    clocks: dict[str, int] = field(default_factory=lambda: {r: 0 for r in REPLICAS})
    deltas: list[History] = field(default_factory=list)
    made: int = 0

    def stamp(self, r: str) -> Stamp:
        self.clocks[r] += 1
        return Stamp(self.clocks[r], 0, r)

    def receive(self, r: str, delta: History) -> None:
        self.states[r] = self.states[r].join(delta)
        walls = [s.wall for s in delta.stamps()]
        self.clocks[r] = max([self.clocks[r], *walls])

    def fresh_id(self, r: str) -> str:
        self.made += 1
        return f"{r.lower()}{self.made}"

    def local(self, r: str, op: str, target: str | None, text: str) -> History | None:
        """Run one mutator on replica r; None if it is refused (e.g. no such message)."""
        h = self.states[r]
        try:
            if op == "post":
                delta = h.post(self.fresh_id(r), text, self.stamp(r), limits=SMALL_LIMITS)
            elif target is None:
                return None
            elif op == "reply":
                delta = h.post(self.fresh_id(r), text, self.stamp(r), reply_to=target,
                               role="assistant", limits=SMALL_LIMITS)
            elif op == "regenerate":
                delta = h.regenerate(target, self.fresh_id(r), text, self.stamp(r),
                                     limits=SMALL_LIMITS)
            elif op == "append":
                delta = h.append(target, text, self.stamp(r), limits=SMALL_LIMITS)
            elif op == "edit":
                delta = h.edit(target, text, self.stamp(r), limits=SMALL_LIMITS)
            elif op == "switch":
                delta = h.switch(target, self.stamp(r))
            else:
                delta = h.delete(target)
        except MessageError:
            return None
        self.states[r] = h.join(delta)
        self.deltas.append(delta)
        return delta


def known_ids(h: History) -> list[str]:
    return sorted(mid for mid, m in h.messages.items() if m.header is not None)


@st.composite
def sim_runs(draw: Callable, max_steps: int = 12) -> Sim:
    sim = Sim()
    for _ in range(draw(st.integers(0, max_steps))):
        r = draw(st.sampled_from(REPLICAS))
        if sim.deltas and draw(st.integers(0, 3)) == 0:
            sim.receive(r, draw(st.sampled_from(sim.deltas)))
            continue
        ids = known_ids(sim.states[r])
        target = draw(st.sampled_from(ids)) if ids else None
        sim.local(r, draw(st.sampled_from(OPS)), target, draw(texts))
    return sim


@st.composite
def reachable_histories(draw: Callable) -> History:
    sim = draw(sim_runs())
    if sim.deltas and draw(st.booleans()):
        picked = draw(st.lists(st.sampled_from(sim.deltas), max_size=5))
        return reduce(History.join, picked, History())
    return sim.states[draw(st.sampled_from(REPLICAS))]


def histories() -> st.SearchStrategy[History]:
    return st.one_of(st.just(History()), valid_histories(), reachable_histories())


def encodable(h: History) -> History:
    """`h` without the appends made on a bottom base: canonical, but no writer makes one
    (an append is made on a message's text) and the encoding cannot hold one (a stamp names
    a replica of its table, never the empty id; specs/crdt.md §7, "Messages")."""
    messages = {
        mid: MessageState.make(m.header, m.base, (a for a in m.appends if a.base.replica), False)
        if not m.deleted else m
        for mid, m in h.messages.items()
    }
    return History.make(messages, h.choices)


def encodable_histories() -> st.SearchStrategy[History]:
    """The histories the codec round-trips: every drawn kind, made encodable."""
    return st.one_of(st.just(History()), valid_histories().map(encodable), reachable_histories())


def fresh_stamp(h: History, replica: str = "A") -> Stamp:
    """A stamp larger than every stamp in `h`, as a replica's ticking clock makes."""
    top = max((s.wall for s in h.stamps()), default=0)
    return Stamp(top + 1, 0, replica)


def model_visible(h: History) -> list[str]:
    """The visibility rule of specs/crdt.md §8.3, written plainly (recursion, no index):
    known, active in its group (the chosen member if the choice names a member, else the
    newest), and its parent visible, all the way to a root; sorted by (created, id)."""
    heads = {mid: m.header for mid, m in h.messages.items() if m.header is not None}

    def group(mid: str) -> str:
        return heads[mid].origin or mid

    def active(g: str) -> str:
        members = [m for m in heads if group(m) == g]
        c = h.choices.get(g)
        if c is not None and c.value in members:
            return c.value
        return max(members, key=lambda m: (heads[m].created, m))

    def visible(mid: str, seen: frozenset[str]) -> bool:
        if mid not in heads or mid in seen or active(group(mid)) != mid:
            return False
        parent = heads[mid].parent
        return parent is None or visible(parent, seen | {mid})

    return sorted((m for m in heads if visible(m, frozenset())),
                  key=lambda m: (heads[m].created, m))


def last_visible(h: History) -> Any:
    path = visible_path(h)
    return path[-1] if path else None
