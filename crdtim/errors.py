"""The errors crdtim raises to its callers; each names what was wrong.

The bottom layer of the package: every other module may import it, and it imports nothing
(no I/O, no third-party package, no other crdtim module), so that the pure lattices in crdt/
can raise a `CrdtimError` too without depending on anything that does I/O.
"""

from __future__ import annotations

__all__ = [
    "ClockDriftError",
    "ConfigError",
    "CorruptStoreError",
    "CrdtimError",
    "DecodeError",
    "FormatVersionError",
    "LogTrimmedError",
    "NotAReplicaError",
    "PeerIdentityError",
    "ReplicaClosedError",
    "StoreError",
]


class CrdtimError(Exception):
    """Base of the errors crdtim raises on purpose."""


class DecodeError(CrdtimError, ValueError):
    """Bytes that are not a valid crdtim encoding; the message says what was wrong."""


class StoreError(CrdtimError):
    """The replica directory cannot be used."""


class NotAReplicaError(StoreError):
    """The directory holds something that is not a crdtim replica."""


class FormatVersionError(StoreError):
    """The replica was written by a newer (or unknown) storage format."""


class CorruptStoreError(StoreError):
    """The replica's files are damaged."""


class ClockDriftError(CrdtimError, ValueError):
    """A remote timestamp lies too far in the future of the local wall clock (specs/crdt.md
    §1): raised by the pure clock (crdt/hlc.py) and by the replica for a delta's stamps."""


class LogTrimmedError(CrdtimError):
    """The delta log no longer holds the entries asked for: send the state instead."""


class ConfigError(CrdtimError, ValueError):
    """A security or limits setting (a secrets, authorization or certificate file) cannot be
    used; the message names the file and what is wrong."""


class ReplicaClosedError(CrdtimError):
    """The replica was used after close()."""


class PeerIdentityError(CrdtimError):
    """A peer claimed a replica id that is bound to another authenticated identity."""
