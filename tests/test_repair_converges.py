"""A repaired replica converges with its peers (specs/storage.md §8a): the case the real-process
fault run found diverging, a damaged conversation record whose messages were left behind."""

from __future__ import annotations

from crdtim import codec, maintenance
from crdtim.crdt import ConversationMap
from crdtim.replica import Replica
from tests.test_maintenance import damage_value, poke, sync


def transfer(source: Replica, dest: Replica) -> None:
    """`source`'s whole state transfer (its STATE_CHUNKs) applied to `dest`."""
    after = None
    while True:
        payload, after = source.encoded_state_chunk(after, 512, 1 << 20)
        if payload is not None:
            chunk, wire = codec.decode_map_as_received(payload, dest.schema)
            dest.apply_state_chunk(chunk, wire, source.id)
        if after is None:
            return


def test_a_dropped_conversation_record_leaves_no_messages_that_no_transfer_sends(tmp_path):
    """The conversation record of `chat` is damaged on `a`, whose last append to a message
    of it never left `a`. The repair drops the record; its message records must go with it:
    a state transfer lists conversations by their records, so messages kept without one
    were not sent to the peers that asked first, and `a` kept an append that they never
    got (the real-process run: diverged for good)."""
    a, b = (Replica.open(tmp_path / n, durability="nosync") for n in "ab")
    m = a.post("chat", "hello", role="assistant")
    a.append("chat", m.id, " there")
    a.post("other", "elsewhere")
    sync(a, b)
    b.append("chat", m.id, " from b")
    sync(a, b)
    a.append("chat", m.id, " only on a")  # never synced before the damage
    a.close()
    damage_value(tmp_path / "a", "chat")
    report = maintenance.verify(tmp_path / "a", repair=True)
    assert report.repaired is not None and report.repaired["conversations_dropped"] == 1
    assert maintenance.verify(tmp_path / "a").ok
    a = Replica.open(tmp_path / "a", durability="nosync")
    assert report.repaired["message_records_dropped"] == 1  # the conversation went whole
    assert a.get("chat") is None and a.message("chat", m.id) is None
    assert [x.text for x in a.history("other").items] == ["elsewhere"]
    # What `a` holds, its state transfer sends: a new replica filled by it holds the same.
    fresh = Replica.open(tmp_path / "fresh", durability="nosync")
    transfer(a, fresh)
    for cid in ("chat", "other"):
        assert fresh.history(cid, limit=100).items == a.history(cid, limit=100).items
    sync(a, b)
    assert a.state() == b.state()
    assert a.message("chat", m.id) == b.message("chat", m.id)
    assert a.history("chat", limit=100).items == b.history("chat", limit=100).items
    for r in (a, b, fresh):
        r.close()


def test_a_conversation_known_only_by_its_messages_is_sound(tmp_path):
    """A peer's delta holding only the messages of a conversation new here stores an empty
    conversation record (listing and state transfer go by records): verify passes it, and a
    repair leaves it and its messages alone (it once dropped them, and changed the id)."""
    a, b = (Replica.open(tmp_path / n, durability="nosync") for n in "ab")
    m = a.post("chat", "hello")
    history = a.state().convs["chat"]["messages"]
    b.apply_map(ConversationMap({"chat": {"messages": history}}, b.schema), a.id)
    assert b.get("chat") is None and b.message("chat", m.id) is not None
    a.close()
    b.close()
    report = maintenance.verify(tmp_path / "b", repair=True)
    assert report.ok and report.problems == []
    assert report.repaired is not None and "new_id" not in report.repaired
    with Replica.open(tmp_path / "b", create=False) as b:
        assert b.message("chat", m.id) is not None
    # An empty record with no messages is still a damaged one.
    poke(tmp_path / "b", "mindex", lambda t, db: t.delete(b"\xffchat", db=db))
    assert [(p.database, p.key) for p in maintenance.verify(tmp_path / "b").problems][:1] == \
        [("convs", "'chat'")]
