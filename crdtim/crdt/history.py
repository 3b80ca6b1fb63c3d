"""A conversation's message history: a map message id -> message state, plus one LWW choice
per version group (specs/crdt.md §8.4).

Join is pointwise, per message id and per group, so storage can keep and join one message (or
one choice) at a time. The delta mutators (post, regenerate, append, edit, switch, delete)
return a History holding only what they change; states and deltas share one join (Almeida,
Shoker, Baquero, "Delta State Replicated Data Types", 2018). What the history *shows* -- the
visible path, the versions of a message -- is a function of the state alone
(history_tree.py). Pure: no I/O, no clock reads; callers pass fresh HLC stamps in.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from . import history_ops as ops
from .history_tree import Tree
from .hlc import Hlc
from .lww import Lww, Stamp
from .message import (
    DEFAULT_MESSAGE_LIMITS,
    MessageLimits,
    MessageState,
)

__all__ = ["History", "versions", "visible_path"]


@dataclass(frozen=True, slots=True)
class History:
    """A state or a delta of one conversation's messages. Canonical: no bottom message state
    and no bottom choice is stored, so equality is structural (§8.4.1). Build with `make`."""

    messages: Mapping[str, MessageState] = field(default_factory=dict)
    choices: Mapping[str, Lww] = field(default_factory=dict)

    @classmethod
    def make(
        cls,
        messages: Mapping[str, MessageState] | None = None,
        choices: Mapping[str, Lww] | None = None,
    ) -> History:
        return cls(
            {mid: m for mid, m in (messages or {}).items() if not m.is_bottom()},
            {g: c for g, c in (choices or {}).items() if not c.is_bottom()},
        )

    # -- lattice ---------------------------------------------------------------------------

    @classmethod
    def bottom(cls) -> History:
        return cls()

    def is_bottom(self) -> bool:
        return not self.messages and not self.choices

    def join(self, other: History) -> History:
        # No normalizing pass: a join of states that are not bottom is not bottom.
        messages = dict(self.messages)
        for mid, m in other.messages.items():
            mine = messages.get(mid)
            messages[mid] = m if mine is None else mine.join(m)
        choices = dict(self.choices)
        for group, c in other.choices.items():
            chosen = choices.get(group)
            choices[group] = c if chosen is None else chosen.join(c)
        return History(messages, choices)

    def novel(self, delta: History) -> History:
        """The part of `delta` that changes this state (§8.4.3): self ⊔ it == self ⊔ delta."""
        messages = {}
        for mid, m in delta.messages.items():
            mine = self.messages.get(mid)
            part = m if mine is None else mine.novel(m)
            if not part.is_bottom():
                messages[mid] = part
        choices = {}
        for group, c in delta.choices.items():
            chosen = self.choices.get(group)
            if chosen is None or chosen.join(c) != chosen:
                choices[group] = c
        return History(messages, choices)

    @property
    def value(self) -> tuple[str, ...]:
        return tuple(visible_path(self))

    # -- reading ---------------------------------------------------------------------------

    def message(self, mid: str) -> MessageState:
        return self.messages.get(mid, MessageState.bottom())

    def stamps(self) -> Iterator[Stamp]:
        """Every hybrid-clock stamp in the state: receivers advance their clock past them."""
        for m in self.messages.values():
            yield from m.stamps()
        for c in self.choices.values():
            yield c.stamp

    def max_clock(self) -> Hlc | None:
        best = max(((s.wall, s.counter) for s in self.stamps()), default=None)
        return None if best is None else Hlc(*best)

    def max_at(self) -> int:
        """The latest message time (`at`, ms) in the state, 0 if none: bounded like a clock."""
        return max((m.header.at for m in self.messages.values() if m.header), default=0)

    # -- delta mutators (specs/crdt.md §8.5; the code is history_ops.py's, shared with
    # the replica's stored history) ---------------------------------------------------------

    def view(self) -> Tree:
        return Tree(self.messages, self.choices)

    def post(self, mid: str, text: str, stamp: Stamp, *, role: str = "user",
             reply_to: str | None = None, at: int | None = None, seq: int | None = None,
             author: str | None = None,
             limits: MessageLimits = DEFAULT_MESSAGE_LIMITS) -> History:
        return History(*ops.post(self.view(), mid, text, stamp, role=role, reply_to=reply_to,
                                 at=at, seq=seq, author=author, limits=limits))

    def regenerate(self, of: str, mid: str, text: str, stamp: Stamp, *,
                   role: str | None = None, at: int | None = None,
                   limits: MessageLimits = DEFAULT_MESSAGE_LIMITS) -> History:
        return History(*ops.regenerate(self.view(), of, mid, text, stamp, role=role, at=at,
                                       limits=limits))

    def append(self, mid: str, text: str, stamp: Stamp,
               limits: MessageLimits = DEFAULT_MESSAGE_LIMITS) -> History:
        return History(*ops.append(self.view(), mid, text, stamp, limits))

    def edit(self, mid: str, text: str, stamp: Stamp,
             limits: MessageLimits = DEFAULT_MESSAGE_LIMITS) -> History:
        return History(*ops.edit(self.view(), mid, text, stamp, limits))

    def switch(self, mid: str, stamp: Stamp) -> History:
        return History(*ops.switch(self.view(), mid, stamp))

    def delete(self, mid: str) -> History:
        return History(*ops.delete(self.view(), mid))


def visible_path(history: History) -> list[str]:
    """The visible messages, oldest first by (created stamp, id) (specs/crdt.md §8.3.4)."""
    return Tree(history.messages, history.choices).visible_path()


def versions(history: History, mid: str) -> list[str]:
    """The version group of `mid`, oldest first by (created stamp, id); [] if `mid` is not
    known. `mid`'s index in it is its version number (§8.3.5)."""
    tree = Tree(history.messages, history.choices)
    group = tree.group(mid)
    return [] if group is None else list(tree.members(group))
