"""The stored message index against the pure history (specs/crdt.md §8.3, §8.6).

Deltas joined into LMDB one at a time, in any order and split any way, must leave the index
saying exactly what the pure Tree of the joined state says: the visible path, each group's
members and active member, each message's visibility; and the mutators reading the stored
view must make the very deltas they make reading the pure one.
"""

from __future__ import annotations

from functools import reduce

import message_strategies as ms
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crdtim.crdt import History, MessageError, visible_path
from crdtim.crdt import history_ops as ops
from crdtim.crdt.history_tree import Tree
from crdtim.replica import Replica
from crdtim.replica._message_index import MessageIndex

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory):  # one store; each example a new cid
    r = Replica.open(tmp_path_factory.mktemp("idx") / "r", durability="nosync")
    yield r
    r.close()


_counter = iter(range(10**9))


def split(h: History, data: st.DataObject) -> list[History]:
    """`h` cut into single-entry deltas, shuffled, some repeated."""
    parts = [History({mid: m}, {}) for mid, m in h.messages.items()]
    parts += [History({}, {g: c}) for g, c in h.choices.items()]
    parts = data.draw(st.permutations(parts)) if parts else []
    return parts + data.draw(st.lists(st.sampled_from(parts), max_size=3) if parts else st.just([]))


def check_index(idx: MessageIndex, state: History) -> None:
    tree = Tree(state.messages, state.choices)
    assert idx.state() == state
    assert list(reversed(list(idx.visible_ids(None, 10**6)))) == visible_path(state)
    for mid in tree.headers:
        group = tree.group(mid)
        assert group is not None
        assert idx.members(group) == tree.members(group)
        assert idx.active(group) == tree.active(group)
        assert idx.is_visible(mid) == tree.is_visible(mid), mid
        assert idx.children(mid) == tree.children(mid)
    assert idx.last_visible() == tree.last_visible()


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(states=st.lists(ms.encodable_histories(), min_size=1, max_size=3), data=st.data())
def test_index_matches_the_pure_tree_in_any_delivery(replica: Replica, states: list[History],
                                                     data: st.DataObject) -> None:
    cid = f"c{next(_counter)}"
    whole = reduce(History.join, states, History())
    parts = [p for s in states for p in split(s, data)]
    parts = data.draw(st.permutations(parts))
    novel = []
    for part in parts:
        novel.append(replica.store.write(lambda t, p=part: MessageIndex(t, cid, True).join(p)))
    # Every novel part is below the delta it came from, and together they make the state.
    assert reduce(History.join, novel, History()) == whole
    replica.store.read(lambda t: check_index(MessageIndex(t, cid), whole))


MUTATORS = ("post", "post_reply", "regenerate", "append", "edit", "switch", "delete")


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(state=ms.encodable_histories(), op=st.sampled_from(MUTATORS), target=ms.message_ids,
       mid=st.sampled_from(("n1", "m1", "m2")), text=ms.texts)
def test_mutators_make_the_same_delta_on_the_stored_view(
        replica: Replica, state: History, op: str, target: str, mid: str, text: str) -> None:
    cid = f"c{next(_counter)}"
    if not state.is_bottom():
        replica.store.write(lambda t: MessageIndex(t, cid, True).join(state))
    stamp = ms.fresh_stamp(state)

    def run(view: ops.HistoryView) -> object:
        try:
            if op == "post":
                return ops.post(view, mid, text, stamp)
            if op == "post_reply":
                return ops.post(view, mid, text, stamp, reply_to=target)
            if op == "regenerate":
                return ops.regenerate(view, target, mid, text, stamp)
            if op == "append":
                return ops.append(view, target, text, stamp)
            if op == "edit":
                return ops.edit(view, target, text, stamp)
            if op == "switch":
                return ops.switch(view, target, stamp)
            return ops.delete(view, target)
        except MessageError as e:
            return ("refused", str(e))

    pure = run(state.view())
    stored = replica.store.read(lambda t: run(MessageIndex(t, cid)))
    assert stored == pure


def test_large_records_read_back_as_written_through_the_decoded_cache(tmp_path) -> None:
    """Records of 2 KB or more are kept decoded by their bytes: every read must still be the
    state as written, in this process and in a fresh one (a reopened replica)."""
    r = Replica.open(tmp_path / "r", durability="nosync")
    r.post("c", "x" * 3000, id="big")
    for n in range(5):
        r.append("c", "big", str(n))
    assert r.message("c", "big").text == "x" * 3000 + "01234"  # type: ignore[union-attr]
    r.edit("c", "big", "y" * 2500)
    assert r.message("c", "big").text == "y" * 2500  # type: ignore[union-attr]
    state = r.state()
    r.close()
    with Replica.open(tmp_path / "r") as again:
        assert again.state() == state
        again.delete_message("c", "big")
        m = again.message("c", "big")
        assert m is not None and m.deleted and m.text == ""
