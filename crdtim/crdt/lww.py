"""Last-writer-wins register (Shapiro et al., "A comprehensive study of CRDTs", 2011, LWW-Register).

State: a stamp and a value; join keeps the larger stamp. A stamp is (wall, counter, replica):
for the title it is a hybrid-logical-clock reading plus the writer's replica id, which makes
every stamp unique; for the last message it is (message time, sequence, replica), so the
newest message wins whichever device heard of it first. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["BOTTOM_STAMP", "Lww", "LwwInt", "Stamp"]


class Stamp(NamedTuple):
    wall: int
    counter: int
    replica: str


#: Smaller than any stamp a replica makes (replica ids are never empty).
BOTTOM_STAMP = Stamp(0, 0, "")


@dataclass(frozen=True, slots=True)
class Lww:
    stamp: Stamp
    value: str

    @classmethod
    def bottom(cls) -> Lww:
        return _BOTTOM

    def is_bottom(self) -> bool:
        return self.stamp == BOTTOM_STAMP

    def join(self, other: Lww) -> Lww:
        # Stamps are unique by construction; comparing the value too keeps join a total,
        # commutative function even for two states that share a stamp (forged or generated).
        if (other.stamp, other.value) > (self.stamp, self.value):
            return other
        return self

    def set(self, value: str, stamp: Stamp) -> Lww:
        """Delta mutator: the delta that writes `value` at `stamp` (a fresh, larger stamp)."""
        return Lww(stamp, value)


_BOTTOM = Lww(BOTTOM_STAMP, "")


@dataclass(frozen=True, slots=True)
class LwwInt:
    """The LWW register of §2 with an integer value (0..2^63-1; `muted_until`'s time in
    ms, specs/crdt.md §2): the same stamps and the same join, on (stamp, value)."""

    stamp: Stamp
    value: int

    @classmethod
    def bottom(cls) -> LwwInt:
        return _BOTTOM_INT

    def is_bottom(self) -> bool:
        return self.stamp == BOTTOM_STAMP

    def join(self, other: LwwInt) -> LwwInt:
        if (other.stamp, other.value) > (self.stamp, self.value):
            return other
        return self

    def set(self, value: int, stamp: Stamp) -> LwwInt:
        """Delta mutator: the delta that writes `value` at `stamp` (a fresh, larger stamp)."""
        return LwwInt(stamp, value)


_BOTTOM_INT = LwwInt(BOTTOM_STAMP, 0)
