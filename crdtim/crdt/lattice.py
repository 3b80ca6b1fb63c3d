"""The one interface every field lattice implements (specs/crdt.md §0, "Conventions").

A `Schema` field names its lattice by class, and the conversation map, its join, its views and
the codec treat every field through this interface, so a new lattice type is a class that
satisfies it and nothing else. mypy checks each field type against it (`Field.lattice` is a
`type[Lattice]`), the way riak_dt's behaviour checks each of its modules. Pure: no I/O here,
no imports from the rest of the package.
"""

from __future__ import annotations

from typing import Protocol, Self

__all__ = ["Lattice"]


class Lattice(Protocol):
    """A join-semilattice state with a bottom and a user-visible value.

    Laws (specs/crdt.md §0, checked for every type by tests/test_laws.py): join is
    commutative, associative and idempotent, bottom is its identity, and equality is
    structural -- states are kept canonical, so `a == b` means "same knowledge", and
    `a.join(b) == a` means "b adds nothing to a". Delta mutators are type-specific (each type
    has its own arguments) and so are not part of this interface; each returns a state of the
    same type, which is joined like any other.
    """

    @classmethod
    def bottom(cls) -> Self:
        """⊥: the state that knows nothing; `bottom().join(x) == x`."""
        ...

    def is_bottom(self) -> bool:
        """Whether this state equals `bottom()` (bottom fields are never stored or sent)."""
        ...

    def join(self, other: Self) -> Self:
        """The least upper bound of the two states; neither is changed."""
        ...

    @property
    def value(self) -> object:
        """What a user sees of the state (a title, a flag's on/off, a number)."""
        ...

    def __eq__(self, other: object) -> bool:
        """Structural equality of canonical states."""
        ...
