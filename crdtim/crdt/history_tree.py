"""The shape of a history: version groups, the active choice, visibility and the visible path.

Everything here is a function of the joined state alone (the messages' headers and the
per-group choices), so every replica that holds the same state shows the same history
(specs/crdt.md §8.3). It reads plain mappings, not the History type, so that history.py's
mutators can use it without an import cycle. Pure: no I/O here.
"""

from __future__ import annotations

from collections.abc import Mapping

from .lww import Lww, Stamp
from .message import Header, MessageState, group_of

_BOTTOM = MessageState()

__all__ = ["Tree"]


class Tree:
    """An index over one history's headers: groups, their active member, visibility.

    Built in one pass over the messages (O(n)); the storage step keeps the same facts
    incrementally instead (specs/crdt.md §8.6).
    """

    __slots__ = ("_choices", "_groups", "_messages", "_visible", "headers")

    def __init__(self, messages: Mapping[str, MessageState], choices: Mapping[str, Lww]):
        self._messages = messages
        self.headers: dict[str, Header] = {
            mid: m.header for mid, m in messages.items() if m.header is not None}
        self._choices = choices
        self._groups: dict[str, list[str]] = {}
        for mid, h in self.headers.items():
            self._groups.setdefault(group_of(mid, h), []).append(mid)
        for members in self._groups.values():
            members.sort(key=self._order)
        self._visible: dict[str, bool] = {}

    def _order(self, mid: str) -> tuple[Stamp, str]:
        return (self.headers[mid].created, mid)

    # -- the HistoryView the mutators read (history_ops.py) ------------------------------

    def message(self, mid: str) -> MessageState:
        return self._messages.get(mid, _BOTTOM)

    def header(self, mid: str) -> Header | None:
        return self.headers.get(mid)

    def last_visible(self) -> str | None:
        visible = [mid for mid in self.headers if self.is_visible(mid)]
        return max(visible, key=self._order) if visible else None

    def children(self, mid: str) -> list[str]:
        """The known messages whose parent is `mid`, oldest first (O(n))."""
        return sorted((c for c, h in self.headers.items() if h.parent == mid), key=self._order)

    # -- the rest of the shape -------------------------------------------------------------

    def group(self, mid: str) -> str | None:
        h = self.headers.get(mid)
        return None if h is None else group_of(mid, h)

    def members(self, group: str) -> list[str]:
        """The group's messages whose header is known, oldest first by (created, id)."""
        return self._groups.get(group, [])

    def active(self, group: str) -> str | None:
        """The chosen member if the choice names a member, else the newest member (§8.3.2)."""
        members = self._groups.get(group)
        if not members:
            return None
        choice = self._choices.get(group)
        if choice is not None:
            chosen = choice.value
            h = self.headers.get(chosen)
            if h is not None and group_of(chosen, h) == group:
                return chosen
        return members[-1]

    def is_active(self, mid: str) -> bool:
        group = self.group(mid)
        return group is not None and self.active(group) == mid

    def is_visible(self, mid: str) -> bool:
        """Known, active in its group, and so is every message on its path to a root (§8.3.3).

        A path that reaches an unknown message or runs in a cycle (only a forged state has
        one) makes everything on it invisible. Iterative, memoized: O(n) for all ids.
        """
        chain: list[str] = []
        on_chain: set[str] = set()
        cursor: str | None = mid
        verdict = True  # a path that reaches a root
        while cursor is not None:
            known = self._visible.get(cursor)
            if known is not None:
                verdict = known
                break
            h = self.headers.get(cursor)
            if h is None or cursor in on_chain:
                verdict = False
                break
            chain.append(cursor)
            on_chain.add(cursor)
            cursor = h.parent
        for node in reversed(chain):
            verdict = verdict and self.is_active(node)
            self._visible[node] = verdict
        # A cycle leaves `verdict` False for every node on the chain, as it must.
        return self._visible.get(mid, False)

    def visible_path(self) -> list[str]:
        """The visible messages, oldest first by (created stamp, id) (§8.3.4)."""
        return sorted((mid for mid in self.headers if self.is_visible(mid)), key=self._order)

    def path_to_root(self, mid: str) -> list[str]:
        """`mid` and its known ancestors, nearest first; stops at a root, an unknown parent,
        or a repeat (a forged cycle)."""
        out: list[str] = []
        seen: set[str] = set()
        cursor: str | None = mid
        while cursor is not None and cursor in self.headers and cursor not in seen:
            out.append(cursor)
            seen.add(cursor)
            cursor = self.headers[cursor].parent
        return out
