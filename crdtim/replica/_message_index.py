"""One conversation's message history in LMDB: one record per message and per group choice,
and the index that answers a history page, a post and a switch without a scan.

Layout (specs/storage.md §2; P = the conversation's 8-byte number, `pos` = a message's place
in (created, id) order: wall(8) counter(4) replica, NUL, id):

    messages  P "m" id            -> sealed MessageState      (the lattice: joined one by one)
              P "c" group         -> sealed choice Lww
    mindex    0xFF cid            -> P                         (numbers are made on first use)
              0xFF                -> the last number made
              P "s" id            -> shape: visible flag, pos, group, parent (derived)
              P "g" group NUL pos -> ""   a group's members, oldest first
              P "k" parent NUL pos-> ""   a message's children ("" parent: the roots)
              P "v" pos           -> ""   the visible messages: a history page is one range

Ids hold no NUL and are at most 255 UTF-8 bytes (specs/crdt.md §8.7), so NUL ends an id
inside a key. A "g" or "k" key holds two ids and a replica id, which together can pass
LMDB's 511 bytes: `index_key_bytes` is checked before a message is stored (specs/storage.md
§2), by the replica's writes and remote applies alike. The derived records are kept exactly as
specs/crdt.md §8.3 defines visibility, updated in the write transaction that changes
their inputs (§8.6): a message's visibility is re-evaluated when it arrives, when its group's
active member changes, and when its parent's visibility changes, in which case its children
follow. A header that changes shape (only two different posts of one id do that) rebuilds
the conversation's index from its records.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import TypeVar

from .. import codec
from ..crdt import History, Lww, MessageState
from ..crdt.history_tree import Tree
from ..crdt.message import Header, group_of
from ..errors import CorruptStoreError, DecodeError
from ..store import MAX_CID_BYTES, Txn

__all__ = ["MAX_INDEX_KEY_BYTES", "MessageIndex", "conversation_number", "index_key_bytes"]

_U64 = struct.Struct(">Q")
T = TypeVar("T")
_POS_STAMP = struct.Struct(">QI")
_CIDS = b"\xff"
_VISIBLE = 1
_ROOTED = 2  # the message has a parent

#: Decoded states of large message records, keyed by the record's bytes. A reply streamed as
#: appends grows its record by one append per write; decoding it whole on every append made
#: a stream quadratic (3 ms an append at 1000 appends, on the writer and again on each
#: peer). Keyed by content, a hit is exactly what decoding would give, whoever wrote the
#: record (another process, a restore). Records under _LARGE_RECORD bytes decode faster
#: than a lookup pays off, and are not kept; _CACHED bounds the memory (a few MB).
_LARGE_RECORD = 2048
_CACHED = 16
_decoded: dict[bytes, MessageState] = {}


def conversation_number(t: Txn, cid: str, create: bool) -> bytes | None:
    """The 8-byte prefix of a conversation's message keys; None if it has none yet."""
    key = _CIDS + cid.encode()
    raw = t.get("mindex", key)
    if raw is not None or not create:
        return raw
    last = t.get("mindex", _CIDS)
    number = _U64.pack((0 if last is None else _U64.unpack(last)[0]) + 1)
    t.put("mindex", _CIDS, number)
    t.put("mindex", key, number)
    return number


#: LMDB's key bound (its default build), as store.MAX_CID_BYTES derives it.
MAX_INDEX_KEY_BYTES = MAX_CID_BYTES + 9
#: A "g" or "k" key around its id and the position's id and replica id: the 8-byte number P,
#: the kind, a NUL, wall and counter (12), the NUL after the replica id.
_INDEX_KEY_FRAME = 8 + 1 + 1 + 12 + 1


def index_key_bytes(mid: str, h: Header) -> int:
    """The length of message `mid`'s longest index key (specs/storage.md §2, `mindex`): its
    group's or its parent's key, whichever is longer; at most MAX_INDEX_KEY_BYTES to be
    stored."""
    longer = max(len(group_of(mid, h).encode()), len((h.parent or "").encode()))
    return _INDEX_KEY_FRAME + longer + len(h.created.replica.encode()) + len(mid.encode())


def _pos(h: Header, mid: str) -> bytes:
    c = h.created
    return _POS_STAMP.pack(c.wall, c.counter) + c.replica.encode() + b"\x00" + mid.encode()


def pos_id(pos: bytes) -> str:
    """The message id at the end of a position key (after its last NUL)."""
    return pos[pos.rindex(b"\x00") + 1:].decode()


class _Shape:
    """A message's derived record: where it sorts, its group, its parent, whether visible."""

    __slots__ = ("group", "parent", "pos", "visible")

    def __init__(self, visible: bool, pos: bytes, group: str, parent: str | None):
        self.visible, self.pos, self.group, self.parent = visible, pos, group, parent

    def encode(self) -> bytes:
        g = self.group.encode()
        flags = (_VISIBLE if self.visible else 0) | (_ROOTED if self.parent is not None else 0)
        return (bytes([flags]) + len(self.pos).to_bytes(2, "big") + self.pos + bytes([len(g)])
                + g + (self.parent or "").encode())

    @classmethod
    def decode(cls, raw: bytes) -> _Shape:
        n = int.from_bytes(raw[1:3], "big")
        pos = raw[3:3 + n]
        glen = raw[3 + n]
        group = raw[4 + n:4 + n + glen].decode()
        parent = raw[4 + n + glen:].decode() if raw[0] & _ROOTED else None
        return cls(bool(raw[0] & _VISIBLE), pos, group, parent)


class MessageIndex:
    """The stored history of one conversation, inside one transaction: the `HistoryView`
    the mutators read (crdt/history_ops.py), the join of deltas, and the reads of pages."""

    __slots__ = ("_active", "_messages", "_shapes", "cid", "prefix", "t")

    def __init__(self, t: Txn, cid: str, create: bool = False):
        self.t = t
        self.cid = cid
        self.prefix = conversation_number(t, cid, create)
        self._messages: dict[str, MessageState] = {}
        self._shapes: dict[str, _Shape | None] = {}
        self._active: dict[str, str | None] = {}

    # -- records -----------------------------------------------------------------------------

    def _key(self, kind: bytes, name: str) -> bytes:
        assert self.prefix is not None
        return self.prefix + kind + name.encode()

    def _sealed(self, kind: bytes, name: str) -> bytes | None:
        if self.prefix is None:
            return None
        return self.t.get_sealed("messages", self._key(kind, name))

    def message(self, mid: str) -> MessageState:
        m = self._messages.get(mid)
        if m is None:
            raw = self._sealed(b"m", mid)
            if raw is None:
                m = MessageState.bottom()
            elif len(raw) < _LARGE_RECORD:
                m = _decode_message(raw, mid)
            else:
                m = _decoded.get(raw) or _remember(raw, _decode_message(raw, mid))
            self._messages[mid] = m
        return m

    def choice(self, group: str) -> Lww | None:
        raw = self._sealed(b"c", group)
        return None if raw is None else _decode_choice(raw, group)

    def _shape(self, mid: str) -> _Shape | None:
        if mid in self._shapes:
            return self._shapes[mid]
        raw = None if self.prefix is None else self.t.get("mindex", self._key(b"s", mid))
        shape = None if raw is None else _Shape.decode(raw)
        self._shapes[mid] = shape
        return shape

    def _ids(self, kind: bytes, name: str, reverse: bool = False) -> Iterator[str]:
        if self.prefix is None:
            return
        start = self._key(kind, name) + b"\x00"
        for k, _ in self.t.scan("mindex", start, start[:-1] + b"\x01", reverse):
            yield pos_id(k)

    # -- the HistoryView (specs/crdt.md §8.3) ----------------------------------------------

    def header(self, mid: str) -> Header | None:
        return self.message(mid).header

    def members(self, group: str) -> list[str]:
        return list(self._ids(b"g", group))

    def active(self, group: str) -> str | None:
        if group in self._active:
            return self._active[group]
        chosen = self.choice(group)
        active = None
        if chosen is not None:
            shape = self._shape(chosen.value)
            if shape is not None and shape.group == group:
                active = chosen.value
        if active is None:
            active = next(self._ids(b"g", group, reverse=True), None)
        self._active[group] = active
        return active

    def is_visible(self, mid: str) -> bool:
        shape = self._shape(mid)
        return shape is not None and shape.visible

    def last_visible(self) -> str | None:
        return next(self.visible_ids(None, 1), None)

    def children(self, mid: str) -> list[str]:
        return list(self._ids(b"k", mid))

    # -- reads -------------------------------------------------------------------------------

    def visible_ids(self, before: bytes | None, limit: int) -> Iterator[str]:
        """Up to `limit` visible ids, newest first, from just before position `before`."""
        for pos in self.visible_positions(before, limit):
            yield pos_id(pos)

    def visible_positions(self, before: bytes | None, limit: int) -> Iterator[bytes]:
        if self.prefix is None or limit <= 0:
            return
        start = self.prefix + b"v"
        stop = start + before if before is not None else self.prefix + b"w"
        for n, (k, _) in enumerate(self.t.scan("mindex", start, stop, reverse=True)):
            if n == limit:
                return
            yield k[len(start):]

    def position(self, mid: str) -> bytes | None:
        shape = self._shape(mid)
        return None if shape is None else shape.pos

    def records(self, after: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        """(kind + id, sealed value) of the message and choice records, in key order, after
        the one named `after` (kind + id; b"": all)."""
        if self.prefix is None:
            return
        n = len(self.prefix)
        start = self.prefix + after + (b"\x00" if after else b"")
        for k, v in self.t.scan("messages", start, _after(self.prefix)):
            yield k[n:], v

    def state(self) -> History:
        """The whole history, from its records (for rebuilds, checks and tests: O(n))."""
        messages: dict[str, MessageState] = {}
        choices: dict[str, Lww] = {}
        for name, _ in self.records():
            self.read_into(name, messages, choices)
        return History(messages, choices)

    def read_into(self, name: bytes, messages: dict[str, MessageState],
                  choices: dict[str, Lww]) -> None:
        """Decode the record `name` (kind + id, as `records` gives it) into the message or
        the choice map."""
        ident = name[1:].decode()
        if name[:1] == b"m":
            messages[ident] = self.message(ident)
        elif (chosen := self.choice(ident)) is not None:
            choices[ident] = chosen

    # -- join (specs/crdt.md §8.4.2, §8.6) ---------------------------------------------------

    def join(self, delta: History) -> History:
        """Join `delta` into the stored history and its index; returns its novel part."""
        if self.prefix is None:
            self.prefix = conversation_number(self.t, self.cid, True)
        joined: dict[str, tuple[MessageState, MessageState]] = {}
        novel_messages: dict[str, MessageState] = {}
        groups: set[str] = set()
        reshaped = False
        for mid, d in delta.messages.items():
            old = self.message(mid)
            part = d if old.is_bottom() else old.novel(d)
            if part.is_bottom():
                continue
            new = old.join(part)
            novel_messages[mid] = part
            joined[mid] = (old, new)
            if old.header is None and new.header is not None:
                groups.add(group_of(mid, new.header))
            elif old.header is not None and new.header is not None and (
                    _shape_of(old.header) != _shape_of(new.header)):
                reshaped = True
        novel_choices: dict[str, Lww] = {}
        for group, c in delta.choices.items():
            old_choice = self.choice(group)
            if old_choice is None or old_choice.join(c) != old_choice:
                novel_choices[group] = c if old_choice is None else old_choice.join(c)
                groups.add(group)
        if not novel_messages and not novel_choices:
            return History()
        before = {g: self.active(g) for g in groups}
        self._active.clear()
        for mid, (old, new) in joined.items():
            raw = codec.encode_message(new)
            self.t.put_sealed("messages", self._key(b"m", mid), raw)
            if len(raw) >= _LARGE_RECORD:
                _remember(raw, new)
            self._messages[mid] = new
            if old.header is None and new.header is not None and not reshaped:
                self._index_new(mid, new.header)
        for group, c in novel_choices.items():
            self.t.put_sealed("messages", self._key(b"c", group), codec.encode_choice(c))
        if reshaped:
            self.rebuild()
        else:
            seeds = [mid for mid, (old, _) in joined.items() if old.header is None]
            for g, was in before.items():
                now = self.active(g)
                if now != was:
                    seeds += [m for m in (was, now) if m is not None]
            self._refresh(seeds)
        choices_delta = {g: delta.choices[g] for g in novel_choices}
        return History(novel_messages, choices_delta)

    def _index_new(self, mid: str, h: Header) -> None:
        pos = _pos(h, mid)
        group = group_of(mid, h)
        shape = _Shape(False, pos, group, h.parent)
        self._put_shape(mid, shape)
        self.t.put("mindex", self._key(b"g", group) + b"\x00" + pos, b"")
        self.t.put("mindex", self._key(b"k", h.parent or "") + b"\x00" + pos, b"")

    def _put_shape(self, mid: str, shape: _Shape) -> None:
        self._shapes[mid] = shape
        self.t.put("mindex", self._key(b"s", mid), shape.encode())

    def _refresh(self, seeds: list[str]) -> None:
        """Re-evaluate visibility (§8.3.3) from `seeds`; a message that flips takes its children
        along. Only a path that reaches a root through visible messages makes one visible, so
        a forged cycle stays hidden, as §8.3.3 requires."""
        assert self.prefix is not None
        visible_prefix = self.prefix + b"v"
        queue = list(dict.fromkeys(seeds))
        while queue:
            mid = queue.pop()
            shape = self._shape(mid)
            if shape is None:
                continue
            should = self.active(shape.group) == mid and (
                shape.parent is None or self.is_visible(shape.parent))
            if should == shape.visible:
                continue
            self._put_shape(mid, _Shape(should, shape.pos, shape.group, shape.parent))
            if should:
                self.t.put("mindex", visible_prefix + shape.pos, b"")
            else:
                self.t.delete("mindex", visible_prefix + shape.pos)
            queue.extend(self.children(mid))

    def rebuild(self) -> None:
        """The index of this conversation made again from its records (O(n))."""
        assert self.prefix is not None
        doomed = [k for k, _ in self.t.scan("mindex", self.prefix, _after(self.prefix))]
        for k in doomed:
            self.t.delete("mindex", k)
        self._shapes.clear()
        self._active.clear()
        state = self.state()
        tree = Tree(state.messages, state.choices)
        for mid, h in tree.headers.items():
            self._index_new(mid, h)
        for mid in tree.visible_path():
            shape = self._shape(mid)
            assert shape is not None
            self._put_shape(mid, _Shape(True, shape.pos, shape.group, shape.parent))
            self.t.put("mindex", self.prefix + b"v" + shape.pos, b"")


def _shape_of(h: Header) -> tuple[object, ...]:
    return (h.parent, h.origin, h.created)


def _after(prefix: bytes) -> bytes:
    """The first key past every key that starts with `prefix` (a prefix of 8 bytes < 0xFF..)."""
    return _U64.pack(_U64.unpack(prefix)[0] + 1)


def _remember(raw: bytes, m: MessageState) -> MessageState:
    """Keep `m` as the decoding of `raw`, forgetting the oldest past _CACHED records."""
    _decoded[raw] = m
    while len(_decoded) > _CACHED:
        try:
            del _decoded[next(iter(_decoded))]
        except (KeyError, RuntimeError, StopIteration):  # another thread got there first
            break
    return m


def _decode_message(raw: bytes, mid: str) -> MessageState:
    return _decoded_record(codec.decode_message, raw, f"message {mid!r:.80}")


def _decode_choice(raw: bytes, group: str) -> Lww:
    return _decoded_record(codec.decode_choice, raw, f"choice of {group!r:.80}")


def _decoded_record(decode: Callable[[bytes], T], raw: bytes, what: str) -> T:
    try:
        return decode(raw)
    except DecodeError as e:
        raise CorruptStoreError(f"{what}: stored record does not decode: {e}") from None
