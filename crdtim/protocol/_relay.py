"""Not relaying what a peer already holds (specs/protocol.md §12): the HAVE exchange.

In a mesh every replica forwards what it received to its other peers ("Entries that came
from a third replica are forwarded", §4), so a write reached each replica once directly and
once more through every other replica. Here each replica tells its peers, in HAVE frames,
which origins stream to it directly (unfiltered, on an open connection: **linked**) and how
far it holds each one's log. A relay then, for each log entry that came in a DELTA from an
origin O up to O's seq v:
- leaves it out of the interval it sends peer P when P holds O's log up to v or further
  (P has the entry: O's log up to v contains it);
- holds its stream to P back at that entry while P is linked to O but does not hold O up to
  v yet (O is delivering it to P directly), until P's HAVE says it does (then leave it out)
  or that it is no longer linked to O (then send it).
A held-back stream never waits on a dead link (closing a connection unlinks it) nor in a
cycle (an entry at O's seq v was logged at the relay after O's log reached v, so the entries
holding streams back are ordered in time), so every entry still reaches every replica.

`RelayIndex` is one per replica, shared by all its sessions (all in one process and thread):
what came from where, and which origins are linked here. `PeerRelay` is one per session: the
peer's HAVEs and ours. Only memory: a restart forgets it, which only means relaying more.
Pure data: no I/O here.
"""

from __future__ import annotations

from collections.abc import Callable

from ._errors import RemoteProtocolError
from ._messages import Have
from ._table import ReceivedIds, SentIds

__all__ = ["MAX_RELAY_ENTRIES", "PeerRelay", "RelayIndex", "have_frame", "read_have"]

#: Log entries whose origin interval is remembered (the oldest are forgotten first: a
#: forgotten entry is relayed as before).
MAX_RELAY_ENTRIES = 65_536


class RelayIndex:
    """What one replica knows for relaying, shared by its sessions (one process)."""

    def __init__(self, max_entries: int = MAX_RELAY_ENTRIES):
        self.max_entries = max_entries
        #: our log seq -> (origin, the end of the origin's DELTA interval it came in)
        self.via: dict[int, tuple[str, int]] = {}
        self.last_via = 0  # the largest seq in `via`
        #: origin -> how far we hold its log, learned on linked connections
        self.have: dict[str, int] = {}
        self._links: dict[str, int] = {}  # origin -> open unfiltered sessions from it
        self.version = 0  # moves whenever `linked` or `have` does
        #: Called when it moves (a Node wakes its senders: their HAVEs are due).
        self.on_change: Callable[[], None] | None = None

    @property
    def linked(self) -> dict[str, int]:
        """Origins linked here, with how far we hold each one's log."""
        return {peer: self.have.get(peer, 0) for peer in self._links}

    def logged(self, seq: int, origin: str, end: int) -> None:
        """Our log entry `seq` is the novel part of `origin`'s log up to `end`."""
        self.via[seq] = (origin, end)
        self.last_via = max(self.last_via, seq)
        while len(self.via) > self.max_entries:
            del self.via[next(iter(self.via))]

    def applied(self, peer: str, end: int) -> None:
        """We hold `peer`'s whole log up to `end` (a DELTA or STATE_END on a linked
        connection, committed)."""
        if peer in self._links and end > self.have.get(peer, 0):
            self.have[peer] = end
            self._changed()

    def link(self, peer: str) -> None:
        self._links[peer] = self._links.get(peer, 0) + 1
        if self._links[peer] == 1:
            self._changed()

    def unlink(self, peer: str) -> None:
        n = self._links.get(peer, 0) - 1
        if n > 0:
            self._links[peer] = n
            return
        self._links.pop(peer, None)
        self.have.pop(peer, None)  # learned only while linked: the next link starts again
        self._changed()

    def _changed(self) -> None:
        self.version += 1
        if self.on_change is not None:
            self.on_change()


class PeerRelay:
    """One session's part: the peer's HAVEs (what it holds, which origins are linked to it)
    and what our HAVEs told it."""

    def __init__(self, index: RelayIndex):
        self.index = index
        self.peer = ""
        self.filtered = True  # what we send the peer is cut to its scope
        self.peer_linked: dict[str, int] = {}  # origin -> the peer holds it up to, linked
        self.linked_here = False  # the peer streams to us unfiltered (its HAVE said so)
        self._told: dict[str, int] | None = None  # our linked origins as last told
        self._told_version = -1

    def open(self, peer: str, filtered: bool) -> None:
        self.peer, self.filtered = peer, filtered

    def close(self) -> None:
        """The connection is gone: the peer no longer streams to us."""
        if self.linked_here:
            self.linked_here = False
            self.index.unlink(self.peer)

    def applied(self, head_before: int, head_after: int, end: int) -> None:
        """The peer's log up to `end` was applied here in one transaction, our head moving
        from `head_before` to `head_after`: one entry more is its novel part (several: other
        writers joined in, and which is which is not known)."""
        if head_after == head_before + 1:
            self.index.logged(head_after, self.peer, end)
        if self.linked_here:
            self.index.applied(self.peer, end)

    # -- our HAVE ------------------------------------------------------------------------------

    def due(self) -> tuple[dict[str, int], list[str]] | None:
        """(linked origins and how far we hold them, origins no longer linked) to tell the
        peer, or None when it knows; the first HAVE of a connection is always due."""
        index = self.index
        if self._told is not None and self._told_version == index.version:
            return None
        self._told_version = index.version
        now = {o: n for o, n in index.linked.items() if o != self.peer}
        told = self._told or {}
        changed = {o: n for o, n in now.items() if told.get(o) != n}
        gone = [o for o in told if o not in now]
        first = self._told is None
        self._told = now
        return (changed, gone) if first or changed or gone else None

    # -- the peer's HAVE -----------------------------------------------------------------------

    def on_have(self, filtered: bool, linked: dict[str, int], gone: list[str]) -> None:
        if not filtered and not self.linked_here:
            self.linked_here = True
            self.index.link(self.peer)
        elif filtered and self.linked_here:
            self.close()
        for origin, n in linked.items():
            self.peer_linked[origin] = max(n, self.peer_linked.get(origin, 0))
        for origin in gone:
            self.peer_linked.pop(origin, None)

    # -- what the outbound direction asks --------------------------------------------------------

    def holds(self, seq: int, origin: str) -> bool:
        """The peer holds our log entry `seq` (whose origin is `origin`) already."""
        via = self.index.via.get(seq)
        return (via is not None and via[0] == origin
                and self.peer_linked.get(origin, -1) >= via[1])

    def held_back_from(self, after: int, max_entries: int) -> int:
        """How many entries after `after` may be sent before one the peer is about to get
        from its origin directly (max_entries when none is)."""
        links = self.peer_linked
        index = self.index
        if not links or after >= index.last_via:
            return max_entries
        via = index.via
        for k in range(after + 1, min(after + max_entries, index.last_via) + 1):
            v = via.get(k)
            if v is not None and v[0] in links and links[v[0]] < v[1]:
                return k - 1 - after
        return max_entries


def read_have(m: Have, table: ReceivedIds, relay: PeerRelay | None) -> None:
    """The peer's HAVE: its ids join its session table (shared with its COMPACT_DELTAs,
    §11) even when we do not relay, so that its indexes stay right; then `relay` learns it."""
    table.extend(m.new_ids, "HAVE")
    ids = table.ids
    for i in (*m.linked[::2], *m.unlinked):
        if i >= len(ids):
            raise RemoteProtocolError(f"HAVE: replica index {i} is not in the session table "
                                      f"of {len(ids)}")
    if relay is not None:
        pairs = zip(m.linked[::2], m.linked[1::2], strict=True)
        relay.on_have(m.filtered, {ids[i]: n for i, n in pairs}, [ids[i] for i in m.unlinked])


def have_frame(relay: PeerRelay, table: SentIds) -> Have | None:
    """Our HAVE to the peer, if what is linked here changed since the last (or it is the
    connection's first); its ids join our session table. None when nothing changed, or our
    table is full (the peer then relays as before)."""
    due = relay.due()
    if due is None:
        return None
    linked, gone = due
    indexes = table.indexes([*linked, *gone])
    if indexes is None:
        return None
    at, new_ids = indexes
    flat = [x for i, n in zip(at, linked.values(), strict=False) for x in (i, n)]
    return Have(filtered=relay.filtered, new_ids=new_ids, linked=tuple(flat),
                unlinked=tuple(at[len(linked):]))
