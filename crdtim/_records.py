"""The bytes of store.py's records that need no lmdb: the `order` key layout (specs/storage.md
§2), how values read back as state are sealed, and how a failure is named (§2 "Checksums",
§6): pure functions over bytes and error text.
"""

from __future__ import annotations

import errno
import os
import struct
import zlib
from collections.abc import Mapping
from typing import Any

from .errors import CorruptStoreError, StoreError

__all__ = [
    "CHECKSUM_BYTES",
    "describe_key",
    "describe_lmdb_error",
    "describe_os_error",
    "lmdb_failure",
    "order_key",
    "order_key_of",
    "seal",
    "unseal",
]

_U64 = struct.Struct(">Q")
_MAX_U64 = 2**64 - 1


def order_key(pinned: bool, last_at: int, cid: str) -> bytes:
    """Sorts pinned first, then newest message first, then by id (specs/storage.md §2,
    `order`): pin byte, u64(2^64 - 1 - last_at), the id in UTF-8."""
    return (b"\x00" if pinned else b"\x01") + _U64.pack(_MAX_U64 - last_at) + cid.encode()


def order_key_of(cid: str, fields: Mapping[str, Any]) -> bytes | None:
    """The `order` key of a conversation's state (None for no state): from its `pinned`
    flag's value and the wall time of its `last_message` stamp (0 if none)."""
    if not fields:
        return None
    pinned = fields.get("pinned")
    last = fields.get("last_message")
    return order_key(
        pinned is not None and bool(pinned.value), 0 if last is None else last.stamp.wall, cid
    )

#: The checksum sealed onto every `convs` and `log` value (specs/storage.md §2, "Checksums").
_CRC = struct.Struct(">I")
CHECKSUM_BYTES = _CRC.size


def seal(key: bytes, value: bytes) -> bytes:
    """`value` followed by the CRC-32 of key and value: a value moved to another key, or
    cut short, fails the check as a flipped byte does."""
    return value + _CRC.pack(zlib.crc32(value, zlib.crc32(key)))


def unseal(path: str, database: str, key: bytes, raw: bytes) -> bytes:
    """The value sealed in `raw`, or CorruptStoreError naming the database and the key when
    its checksum does not match: a damaged value is never decoded, shown or sent."""
    body = raw[:-CHECKSUM_BYTES]
    if len(raw) < CHECKSUM_BYTES or \
            _CRC.unpack_from(raw, len(body))[0] != zlib.crc32(body, zlib.crc32(key)):
        raise CorruptStoreError(
            f"{path}: damaged record in database {database!r}, key {describe_key(database, key)}:"
            f" checksum mismatch (run `crdtim verify --repair`)")
    return body


#: The operating system's failures a person should read first (specs/storage.md §6): LMDB
#: reports them as its call and strerror ("mdb_txn_commit: Input/output error").
_OS_FAILURES = ((errno.ENOSPC, "no space left on device"), (errno.EDQUOT, "disk quota exceeded"),
                (errno.EIO, "I/O error (the disk is failing, or full on a device that reports "
                            "a full disk so)"),
                (errno.EROFS, "read-only file system"),
                (errno.EFBIG, "file too large (over the process's file size limit: ulimit -f, "
                              "RLIMIT_FSIZE)"))


def describe_lmdb_error(e: BaseException) -> str:
    """An LMDB error as one line that starts with what went wrong on the disk, if it was."""
    text = str(e)
    for code, words in _OS_FAILURES:
        if os.strerror(code) in text:
            return f"{words} ({text})"
    return text


def lmdb_failure(path: str, e: BaseException, damaged: bool, doing: str = "") -> StoreError:
    """The error to raise for an LMDB error on the replica at `path` (specs/storage.md §6):
    `damaged` (LMDB's own checks failed on a page: MDB_CORRUPTED, MDB_PAGE_NOTFOUND) is
    CorruptStoreError naming the data file, else StoreError with the disk's failure first."""
    if damaged:
        return CorruptStoreError(f"{path}: {doing}damaged database "
                                 f"({os.path.join(path, 'data.mdb')}): {e}; run `crdtim verify`")
    return StoreError(f"{path}: {doing}{describe_lmdb_error(e)}")


def describe_os_error(e: OSError) -> str:
    """An OSError as one line that starts with what went wrong on the disk, if it was (as
    describe_lmdb_error does for LMDB's); the caller names the path."""
    text = e.strerror or str(e)
    for code, words in _OS_FAILURES:
        if e.errno == code:
            return f"{words} ([Errno {code}] {text})"
    return text


def describe_key(database: str, key: bytes) -> str:
    """A key as a person reads it: a log sequence number, else the text of the key."""
    if database == "log" and len(key) == _U64.size:
        return f"seq {_U64.unpack(key)[0]}"
    return repr(bytes(key).decode("utf-8", "backslashreplace"))
