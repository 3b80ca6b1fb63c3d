"""Three replicas writing one conversation's history at once, exchanging deltas over a
network that loses, duplicates and reorders them (specs/crdt.md §8): once every delta has
been delivered, all replicas show the same history, that history is the visible path of the
join of every delta made (the plain model), and every message made is reachable through
`versions`, with its text unless it was deleted."""

from __future__ import annotations

import tempfile
from functools import reduce

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from crdtim import InvalidArgument, Replica, codec
from crdtim.crdt import DEFAULT_SCHEMA, History, visible_path

NAMES = ("A", "B", "C")
TEXTS = ("", "hi", "ok", "x y")


def history_of(payload: bytes) -> History:
    fields = codec.decode_map(payload, DEFAULT_SCHEMA).fields("c")
    return fields.get("messages", History())


class MessageNetwork(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.replicas = [Replica.open(f"{self.dir.name}/{n}", durability="nosync")
                         for n in NAMES]
        self.in_flight: list[tuple[int, bytes, str]] = []  # (to, delta, origin)
        self.made: list[bytes] = []  # every delta made: the model is their join
        self.ids: list[str] = []
        self.counter = 0
        self.ops = 0

    def teardown(self) -> None:
        for r in self.replicas:
            r.close()
        self.dir.cleanup()

    def _write(self, i: int, op) -> None:  # type: ignore[no-untyped-def]
        r = self.replicas[i]
        head = r.head
        try:
            op(r)
        except InvalidArgument:
            return
        if r.head == head:
            return
        delta = r.delta_since(head)
        self.made.append(delta)
        self.ops += 1
        for j in range(len(self.replicas)):
            if j != i:
                self.in_flight.append((j, delta, r.id))

    def _new_id(self) -> str:
        self.counter += 1
        mid = f"m{self.counter}"
        self.ids.append(mid)
        return mid

    @rule(i=st.integers(0, 2), text=st.sampled_from(TEXTS), data=st.data())
    def post(self, i: int, text: str, data: st.DataObject) -> None:
        reply_to = data.draw(st.sampled_from([None, None, *self.ids[-4:]]))
        mid = self._new_id()
        self._write(i, lambda r: r.post("c", text, id=mid, reply_to=reply_to))

    @precondition(lambda self: self.ids)
    @rule(i=st.integers(0, 2), data=st.data(), text=st.sampled_from(TEXTS))
    def regenerate(self, i: int, data: st.DataObject, text: str) -> None:
        target = data.draw(st.sampled_from(self.ids))
        mid = self._new_id()
        self._write(i, lambda r: r.regenerate("c", target, text, id=mid))

    @precondition(lambda self: self.ids)
    @rule(i=st.integers(0, 2), data=st.data(), text=st.sampled_from(TEXTS),
          kind=st.sampled_from(("append", "append", "edit", "switch", "delete")))
    def change(self, i: int, data: st.DataObject, text: str, kind: str) -> None:
        target = data.draw(st.sampled_from(self.ids))
        self._write(i, {
            "append": lambda r: r.append("c", target, text or "+"),
            "edit": lambda r: r.edit("c", target, text),
            "switch": lambda r: r.switch("c", target),
            "delete": lambda r: r.delete_message("c", target),
        }[kind])

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data(), keep=st.booleans())
    def deliver(self, data: st.DataObject, keep: bool) -> None:
        """Any delta in flight, in any order; kept in flight (a duplicate) or not."""
        k = data.draw(st.integers(0, len(self.in_flight) - 1))
        to, delta, origin = self.in_flight[k] if keep else self.in_flight.pop(k)
        self.replicas[to].apply_delta(delta, origin=origin)

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def lose(self, data: st.DataObject) -> None:
        """A delta lost; anti-entropy resends it later (heal sends whole states)."""
        self.in_flight.pop(data.draw(st.integers(0, len(self.in_flight) - 1)))

    @rule(i=st.integers(0, 2))
    def restart(self, i: int) -> None:
        """A replica's process ends and starts again: everything it acknowledged is there."""
        before = self.replicas[i].state()
        self.replicas[i].close()
        self.replicas[i] = Replica.open(f"{self.dir.name}/{NAMES[i]}", durability="nosync")
        assert self.replicas[i].state() == before

    @invariant()
    def every_replica_reads_a_consistent_history(self) -> None:
        for r in self.replicas:
            page = r.history("c", limit=10_000)
            assert len({m.id for m in page.items}) == len(page.items)

    @rule()
    def heal(self) -> None:
        """The network heals: every replica gets every other's whole state."""
        states = [r.delta_since(0) for r in self.replicas]
        for j, r in enumerate(self.replicas):
            for k, s in enumerate(states):
                if j != k:
                    r.apply_delta(s, origin=self.replicas[k].id)
        self.in_flight.clear()
        model = reduce(History.join, (history_of(d) for d in self.made), History())
        expected = visible_path(model)
        shown = [[m.id for m in r.history("c", limit=10_000).items][::-1]
                 for r in self.replicas]
        assert shown[0] == shown[1] == shown[2] == expected
        for r in self.replicas:
            assert r.state().fields("c").get("messages", History()) == model
            for mid in model.messages:
                m = r.message("c", mid)
                assert m is not None and mid in [v.id for v in r.versions("c", mid)]
                assert m.text == model.messages[mid].text


MessageNetwork.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                            deadline=None)
test_message_network = MessageNetwork.TestCase
