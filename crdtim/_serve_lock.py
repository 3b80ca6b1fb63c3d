"""The serve lock: one `crdtim serve` per data directory (specs/storage.md §1, `serve.lock`).

Two servers on one directory share one replica id, so each peer sees two connections from
the same replica and keeps dropping one of them ("duplicate connection"), forever. The
first server holds an exclusive `fcntl.flock` on `serve.lock` in the data directory for as
long as it runs, and writes its pid there; a second one is refused, naming the directory and
that pid. The lock is advisory and taken only by `serve`: one-shot commands (the CLI's writes
beside a running server) never look at it, and LMDB's own lock keeps their writes safe. The
kernel drops the lock when the process ends, however it ends, so a stale file never blocks.
No replica, LMDB or network logic here.
"""

from __future__ import annotations

import fcntl
import os
from types import TracebackType

from ._records import describe_os_error
from .errors import CrdtimError, StoreError

__all__ = ["SERVE_LOCK_FILE", "ServeLock", "ServeLockedError"]

SERVE_LOCK_FILE = "serve.lock"


class ServeLockedError(CrdtimError):
    """Another process holds the directory's serve lock; `pid` is its pid, if it wrote one."""

    def __init__(self, directory: str, pid: int | None):
        held = f"process {pid}" if pid is not None else "another process"
        super().__init__(f"{directory} is already being served by {held} "
                         f"(it holds {os.path.join(directory, SERVE_LOCK_FILE)}): one "
                         "`crdtim serve` per data directory")
        self.directory = directory
        self.pid = pid


class ServeLock:
    """`with ServeLock(directory):` holds the serve lock, or raises ServeLockedError."""

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, SERVE_LOCK_FILE)
        self._fd: int | None = None

    def __enter__(self) -> ServeLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise self._failed(e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            raise ServeLockedError(self.directory, pid) from None
        except BaseException:
            os.close(fd)
            raise
        # Ours now: record who holds it, for the refusal the next server prints.
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:  # a full disk (ENOSPC), a file size limit (EFBIG), ...
            os.close(fd)
            raise self._failed(e) from None
        self._fd = fd
        return self

    def _failed(self, e: OSError) -> StoreError:
        """An OSError met taking the lock, as the store names its failures: the file, what
        it was doing, and the disk's failure first (specs/storage.md §6)."""
        return StoreError(f"{self.path}: cannot take the serve lock: {describe_os_error(e)}")

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._fd is not None:
            # The file stays (removing it would race with a server starting meanwhile):
            # closing the descriptor releases the lock.
            os.close(self._fd)
            self._fd = None


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None
