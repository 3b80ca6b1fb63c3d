"""Map of max registers: member -> highest sequence read (specs/crdt.md §3a), bounded.

A group conversation's read receipts: each member's read position only grows, so the state
is a map member -> max register, joined pointwise. The map is bounded to `LIMIT` members
(MAX_READ_BY_MEMBERS): a pointwise join of two states within the bound may be over it
(concurrent writes naming different members), so the join keeps the `LIMIT` entries that
rank highest by (sequence, member) and drops the rest. Keeping a top-k of a pointwise max
by a rank that grows with the value is still a join-semilattice (the argument is in
specs/crdt.md §3a), and every replica drops the same entries. No I/O here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

__all__ = ["MAX_MEMBER_NAME", "MAX_READ_BY_MEMBERS", "MaxMap", "valid_member"]

#: Members a read-position map holds at most (specs/crdt.md §3a, §7 "Limits"). Part of the
#: lattice's join, so one value for every replica: not a per-receiver setting.
MAX_READ_BY_MEMBERS = 1024
#: Code points in a member name, at most (at least 1).
MAX_MEMBER_NAME = 64
# Unicode category Cc, and the surrogates (category Cs: a lone one has no UTF-8 encoding, so
# it could be neither stored nor sent; the decoder never yields one).
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def valid_member(name: object) -> bool:
    """A member name: a string of 1..MAX_MEMBER_NAME code points, no control character and
    no surrogate (specs/crdt.md §3a)."""
    return (type(name) is str and 0 < len(name) <= MAX_MEMBER_NAME
            and _CONTROL.search(name) is None)


@dataclass(frozen=True, slots=True)
class MaxMap:
    """Canonical: no zero entry (a zero register is bottom), at most LIMIT entries."""

    entries: Mapping[str, int]

    LIMIT: ClassVar[int] = MAX_READ_BY_MEMBERS

    @classmethod
    def bottom(cls) -> MaxMap:
        return cls({})

    def is_bottom(self) -> bool:
        return not self.entries

    @property
    def value(self) -> dict[str, int]:
        return dict(self.entries)

    def join(self, other: MaxMap) -> MaxMap:
        if not other.entries:
            return self
        if not self.entries:
            return other
        out = dict(self.entries)
        for member, n in other.entries.items():
            if n > out.get(member, 0):
                out[member] = n
        return type(self).bounded(out)

    @classmethod
    def bounded(cls, entries: Mapping[str, int]) -> MaxMap:
        """The canonical state of `entries`: zeros dropped, then the LIMIT entries ranking
        highest by (sequence, member) kept."""
        kept = {m: n for m, n in entries.items() if n > 0}
        if len(kept) > cls.LIMIT:
            top = sorted(kept.items(), key=lambda e: (e[1], e[0]), reverse=True)[: cls.LIMIT]
            kept = dict(top)
        return cls(kept)

    def raise_to(self, member: str, n: int) -> MaxMap:
        """Delta mutator: the delta that raises `member`'s position to at least `n`."""
        if n > self.entries.get(member, 0):
            return type(self)({member: n})
        return type(self)({})
