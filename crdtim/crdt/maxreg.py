"""Max register: a non-negative integer whose join is max (a grow-only register).

Used for a conversation's highest message sequence seen and highest sequence read; the unread
count is derived from the two, so reading on one device lowers the badge on all. No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MaxReg"]


@dataclass(frozen=True, slots=True)
class MaxReg:
    value: int

    @classmethod
    def bottom(cls) -> MaxReg:
        return _BOTTOM

    def is_bottom(self) -> bool:
        return self.value == 0

    def join(self, other: MaxReg) -> MaxReg:
        return other if other.value > self.value else self

    def raise_to(self, n: int) -> MaxReg:
        """Delta mutator: the delta that raises the register to at least `n`."""
        return MaxReg(n) if n > self.value else _BOTTOM


_BOTTOM = MaxReg(0)
