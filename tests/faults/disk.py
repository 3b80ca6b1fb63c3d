"""Disk faults of the real-process run: a full file system, and a damaged data file.

Disk full: each server's data directory is its own small tmpfs, mounted for the run, and a
round's `disk_full` fault fills it (a filler file written until ENOSPC) and later removes the
filler. Where mounting is not allowed (not root, no CAP_SYS_ADMIN) the fallback is
RLIMIT_FSIZE: the server's and its workload's soft limit is lowered to the data file's
current size (`prlimit` on the running processes), so a write that needs the file to grow
fails with EFBIG; processes started while the disk is "full" are not limited. `Disks.method`
says which one a run used.

Damaged file: `damage_data_file` flips bytes of a stopped replica's data.mdb, either inside
stored values (found by the unique texts its workload wrote, so the bytes are a value's) or
in the header of a page of LMDB's own structure. It never touches the two meta pages (a
damaged newest meta page makes LMDB take the older one: a rolled-back file, another fault).
Nothing here runs crdtim code.
"""

from __future__ import annotations

import errno
import os
import random
import resource
import subprocess
from collections.abc import Sequence

__all__ = ["Disks", "damage_data_file"]

FILLER = ".filler"
PAGE = 4096  # LMDB's page size is the OS page size


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


def damage_data_file(path: str, rng: random.Random, texts: Sequence[str],
                     structure: bool) -> str:
    """Flip bytes of `path`/data.mdb (its replica stopped); returns what was done, in a few
    words. `structure`: one byte of a (non-meta) page's header; else up to 3 stored values,
    each found by one of `texts` (unique texts the replica's writers wrote; the newest copy
    in the file is the likeliest to be live, older ones are in pages LMDB has freed), one
    byte in the middle of the text flipped."""
    file = os.path.join(path, "data.mdb")
    with open(file, "r+b") as f:
        data = f.read()
        pages = len(data) // PAGE
        if structure or not texts:
            page = rng.randrange(2, max(3, pages))
            offset = page * PAGE + rng.randrange(0, 16)  # the page header: number, flags, bounds
            _flip(f, data, offset, rng)
            return f"page header byte at {offset} (page {page})"
        hits = []
        for text in rng.sample(list(texts), min(len(texts), 12)):
            at = data.rfind(text.encode())
            if at >= 2 * PAGE:
                hits.append(at + len(text) // 2)
            if len(hits) == 3:
                break
        if not hits:  # nothing found: a byte in the middle of a random page's contents
            hits = [rng.randrange(2, max(3, pages)) * PAGE + rng.randrange(64, PAGE)]
        for offset in hits:
            _flip(f, data, offset, rng)
        return f"value bytes at {hits}"


def _flip(f, data: bytes, offset: int, rng: random.Random) -> None:
    if offset >= len(data):
        return
    f.seek(offset)
    f.write(bytes([data[offset] ^ rng.randrange(1, 256)]))
