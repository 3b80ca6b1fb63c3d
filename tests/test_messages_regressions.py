"""Regressions an adversarial review of the message history found (specs/crdt.md §8): each
failed before its fix."""

from __future__ import annotations

import time

import pytest

from crdtim.replica import InvalidArgument, Replica

pytestmark = pytest.mark.filterwarnings("ignore")


def test_history_after_clear_shows_newer_messages_past_an_older_dated_one(a: Replica) -> None:
    """§8.8: a conversation deleted for me hides the messages whose `at` is at or before the
    time it was cleared through -- only those. A message posted with an explicit old `at`
    (an import) sorts newest by (created, id); history() stops at it and hides every older
    message on the path, even ones whose `at` is after the clear."""
    a.post("c", "before the clear", id="m1")
    a.delete_conversation("c")
    now = int(time.time() * 1000)
    a.post("c", "after the clear", id="m2", at=now + 2000)
    a.post("c", "imported, dated long ago", id="m3", at=5)
    shown = [m.id for m in a.history("c").items]
    assert shown == ["m2"]


def test_delta_interval_skipping_the_peer_stays_decodable_by_the_peer(open_replica) -> None:
    """delta_interval(skip_origin=p) joins the entries not from p. When p edits a message
    and c streams appends onto each of p's texts (each batch within MessageLimits), the
    joined interval leaves p's edits out, so nothing drops the appends made on the older
    bases: one message carries them all, past codec.Limits.max_appends (4096). p's decoder
    refuses that DELTA, and a resumed session sends the same interval again: a -> p stalls
    for good. _too_many_messages bounds records per conversation, not appends per message."""
    from crdtim import codec

    p, c, a = open_replica("p"), open_replica("c"), open_replica("a")
    seen: dict[tuple[str, str], int] = {}

    def ship(src: Replica, dst: Replica) -> None:
        k = (src.id, dst.id)
        dst.apply_delta(src.delta_since(seen.get(k, 0)), origin=src.id)
        seen[k] = src.head

    p.post("k", "x", id="m")
    ship(p, c)
    ship(p, a)
    for i in range(5):
        p.edit("k", "m", f"e{i}")
        ship(p, c)
        ship(p, a)
        with c.batch():  # one log entry here: a streamed reply grouped by one commit
            for _ in range(1000):
                c.append("k", "m", "y")
        ship(c, a)
    to, delta = a.delta_interval(0, skip_origin=p.id, max_entries=256)
    assert delta is not None
    codec.decode_map(codec.encode_map(delta), a.schema, codec.DEFAULT_LIMITS)  # p's decoder


def test_index_orders_members_by_created_stamp_even_for_a_replica_id_holding_nul(
        a: Replica) -> None:
    """§8.3.1/§8.3.2: members are ordered by (created, id); with no choice the newest is
    active. The decoder accepts any replica id of 1..64 characters, NUL included, but the
    index's position key is wall, counter, replica, NUL, id (_message_index._pos): for the
    replica "A\\0z" the bytes compare inside the id, so the index's newest member is not
    the Tree's, and the stored history shows another version than the pure one."""
    from crdtim import codec
    from crdtim.crdt import ConversationMap, Header, History, Lww, MessageState, Stamp
    from crdtim.crdt import visible_path

    def msg(h: Header, text: str) -> MessageState:
        return MessageState(h, Lww(h.created, text), frozenset(), False)

    first = Header(None, None, "user", None, 5, None, Stamp(5, 0, "A"))
    version = Header(None, "zz", "user", None, 5, None, Stamp(5, 0, "A\x00z"))
    hist = History({"zz": msg(first, "one"), "m": msg(version, "two")}, {})
    # Refused where it enters: a replica id holding NUL could not order positions.
    import pytest
    from crdtim.errors import DecodeError
    with pytest.raises(DecodeError, match="NUL"):
        a.apply_delta(codec.encode_map(ConversationMap({"c": {"messages": hist}}, a.schema)),
                      origin="x")
    assert a.history("c").items == [] and visible_path(hist) == ["m"]


def test_append_to_a_message_known_by_its_header_alone_stays_readable(open_replica) -> None:
    """§8.2.2/§7: "no writer makes an append on a bottom base". A relay that got an edit
    before the post logs the post's novel part, the header alone; a replica that receives
    that entry knows the message with a bottom base, and `append` there stamps the append
    with the bottom base stamp (replica ""). The record it commits does not decode: every
    read of the message then raises CorruptStoreError on the writer, and its log entry is
    refused by every peer (history_ops.append: Append(stamp, m.base.stamp, text))."""
    a, b, c = open_replica("a"), open_replica("b"), open_replica("c")
    a.post("k", "hello", id="m")
    h = a.head
    a.edit("k", "m", "edited")
    b.apply_delta(a.delta_since(h), origin=a.id)  # the edit arrives first
    hb = b.head
    b.apply_delta(a.delta_since(0), origin=a.id)  # then the post: only its header is novel
    c.apply_delta(b.delta_since(hb), origin=b.id)  # c hears b's entry alone
    assert c.message("k", "m") is not None
    head = c.head
    with pytest.raises(InvalidArgument, match="has not arrived"):
        c.append("k", "m", "x")  # once made on no text; its record did not decode
    assert c.head == head and c.message("k", "m") is not None
    a.apply_delta(c.delta_since(0), origin=c.id)  # c's log stays decodable by peers


def test_app_history_field_stamped_far_ahead_is_held_not_refused(open_replica) -> None:
    """crdt.md §1 rule 2 / §8.8: a history delta whose largest stamp is beyond the drift
    bound is held whole and joined when its time comes; refusing it stalls every later write
    of that sender. The schema counts an app's clocked History field among its histories
    (Schema.histories: stamp_bounds reads it, the view leaves it out like `messages`), but
    _pending.split_future holds only the field named `messages` and the registers: the app's
    history stays in Δ_now, and w.observe raises ClockDriftError for the whole delta."""
    import time

    from crdtim import codec
    from crdtim.crdt import DEFAULT_SCHEMA, ConversationMap, Field, History, Stamp

    schema = DEFAULT_SCHEMA.extend(Field("notes", 64, History, clocked=True))
    a = open_replica("a", schema=schema)
    ahead = int(time.time() * 1000) + 3_600_000
    for name in ("messages", "notes"):
        h = History().post("n", "later", Stamp(ahead, 0, "p"))
        delta = codec.encode_map(ConversationMap({"c-" + name: {name: h}}, schema))
        a.apply_delta(delta, origin="p")  # "notes": ClockDriftError


def test_history_page_after_a_clear_says_no_more_when_only_cleared_messages_remain(
        a: Replica) -> None:
    """Page.has_more / cursor (as for list pages: has_more says whether more match): a page
    of history() whose remaining path holds only messages hidden by a delete-for-me still
    says has_more=True and hands out a cursor, whose page is then empty
    (_messages.Messages.history counts any further position as "more", shown or not)."""
    import time

    a.post("c", "before the clear", id="m1")
    a.delete_conversation("c")
    a.post("c", "after the clear", id="m2", at=int(time.time() * 1000) + 2000)
    page = a.history("c", limit=1)
    assert [m.id for m in page.items] == ["m2"]
    if page.has_more:
        assert a.history("c", limit=1, cursor=page.cursor).items, "has_more, then nothing"
    assert not page.has_more
