"""Peers: what this replica knows of each peer, and the log trimming that depends on it.

Per peer replica id: how far it acknowledged our log (noted in memory, written in batches),
how far its log was applied here, the identity it is bound to and the scope it was sent
(specs/storage.md §2, `acks`). `trim_log` drops what every known peer holds, within the
retention bound (specs/storage.md §10). Nothing here moves bytes or keeps time: a server
calls these on its own schedule.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ..crdt import Hlc
from ..errors import CorruptStoreError, PeerIdentityError
from ..store import Txn
from ._checks import InvalidArgument, check_peer, check_seq
from ._core import ReplicaCore

__all__ = ["Peers"]


class Peers(ReplicaCore):
    """Acknowledgements, resume points, identities and scopes of a Replica's peers."""

    def peer_ack(self, peer: str) -> int | None:
        """Highest sequence of this replica's log that `peer` acknowledged (None: unknown)."""
        stored = self.store.read(lambda t: t.ack(peer))
        pending = self._pending_acks.get(peer)
        return stored if pending is None else max(pending, stored or 0)

    def record_ack(self, peer: str, seq: int) -> None:
        """Note that `peer` holds everything in our log up to `seq` (never moves back).

        Kept in memory and written by the next flush_acks() or trim_log() (a Node trims
        every second), not with an fsync per ACK: an ack lost in a crash costs only a
        harmless resend, since resuming follows what the peer says it has.
        """
        check_peer(peer)
        check_seq(seq, "seq")
        if seq > self._pending_acks.get(peer, -1):
            self._pending_acks[peer] = seq

    def flush_acks(self) -> None:
        """Write the acknowledgements record_ack() noted, in one transaction."""
        if self._pending_acks:
            self.store.write(self._write_pending_acks)
            self._pending_acks.clear()

    def _write_pending_acks(self, t: Txn) -> None:
        for peer, seq in self._pending_acks.items():
            stored = t.ack(peer)
            if stored is None or seq > stored:
                t.put_ack(peer, seq)

    def missing_entries(self, peer: str) -> int | None:
        """Log entries `peer` still lacks, as far as this replica can tell: those after its
        acknowledgement, but for the ones that came from it (never sent back); None for a
        peer that never acknowledged anything, or one behind the log floor (it needs a
        state transfer: the entries it lacks were dropped here, uncounted)."""
        check_peer(peer)
        ack = self.peer_ack(peer)

        def read(t: Txn) -> int | None:
            if ack is None or ack < t.log_floor():
                return None
            return _missing(t, peer, ack)
        return self.store.read(read)

    def received_from(self, peer: str) -> int:
        """Highest sequence of `peer`'s log that has been applied here."""
        return self.store.read(lambda t: t.received(peer))

    def bind_peer(self, peer: str, identity: str) -> None:
        """Bind `peer`'s replica id to the identity it authenticated as (a key id or a
        certificate name), on first sight, durably; raise PeerIdentityError if the id is
        already bound to another identity.

        A replica keeps its resume point and ack per replica id. Without this, a peer that
        authenticated as one user could claim another user's device id and move that
        device's resume point, so the device's writes would be skipped (specs/security.md).
        """
        check_peer(peer)
        if type(identity) is not str or not identity:
            raise InvalidArgument(f"identity must be a non-empty string, not {identity!r:.80}")

        def bind(t: Txn) -> str:
            bound = t.identity(peer)
            if bound is None:
                t.put_identity(peer, identity)
                return identity
            return bound

        bound = self.store.read(lambda t: t.identity(peer))
        if bound is None:
            bound = self.store.write(bind)
        if bound != identity:
            raise PeerIdentityError(f"replica id {peer} belongs to identity {bound!r}, "
                                    f"not {identity!r}")

    def sent_scope(self, peer: str) -> tuple[str, ...] | None:
        """The conversation id prefixes `peer` was limited to when it acknowledged what it
        has of our log (None: it was sent everything). See set_sent_scope."""
        check_peer(peer)
        raw = self.store.read(lambda t: t.sent_scope(peer))
        if raw is None:
            return None
        try:
            prefixes = json.loads(raw)
        except ValueError:
            prefixes = None
        if type(prefixes) is not list or not all(type(p) is str for p in prefixes):
            raise CorruptStoreError(f"the recorded scope of peer {peer} is damaged")
        return tuple(prefixes)

    def set_sent_scope(self, peer: str, scope: tuple[str, ...] | None) -> None:
        """Record that what `peer` acknowledges of our log from now on was filtered to
        `scope` (None: not filtered). A session compares it with the peer's scope at the
        next handshake: a wider scope needs a state transfer, since the acknowledged
        entries left out what was outside the old one."""
        check_peer(peer)
        raw = None if scope is None else json.dumps(list(scope)).encode()
        if raw != self.store.read(lambda t: t.sent_scope(peer)):
            self.store.write(lambda t: t.put_sent_scope(peer, raw))

    def unbind_peer(self, peer: str) -> None:
        """Forget which identity `peer`'s replica id is bound to (after an operator moved
        that device to another key or certificate on purpose)."""
        check_peer(peer)
        self.store.write(lambda t: t.delete_identity(peer))

    def peers(self) -> dict[str, int]:
        """Known peers and the sequence of our log each acknowledged."""
        return self.store.read(lambda t: _merged_acks(t.acks(), self._pending_acks))

    def trim_log(self) -> int:
        """Drop log entries every known peer acknowledged, and any beyond the retention
        bound (a peer that never returns must not pin the log forever: it gets a state
        transfer instead). Returns how many entries were dropped."""
        def write(t: Txn) -> int:
            self._write_pending_acks(t)
            head = t.head()
            acks = t.acks()
            floor = min(acks.values()) if acks else t.log_floor()
            floor = max(floor, head - self.log_retention)
            if floor <= t.log_floor():
                return 0
            return t.drop_log_upto(min(floor, head))
        dropped = self.store.write(write)
        self._pending_acks.clear()
        if dropped:
            # Never read again (delta_interval checks the floor first): not worth the memory.
            self._log_cache.forget_upto(self.store.read(lambda t: t.log_floor()))
        return dropped

    def housekeeping(self) -> dict[str, Any]:
        """A long-running server's periodic upkeep, in the replica's own thread: trim_log()
        (which also writes the acks noted since the last trim), then status() as of after
        the trim. The result is a fresh dict, safe to hand to readers in other threads
        (metrics), which must never use the replica itself (specs/protocol.md §9). First
        it applies held values whose time has come (specs/crdt.md §1), so that they do
        not wait for the next write."""
        self.apply_pending()
        self.trim_log()
        return self.status()

    def apply_pending(self) -> set[str]:
        """Defined by the remote-apply concern (_remote.RemoteApply)."""
        raise NotImplementedError

    def status(self) -> dict[str, Any]:
        """This replica's id, path, conversation count, log head and floor, clock, and per
        known peer its ack, the entries it still lacks and how far its log was applied here
        (what `crdtim status` prints)."""
        def read(t: Txn) -> dict[str, Any]:
            head = t.head()
            return {
                "id": self.id,
                "path": self.store.path,
                "conversations": t.conversation_count(),
                "head": head,
                "log_floor": t.log_floor(),
                # The clock the next write continues from (specs/storage.md §3a).
                "clock": list(self._leased_clock.current(Hlc(*t.clock()))),
                # Values from peers stamped too far ahead, held until their time.
                "pending": {"count": t.pending_count(), "earliest": t.first_pending_wall()},
                "peers": {
                    peer: {"ack": ack, "missing": _missing(t, peer, ack),
                           "received": t.received(peer)}
                    for peer, ack in sorted(_merged_acks(t.acks(), self._pending_acks).items())
                },
            }
        return self.store.read(read)


def _merged_acks(stored: dict[str, int], pending: Mapping[str, int]) -> dict[str, int]:
    for peer, seq in dict(pending).items():  # a copy: the metrics thread reads this too
        stored[peer] = max(seq, stored.get(peer, seq))
    return stored


def _missing(t: Txn, peer: str, ack: int) -> int:
    """Log entries after `ack` that `peer` still lacks (those it sent us are not sent back)."""
    return sum(1 for _, origin, _ in t.log_entries(ack) if origin != peer)
