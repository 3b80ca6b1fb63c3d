"""The message history through the Replica API (specs/crdt.md §8): one test per guarantee,
and replicas exchanging their deltas with loss, duplication and reordering, checked against
the join of every delta made (the plain model)."""

from __future__ import annotations

import pytest

from crdtim import InvalidArgument, Replica
from crdtim.crdt import MessageLimits


def ids(r: Replica, cid: str = "c") -> list[str]:
    """The visible history, oldest first, read page by page (pages of 2: cursors matter)."""
    out: list[str] = []
    cursor = None
    while True:
        page = r.history(cid, limit=2, cursor=cursor)
        out += [m.id for m in page.items]
        if not page.has_more:
            return out[::-1]
        cursor = page.cursor


def sync(*replicas: Replica) -> None:
    for _ in range(2):
        for x in replicas:
            for y in replicas:
                if x is not y:
                    y.apply_delta(x.delta_since(0), origin=x.id)


def test_post_shows_in_order_and_updates_the_conversation(a: Replica) -> None:
    m1 = a.post("c", "hello", id="u1", seq=1)
    m2 = a.post("c", "hi there", role="assistant", id="a1", seq=2)
    assert (m1.id, m1.parent, m1.role, m1.text, m1.seq) == ("u1", None, "user", "hello", 1)
    assert m2.parent == "u1" and m2.version == 0 and m2.versions == 1
    assert ids(a) == ["u1", "a1"]
    conv = a.get("c")
    assert conv is not None
    assert conv.last_seq == 2 and conv.last_preview == "hi there"
    # u1 is this user's own message (role user, no author): it never counts as unread.
    assert conv.unread == 1


def test_retried_post_is_one_message_and_a_different_one_is_refused(a: Replica) -> None:
    a.post("c", "hello", id="u1")
    head = a.head
    again = a.post("c", "hello", id="u1")
    assert again.id == "u1" and a.head == head  # nothing written
    with pytest.raises(InvalidArgument, match="exists with different role"):
        a.post("c", "hello", id="u1", role="assistant")
    assert a.head == head


def test_own_post_clears_the_draft(a: Replica) -> None:
    a.set_draft("c", "typing...")
    a.post("c", "sent")
    conv = a.get("c")
    assert conv is not None and conv.draft == ""


def test_streamed_reply_ships_only_the_new_text(a: Replica, b: Replica) -> None:
    a.post("c", "question", id="u1")
    a.post("c", "x" * 300, role="assistant", id="a1")  # the preview is full: it stays
    sync(a, b)
    sizes = []
    for token in ["The", " answer", " is", " 42."]:
        head = a.head
        a.append("c", "a1", token)
        sizes.append(len(a.delta_since(head)))
        b.apply_delta(a.delta_since(head), origin=a.id)
    assert b.message("c", "a1").text == "x" * 300 + "The answer is 42."  # type: ignore
    assert max(sizes) < 80, sizes  # an append carries its token, not the whole text


def test_edit_replaces_and_drops_appends_made_on_the_old_text(a: Replica, b: Replica) -> None:
    a.post("c", "draft", id="m")
    sync(a, b)
    a.append("c", "m", " more")
    b.edit("c", "m", "final")
    sync(a, b)
    assert a.message("c", "m").text == b.message("c", "m").text == "final"  # type: ignore


def test_delete_is_final_and_drops_the_text(a: Replica, b: Replica) -> None:
    a.post("c", "secret", id="m", author="ann")
    a.post("c", "reply", id="r")
    sync(a, b)
    a.delete_message("c", "m")
    b.append("c", "m", " more")
    b.edit("c", "m", "changed")
    sync(a, b)
    for r in (a, b):
        m = r.message("c", "m")
        assert m is not None and m.deleted and m.text == "" and m.author is None
        assert ids(r) == ["m", "r"]  # its place and its replies stay
    with pytest.raises(InvalidArgument, match="deleted"):
        a.append("c", "m", "x")


def test_regenerate_and_switch(a: Replica) -> None:
    a.post("c", "q", id="u1")
    a.post("c", "first", role="assistant", id="a1")
    a.post("c", "follow-up", id="u2")
    v2 = a.regenerate("c", "a1", "second", id="a2")
    assert (v2.version, v2.versions, v2.role, v2.parent) == (1, 2, "assistant", "u1")
    assert ids(a) == ["u1", "a2"]
    assert [(m.id, m.visible) for m in a.versions("c", "a1")] == [("a1", False), ("a2", True)]
    a.switch("c", "u2")
    assert ids(a) == ["u1", "a1", "u2"]


def test_reply_to_an_earlier_message_starts_a_branch(a: Replica) -> None:
    a.post("c", "q", id="u1")
    a.post("c", "a", role="assistant", id="a1")
    a.post("c", "x", id="u2")
    b2 = a.post("c", "y", id="u2b", reply_to="a1")
    assert b2.versions == 2 and ids(a) == ["u1", "a1", "u2b"]


def test_concurrent_posts_are_both_shown(a: Replica, b: Replica) -> None:
    a.post("c", "q", id="u1")
    sync(a, b)
    a.post("c", "from a", id="x")
    b.post("c", "from b", id="y")
    sync(a, b)
    assert ids(a) == ids(b) and set(ids(a)) == {"u1", "x", "y"}


@pytest.mark.parametrize("call, message", [
    (lambda r: r.append("c", "nope", "x"), "no such message"),
    (lambda r: r.edit("c", "nope", "x"), "no such message"),
    (lambda r: r.switch("c", "nope"), "no such message"),
    (lambda r: r.delete_message("c", "nope"), "no such message"),
    (lambda r: r.regenerate("c", "nope"), "no such message"),
    (lambda r: r.post("c", "x" * 70_000), "over the limit"),
    (lambda r: r.post("c", "x", id=""), "message id"),
    (lambda r: r.post("c", "x", id="a\x00b"), "NUL"),
    (lambda r: r.post("c", "x", reply_to="nope"), "no such message"),
    (lambda r: r.post("c", 5), "must be a string"),
    (lambda r: r.history("c", limit=0), "limit"),
    (lambda r: r.history("c", cursor="garbage"), "cursor"),
])
def test_bad_input_is_refused_and_changes_nothing(a: Replica, call, message: str) -> None:
    a.post("c", "hello", id="m")
    head, before = a.head, a.state()
    with pytest.raises(InvalidArgument, match=message):
        call(a)
    assert a.head == head and a.state() == before


def test_events_name_the_messages(a: Replica) -> None:
    seen = []
    a.subscribe(seen.append)
    a.post("c", "hello", id="m")
    a.append("c", "m", "!")
    assert [sorted(c.messages) for c in seen] == [["m"], ["m"]]
    assert all("messages" in c.fields for c in seen)


def test_a_batch_posts_in_one_commit(a: Replica) -> None:
    with a.batch():
        m = a.post("c", "one", id="m1")
        a.post("c", "two", id="m2", reply_to="m1")
    assert m.id == "m1" and ids(a) == ["m1", "m2"] and a.head == 1


def test_history_survives_reopen_and_state_transfer(tmp_path, open_replica) -> None:
    a = open_replica("a")
    for n in range(30):
        a.post("c", f"m{n}", id=f"m{n:02}")
    a.regenerate("c", "m29", "again", id="v2")
    # A chunk of at most 7 records: the history spans chunks.
    b = open_replica("b")
    after = None
    while True:
        payload, after = a.encoded_state_chunk(after, 7)
        if payload is not None:
            b.apply_delta(payload, origin=a.id)
        if after is None:
            break
    assert ids(b) == ids(a) and b.state() == a.state()
    assert len(ids(a)) == 30 and ids(a)[-1] == "v2"


def test_message_limits_are_the_replicas(open_replica) -> None:
    r = open_replica("r")
    r.message_limits = MessageLimits(max_text_bytes=10)
    with pytest.raises(InvalidArgument, match="over the limit of 10"):
        r.post("c", "x" * 11)


def test_no_delta_holds_more_messages_than_a_peer_decodes(a: Replica, b: Replica,
                                                          monkeypatch) -> None:
    from crdtim import codec
    monkeypatch.setattr(codec.DEFAULT_LIMITS, "max_messages", 5)
    with pytest.raises(InvalidArgument, match="at most 5 messages"):
        with a.batch():
            for n in range(6):
                a.post("c", f"m{n}", id=f"m{n}")
    assert a.head == 0
    with a.batch():
        for n in range(3):
            a.post("c", f"m{n}", id=f"m{n}")
    with a.batch():
        for n in range(3, 6):
            a.post("c", f"m{n}", id=f"m{n}")
    # Two entries of 3 would join to 6: the interval stops after the first.
    end, delta = a.delta_interval(0)
    assert end == 1 and len(delta.fields("c")["messages"].messages) == 3
    b.apply_map(delta, a.id)
    end, delta = a.delta_interval(1)
    assert end == 2


def test_a_history_stamped_far_ahead_waits_and_the_rest_applies(open_replica) -> None:
    clock = {"now": 1_000_000}
    ahead = open_replica("ahead", now_ms=lambda: clock["now"] + 3_600_000)
    here = open_replica("here", now_ms=lambda: clock["now"])
    ahead.pin("c")  # a flag has no stamp: it applies at once
    ahead.post("c", "from the future", id="f")
    changed = here.apply_delta(ahead.delta_since(0), origin=ahead.id)
    assert changed == {"c"} and here.message("c", "f") is None  # held, not refused
    assert here.get("c").pinned  # type: ignore[union-attr]
    clock["now"] += 3_600_000
    here.apply_pending()
    m = here.message("c", "f")
    assert m is not None and m.text == "from the future"


def test_group_commit_keeps_each_logged_entry_within_a_peers_message_bound(
        a: Replica, b: Replica, monkeypatch) -> None:
    """Two DELTAs read at once are joined into one entry, which is forwarded: the join stops
    where one conversation would hold more message records than a peer decodes."""
    from test_memory_amplification import drive

    from crdtim import codec
    from crdtim.protocol import SyncSession
    monkeypatch.setattr(codec.DEFAULT_LIMITS, "max_messages", 5)
    for k in range(2):
        with a.batch():
            for n in range(3):
                a.post("c", "x", id=f"m{k}{n}")
    drive(SyncSession(a), SyncSession(b))
    assert ids(b) == ids(a)
    for _, _, payload in b.store.read(lambda t: list(t.log_entries(0))):
        history = codec.decode_map(payload, b.schema).fields("c")["messages"]
        assert len(history.messages) + len(history.choices) <= 5


def test_a_streamed_reply_grows_the_conversations_preview(a: Replica, b: Replica) -> None:
    a.post("c", "question", id="u1")
    a.post("c", "", role="assistant", id="a1")
    sync(a, b)
    for token in ["The", " answer"]:
        a.append("c", "a1", token)
    b.append("c", "a1", "!")  # concurrent: both previews grow; the join keeps the larger
    sync(a, b)
    assert a.get("c").last_preview == b.get("c").last_preview  # type: ignore[union-attr]
    assert a.get("c").last_preview.startswith("The answer")  # type: ignore[union-attr]
    a.append("c", "u1", " (earlier message)")  # not the last message: the preview stays
    assert a.get("c").last_preview.startswith("The answer")  # type: ignore[union-attr]


def test_held_histories_are_applied_in_entries_a_peer_decodes(open_replica,
                                                               monkeypatch) -> None:
    """crdt.md §8.7: two histories held for the same time and conversation were joined into
    one pending entry and applied as one log entry of 6 records, which a peer decoding at
    most 5 per delta refused, stalling the link. The second now waits in an entry of its own,
    a millisecond later."""
    from crdtim import codec
    monkeypatch.setattr(codec.DEFAULT_LIMITS, "max_messages", 5)
    clock = {"now": 1_000_000}
    here = open_replica("here", now_ms=lambda: clock["now"])
    for name in ("ahead1", "ahead2"):
        ahead = open_replica(name, now_ms=lambda: clock["now"] + 3_600_000)
        with ahead.batch():
            for n in range(3):
                ahead.post("c", "x", id=f"{name}-{n}")
        here.apply_delta(ahead.delta_since(0), origin=ahead.id)
    assert here.status()["pending"]["count"] == 2
    clock["now"] += 3_600_001
    here.apply_pending()
    assert len(here.history("c").items) == 6
    for _, _, payload in here.store.read(lambda t: list(t.log_entries(0))):
        codec.decode_map(payload, here.schema)  # within DEFAULT_LIMITS, or DecodeError


def test_an_apps_own_history_field_is_bounded_per_entry_like_messages(open_replica,
                                                                      monkeypatch) -> None:
    """crdt.md §8.7: group commit and delta intervals bounded `messages` only; an app's own
    History field joined two DELTAs of 3 records into one forwarded entry of 6, over the 5 a
    peer decodes."""
    from test_memory_amplification import drive

    from crdtim import DEFAULT_SCHEMA, Field, codec
    from crdtim.crdt import ConversationMap, History
    from crdtim.protocol import SyncSession
    monkeypatch.setattr(codec.DEFAULT_LIMITS, "max_messages", 5)
    schema = DEFAULT_SCHEMA.extend(Field("notes", 64, History, clocked=True))
    source = open_replica("source")
    relay = open_replica("relay", schema=schema)
    sink = open_replica("sink", schema=schema)
    for k in range(2):
        with source.batch():
            for n in range(3):
                source.post("c", "x", id=f"m{k}{n}")
        _, _, payload = source.store.read(lambda t: list(t.log_entries(k)))[0]
        history = codec.decode_map(payload, source.schema).fields("c")["messages"]
        relay.apply_map(ConversationMap({"c": {"notes": history}}, schema), "app")
    assert relay.head == 2
    drive(SyncSession(relay), SyncSession(sink))
    assert sink.state() == relay.state()
    for _, _, payload in sink.store.read(lambda t: list(t.log_entries(0))):
        notes = codec.decode_map(payload, schema).fields("c")["notes"]
        assert len(notes.messages) + len(notes.choices) <= 5
