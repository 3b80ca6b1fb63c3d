"""The conversation features' concurrency rules (specs/crdt.md §6), as named scenarios: on
simulated replicas (ConversationMaps exchanging deltas, as tests/test_semantics.py does) and,
where the wall clock or a limit matters, on real replicas with a fake clock."""

from __future__ import annotations

import pytest

from crdtim import MAX_READ_BY_MEMBERS, InvalidArgument, Replica, codec
from crdtim.crdt import ConversationMap, Stamp
from crdtim.errors import DecodeError
from test_semantics import CID, Device


class Phone(Device):
    """A Device with the feature mutators."""

    def archive(self, keep: bool = False) -> ConversationMap:
        return self.apply(self.state.archive(CID, self.rid, keep))

    def unarchive(self) -> ConversationMap:
        return self.apply(self.state.unarchive(CID))

    def delete(self) -> ConversationMap:
        return self.apply(self.state.delete(CID, self.wall_ms))

    def mark_unread(self) -> ConversationMap:
        return self.apply(self.state.mark_unread(CID, self.rid))

    def mute(self, until: int = 0) -> ConversationMap:
        return self.apply(self.state.mute(CID, self.rid, until, self.stamp()))

    def unmute(self) -> ConversationMap:
        return self.apply(self.state.disable(CID, "muted"))


def exchange(a: Device, b: Device, da: ConversationMap, db: ConversationMap) -> None:
    a.receive(db)
    b.receive(da)
    assert a.state == b.state


# -- archive ---------------------------------------------------------------------------------


def test_concurrent_archive_and_a_new_message_bring_it_back_everywhere():
    phone, laptop = Phone("phone", 100), Phone("laptop", 100)
    laptop.receive(phone.arrive(1, "hi", at=10))
    archive, message = phone.archive(), laptop.arrive(2, "later", at=20)
    exchange(phone, laptop, archive, message)
    assert not phone.view.archived and not laptop.view.archived


def test_a_late_older_message_leaves_it_archived():
    phone, laptop = Phone("phone", 100), Phone("laptop", 100)
    laptop.receive(phone.arrive(5, "hi", at=50))
    archive, old = phone.archive(), laptop.arrive(3, "older", at=40)
    exchange(phone, laptop, archive, old)
    assert phone.view.archived and laptop.view.archived


def test_concurrent_archive_and_unarchive_leave_it_archived():
    phone, laptop = Phone("phone", 100), Phone("laptop", 100)
    laptop.receive(phone.archive())
    archive, unarchive = phone.archive(), laptop.unarchive()
    exchange(phone, laptop, archive, unarchive)
    assert phone.view.archived


def test_archive_keep_survives_new_messages_until_unarchive():
    phone, laptop = Phone("phone", 100), Phone("laptop", 100)
    laptop.receive(phone.archive(keep=True))
    laptop.receive(phone.arrive(9, "new", at=99))
    assert laptop.view.archived
    phone.receive(laptop.unarchive())
    assert not phone.view.archived
    # A plain archive after it lifts keep: the next message brings it back.
    phone.archive()
    phone.arrive(10, "newer", at=100)
    assert not phone.view.archived


# -- delete for me -----------------------------------------------------------------------------


def test_delete_drops_the_preview_and_a_late_message_brings_it_back_empty():
    phone, laptop = Phone("phone", 100), Phone("laptop", 100)
    laptop.receive(phone.arrive(3, "secret", at=50))
    phone.delete()
    assert phone.view.deleted and phone.view.last_preview == "" and phone.view.unread == 0
    assert "last_message" not in phone.state.fields(CID)  # dropped from the state
    # A message sent after the delete (newer than cleared_at = max(now, last_at)) returns it.
    later = laptop.arrive(4, "after", at=150)
    phone.receive(later)
    assert not phone.view.deleted and phone.view.last_preview == "after"


def test_delete_then_a_replica_that_had_not_seen_it_cannot_undo_it():
    phone, laptop = Phone("phone", 100), Phone("laptop", 100)
    laptop.receive(phone.arrive(3, "secret", at=50))
    laptop.arrive(2, "also old", at=40)  # and the laptop has not seen the delete below
    delete = phone.delete()
    phone.receive(laptop.state)  # its whole state, old preview and all
    laptop.receive(delete)
    assert phone.state == laptop.state
    assert phone.view.deleted and phone.view.last_preview == ""
    # ...and the covered preview does not survive the codec either.
    wire = codec.encode_map(ConversationMap(
        {CID: {**laptop.state.fields(CID), "last_message": phone_old_message()}}))
    assert "last_message" not in codec.decode_map(wire).fields(CID)


def phone_old_message():
    from crdtim.crdt import Lww
    return Lww(Stamp(50, 3, "phone"), "secret")


# -- mark as unread ------------------------------------------------------------------------------


def test_concurrent_mark_unread_and_mark_read_leave_it_marked_unread():
    phone, laptop = Phone("phone", 100), Phone("laptop", 100)
    laptop.receive(phone.arrive(2, at=10))
    unread, read = phone.mark_unread(), laptop.read(2)
    exchange(phone, laptop, unread, read)
    assert phone.view.marked_unread and phone.view.unread == 0


def test_mark_read_after_an_observed_mark_unread_clears_it_everywhere():
    phone, laptop = Phone("phone", 100), Phone("laptop", 100)
    laptop.receive(phone.arrive(2, at=10))
    laptop.receive(phone.mark_unread())
    phone.receive(laptop.read(1))  # any mark_read, even one that reads nothing new
    assert not phone.view.marked_unread and not laptop.view.marked_unread


# -- mute until --------------------------------------------------------------------------------


def test_concurrent_mute_until_and_unmute_leave_it_muted_until_then():
    phone, laptop = Phone("phone", 100), Phone("laptop", 100)
    laptop.receive(phone.mute())
    mute, unmute = phone.mute(until=500), laptop.unmute()
    exchange(phone, laptop, mute, unmute)
    assert phone.state.view(CID, now=499).muted
    assert phone.state.view(CID, now=499).muted_until == 500
    assert not phone.state.view(CID, now=500).muted


def test_mute_until_expires_with_the_clock_and_no_write(tmp_path):
    now = [1_000_000]
    with Replica.open(tmp_path / "r", durability="nosync", now_ms=lambda: now[0]) as r:
        r.mute("c", until=now[0] + 60_000)
        head = r.head
        assert r.get("c").muted and r.get("c").muted_until == 1_060_000
        now[0] += 59_999
        assert r.get("c").muted
        now[0] += 1
        c = r.get("c")
        assert not c.muted and c.muted_until == 1_060_000 and r.head == head
        assert not r.list().items[0].muted
        with pytest.raises(InvalidArgument, match="not in the future"):
            r.mute("c", until=now[0])
        r.mute("c")  # until unmuted
        now[0] += 10**9
        assert r.get("c").muted and r.get("c").muted_until == 0


# -- read positions and mark_read's bound ------------------------------------------------------


def test_read_by_limit_refuses_a_local_write_and_a_remote_state_over_it(tmp_path):
    with Replica.open(tmp_path / "r", durability="nosync") as r:
        with r.batch():
            for i in range(MAX_READ_BY_MEMBERS):
                r.mark_read_by("c", f"m{i}", 1)
        r.mark_read_by("c", "m0", 5)  # a member already there may move on
        head = r.head
        with pytest.raises(InvalidArgument, match="the limit"):
            r.mark_read_by("c", "one-too-many", 1)
        assert r.head == head and len(r.get("c").read_by) == MAX_READ_BY_MEMBERS
        entries = {f"x{i}": 1 for i in range(MAX_READ_BY_MEMBERS + 1)}
        over = codec.pack([1, ["p"], {"c": {14: entries}}])
        with pytest.raises(DecodeError, match="over the limit of 1024"):
            r.apply_delta(over)
        assert r.head == head


def test_concurrent_read_by_over_the_limit_keep_the_same_top_members():
    # Two replicas each within the bound, joined over it: every replica keeps the same
    # MAX_READ_BY_MEMBERS entries, those ranking highest by (seq, member).
    a = ConversationMap.bottom()
    for i in range(MAX_READ_BY_MEMBERS):
        a = a.join(a.mark_read_by(CID, f"a{i:04}", 2))
    b = ConversationMap.bottom().mark_read_by(CID, "late", 1)
    b2 = ConversationMap.bottom().mark_read_by(CID, "early", 3)
    for joined in (a.join(b).join(b2), b2.join(b).join(a)):
        read_by = joined.view(CID).read_by
        assert len(read_by) == MAX_READ_BY_MEMBERS
        assert "early" in read_by and "late" not in read_by and "a0000" not in read_by


def test_mark_read_above_last_seq_is_refused_and_changes_nothing(tmp_path):
    with Replica.open(tmp_path / "r", durability="nosync") as r:
        r.message_arrived("c", 3)
        head = r.head
        with pytest.raises(InvalidArgument, match="above conversation 'c''s last_seq 3"):
            r.mark_read("c", 4)
        assert r.head == head and r.get("c").read_seq == 0
        with r.batch():  # an arrival recorded first, in the same batch, may be read
            r.message_arrived("c", 7)
            r.mark_read("c", 7)
        assert r.get("c").unread == 0


def test_list_filters_are_exact_across_pages(tmp_path):
    with Replica.open(tmp_path / "r", durability="nosync") as r:
        for i in range(20):
            r.message_arrived(f"c{i:02}", 1, at=1000 + i)
            if i % 3 == 0:
                r.archive(f"c{i:02}")
            if i % 4 == 0:
                r.delete_conversation(f"c{i:02}")
            if i % 5 == 0:
                r.pin(f"c{i:02}")
        everything = list(r)
        for kw in ({}, {"archived": True}, {"pinned": True}, {"pinned": False},
                   {"unread": True}, {"unread": False, "archived": True}):
            want = [c.id for c in everything if not c.deleted
                    and c.archived == kw.get("archived", False)
                    and ("pinned" not in kw or c.pinned == kw["pinned"])
                    and ("unread" not in kw or (c.unread > 0 or c.marked_unread) == kw["unread"])]
            for limit in (1, 2, 3, 50):
                got, cursor = [], None
                while True:
                    page = r.list(limit, cursor, **kw)
                    assert len(page.items) == limit or not page.has_more
                    got += [c.id for c in page.items]
                    if not page.has_more:
                        break
                    cursor = page.cursor
                assert got == want, (kw, limit)
        with pytest.raises(InvalidArgument, match="unread must be True, False or None"):
            r.list(unread="yes")
