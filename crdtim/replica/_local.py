"""Local writes: the mutators an app calls, and batches of them.

Each op is checked when it is called and applied as a delta mutator (specs/crdt.md) inside
one write transaction: alone, or with the rest of its `batch()` when the block exits. The
log entry is recorded with this replica's own id as its origin. Nothing here reads or
applies what peers send.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .. import codec
from ..crdt import MAX_READ_BY_MEMBERS, Field, Flag, Lww, MaxMap, MaxReg, features
from ..crdt.conversation import Fields, message_arrived_delta
from ..crdt.maxmap import MAX_MEMBER_NAME, valid_member
from ..store import Txn
from ._checks import InvalidArgument, check_cid, check_seq, check_text
from ._core import ReplicaCore
from ._pending import Changes, apply_due
from ._write import LocalOp, WriteTxn

#: The largest dot counter the codec reads (specs/crdt.md §5, §7).
MAX_DOT_COUNTER = codec.MAX_INT


class LocalWrites(ReplicaCore):
    """The local mutators of a Replica."""

    def set_title(self, cid: str, text: str) -> None:
        check_cid(cid)
        check_text(text, "title")
        self._local(cid, lambda w, cur: {"title": Lww(w.stamp(), text)})

    def set_register(self, cid: str, name: str, text: str) -> None:
        """Write a last-writer-wins text field an app added to the schema with
        `clocked=True` (its stamps are hybrid-clock readings that receivers advance their
        clocks past; without that, a causally later write could lose)."""
        check_cid(cid)
        check_text(text, name)
        if not self._field_of(name, Lww).clocked:
            raise InvalidArgument(f"field {name!r} is not a clocked register; declare it "
                                  f"with Field(..., Lww, clocked=True)")
        self._local(cid, lambda w, cur: {name: Lww(w.stamp(), text)})

    def pin(self, cid: str) -> None:
        self.enable(cid, "pinned")

    def unpin(self, cid: str) -> None:
        self.disable(cid, "pinned")

    def mute(self, cid: str, until: int | None = None) -> None:
        """Mute; with `until` (ms), only until then: the view reads unmuted from that time
        on, with no write (specs/crdt.md §6). `until` must be in the future."""
        check_cid(cid)
        if until is not None:
            check_seq(until, "until")
            if until <= self._now():
                raise InvalidArgument(f"until {until} ms is not in the future (now is "
                                      f"{self._now()} ms)")
        end = 0 if until is None else until
        self._local(cid, lambda w, cur: features.mute_delta(cur, self.id, end, w.stamp()))

    def unmute(self, cid: str) -> None:
        self.disable(cid, "muted")

    def enable(self, cid: str, flag: str) -> None:
        """Set an add-wins flag (pinned, muted, or one an app added to the schema)."""
        check_cid(cid)
        self._field_of(flag, Flag)
        bottom = Flag.bottom()

        def op(w: WriteTxn, cur: Fields) -> Fields:
            d = cur.get(flag, bottom).enable(self.id)
            # The counter comes after every claim on our dots that was joined (specs/crdt.md
            # §5); one past the codec's bound could never be read back, so it is refused.
            if max(n for _, n in d.dots) > MAX_DOT_COUNTER:
                raise InvalidArgument(
                    f"conversation {cid!r:.80} {flag}: this replica's enables of it are used "
                    f"up (a peer claimed enable {MAX_DOT_COUNTER} of this replica); its "
                    f"other conversations and fields are unaffected")
            return {flag: d}

        self._local(cid, op)

    def disable(self, cid: str, flag: str) -> None:
        check_cid(cid)
        self._field_of(flag, Flag)
        bottom = Flag.bottom()

        def op(w: WriteTxn, cur: Fields) -> Fields:
            d = cur.get(flag, bottom).disable()
            return {} if d.is_bottom() else {flag: d}

        self._local(cid, op)

    def message_arrived(self, cid: str, seq: int, preview: str = "", at: int | None = None) -> None:
        check_cid(cid)
        check_seq(seq, "seq")
        check_text(preview, "preview")
        if at is None:
            at = self._now()
        elif check_seq(at, "at") > self._now() + self.max_clock_drift_ms:
            raise InvalidArgument(f"message time {at} ms is more than "
                                  f"{self.max_clock_drift_ms} ms in the future")
        message_at = at
        self._local(cid, lambda w, cur: message_arrived_delta(cur, seq, preview, message_at,
                                                              self.id))

    def mark_read(self, cid: str, seq: int) -> None:
        """Read through `seq`, which must not be above the conversation's last_seq (else
        every later message up to it would arrive already read); clears a mark as unread
        seen here (specs/crdt.md §6). Checked against the state the write applies to, so a
        batch may record an arrival and then read it."""
        check_cid(cid)
        check_seq(seq, "seq")
        self._field_of("read_seq", MaxReg)

        def op(w: WriteTxn, cur: Fields) -> Fields:
            _check_seen(cid, seq, cur)
            return features.mark_read_delta(cur, seq)

        self._local(cid, op)

    # -- the conversation features (specs/crdt.md §6, "Feature mutators") -----------------

    def archive(self, cid: str, keep: bool = False) -> None:
        """Hide from the default listing until a later message (higher seq or newer time)
        arrives; with keep=True, until unarchive."""
        check_cid(cid)
        if type(keep) is not bool:
            raise InvalidArgument(f"keep must be True or False, not {keep!r:.40}")
        self._local(cid, lambda w, cur: features.archive_delta(cur, self.id, keep))

    def unarchive(self, cid: str) -> None:
        check_cid(cid)
        self._local(cid, lambda w, cur: features.unarchive_delta(cur))

    def delete_conversation(self, cid: str) -> None:
        """Delete for me, on all my devices: hidden from listings and its last message
        dropped, until a message newer than now arrives (specs/crdt.md §6)."""
        check_cid(cid)
        self._local(cid, lambda w, cur: features.delete_delta(cur, self._now()))

    def mark_unread(self, cid: str) -> None:
        """Show as unread (Conversation.marked_unread) until a mark_read on any device."""
        check_cid(cid)
        self._local(cid, lambda w, cur: features.mark_unread_delta(cur, self.id))

    def set_draft(self, cid: str, text: str) -> None:
        """The conversation's draft text (LWW); "" clears it."""
        check_cid(cid)
        check_text(text, "draft")
        self._local(cid, lambda w, cur: {"draft": Lww(w.stamp(), text)})

    def mark_read_by(self, cid: str, member: str, seq: int) -> None:
        """Raise `member`'s read position (a group's read receipts) to `seq`."""
        check_cid(cid)
        if not valid_member(member):
            raise InvalidArgument(f"member must be a name of 1 to {MAX_MEMBER_NAME} characters "
                                  f"without control characters or lone surrogates, not "
                                  f"{member!r:.80}")
        check_seq(seq, "seq")

        def op(w: WriteTxn, cur: Fields) -> Fields:
            # Not bounded by last_seq, unlike mark_read: a member's receipt may come before
            # the message reaches this device.
            entries = cur.get("read_by", MaxMap.bottom()).entries
            if member not in entries and len(entries) >= MAX_READ_BY_MEMBERS:
                raise InvalidArgument(f"conversation {cid!r:.80} already has read positions of "
                                      f"{MAX_READ_BY_MEMBERS} members (the limit)")
            return features.mark_read_by_delta(cur, member, seq)

        self._local(cid, op)

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Many ops, one commit: `with r.batch(): ...`.

        The ops are checked as they are called and written together, in one transaction,
        when the block exits; reads inside the block see the state before it. If the block
        raises, nothing is written.
        """
        if self._batch.get() is not None:
            yield  # nested: part of the outer batch
            return
        ops: list[tuple[str, LocalOp]] = []
        token = self._batch.set(ops)
        try:
            yield
        finally:
            self._batch.reset(token)
        if ops:
            self._commit_local(ops)

    def _local(self, cid: str, op: LocalOp) -> None:
        _ = self.store  # fail now, not at the end of a batch, if closed
        ops = self._batch.get()
        if ops is not None:
            ops.append((cid, op))
        else:
            self._commit_local([(cid, op)])

    def _commit_local(self, ops: list[tuple[str, LocalOp]]) -> None:
        def txn(t: Txn) -> tuple[list[tuple[str, Changes]], Changes]:
            # Held values whose time has come go first (specs/crdt.md §1): a local write
            # must stamp after them.
            due = apply_due(self, t, self._now())
            w = WriteTxn(self, t)
            for cid, op in ops:
                w.join(cid, op(w, w.fields(cid)))
            _check_message_count(w)
            return due, w.finish(self.id)

        due, changes = self._write(txn)
        for origin, applied in due:
            self._notify(applied, "remote", origin or None)
        self._notify(changes, "local", None)

    def _field_of(self, name: str, lattice: type[Any]) -> Field:
        f = self.schema.by_name.get(name)
        if f is None or f.lattice is not lattice:
            raise InvalidArgument(f"no {lattice.__name__} field {name!r} in the schema")
        return f


def _check_seen(cid: str, seq: int, cur: Fields) -> None:
    last = cur.get("last_seq", MaxReg.bottom()).value
    if seq > last:
        raise InvalidArgument(f"seq {seq} is above conversation {cid!r:.80}'s last_seq {last}: "
                              f"record the message's arrival first")


def _check_message_count(w: WriteTxn) -> None:
    """One transaction's log entry must be one peers can decode: at most
    codec.Limits.max_messages message and choice records per conversation (crdt.md §8.7)."""
    bound = codec.DEFAULT_LIMITS.max_messages
    for cid, fields in w.delta.items():
        history = fields.get("messages")
        if history is not None and len(history.messages) + len(history.choices) > bound:
            raise InvalidArgument(f"conversation {cid!r:.80}: one batch may write at most "
                                  f"{bound} messages and version choices to a conversation")
