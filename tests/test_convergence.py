"""Replicas converge under any delivery order, loss (with later resend) and duplication.

A Hypothesis state machine runs 3-5 replicas, each a ConversationMap plus its own hybrid
logical clock and a wall clock that may be off or jump. Local ops make deltas that go on the
network, one message per other replica; rules deliver any message (so out of order), drop
one, duplicate one, or ship a whole state. After a full exchange of every delta ever made,
all replicas must be equal and equal a plain model that does not use the lattice code:

- title: the text of the write with the largest (hlc, replica) stamp;
- pinned / muted: add-wins over what each op had observed: an enable survives unless some
  disable had observed it. An op observes the flag ops its replica made or received before it,
  and those they had observed in turn (knowledge travels only with that flag's deltas, since a
  delta carries nothing else);
- last_seq / read_seq: max of the arrived / read sequences; unread = max(0, last - read);
- last message: the arrival with the largest (at, seq, replica), then preview.

and the conversation features (specs/crdt.md §6), by the same add-wins rule for their
flags (archived, archive_keep, marked_unread, and muted, which mark_read, unarchive and
unmute disable):
- archived: the flag, and keep or (last_seq <= the largest last_seq and last_at <= the
  largest last_at any archive saw);
- delete: cleared_at = the largest max(wall, last_at seen); it raises read_seq to the last_seq
  it saw; the last message is shown only if newer than cleared_at; deleted iff cleared and
  no newer message;
- draft: the text of the largest stamp; muted_until: the `until` of the mute with the largest
  stamp, shown while muted, and muted reads false from that time on;
- read_by: per member, the largest position.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import reduce
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from crdtim.crdt import ConversationMap, Conversation, Hlc, Stamp
from crdtim.crdt import hlc

CIDS = ("c1", "c2")
TEXTS = ("", "hi", "yo")
FLAGS = ("pinned", "muted")
MAX_SKEW_MS = 2_000  # far inside the 5-minute drift bound: no delta is ever refused


@dataclass
class Op:
    id: int
    replica: int
    kind: str  # title | enable | disable | arrive | read
    cid: str
    delta: ConversationMap
    flag: str = ""
    text: str = ""
    stamp: tuple = ()
    seq: int = 0
    at: int = 0
    observed: frozenset[int] = frozenset()  # flag ops this op had seen (flag ops only)
    # The flags the op enables or disables, flag -> "enable" | "disable" (enable and disable
    # ops: their one flag), and per flag the ops of that flag it had seen.
    effects: dict[str, str] = field(default_factory=dict)
    seen: dict[str, frozenset[int]] = field(default_factory=dict)
    member: str = ""


@dataclass
class Node:
    rid: str
    skew_ms: int
    state: ConversationMap = field(default_factory=ConversationMap)
    clock: Hlc = hlc.ZERO
    known: set[int] = field(default_factory=set)  # ops whose effect this state holds
    # (cid, flag) -> flag ops seen, the model's notion of what a new op observes
    flag_seen: dict[tuple[str, str], frozenset[int]] = field(default_factory=dict)


def join_all(deltas) -> ConversationMap:
    return reduce(ConversationMap.join, deltas, ConversationMap())


class Convergence(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.nodes: list[Node] = []
        self.ops: list[Op] = []
        self.network: list[tuple[int, int]] = []  # (destination node, op id) in flight
        self.now = 1_000_000
        self.everything = ConversationMap()  # join of every delta made, in op order

    @initialize(skews=st.lists(st.integers(-MAX_SKEW_MS, MAX_SKEW_MS), min_size=3, max_size=5))
    def start(self, skews: list[int]) -> None:
        self.nodes = [Node(f"r{i}", skew) for i, skew in enumerate(skews)]

    # -- helpers ----------------------------------------------------------------------------

    def wall(self, node: Node) -> int:
        return self.now + node.skew_ms

    def node_index(self, data: st.DataObject) -> int:
        return data.draw(st.integers(0, len(self.nodes) - 1), label="replica")

    def record(self, i: int, op_kwargs: dict[str, Any]) -> Op:
        node = self.nodes[i]
        op = Op(id=len(self.ops), replica=i, **op_kwargs)
        if op.kind in ("enable", "disable"):
            op.effects = {op.flag: op.kind}
        for flag in op.effects:
            key = (op.cid, flag)
            op.seen[flag] = node.flag_seen.get(key, frozenset()) | {op.id}
            node.flag_seen[key] = op.seen[flag]
        if op.kind in ("enable", "disable"):
            op.observed = op.seen[op.flag]
        self.ops.append(op)
        node.state = node.state.join(op.delta)
        node.known.add(op.id)
        self.everything = self.everything.join(op.delta)
        self.network += [(j, op.id) for j in range(len(self.nodes)) if j != i]
        return op

    def deliver(self, j: int, op: Op) -> None:
        node = self.nodes[j]
        remote = op.delta.max_clock()
        if remote is not None:
            node.clock = hlc.receive(node.clock, remote, self.wall(node))
        node.state = node.state.join(op.delta)
        node.known.add(op.id)
        for flag, seen in op.seen.items():
            key = (op.cid, flag)
            node.flag_seen[key] = node.flag_seen.get(key, frozenset()) | seen

    # -- local ops --------------------------------------------------------------------------

    @rule(data=st.data(), cid=st.sampled_from(CIDS), text=st.sampled_from(TEXTS))
    def set_title(self, data, cid, text):
        i = self.node_index(data)
        node = self.nodes[i]
        node.clock = hlc.tick(node.clock, self.wall(node))
        stamp = Stamp(node.clock.wall, node.clock.counter, node.rid)
        # A write made after seeing another carries a larger stamp, whatever the wall clocks.
        for seen in node.known:
            if self.ops[seen].kind == "title":
                assert stamp > self.ops[seen].stamp
        delta = node.state.set_title(cid, text, stamp)
        self.record(i, dict(kind="title", cid=cid, delta=delta, text=text, stamp=stamp))

    @rule(data=st.data(), cid=st.sampled_from(CIDS), flag=st.sampled_from(FLAGS))
    def enable(self, data, cid, flag):  # pin / mute
        i = self.node_index(data)
        delta = self.nodes[i].state.enable(cid, flag, self.nodes[i].rid)
        self.record(i, dict(kind="enable", cid=cid, flag=flag, delta=delta))

    @rule(data=st.data(), cid=st.sampled_from(CIDS), flag=st.sampled_from(FLAGS))
    def disable(self, data, cid, flag):  # unpin / unmute
        i = self.node_index(data)
        delta = self.nodes[i].state.disable(cid, flag)
        self.record(i, dict(kind="disable", cid=cid, flag=flag, delta=delta))

    @rule(
        data=st.data(),
        cid=st.sampled_from(CIDS),
        seq=st.integers(1, 6),
        at=st.integers(0, 3),
        text=st.sampled_from(TEXTS),
    )
    def arrive(self, data, cid, seq, at, text):
        i = self.node_index(data)
        node = self.nodes[i]
        delta = node.state.message_arrived(cid, seq, text, at, node.rid)
        self.record(i, dict(kind="arrive", cid=cid, seq=seq, at=at, text=text, delta=delta))

    @rule(data=st.data(), cid=st.sampled_from(CIDS), seq=st.integers(0, 6))
    def read(self, data, cid, seq):
        i = self.node_index(data)
        delta = self.nodes[i].state.mark_read(cid, seq)
        self.record(i, dict(kind="read", cid=cid, seq=seq, delta=delta,
                            effects={"marked_unread": "disable"}))

    # -- the conversation features (specs/crdt.md §6) -------------------------------------

    def position(self, i: int, cid: str) -> tuple[int, int]:
        """(last_seq, last_at) of `cid` as replica i sees it now."""
        view = self.nodes[i].state.view(cid)
        return (0, 0) if view is None else (view.last_seq, view.last_at)

    @rule(data=st.data(), cid=st.sampled_from(CIDS), keep=st.booleans())
    def archive(self, data, cid, keep):
        i = self.node_index(data)
        seq, at = self.position(i, cid)
        delta = self.nodes[i].state.archive(cid, self.nodes[i].rid, keep)
        self.record(i, dict(kind="archive", cid=cid, seq=seq, at=at, delta=delta, effects={
            "archived": "enable", "archive_keep": "enable" if keep else "disable"}))

    @rule(data=st.data(), cid=st.sampled_from(CIDS))
    def unarchive(self, data, cid):
        i = self.node_index(data)
        delta = self.nodes[i].state.unarchive(cid)
        self.record(i, dict(kind="unarchive", cid=cid, delta=delta,
                            effects={"archived": "disable", "archive_keep": "disable"}))

    @rule(data=st.data(), cid=st.sampled_from(CIDS))
    def delete(self, data, cid):
        i = self.node_index(data)
        seq, at = self.position(i, cid)
        # Message times are 0..3: deletes on both sides of them (a real clock is never 0).
        wall = 1 + self.wall(self.nodes[i]) % 4
        delta = self.nodes[i].state.delete(cid, wall)
        self.record(i, dict(kind="delete", cid=cid, seq=seq, at=max(wall, at), delta=delta))

    @rule(data=st.data(), cid=st.sampled_from(CIDS))
    def mark_unread(self, data, cid):
        i = self.node_index(data)
        delta = self.nodes[i].state.mark_unread(cid, self.nodes[i].rid)
        self.record(i, dict(kind="mark_unread", cid=cid, delta=delta,
                            effects={"marked_unread": "enable"}))

    def tick(self, i: int) -> Stamp:
        node = self.nodes[i]
        node.clock = hlc.tick(node.clock, self.wall(node))
        return Stamp(node.clock.wall, node.clock.counter, node.rid)

    @rule(data=st.data(), cid=st.sampled_from(CIDS), text=st.sampled_from(TEXTS))
    def draft(self, data, cid, text):
        i = self.node_index(data)
        stamp = self.tick(i)
        delta = self.nodes[i].state.set_register(cid, "draft", text, stamp)
        self.record(i, dict(kind="draft", cid=cid, delta=delta, text=text, stamp=stamp))

    @rule(data=st.data(), cid=st.sampled_from(CIDS), until=st.integers(-1, 4))
    def mute_until(self, data, cid, until):
        i = self.node_index(data)
        end = 0 if until < 0 else self.now + until  # 0: until unmuted
        stamp = self.tick(i)
        delta = self.nodes[i].state.mute(cid, self.nodes[i].rid, end, stamp)
        self.record(i, dict(kind="mute", cid=cid, delta=delta, seq=end, stamp=stamp,
                            effects={"muted": "enable"}))

    @rule(data=st.data(), cid=st.sampled_from(CIDS), member=st.sampled_from(("ann", "bob")),
          seq=st.integers(0, 6))
    def read_by(self, data, cid, member, seq):
        i = self.node_index(data)
        delta = self.nodes[i].state.mark_read_by(cid, member, seq)
        self.record(i, dict(kind="read_by", cid=cid, member=member, seq=seq, delta=delta))

    # -- time -------------------------------------------------------------------------------

    @rule(data=st.data(), ms=st.integers(0, 3), jump=st.booleans())
    def clocks_move(self, data, ms, jump):
        # Time passes for all; sometimes one wall clock is reset (backwards or forwards).
        self.now += ms
        if jump:
            skew = data.draw(st.integers(-MAX_SKEW_MS, MAX_SKEW_MS), label="skew")
            self.nodes[self.node_index(data)].skew_ms = skew

    # -- network ----------------------------------------------------------------------------

    def in_flight(self, data: st.DataObject) -> int:
        return data.draw(st.integers(0, len(self.network) - 1), label="message")

    @precondition(lambda self: self.network)
    @rule(data=st.data())
    def deliver_one(self, data):  # any message in flight, so out of order
        j, op_id = self.network.pop(self.in_flight(data))
        self.deliver(j, self.ops[op_id])

    @precondition(lambda self: self.network)
    @rule(data=st.data(), count=st.integers(2, 4))
    def deliver_several(self, data, count):
        for _ in range(min(count, len(self.network))):
            self.deliver_one(data)

    @precondition(lambda self: self.network)
    @rule(data=st.data())
    def drop_one(self, data):  # lost; the final exchange resends it
        self.network.pop(self.in_flight(data))

    @precondition(lambda self: self.network)
    @rule(data=st.data())
    def duplicate_one(self, data):
        self.network.append(self.network[self.in_flight(data)])

    @rule(data=st.data())
    def ship_whole_state(self, data):  # a state transfer, or a relay of everything it holds
        src, dst = self.nodes[self.node_index(data)], self.nodes[self.node_index(data)]
        remote = src.state.max_clock()
        if remote is not None:
            dst.clock = hlc.receive(dst.clock, remote, self.wall(dst))
        dst.state = dst.state.join(src.state)
        dst.known |= src.known
        for key, seen in src.flag_seen.items():
            dst.flag_seen[key] = dst.flag_seen.get(key, frozenset()) | seen

    @rule(data=st.data())
    def full_exchange(self, data):
        # Every replica receives every delta it lacks, each replica in its own drawn order.
        for j, node in enumerate(self.nodes):
            missing = [k for k in range(len(self.ops)) if k not in node.known]
            for k in data.draw(st.permutations(missing), label=f"order at r{j}"):
                self.deliver(j, self.ops[k])
        self.network.clear()
        self.check_converged()

    # -- checks -----------------------------------------------------------------------------

    @rule(data=st.data())
    def state_is_the_join_of_what_it_knows(self, data):
        # Whatever order, loss and duplication brought them, a replica holds exactly the join
        # of the deltas it has seen, joined here in a different (drawn) order.
        node = self.nodes[self.node_index(data)]
        order = data.draw(st.permutations(sorted(node.known)), label="order")
        assert node.state == join_all(self.ops[k].delta for k in order)

    @invariant()
    def everything_matches_the_model(self):
        # A full exchange from here would take every replica to `everything` ...
        for node in self.nodes:
            assert node.state.join(self.everything) == self.everything
        # ... which must be what the plain model says.
        assert views(self.everything, self.now) == self.model()

    def teardown(self):
        for j, node in enumerate(self.nodes):
            for k in reversed(range(len(self.ops))):  # newest first: as out of order as it gets
                if k not in node.known:
                    self.deliver(j, self.ops[k])
        self.check_converged()

    def check_converged(self):
        first = self.nodes[0].state if self.nodes else ConversationMap()
        for node in self.nodes:
            assert node.state == first
            assert views(node.state, self.now) == self.model()

    def model(self) -> dict[str, Conversation]:
        out = {}
        for cid in CIDS:
            ops = [op for op in self.ops if op.cid == cid]
            titles = [op for op in ops if op.kind == "title"]
            arrivals = [op for op in ops if op.kind == "arrive"]
            last_seq = max((op.seq for op in arrivals), default=0)
            read_seq = max((op.seq for op in ops if op.kind in ("read", "delete")), default=0)
            last = max(
                arrivals,
                key=lambda op: (op.at, op.seq, self.nodes[op.replica].rid, op.text),
                default=None,
            )
            cleared = max((op.at for op in ops if op.kind == "delete"), default=None)
            if last is not None and cleared is not None and last.at <= cleared:
                last = None  # dropped by the delete
            last_at = last.at if last else 0
            archives = [op for op in ops if op.kind == "archive"]
            drafts = [op for op in ops if op.kind == "draft"]
            mutes = [op for op in ops if op.kind == "mute"]
            muted = add_wins(ops, "muted")
            until = max(mutes, key=lambda op: op.stamp).seq if muted and mutes else 0
            read_by: dict[str, int] = {}
            for op in ops:
                if op.kind == "read_by" and op.seq > read_by.get(op.member, 0):
                    read_by[op.member] = op.seq
            conv = Conversation(
                id=cid,
                title=max(titles, key=lambda op: op.stamp).text if titles else "",
                pinned=add_wins(ops, "pinned"),
                muted=muted and (until == 0 or self.now < until),
                unread=max(0, last_seq - read_seq),
                last_seq=last_seq,
                read_seq=read_seq,
                last_preview=last.text if last else "",
                last_at=last_at,
                archived=add_wins(ops, "archived") and (add_wins(ops, "archive_keep") or (
                    last_seq <= max((op.seq for op in archives), default=0)
                    and last_at <= max((op.at for op in archives), default=0))),
                deleted=cleared is not None and cleared > 0 and last_at <= cleared,
                marked_unread=add_wins(ops, "marked_unread"),
                draft=max(drafts, key=lambda op: op.stamp).text if drafts else "",
                muted_until=until,
                read_by=read_by,
            )
            if conv != Conversation(cid):
                out[cid] = conv
        return out


def add_wins(ops: list[Op], flag: str) -> bool:
    enables = [op.id for op in ops if op.effects.get(flag) == "enable"]
    disables = [op for op in ops if op.effects.get(flag) == "disable"]
    return any(all(e not in d.seen[flag] for d in disables) for e in enables)


def views(m: ConversationMap, now: int = 0) -> dict[str, Conversation]:
    # A conversation whose fields are all at bottom is absent from the map; the model leaves
    # out a conversation whose view is all defaults (e.g. only a disable of an unset flag).
    out = {}
    for cid in m:
        view = m.view(cid, now)
        if view != Conversation(cid):
            out[cid] = view
    return out


Convergence.TestCase.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None
)
TestConvergence = Convergence.TestCase
