"""The replica's data file checked with plain file I/O, before LMDB maps it
(specs/storage.md §8, step 7): a file LMDB would map past its end (SIGBUS on the first read),
or whose meta pages it could not make sense of, is refused with a message naming the file.

Reads two pages; never imports lmdb, never writes.
"""

from __future__ import annotations

import os
import stat
import struct

from .errors import CorruptStoreError

__all__ = ["check_data_file", "check_regular_file"]

#: LMDB's page header: mp_pgno (u64), mp_pad (u16), mp_flags (u16), mp_lower/mp_upper (u32).
_PAGE_HEADER = struct.Struct("<QHHI")
#: MDB_meta after the page header: magic, version, address, mapsize; two MDB_db records
#: (free and main: pad -- the page size in meta 0 --, flags, depth, branch, leaf and overflow
#: pages, entries, root); last_pgno; txnid. Native byte order: little-endian on the x86-64
#: and arm64 machines LMDB files are made on (a file is not portable across byte orders).
_META = struct.Struct("<IIQQ" + "IHHQQQQQ" * 2 + "QQ")
_META_MAGIC = 0xBEEFC0DE
_META_VERSION = 1
_P_META = 0x08
_P_INVALID = 2**64 - 1
_MIN_PAGE, _MAX_PAGE = 512, 65536


def check_regular_file(data: str) -> None:
    """A FIFO, a device or a directory named data.mdb is refused before anything opens it
    (opening a FIFO blocks; /dev/zero maps as endless zeros)."""
    try:
        mode = os.stat(data).st_mode
    except OSError as e:
        raise CorruptStoreError(f"{data}: cannot be read: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        raise CorruptStoreError(f"{data}: is not a regular file; the replica is damaged")


def _meta_page(buf: bytes) -> tuple[int, int, int, int, int] | None:
    """(txnid, last_pgno, page size, free root, main root) of one meta page, None if it is
    not a valid one."""
    if len(buf) < _PAGE_HEADER.size + _META.size:
        return None
    flags = _PAGE_HEADER.unpack_from(buf)[2]
    m = _META.unpack_from(buf, _PAGE_HEADER.size)
    if not flags & _P_META or m[0] != _META_MAGIC or m[1] != _META_VERSION:
        return None
    psize, free_root, main_root, last_pgno, txnid = m[4], m[11], m[19], m[20], m[21]
    return txnid, last_pgno, psize, free_root, main_root


def check_data_file(data: str, retries: int = 1) -> None:
    """Refuse, with CorruptStoreError naming the file, a data.mdb that LMDB would map past
    its end (a truncated file: SIGBUS on the first read) or could not make sense of: the
    checks on the two meta pages that cost two reads (specs/storage.md §8, step 7a).

    With a writer in another process a meta page may be read while it is being written:
    a failed check is read again, `retries` times in all, before it is believed.
    """
    check_regular_file(data)
    for attempt in range(retries):
        try:
            _check_meta_pages(data)
            return
        except CorruptStoreError:
            if attempt + 1 == retries:
                raise


def _check_meta_pages(data: str) -> None:
    try:
        with open(data, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            first = f.read(_MAX_PAGE)
    except OSError as e:
        raise CorruptStoreError(f"{data}: cannot be read: {e.strerror or e}") from None
    meta0 = _meta_page(first)
    # Meta 0 records the page size; without it, assume the usual one to look at meta 1.
    psize = meta0[2] if meta0 is not None and _MIN_PAGE <= meta0[2] <= _MAX_PAGE else 4096
    if meta0 is not None and psize != meta0[2]:
        meta0 = None
    if size < 2 * psize:
        raise CorruptStoreError(
            f"{data}: damaged: {size} bytes, shorter than LMDB's two meta pages "
            f"({2 * psize} bytes); the file was truncated")
    try:
        with open(data, "rb") as f:
            f.seek(psize)
            meta1 = _meta_page(f.read(_PAGE_HEADER.size + _META.size))
    except OSError as e:
        raise CorruptStoreError(f"{data}: cannot be read: {e.strerror or e}") from None
    valid = [m for m in (meta0, meta1) if m is not None]
    if not valid:
        raise CorruptStoreError(f"{data}: damaged: neither of LMDB's two meta pages is valid")
    txnid, last_pgno, _, free_root, main_root = max(valid)
    if last_pgno < 1 or any(r != _P_INVALID and not 1 < r <= last_pgno
                            for r in (free_root, main_root)):
        raise CorruptStoreError(
            f"{data}: damaged: the meta page of transaction {txnid} is inconsistent "
            f"(last page {last_pgno}, roots {free_root} and {main_root})")
    if size < (last_pgno + 1) * psize:
        raise CorruptStoreError(
            f"{data}: damaged: {size} bytes, but its pages run to "
            f"{(last_pgno + 1) * psize} ({last_pgno + 1} pages of {psize}); the file was "
            f"truncated")
