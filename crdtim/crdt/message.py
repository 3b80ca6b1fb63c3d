"""One message of a conversation's history, as a lattice (specs/crdt.md §8.2).

A message's state is a product of three parts, each joined on its own: the immutable header
(set once at creation; two different headers for one id resolve to the smaller), the text
(an LWW base plus the appends made on that base, so that a streamed reply ships only its new
text) and the final `deleted` flag (a delete drops the text and author from the state). Each
message's state joins alone, which lets storage keep one message per key. Pure: no I/O here,
no imports from the rest of the package but crdtim.errors.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import NamedTuple

from ..errors import CrdtimError
from .lww import BOTTOM_STAMP, Lww, Stamp

__all__ = [
    "DEFAULT_MESSAGE_LIMITS",
    "Append",
    "Header",
    "MessageError",
    "MessageLimits",
    "MessageState",
    "group_of",
]


class MessageError(CrdtimError, ValueError):
    """A message write that is refused (unknown message, conflicting re-post, over a limit);
    the replica reports it as InvalidArgument. Nothing is changed."""


@dataclass(frozen=True, slots=True)
class MessageLimits:
    """Every bound on a message, named, with its default (specs/crdt.md §8.7).

    The mutators refuse to make states past these; the codec will bound what it decodes by
    the same numbers.
    """

    #: UTF-8 bytes of a message's visible text; also what keeps one message far below a
    #: frame (16 MiB), so a message never needs chunking (specs/crdt.md §8.7).
    max_text_bytes: int = 65536
    #: code points of a message id (ids are never empty).
    max_id: int = 128
    #: code points of a role (never empty) and of an author.
    max_role: int = 64
    max_author: int = 256
    #: messages in one version group: regenerate and branch refuse past it.
    max_versions: int = 256
    #: appends on one base: the next append folds them into a new base (an edit).
    max_appends: int = 1024


DEFAULT_MESSAGE_LIMITS = MessageLimits()


class Append(NamedTuple):
    """Text added at the end of a message: ordered by `stamp`, made on the base `base`."""

    stamp: Stamp
    base: Stamp
    text: str


@dataclass(frozen=True, slots=True)
class Header:
    """The immutable part of a message, set once when it is posted (specs/crdt.md §8.2.1).

    `origin` is None for a message that starts its own version group (a plain post), else the
    id of the group's first message: this one is an alternative of it (regenerate, branch).
    """

    parent: str | None
    origin: str | None
    role: str
    author: str | None
    at: int
    seq: int | None
    created: Stamp

    def order_key(self) -> tuple[object, ...]:
        """The total order that resolves two headers for one id: the smaller wins.

        Injective (None and "" differ), so two headers with one key are equal. `author` comes
        last so that dropping it (a tombstone) never changes which of two headers is smaller
        in the fields it keeps (specs/crdt.md §8.2.1).
        """
        return (
            self.created,
            self.parent is not None, self.parent or "",
            self.origin is not None, self.origin or "",
            self.role,
            self.at,
            self.seq is not None, self.seq or 0,
            self.author is not None, self.author or "",
        )

    def without_author(self) -> Header:
        return self if self.author is None else replace(self, author=None)


def group_of(mid: str, header: Header) -> str:
    """The version group a message belongs to: its origin, or itself if it has none."""
    return header.origin if header.origin is not None else mid


def _smaller(a: Header | None, b: Header | None) -> Header | None:
    if a is None or a == b:
        return b
    if b is None:
        return a
    return b if b.order_key() < a.order_key() else a


#: The text of a message that has none (not yet received, or deleted): the bottom register.
_NO_TEXT = Lww(BOTTOM_STAMP, "")


@dataclass(frozen=True, slots=True)
class MessageState:
    """One message's state, canonical (specs/crdt.md §8.2.4).

    Canonical form: a deleted message holds no text, no appends and no author; a live one
    holds only the appends made on its base or on a newer base it has not seen yet. Build
    states with `MessageState.make`, which brings them to that form.
    """

    header: Header | None = None
    base: Lww = _NO_TEXT
    appends: frozenset[Append] = frozenset()
    deleted: bool = False

    @classmethod
    def make(
        cls,
        header: Header | None,
        base: Lww,
        appends: Iterable[Append],
        deleted: bool,
    ) -> MessageState:
        if deleted:
            return cls(None if header is None else header.without_author(), _NO_TEXT,
                       frozenset(), True)
        floor = base.stamp
        return cls(header, base, frozenset(a for a in appends if a.base >= floor), False)

    # -- lattice ---------------------------------------------------------------------------

    @classmethod
    def bottom(cls) -> MessageState:
        return _BOTTOM

    def is_bottom(self) -> bool:
        return self == _BOTTOM

    def join(self, other: MessageState) -> MessageState:
        if other is self or other.is_bottom():
            return self
        if self.is_bottom():
            return other
        return MessageState.make(
            _smaller(self.header, other.header),
            self.base.join(other.base),
            self.appends | other.appends,
            self.deleted or other.deleted,
        )

    def novel(self, delta: MessageState) -> MessageState:
        """The parts of `delta` that change this state (each part kept only if it is not
        already below the state): self ⊔ result == self ⊔ delta, result ⊑ delta."""
        header = None
        if delta.header is not None and self.join(MessageState(delta.header)) != self:
            header = delta.header
        if self.deleted:
            return MessageState.make(header, _NO_TEXT, (), False)
        if delta.deleted:
            return MessageState.make(header, _NO_TEXT, (), True)
        base = delta.base if self.base.join(delta.base) != self.base else _NO_TEXT
        floor = self.base.stamp
        appends = [a for a in delta.appends if a.base >= floor and a not in self.appends]
        return MessageState(header, base, frozenset(appends), False)

    @property
    def value(self) -> str:
        return self.text

    # -- reading ---------------------------------------------------------------------------

    def current_appends(self) -> list[Append]:
        """The appends made on the current base, in stamp order (then text, for forged ties)."""
        base = self.base.stamp
        return sorted(a for a in self.appends if a.base == base)

    @property
    def text(self) -> str:
        """The visible text: the base, then the appends made on it (specs/crdt.md §8.2.2)."""
        if not self.appends:
            return self.base.value
        return self.base.value + "".join(a.text for a in self.current_appends())

    @property
    def edited(self) -> Stamp | None:
        """The stamp of the last edit, None if the text is still the one it was posted with."""
        if self.header is None or self.base.stamp in (BOTTOM_STAMP, self.header.created):
            return None
        return self.base.stamp

    def stamps(self) -> Iterator[Stamp]:
        """Every hybrid-clock stamp in the state (a receiver advances its clock past them)."""
        if self.header is not None:
            yield self.header.created
        if self.base.stamp != BOTTOM_STAMP:
            yield self.base.stamp
        for a in self.appends:
            yield a.stamp
            yield a.base


_BOTTOM = MessageState()
