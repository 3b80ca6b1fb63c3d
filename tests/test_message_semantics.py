"""What message history means: one named test per guarantee of specs/crdt.md §8 (issue #13's
Semantics), and a stateful model test of three replicas exchanging deltas with loss,
duplication and reordering.
"""

from __future__ import annotations

from functools import reduce
from typing import ClassVar

import message_strategies as ms
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from crdtim.crdt import (
    History,
    Lww,
    MessageError,
    MessageLimits,
    MessageState,
    Stamp,
    versions,
    visible_path,
)


def at(wall: int, replica: str = "A") -> Stamp:
    return Stamp(wall, 0, replica)


def apply(h: History, delta: History) -> History:
    return h.join(delta)


def chat() -> History:
    """u1 (user) then a1 (assistant) on replica A."""
    h = History()
    h = apply(h, h.post("u1", "hello", at(1)))
    return apply(h, h.post("a1", "hi!", at(2), role="assistant"))


# -- posting ---------------------------------------------------------------------------------


def test_retried_post_is_one_message() -> None:
    h = chat()
    assert h.post("u1", "hello", at(5)).is_bottom()
    assert h.post("u1", "other text", at(6), role="user").is_bottom()  # text is not immutable
    assert visible_path(h) == ["u1", "a1"]


def test_repost_with_different_fields_is_refused() -> None:
    h = chat()
    for kw in ({"role": "assistant"}, {"seq": 4}, {"author": "bob"}, {"at": 99},
               {"reply_to": "a1"}):
        with pytest.raises(MessageError, match="exists with different"):
            h.post("u1", "hello", at(5), **kw)  # type: ignore[arg-type]


def test_one_id_posted_differently_on_two_replicas_resolves_to_the_smaller_header() -> None:
    base = chat()
    x = base.post("m", "from A", at(10, "A"), role="user")
    y = base.post("m", "from B", at(10, "B"), role="system")
    for joined in (base.join(x).join(y), base.join(y).join(x)):
        m = joined.messages["m"]
        assert m.header == x.messages["m"].header  # (10, 0, "A") < (10, 0, "B")
        assert m.text == "from B"  # the text registers are joined apart: the larger stamp


def test_a_tombstone_header_resolves_like_the_live_header() -> None:
    # Author is last in the header order, so a deleted copy (author dropped) and a live copy
    # with another created stamp resolve to the same created stamp in any order (§8.2.1).
    h = History()
    older = h.post("m", "t", at(1, "B"), author="x")
    newer = h.post("m", "t", at(2, "A"), author="x")
    tomb = newer.join(newer.delete("m"))
    states = [tomb, older, History.make({"m": MessageState(deleted=True)})]
    for order in ([0, 1, 2], [2, 1, 0], [1, 2, 0], [1, 0, 2]):
        m = reduce(History.join, [states[i] for i in order], History()).messages["m"]
        assert m.deleted and m.header is not None
        assert m.header.created == at(1, "B") and m.header.author is None


def test_concurrent_posts_after_the_same_message_are_both_shown() -> None:
    base = chat()
    x = base.post("x", "from phone", at(10, "B"))
    y = base.post("y", "from laptop", at(10, "A"))
    for joined in (base.join(x).join(y), base.join(y).join(x)):
        # (created stamp, id) order: (10, 0, "A") before (10, 0, "B")
        assert visible_path(joined) == ["u1", "a1", "y", "x"]
        assert versions(joined, "x") == ["x"]


def test_post_follows_the_newest_visible_message() -> None:
    h = chat()
    h = apply(h, h.post("u2", "more", at(3)))
    assert h.messages["u2"].header.parent == "a1"  # type: ignore[union-attr]


# -- versions and branches -----------------------------------------------------------------


def test_regenerate_adds_an_active_version_and_keeps_the_old_one() -> None:
    h = chat()
    h = apply(h, h.post("u2", "and then?", at(3)))
    h = apply(h, h.regenerate("a1", "a2", "hello again", at(4)))
    assert visible_path(h) == ["u1", "a2"]  # u2 followed a1, an inactive version now
    assert versions(h, "a1") == versions(h, "a2") == ["a1", "a2"]
    h = apply(h, h.switch("a1", at(5)))
    assert visible_path(h) == ["u1", "a1", "u2"]


def test_newest_version_is_active_when_no_choice_was_made() -> None:
    h = chat()
    version = h.regenerate("a1", "a2", "x", at(4))
    bare = h.join(History(version.messages))  # the version without its choice
    assert visible_path(bare) == ["u1", "a2"]


def test_reply_to_an_earlier_message_with_a_continuation_starts_a_branch() -> None:
    h = chat()
    h = apply(h, h.post("u2", "question", at(3)))
    h = apply(h, h.post("u2b", "better question", at(4), reply_to="a1"))
    assert visible_path(h) == ["u1", "a1", "u2b"]
    assert versions(h, "u2b") == ["u2", "u2b"]


def test_reply_to_the_last_message_is_a_plain_continuation() -> None:
    h = chat()
    h = apply(h, h.post("u2", "q", at(3), reply_to="a1"))
    assert visible_path(h) == ["u1", "a1", "u2"]
    assert versions(h, "u2") == ["u2"]


def test_switch_is_last_writer_wins() -> None:
    h = chat()
    h = apply(h, h.regenerate("a1", "a2", "x", at(4)))
    back = h.switch("a1", at(5, "A"))
    forth = h.join(h.switch("a1", at(5, "A"))).switch("a2", at(6, "B"))
    for joined in (h.join(back).join(forth), h.join(forth).join(back)):
        assert visible_path(joined) == ["u1", "a2"]


def test_switch_to_a_message_on_a_hidden_branch_makes_its_path_active() -> None:
    # switch(m) makes m visible: every group on m's path chooses m's ancestor (§8.5.5)
    h = chat()
    h = apply(h, h.post("u2", "q", at(3)))
    h = apply(h, h.post("a3", "answer", at(4), role="assistant"))
    h = apply(h, h.regenerate("a1", "a2", "other", at(5)))
    assert visible_path(h) == ["u1", "a2"]
    h = apply(h, h.switch("a3", at(6)))
    assert visible_path(h) == ["u1", "a1", "u2", "a3"]


def test_a_message_is_visible_iff_no_message_on_its_path_is_an_inactive_version() -> None:
    h = chat()
    h = apply(h, h.post("u2", "q", at(3)))
    h = apply(h, h.regenerate("u1", "u1b", "hello?", at(4)))
    assert visible_path(h) == ["u1b"]  # a1 and u2 follow u1, an inactive version
    assert set(visible_path(h.join(h.switch("u2", at(5))))) == {"u1", "a1", "u2"}


def test_versions_past_the_limit_are_refused() -> None:
    limits = MessageLimits(max_versions=2)
    h = chat()
    h = apply(h, h.regenerate("a1", "a2", "x", at(4), limits=limits))
    with pytest.raises(MessageError, match="versions"):
        h.regenerate("a2", "a3", "y", at(5), limits=limits)


# -- streaming and edits -------------------------------------------------------------------


def test_streaming_appends_ship_only_the_new_text() -> None:
    h = History()
    h = apply(h, h.post("a", "", at(1), role="assistant"))
    for i, token in enumerate(["Hel", "lo", " world"]):
        delta = h.append("a", token, at(2 + i))
        (part,) = delta.messages.values()
        assert part.header is None and part.base.is_bottom()
        assert [x.text for x in part.appends] == [token]
        h = apply(h, delta)
    assert h.messages["a"].text == "Hello world"


def test_appends_arriving_out_of_order_read_in_stamp_order() -> None:
    h = History()
    h = apply(h, h.post("a", "", at(1)))
    d1 = h.append("a", "one ", at(2))
    d2 = h.join(d1).append("a", "two", at(3))
    assert h.join(d2).join(d1).messages["a"].text == "one two"


def test_edit_drops_the_appends_made_on_the_old_text_even_when_they_arrive_late() -> None:
    h = History()
    h = apply(h, h.post("a", "draft", at(1)))
    late = h.append("a", " more", at(2, "B"))  # made on the old base
    edited = h.join(h.edit("a", "final", at(3, "A")))
    joined = edited.join(late)
    assert joined.messages["a"].text == "final"
    assert joined == edited  # the append leaves the state, not just the view


def test_an_append_that_arrives_before_the_edit_it_follows_is_kept() -> None:
    h = History()
    h = apply(h, h.post("a", "draft", at(1)))
    edit = h.edit("a", "final", at(2))
    append = h.join(edit).append("a", "!", at(3))
    joined = h.join(append)  # the append waits for its base (§8.2.2)
    assert joined.messages["a"].text == "draft"
    assert joined.join(edit).messages["a"].text == "final!"


def test_appends_past_the_limit_fold_into_an_edit() -> None:
    limits = MessageLimits(max_appends=2)
    h = History()
    h = apply(h, h.post("a", "", at(1)))
    for i in range(5):
        h = apply(h, h.append("a", str(i), at(2 + i), limits))
        assert len(h.messages["a"].current_appends()) <= limits.max_appends
    assert h.messages["a"].text == "01234"


def test_text_over_the_limit_is_refused() -> None:
    limits = MessageLimits(max_text_bytes=4)
    h = History()
    with pytest.raises(MessageError, match="over the limit"):
        h.post("a", "é" * 3, at(1), limits=limits)  # 6 bytes
    h = apply(h, h.post("a", "abc", at(1), limits=limits))
    with pytest.raises(MessageError, match="over the limit"):
        h.append("a", "de", at(2), limits)


def test_writes_to_unknown_or_bad_ids_are_refused() -> None:
    h = chat()
    for call in (lambda: h.append("zz", "x", at(5)), lambda: h.edit("zz", "x", at(5)),
                 lambda: h.switch("zz", at(5)), lambda: h.delete("zz"),
                 lambda: h.regenerate("zz", "n", "", at(5)),
                 lambda: h.post("n", "x", at(5), reply_to="zz"),
                 lambda: h.post("", "x", at(5)), lambda: h.post("x" * 129, "x", at(5))):
        with pytest.raises(MessageError):
            call()


# -- delete ----------------------------------------------------------------------------------


def test_delete_wins_over_concurrent_edit_and_append_and_drops_text_and_author() -> None:
    h = History()
    h = apply(h, h.post("m", "secret", at(1), author="ann"))
    edit = h.edit("m", "new secret", at(5, "B"))
    append = h.append("m", " more", at(6, "C"))
    delete = h.delete("m")
    for order in ([edit, append, delete], [delete, edit, append], [append, delete, edit]):
        m = reduce(History.join, order, h).messages["m"]
        assert m.deleted and m.text == "" and not m.appends
        assert m.header is not None and m.header.author is None
        assert m.header.parent is None and m.header.created == at(1)  # the tree shape stays
    with pytest.raises(MessageError, match="deleted"):
        h.join(delete).append("m", "x", at(9))


def test_a_deleted_message_keeps_its_place_so_its_replies_stay_visible() -> None:
    h = chat()
    h = apply(h, h.post("u2", "q", at(3)))
    h = apply(h, h.delete("a1"))
    assert visible_path(h) == ["u1", "a1", "u2"]


# -- three replicas: a stateful model test ---------------------------------------------------


class ThreeReplicas(RuleBasedStateMachine):
    """Three replicas run random writes; deltas travel on a lossy, duplicating, reordering
    network. After full delivery (every delta made, resent to everyone) all replicas hold
    one state and show one history, and every message is reachable (§8.3.5)."""

    runs: ClassVar[list[int]] = []  # deltas made per run: tests the test (see below)

    @initialize()
    def start(self) -> None:
        self.sim = ms.Sim()
        self.in_flight: list[tuple[str, History]] = []

    @rule(data=st.data(), replica=st.sampled_from(ms.REPLICAS),
          op=st.sampled_from(ms.OPS), text=ms.texts)
    def write(self, data: st.DataObject, replica: str, op: str, text: str) -> None:
        ids = ms.known_ids(self.sim.states[replica])
        self._run(replica, op, data.draw(st.sampled_from(ids)) if ids else None, text)

    def _run(self, replica: str, op: str, target: str | None, text: str) -> None:
        delta = self.sim.local(replica, op, target, text)
        if delta is not None:
            self.in_flight += [(r, delta) for r in ms.REPLICAS if r != replica]

    @rule(replica=st.sampled_from(ms.REPLICAS), text=ms.texts)
    def post(self, replica: str, text: str) -> None:
        # A rule of its own (besides `write`), so that runs grow trees worth syncing.
        self._run(replica, "post", None, text)

    @rule(data=st.data())
    def deliver(self, data: st.DataObject) -> None:
        if self.in_flight:
            to, delta = self.in_flight.pop(data.draw(st.integers(0, len(self.in_flight) - 1)))
            self.sim.receive(to, delta)

    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        if self.in_flight:
            self.in_flight.pop(data.draw(st.integers(0, len(self.in_flight) - 1)))

    @rule(data=st.data())
    def duplicate(self, data: st.DataObject) -> None:
        if self.in_flight:
            self.in_flight.append(data.draw(st.sampled_from(self.in_flight)))

    @invariant()
    def full_delivery_converges(self) -> None:
        # Full delivery: each replica gets every delta made (what it lost is resent), each in
        # its own order -- as made, reversed, and in-flight first then the rest reversed.
        made = self.sim.deltas
        orders = [made, made[::-1], [d for _, d in self.in_flight] + made[::-1]]
        after = [reduce(History.join, order, self.sim.states[r])
                 for r, order in zip(ms.REPLICAS, orders, strict=True)]
        everything = reduce(History.join, made, History())
        assert all(state == everything for state in after)  # nothing a replica has is lost
        assert len({tuple(visible_path(s)) for s in after}) == 1
        for mid, m in everything.messages.items():
            assert m.header is not None  # a delta about a message follows its post
            if not m.deleted:
                assert mid in versions(everything, mid)
                shown = everything.join(everything.switch(mid, ms.fresh_stamp(everything)))
                assert mid in visible_path(shown)

    def teardown(self) -> None:
        self.runs.append(len(self.sim.deltas))


ThreeReplicas.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None)


def test_three_replicas() -> None:
    ThreeReplicas.runs.clear()
    ThreeReplicas.TestCase().runTest()
    # The machine must do real work, or it cannot fail: most runs make several deltas.
    assert sum(n >= 5 for n in ThreeReplicas.runs) >= len(ThreeReplicas.runs) // 3


def test_choice_naming_another_group_is_ignored() -> None:
    h = chat()
    forged = History.make({}, {"a1": Lww(at(9), "u1")})  # u1 is not a version of a1
    assert visible_path(h.join(forged)) == ["u1", "a1"]
