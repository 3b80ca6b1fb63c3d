"""Catch-up by range-based set reconciliation of conversation digests (specs/protocol.md §13).

A peer whose resume point is behind our log floor would need our whole state. Instead, when
it has received from us before, both sides compare per-conversation digests (16-byte hashes
of the stored state, crdtim/replica/_digests.py) over the ordered id space, after Meyer,
"Range-Based Set Reconciliation" (2023): we send RECON_RANGES, each range either a
fingerprint (its XOR of digests and count, hashed) or, once small, its items' hashes; the peer
answers RECON_ANSWER, one bit per fingerprint (differs) and one per item (you must send it).
Fingerprints and item hashes are 8 bytes keyed by a fresh salt per reconciliation: no one can
craft a state whose hash collides with another's ahead of time (a fingerprint stands on the
16-byte XOR), and a chance collision (2^-64) does not repeat on the next reconciliation.
A differing range is split into `branching` parts by count; equal ranges stop. When nothing
is in question we send the states of the conversations the peer needs as STATE_CHUNKs, then
STATE_END(the head our digests were read at): the peer then holds our state as of that head
(equal digests are equal states, and states only grow), so deltas resume from it.

Only our direction is reconciled here: the peer learns nothing but bits about its own
conversations, and never an id. Frames are bounded by named limits below; everything a peer
sends is checked before it is used. No I/O, no clock here.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from hashlib import blake2b
from itertools import accumulate
from operator import xor
from typing import Any

from ._errors import RemoteProtocolError

__all__ = [
    "DIGEST_BYTES",
    "FINGERPRINT_BYTES",
    "ITEM_HASH_BYTES",
    "MAX_BOUND_BYTES",
    "MAX_COMPARED_ITEMS",
    "MAX_LEAF_ITEMS",
    "MAX_RANGE_BYTES",
    "MAX_RECON_ITEMS",
    "MAX_RECON_RANGES",
    "SALT_BYTES",
    "DigestIndex",
    "RangeQuery",
    "ReconAnswer",
    "ReconRanges",
    "ReconcileResponder",
    "ReconcileSender",
    "encode_ranges",
    "parse_answer_bits",
    "parse_ranges",
    "parse_salt",
]

#: Ranges in one RECON_RANGES frame.
MAX_RECON_RANGES = 4096
#: Item hashes in one RECON_RANGES frame, over all its item ranges.
MAX_RECON_ITEMS = 16384
#: A range bound: a prefix of a stored conversation id (specs/storage.md §2, MAX_CID_BYTES).
MAX_BOUND_BYTES = 502
#: Items of our own the item ranges of one RECON_RANGES are compared against; past it, every
#: item is asked for (an honest sender lists items only for ranges it holds few of).
MAX_COMPARED_ITEMS = 65536
DIGEST_BYTES = 16  # a conversation's digest, as the replica computes it
FINGERPRINT_BYTES = 8  # a range's fingerprint on the wire
ITEM_HASH_BYTES = 8
SALT_BYTES = 16
#: The most items a range is listed with (`reconcile_leaf_items` is clamped to it), so that
#: a range encodes in at most MAX_RANGE_BYTES: one fits any frame a peer may announce.
MAX_LEAF_ITEMS = 32
MAX_RANGE_BYTES = 1 + 2 * (6 + MAX_BOUND_BYTES) + 3 + MAX_LEAF_ITEMS * ITEM_HASH_BYTES
_FINGERPRINT, _ITEMS = 0, 1


@dataclass(frozen=True, slots=True)
class RangeQuery:
    """The ids from `lower` (inclusive) to `upper` (exclusive; None: to the end), UTF-8.
    kind 0: `data` is the range's fingerprint; kind 1: its items' hashes, in id order."""

    lower: bytes
    upper: bytes | None
    kind: int
    data: bytes

    @property
    def count(self) -> int:
        """Items listed (kind 1)."""
        return len(self.data) // ITEM_HASH_BYTES if self.kind == _ITEMS else 0


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconRanges:
    salt: bytes  # keys the fingerprints and item hashes of this reconciliation
    ranges: tuple[RangeQuery, ...]


# A range on the wire (specs/protocol.md §13.2): a flags byte, then the bounds, each the
# length it shares with the bound before it and the rest of it, then the data.
_F_ITEMS = 0x01  # an item list (else a fingerprint)
_F_LOWER = 0x02  # the lower bound follows (else: the previous range's upper; b"" at first)
_F_END = 0x04  # no upper bound: to the end of the key space
_F_ALL = _F_ITEMS | _F_LOWER | _F_END


def _varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _shared(a: bytes, b: bytes) -> int:
    n, limit = 0, min(len(a), len(b))
    while n < limit and a[n] == b[n]:
        n += 1
    return n


def encode_ranges(ranges: tuple[RangeQuery, ...]) -> bytes:
    out = bytearray()
    previous: bytes | None = b""
    for r in ranges:
        flags = (_F_ITEMS if r.kind == _ITEMS else 0) | (_F_END if r.upper is None else 0)
        if r.lower != previous:
            flags |= _F_LOWER
        out.append(flags)
        if flags & _F_LOWER:
            base = previous or b""
            n = _shared(base, r.lower)
            out += _varint(n) + _varint(len(r.lower) - n) + r.lower[n:]
        if r.upper is not None:
            n = _shared(r.lower, r.upper)
            out += _varint(n) + _varint(len(r.upper) - n) + r.upper[n:]
        if r.kind == _ITEMS:
            out += _varint(r.count)
        out += r.data
        previous = r.upper
    return bytes(out)


@dataclass(frozen=True, slots=True, kw_only=True)
class ReconAnswer:
    differs: bytes  # a bit per fingerprint range of the RECON_RANGES answered, in order
    needed: bytes  # a bit per item of its item ranges, in order


# -- parsing what a peer sent (used by _messages.py's rows)

class _Reader:
    """Reads the binary ranges field, refusing anything out of bounds."""

    __slots__ = ("at", "data")

    def __init__(self, data: bytes):
        self.data, self.at = data, 0

    def _fail(self, what: str) -> RemoteProtocolError:
        return RemoteProtocolError(f"RECON_RANGES: {what} (at byte {self.at} of the ranges)")

    def byte(self) -> int:
        if self.at >= len(self.data):
            raise self._fail("the ranges end inside a range")
        self.at += 1
        return self.data[self.at - 1]

    def varint(self, most: int) -> int:
        n = shift = 0
        while True:
            b = self.byte()
            n |= (b & 0x7F) << shift
            if not b & 0x80:
                break
            shift += 7
            if shift > 14:
                raise self._fail("a number is longer than 3 bytes")
        if n > most:
            raise self._fail(f"{n} is over {most}")
        return n

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise self._fail("the ranges end inside a range")
        self.at += n
        return self.data[self.at - n : self.at]

    def bound(self, base: bytes) -> bytes:
        shared = self.varint(len(base))
        rest = self.take(self.varint(MAX_BOUND_BYTES - shared))
        return base[:shared] + rest


def parse_ranges(x: Any) -> tuple[RangeQuery, ...]:
    if type(x) is not bytes or not x:
        raise RemoteProtocolError("RECON_RANGES: the ranges are not binary")
    read = _Reader(x)
    ranges: list[RangeQuery] = []
    items = 0
    previous: bytes | None = b""
    while read.at < len(x):
        if len(ranges) == MAX_RECON_RANGES:
            raise read._fail(f"more than {MAX_RECON_RANGES} ranges")
        flags = read.byte()
        if flags & ~_F_ALL:
            raise read._fail(f"unknown range flags {flags:#04x}")
        if flags & _F_LOWER:
            lower = read.bound(previous or b"")
        elif previous is None:
            raise read._fail("a range starts after the end of the key space")
        else:
            lower = previous
        upper = None if flags & _F_END else read.bound(lower)
        if upper is not None and upper <= lower:
            raise read._fail("a range's upper bound is not above its lower")
        if flags & _F_ITEMS:
            count = read.varint(MAX_RECON_ITEMS - items)
            items += count
            ranges.append(RangeQuery(lower, upper, _ITEMS, read.take(count * ITEM_HASH_BYTES)))
        else:
            ranges.append(RangeQuery(lower, upper, _FINGERPRINT, read.take(FINGERPRINT_BYTES)))
        previous = upper
    return tuple(ranges)


def parse_salt(x: Any) -> bytes:
    if type(x) is not bytes or len(x) != SALT_BYTES:
        raise RemoteProtocolError(f"RECON_RANGES: the salt is not {SALT_BYTES} bytes")
    return x


def parse_answer_bits(x: Any) -> bytes:
    if type(x) is not bytes or len(x) > (MAX_RECON_RANGES + MAX_RECON_ITEMS) // 8 + 1:
        raise RemoteProtocolError("RECON_ANSWER: expected a short bitmap")
    return x


def _bits(flags: list[bool]) -> bytes:
    out = bytearray((len(flags) + 7) // 8)
    for i, flag in enumerate(flags):
        if flag:
            out[i >> 3] |= 0x80 >> (i & 7)
    return bytes(out)


def _unbits(bitmap: bytes, n: int, what: str) -> list[bool]:
    if len(bitmap) != (n + 7) // 8 or (n % 8 and bitmap[-1] & (0xFF >> (n % 8))):
        raise RemoteProtocolError(f"RECON_ANSWER: {what} bitmap is not {n} bits")
    return [bool(bitmap[i >> 3] & (0x80 >> (i & 7))) for i in range(n)]


class DigestIndex:
    """Ids in key order with their digests, and their prefix XOR, so that any range's XOR
    costs two lookups. The XOR is bytewise: computed on 8-byte machine words (each digest is
    two), built by C-level passes over arrays rather than a Python step per digest."""

    __slots__ = ("digests", "ids", "prefix_even", "prefix_odd")

    def __init__(self, ids: list[bytes], digests: bytes):
        self.ids = ids
        self.digests = digests
        words = array("Q")
        words.frombytes(digests)
        # prefix_even[k]: XOR of the first words of digests 0..k-1; prefix_odd: second words.
        self.prefix_even = array("Q", [0])
        self.prefix_even.extend(accumulate(words[0::2], xor))
        self.prefix_odd = array("Q", [0])
        self.prefix_odd.extend(accumulate(words[1::2], xor))

    def __len__(self) -> int:
        return len(self.ids)

    def position(self, bound: bytes | None) -> int:
        return len(self.ids) if bound is None else bisect_left(self.ids, bound)

    def xor(self, i: int, j: int) -> bytes:
        """The bytewise XOR of digests i..j-1 (16 zero bytes for none)."""
        even, odd = self.prefix_even, self.prefix_odd
        return array("Q", (even[j] ^ even[i], odd[j] ^ odd[i])).tobytes()

    def fingerprint(self, i: int, j: int, salt: bytes) -> bytes:
        """The XOR of the range's digests and its count, hashed under the salt: as hard to
        forge as the 16-byte XOR, and a chance collision is fresh each reconciliation."""
        return blake2b(self.xor(i, j) + (j - i).to_bytes(8, "big"), key=salt,
                       digest_size=FINGERPRINT_BYTES).digest()

    def item_hash(self, k: int, salt: bytes) -> bytes:
        start = k * DIGEST_BYTES
        return blake2b(self.digests[start : start + DIGEST_BYTES], key=salt,
                       digest_size=ITEM_HASH_BYTES).digest()

    def separator(self, k: int) -> bytes:
        """The shortest prefix of id k above id k-1: a bound between them."""
        before, at = self.ids[k - 1], self.ids[k]
        n = 0
        while n < len(before) and before[n] == at[n]:
            n += 1
        return at[: n + 1]


class ReconcileResponder:
    """Our side of the peer's reconciliation: answers its RECON_RANGES from a snapshot of
    our digests within the peer's scope, read at its first RECON_RANGES. A snapshot older
    than our state is safe: states only grow, so an item equal in it is still covered."""

    def __init__(self, read: Callable[[], tuple[int, list[bytes], bytes]]):
        self._read = read
        self._index: DigestIndex | None = None
        self._ended = False

    def reset(self) -> None:
        """A transfer ended (STATE_END): drop the snapshot. A peer reconciles at most once
        per session, before any transfer, so no snapshot is read again: a peer cannot make
        us read all our digests over and over."""
        self._index = None
        self._ended = True

    def answer(self, m: ReconRanges) -> ReconAnswer:
        if self._ended:
            raise RemoteProtocolError("RECON_RANGES after a state transfer ended")
        if self._index is None:
            _, ids, digests = self._read()
            self._index = DigestIndex(ids, digests)
        index = self._index
        differs: list[bool] = []
        needed: list[bool] = []
        budget = MAX_COMPARED_ITEMS
        for r in m.ranges:
            i, j = index.position(r.lower), index.position(r.upper)
            if r.kind == _FINGERPRINT:
                differs.append(index.fingerprint(i, j, m.salt) != r.data)
                continue
            if j - i > budget:
                needed.extend([True] * r.count)
                continue
            budget -= j - i
            ours = {index.item_hash(k, m.salt) for k in range(i, j)}
            data = r.data
            needed.extend(data[k : k + ITEM_HASH_BYTES] not in ours
                          for k in range(0, len(data), ITEM_HASH_BYTES))
        return ReconAnswer(differs=_bits(differs), needed=_bits(needed))


@dataclass(slots=True)
class _Asked:
    first: int  # our positions [first, last) of the range asked about
    last: int
    lower: bytes
    upper: bytes | None
    kind: int


class ReconcileSender:
    """Our reconciliation towards the peer: which of our conversations it needs.

    `next_frame()` gives the next RECON_RANGES to send (None: nothing to ask now);
    `on_answer` takes the peer's answer to the oldest one not yet answered; `done` once
    nothing is in question, then `needed` lists the ids to send, in key order."""

    def __init__(self, head: int, ids: list[bytes], digests: bytes, *, salt: bytes,
                 branching: int, leaf_items: int, max_ranges_per_frame: int):
        self.head = head
        self.salt = salt
        self.index = DigestIndex(ids, digests)
        self._branching = max(2, branching)
        self._leaf = max(1, min(leaf_items, MAX_LEAF_ITEMS))
        self._max_ranges = max(1, min(max_ranges_per_frame, MAX_RECON_RANGES))
        self._pending: deque[_Asked] = deque()
        self._outstanding: deque[list[_Asked]] = deque()
        self.needed: list[int] = []
        self.ranges_sent = 0
        if ids:
            self._queue(0, len(ids), b"", None)

    @property
    def outstanding(self) -> int:
        return len(self._outstanding)

    @property
    def done(self) -> bool:
        return not self._pending and not self._outstanding

    def _queue(self, first: int, last: int, lower: bytes, upper: bytes | None) -> None:
        kind = _ITEMS if last - first <= self._leaf else _FINGERPRINT
        self._pending.append(_Asked(first, last, lower, upper, kind))

    def next_frame(self, max_bytes: int | None = None) -> ReconRanges | None:
        """The next RECON_RANGES, its ranges encoded in at most `max_bytes` (but for the
        first range, which `MAX_RANGE_BYTES` bounds); None when nothing is to be asked."""
        if not self._pending:
            return None
        asked: list[_Asked] = []
        ranges: list[RangeQuery] = []
        items = size = 0
        index = self.index
        while self._pending and len(asked) < self._max_ranges:
            a = self._pending[0]
            # At most: flags, two bounds with their two lengths each, a count, the data.
            size += 1 + 2 * (6 + MAX_BOUND_BYTES) + 3 + (
                (a.last - a.first) * ITEM_HASH_BYTES if a.kind == _ITEMS else FINGERPRINT_BYTES)
            if asked and max_bytes is not None and size > max_bytes:
                break
            if a.kind == _ITEMS:
                if asked and items + (a.last - a.first) > MAX_RECON_ITEMS:
                    break
                items += a.last - a.first
                data = b"".join(index.item_hash(k, self.salt) for k in range(a.first, a.last))
            else:
                data = index.fingerprint(a.first, a.last, self.salt)
            self._pending.popleft()
            asked.append(a)
            ranges.append(RangeQuery(a.lower, a.upper, a.kind, data))
        self._outstanding.append(asked)
        self.ranges_sent += len(ranges)
        return ReconRanges(salt=self.salt, ranges=tuple(ranges))

    def on_answer(self, m: ReconAnswer) -> None:
        if not self._outstanding:
            raise RemoteProtocolError("RECON_ANSWER with no RECON_RANGES unanswered")
        asked = self._outstanding.popleft()
        fingerprints = [a for a in asked if a.kind == _FINGERPRINT]
        items = sum(a.last - a.first for a in asked if a.kind == _ITEMS)
        differs = iter(_unbits(m.differs, len(fingerprints), "differs"))
        needed = iter(_unbits(m.needed, items, "needed"))
        for a in asked:
            if a.kind == _ITEMS:
                self.needed.extend(k for k in range(a.first, a.last) if next(needed))
            elif next(differs):
                self._split(a)

    def _split(self, a: _Asked) -> None:
        n, parts = a.last - a.first, self._branching
        cuts = sorted({a.first + n * m // parts for m in range(1, parts)} - {a.first})
        lower, first = a.lower, a.first
        for cut in cuts:
            bound = self.index.separator(cut)
            self._queue(first, cut, lower, bound)
            lower, first = bound, cut
        self._queue(first, a.last, lower, a.upper)

    def needed_ids(self) -> list[bytes]:
        ids = self.index.ids
        return [ids[k] for k in sorted(self.needed)]
