"""Add-wins (enable-wins) flag with a causal context.

Almeida, Shoker, Baquero, "Delta State Replicated Data Types" (JPDC 2018), the EWFlag:
the state is a set of "dots" (replica, counter), one per enable not yet overwritten, and a
causal context holding every dot the replica has seen. Enabling makes a fresh dot and covers
the dots it saw; disabling covers the dots it saw and adds none. Join keeps a dot that both
sides hold, or that one side holds and the other has never seen. So a disable removes only
the enables it observed, and an enable concurrent with a disable survives: concurrent pin and
unpin leave the conversation pinned.

The causal context is kept compact and canonical (a version vector plus the dots outside
it), so equal knowledge is equal structure and `==` compares states. No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["CausalContext", "Dot", "Flag"]

Dot = tuple[str, int]


@dataclass(frozen=True, slots=True)
class CausalContext:
    """Dots seen: (r, 1..vv[r]) for each r, plus the `cloud` of dots beyond those ranges.

    Canonical: no zero entry in `vv`, no cloud dot covered by `vv` or next in line after it.
    """

    vv: Mapping[str, int] = field(default_factory=dict)
    cloud: frozenset[Dot] = frozenset()

    @classmethod
    def compact(cls, vv: Mapping[str, int], cloud: Iterable[Dot]) -> CausalContext:
        merged = {r: n for r, n in vv.items() if n > 0}
        rest = []
        for replica, n in sorted(cloud):
            seen = merged.get(replica, 0)
            if n == seen + 1:
                merged[replica] = n
            elif n > seen:
                rest.append((replica, n))
        return cls(merged, frozenset(rest))

    @classmethod
    def of_dots(cls, dots: Iterable[Dot]) -> CausalContext:
        return cls.compact({}, dots)

    def contains(self, dot: Dot) -> bool:
        return dot[1] <= self.vv.get(dot[0], 0) or dot in self.cloud

    def dots(self) -> Iterable[Dot]:
        """Every dot in the context, one by one (may be many: use for tests and checks)."""
        for replica, n in self.vv.items():
            for i in range(1, n + 1):
                yield (replica, i)
        yield from self.cloud

    def next_dot(self, replica: str) -> Dot:
        top = self.vv.get(replica, 0)
        for r, n in self.cloud:
            if r == replica and n > top:
                top = n
        return (replica, top + 1)

    def join(self, other: CausalContext) -> CausalContext:
        if not other.vv and not other.cloud:
            return self
        vv = dict(self.vv)
        for replica, n in other.vv.items():
            if n > vv.get(replica, 0):
                vv[replica] = n
        return CausalContext.compact(vv, self.cloud | other.cloud)


@dataclass(frozen=True, slots=True)
class Flag:
    dots: frozenset[Dot]
    context: CausalContext

    @classmethod
    def bottom(cls) -> Flag:
        return _BOTTOM

    def is_bottom(self) -> bool:
        return not self.dots and not self.context.vv and not self.context.cloud

    @property
    def value(self) -> bool:
        return bool(self.dots)

    def join(self, other: Flag) -> Flag:
        if other.is_bottom():
            return self
        if self.is_bottom():
            return other
        mine, theirs = self.context, other.context
        dots = (
            (self.dots & other.dots)
            | {d for d in self.dots if not theirs.contains(d)}
            | {d for d in other.dots if not mine.contains(d)}
        )
        return Flag(frozenset(dots), mine.join(theirs))

    def enable(self, replica: str) -> Flag:
        """Delta mutator: a fresh dot, covering the enables seen so far."""
        dot = self.context.next_dot(replica)
        return Flag(frozenset([dot]), CausalContext.of_dots([dot, *self.dots]))

    def disable(self) -> Flag:
        """Delta mutator: covers the enables seen so far and adds none."""
        if not self.dots:
            return _BOTTOM
        return Flag(frozenset(), CausalContext.of_dots(self.dots))


_BOTTOM = Flag(frozenset(), CausalContext())
