"""The format of a replica directory (specs/storage.md §9): the identity check of its meta
records, and the migrations from older formats, each in the caller's write transaction.

No lmdb here: the migrations read and write through the store's `Txn`.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TypeVar

from ._records import seal
from .errors import CorruptStoreError, FormatVersionError, NotAReplicaError

if TYPE_CHECKING:
    from .store import Txn

__all__ = ["MAGIC", "checked_identity", "migrate"]

MAGIC = b"crdtim"
_U64 = struct.Struct(">Q")
T = TypeVar("T")


def _u64(b: bytes | None) -> int:
    return 0 if b is None else int(_U64.unpack(b)[0])


def migrate(t: Txn, current: int) -> None:
    """Bring a replica of an older format to `current`, in the caller's write transaction.

    1 -> 2 seals the values with their checksums; 2 -> 3 seals the held (`pending`) values
    and adds the message databases, which the store made, empty, when it opened them.
    """
    if _u64(t.meta(b"format")) == 1:
        seal_all(t, ("convs", "order", "log"))
    if _u64(t.meta(b"format")) == 2:  # values held for later are sealed from format 3 on
        seal_all(t, ("pending",))
    if _u64(t.meta(b"format")) != current:
        t.put_meta(b"format", _U64.pack(current))


def checked_identity(path: str, meta: Callable[[bytes], bytes | None], current: int,
                     also: tuple[int, ...] = ()) -> str:
    """The replica id, after checking the marker and the format version in `meta` (`current`,
    or one of `also`)."""
    if meta(b"magic") != MAGIC:
        raise NotAReplicaError(f"{path}: not a crdtim replica (no crdtim marker)")
    raw = meta(b"format")
    if raw is None or len(raw) != _U64.size:
        raise CorruptStoreError(
            f"{path}: damaged: meta.format is "
            f"{'missing' if raw is None else f'{len(raw)} bytes, not 8'}")
    fmt = _u64(raw)
    if fmt != current and fmt not in also:
        raise FormatVersionError(
            f"{path}: storage format {fmt} is not supported by this crdtim "
            f"(which reads format {current}); upgrade crdtim"
        )
    rid = meta(b"replica_id")
    if not rid:
        raise CorruptStoreError(f"{path}: replica id is missing")
    return rid.decode()


def seal_all(t: Txn, databases: tuple[str, ...]) -> None:
    """One format step (specs/storage.md §9): seal every value of `databases` with its
    checksum, in the caller's write transaction, which also writes the next format; a crash
    leaves either layout whole. The values are taken as they are: the older format has no
    way to tell a damaged one, and `crdtim verify` decodes each afterwards."""
    for database in databases:
        after = b""
        while True:
            batch = [(k, v) for k, v in _first(t.scan(database, after), 1001) if k != after]
            if not batch:
                break
            for k, v in batch:
                t.put(database, k, seal(k, v))
            after = batch[-1][0]
    t.put_meta(b"format", _U64.pack(_u64(t.meta(b"format")) + 1))


def _first(items: Iterator[T], n: int) -> list[T]:
    out = []
    for item in items:
        out.append(item)
        if len(out) == n:
            break
    return out
