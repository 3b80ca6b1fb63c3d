"""Disk faults of the real-process run: a full file system, and a damaged data file.

Disk full: each server's data directory is its own small tmpfs, mounted for the run, and a
round's `disk_full` fault fills it (a filler file written until ENOSPC) and later removes the
filler. Where mounting is not allowed (not root, no CAP_SYS_ADMIN) the fallback is
RLIMIT_FSIZE: the server's and its workload's soft limit is lowered to the data file's
current size (`prlimit` on the running processes), so a write that needs the file to grow
fails with EFBIG; processes started while the disk is "full" are not limited. `Disks.method`
says which one a run used.

Damaged file: `damage_data_file` flips bytes of a stopped replica's data.mdb where live
records are: `live_values` reads a few live values through crdtim, and every copy of each in
the file is damaged (LMDB keeps freed copies beside the live one: damaging one copy at a
guess mostly hit freed pages), either inside the value or in the type flags of the pages
holding it (LMDB's own structure). It never touches the two meta pages (a damaged newest
meta page makes LMDB take the older one: a rolled-back file, another fault). Whether the
live copy was hit is checked on the bytes: the value's intact bytes are nowhere in the file.
"""

from __future__ import annotations

import errno
import os
import random
import resource
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO

from crdtim.replica import Replica

__all__ = ["Damage", "Disks", "damage_data_file", "live_values"]

FILLER = ".filler"
PAGE = 4096  # LMDB's page size is the OS page size
PAGE_FLAGS = 10  # offset of a page header's mp_flags (after mp_pgno u64 and mp_pad u16)
FLAGS_FLIP = 0x06  # P_LEAF (0x02) becomes P_OVERFLOW (0x04): no longer a leaf
LEAF_VALUE_MAX = 1024  # values up to this size are stored in their leaf page


class Disks:
    """The data directories' file systems: `mount` each (tmpfs, else the rlimit fallback),
    `fill` and `release` one, `unmount` them all at the end."""

    def __init__(self, paths: Sequence[str], size_mib: int):
        self.paths = list(paths)
        self.size_mib = size_mib
        self.method = "none"
        self.mounted: list[str] = []
        self.full: dict[int, list[int]] = {}  # server index -> pids limited (rlimit)

    def mount(self) -> str:
        """Mount a tmpfs of `size_mib` on every (empty, existing) data directory; on the
        first refusal undo them and use the rlimit fallback. Returns the method."""
        for path in self.paths:
            os.makedirs(path, exist_ok=True)
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mib}m",
                                   "tmpfs", path], capture_output=True, check=False)
            if done.returncode != 0:
                self.unmount()
                self.method = "rlimit"
                return self.method
            self.mounted.append(path)
        self.method = "tmpfs"
        return self.method

    def unmount(self) -> None:
        for path in self.mounted:
            subprocess.run(["umount", "-l", path], capture_output=True, check=False)
        self.mounted = []

    def fill(self, index: int, pids: Sequence[int]) -> int:
        """Make server `index`'s directory full; returns the bytes the filler took (tmpfs)
        or the size the files were limited to (rlimit)."""
        path = self.paths[index]
        if self.method == "tmpfs":
            written = 0
            with open(os.path.join(path, FILLER), "wb", buffering=0) as f:
                for chunk in (1 << 20, PAGE):
                    block = bytes(chunk)
                    while True:
                        try:
                            written += f.write(block) or 0
                        except OSError as e:
                            if e.errno != errno.ENOSPC:
                                raise
                            break
            self.full[index] = []
            return written
        size = os.path.getsize(os.path.join(path, "data.mdb"))
        limited = []
        for pid in pids:
            try:
                _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (size, hard))
                limited.append(pid)
            except (ProcessLookupError, PermissionError):
                pass
        self.full[index] = limited
        return size

    def release(self, index: int) -> None:
        """Space comes back."""
        pids = self.full.pop(index, None)
        if pids is None:
            return
        if self.method == "tmpfs":
            os.unlink(os.path.join(self.paths[index], FILLER))
            return
        for pid in pids:
            try:
                _, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (hard, hard))
            except (ProcessLookupError, PermissionError):
                pass

    def release_all(self) -> None:
        for index in list(self.full):
            self.release(index)


@dataclass(frozen=True, slots=True)
class Damage:
    """What `damage_data_file` did: `kind` ("value" or "structure"), `offsets` flipped,
    `live`: every copy of a live record's value was damaged, so its live copy is (value
    damage: the value's intact bytes are nowhere in the file any more; structure damage:
    every page holding a copy lost its type)."""

    kind: str
    offsets: tuple[int, ...]
    live: bool
    values: int = 0  # live values aimed at
    copies: int = 0  # their copies found in the file

    def describe(self) -> str:
        return (f"{self.kind} damage at {len(self.offsets)} offset(s) "
                f"{list(self.offsets[:6])}{'...' if len(self.offsets) > 6 else ''} "
                f"({self.copies} copies of {self.values} live value(s)); "
                f"live data {'hit' if self.live else 'NOT hit'}")


def live_values(path: str, rng: random.Random, n: int = 3) -> list[bytes]:
    """Up to `n` values of live records of the (stopped) replica at `path`, as stored: its
    conversation states and message records, read through crdtim in this process. Long
    enough to be found in data.mdb by their bytes (sealed: they end in a checksum), and
    small enough to sit in a leaf page (a value over half a page goes to overflow pages)."""
    with Replica.open(path, create=False) as r:
        records = r.store.read(lambda t: [v for db in ("convs", "messages")
                                          for _, v in t.raw_records(db)])
    fit = [v for v in records if 24 <= len(v) <= LEAF_VALUE_MAX]
    return rng.sample(fit, min(n, len(fit)))


def damage_data_file(path: str, rng: random.Random, values: Sequence[bytes],
                     structure: bool) -> Damage:
    """Flip bytes of `path`/data.mdb (its replica stopped) where live records are, in every
    copy of each of `values` (live values: `live_values`), since LMDB keeps freed copies
    beside the live one and only the live one matters.

    Value damage: one byte in the middle of each copy of each value (a stored value's
    checksum must catch it: specs/storage.md §2). Structure damage: the page-type flags of
    every page holding a copy of the first value (a leaf read as an overflow page: LMDB's
    own check, MDB_CORRUPTED, must catch it). Never the two meta pages (a damaged newest
    meta page makes LMDB take the older one: a rolled-back file, another fault)."""
    file = os.path.join(path, "data.mdb")
    with open(file, "r+b") as f:
        data = f.read()
        chosen = list(values[:1] if structure else values)
        copies = {v: [at for at in _occurrences(data, v) if at >= 2 * PAGE] for v in chosen}
        if structure:
            offsets = sorted({at // PAGE * PAGE + PAGE_FLAGS for at in copies[chosen[0]]}
                             ) if chosen else []
            for offset in offsets:
                _write_byte(f, offset, data[offset] ^ FLAGS_FLIP)
        else:
            offsets = sorted(at + len(v) // 2 for v, ats in copies.items() for at in ats)
            for offset in offsets:
                _write_byte(f, offset, data[offset] ^ rng.randrange(1, 256))
        if not offsets:  # no live value found (an empty replica): a random page's contents
            offsets = [rng.randrange(2, max(3, len(data) // PAGE)) * PAGE
                       + rng.randrange(64, PAGE)]
            _write_byte(f, offsets[0], data[offsets[0]] ^ rng.randrange(1, 256))
        f.flush()
        f.seek(0)
        after = f.read()
    if structure:  # every page holding a copy, the live one among them, lost its type
        live = bool(chosen and copies[chosen[0]]) and all(
            after[o] != data[o] for o in offsets)
    else:
        live = any(copies[v] and after.find(v) < 0 for v in chosen)
    return Damage("structure" if structure else "value", tuple(offsets), live, len(chosen),
                  sum(len(ats) for ats in copies.values()))


def _occurrences(data: bytes, value: bytes) -> list[int]:
    found, at = [], data.find(value)
    while at >= 0:
        found.append(at)
        at = data.find(value, at + 1)
    return found


def _write_byte(f: BinaryIO, offset: int, value: int) -> None:
    f.seek(offset)
    f.write(bytes([value]))
