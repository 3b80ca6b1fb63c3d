"""The replica's hybrid clock, kept in memory behind a persisted lease (specs/storage.md §3a).

Writing the clock to `meta` on every commit dirtied one more B-tree per write than the
change itself needs. Instead, `meta.clock` holds a *lease*: a reading at or above every
reading this replica has ever issued or observed. A process continues from its clock in
memory and writes a new lease only when a reading passes the stored one, setting it
`LEASE_MS` ahead, so that with a steady stream of writes one commit in many touches `meta`.
After a kill -9 (or in another process) the clock continues from the lease, so it never goes
back. Nothing here does I/O: the write transaction passes in what it read and stores what
`lease_to_store` returns.
"""

from __future__ import annotations

from ..crdt import Hlc
from ..crdt.hlc import ZERO

__all__ = ["LEASE_MS", "LeasedClock"]

#: How far ahead of the clock a new lease is set (specs/storage.md §3a): the most a
#: restarted process (or one that finds another process's lease) stamps ahead of wall time.
LEASE_MS = 1000


class LeasedClock:
    """One process's reading of a replica's clock and the lease it knows it stored."""

    __slots__ = ("_committing", "_owned", "reading")

    def __init__(self) -> None:
        #: The largest reading issued or observed in this process (starts at the stored
        #: lease: see `start`).
        self.reading: Hlc = ZERO
        # The lease this process stored, as read back in its later transactions: while
        # `meta.clock` still holds it, no other process has issued a reading since. None:
        # not known (none stored yet, or a commit that wrote one may have failed).
        self._owned: Hlc | None = None
        # (transaction, lease) written by the transaction now running, until it commits.
        self._committing: tuple[object, Hlc] | None = None

    def current(self, stored: Hlc) -> Hlc:
        """The reading the next write continues from, given the lease stored now: this
        process's own reading while the lease is the one it stored, else the larger."""
        if stored != self._owned and stored > self.reading:
            return stored
        return self.reading

    def start(self, txn: object, stored: Hlc) -> Hlc:
        """The reading a write transaction `txn` continues from, given the lease it read.

        A lease other than the one this process stored (or is storing in `txn`) was written
        by another process, or by this one before a restart: readings up to it may have
        been issued, so the clock moves up to it. Leases only grow (§3a), so a lease stored
        by another process is never equal to one this process stored before it.
        """
        ours = self._owned
        committing = self._committing
        if committing is not None and committing[0] is txn:
            ours = committing[1]
        if stored != ours and stored > self.reading:
            self.reading = stored
        return self.reading

    def lease_to_store(self, txn: object, stored: Hlc, reading: Hlc, now_ms: int) -> Hlc | None:
        """After `txn` issued or observed readings up to `reading`: the lease to write in
        it, or None when the stored one still covers `reading`."""
        if reading > self.reading:
            self.reading = reading
        if reading <= stored:
            return None
        if reading.wall > stored.wall:
            lease = Hlc(max(reading.wall, now_ms) + LEASE_MS, 0)
        else:
            # Only the counter passed the lease: the clock was moved up to a lease (a restart,
            # another process) and the wall clock has not caught up. A lease LEASE_MS past
            # the wall clock, not past the lease, so that processes taking turns do not push
            # the clock further ahead each turn.
            lease = max(reading, Hlc(now_ms + LEASE_MS, 0))
        self._committing = (txn, lease)
        return lease

    def committed(self) -> None:
        """The write transaction that called lease_to_store has committed."""
        if self._committing is not None:
            self._owned = self._committing[1]
            self._committing = None

    def aborted(self) -> None:
        """The write transaction failed, so nothing of it was stored: the stored lease is
        still the one before it (or another process's, which `start` then finds)."""
        self._committing = None
