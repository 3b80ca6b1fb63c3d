"""A server beside a full or failing disk (specs/protocol.md §9, "A failing store does not stop
the Node"; specs/storage.md §6): the Node's periodic upkeep meets StoreError and goes on,
logging one line per episode; and the messages that name a full disk or a file size limit.

No disk is filled here: the store's commit is made to raise, and trio's MockClock
(autojump) drives the Node's ticks, so the test takes no real time.
"""

from __future__ import annotations

import logging

import pytest
import trio
import trio.testing

from crdtim.errors import StoreError
from crdtim.net import Node, NodeConfig

DISK_FULL = "write failed: no space left on device (mdb_txn_commit: No space left on device)"


def _commit_fails_while(replica, monkeypatch, full: list[bool]) -> None:
    """The replica's store refuses every write transaction while `full[0]` holds, as LMDB's
    commit does on a full disk (nothing committed)."""
    store = replica.store
    real_write = store.write

    def write(fn):
        if full[0]:
            raise StoreError(f"{store.path}: {DISK_FULL}")
        return real_write(fn)
    monkeypatch.setattr(store, "write", write)


def _lines(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "crdtim.net" and text in r.getMessage()]


async def test_housekeeping_on_a_full_disk_does_not_end_the_node(
        open_replica, monkeypatch, caplog, autojump_clock):
    # Regression: Node._watch_log let housekeeping()'s StoreError (trim_log's commit on a
    # full disk) end the task, and with it `crdtim serve`.
    caplog.set_level(logging.INFO, logger="crdtim.net")
    a = open_replica("a")
    a.set_title("c", "before")
    a.record_ack("peer-b", a.head)  # noted in memory; written by the housekeeping's trim
    trim_interval = 1.0
    full = [True]
    _commit_fails_while(a, monkeypatch, full)
    config = NodeConfig(poll_interval=0.1, trim_interval=trim_interval)
    async with Node(a, config=config) as node:
        await trio.sleep(30)  # 30 ticks of housekeeping, every one failing
        failed = _lines(caplog, "housekeeping")
        assert len(failed) == 1, failed  # one line for the episode, not one per tick
        assert "no space left on device" in failed[0] and a.path in failed[0]
        assert node.status_snapshot == {}  # no housekeeping has worked yet
        assert a.get("c").title == "before"  # reads go on meanwhile
        assert a.store.read(lambda t: t.ack("peer-b")) is None  # not written...
        assert a.peer_ack("peer-b") == a.head  # ...but still noted, for the retry
        full[0] = False  # space comes back
        await trio.sleep(2 * trim_interval)
        again = _lines(caplog, "works again")
        assert len(again) == 1 and "failed attempt(s)" in again[0], again
        assert node.status_snapshot["head"] == a.head
        assert a.store.read(lambda t: t.ack("peer-b")) == a.head  # the retry wrote it
        full[0] = True  # a second episode is logged again, once
        await trio.sleep(10)
        assert len(_lines(caplog, "housekeeping (")) == 3  # failed, works again, failed
    assert len(_lines(caplog, "failed: ")) == 2


async def test_polling_for_other_processes_writes_survives_a_failing_read(
        open_replica, monkeypatch, caplog, autojump_clock):
    caplog.set_level(logging.INFO, logger="crdtim.net")
    a = open_replica("a")
    calls = []
    real = type(a).deliver_other_processes_changes

    def deliver(self):
        calls.append(1)
        if len(calls) <= 5:
            raise StoreError(f"{a.path}: mdb_get: Input/output error")
        return real(self)
    async with Node(a, config=NodeConfig(poll_interval=0.1)) as node:
        monkeypatch.setattr(type(a), "deliver_other_processes_changes", deliver)
        node._known_head = -1  # as if another process had written
        await trio.sleep(5)
    assert len(calls) == 6  # tried again at each tick until it worked, then not again
    assert len(_lines(caplog, "other processes' writes failed")) == 1
    assert len(_lines(caplog, "other processes' writes works again")) == 1


# -- what a full disk and a file size limit are called ---------------------------------------


def test_a_full_disk_taking_the_serve_lock_names_the_file_and_the_cause(tmp_path, monkeypatch):
    # Regression: ENOSPC writing the pid into serve.lock reached the user as a bare
    # "[Errno 28] No space left on device", naming no file.
    import errno
    import os

    from crdtim import _serve_lock, cli

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(_serve_lock.os, "pwrite", full)
    with pytest.raises(StoreError) as caught:
        with _serve_lock.ServeLock(str(tmp_path)):
            pass
    lock = os.path.join(str(tmp_path), "serve.lock")
    assert str(caught.value).startswith(f"{lock}: cannot take the serve lock: no space left "
                                        f"on device ([Errno 28] ")
    assert _lock_is_free(lock)  # the descriptor was closed: nothing held
    data = str(tmp_path / "r")
    assert cli.main(["--data", data, "init"]) == 0
    assert cli.main(["--data", data, "serve", "--listen", "127.0.0.1:0"]) == 1


def _lock_is_free(path: str) -> bool:
    import fcntl
    import os
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


_FILE_SIZE_LIMIT_CHILD = r"""
import os, resource, sys
from crdtim import Replica
from crdtim.errors import StoreError
with Replica.open(sys.argv[1]) as r:
    size = os.path.getsize(os.path.join(sys.argv[1], "data.mdb"))
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))
    try:
        with r.batch():
            for i in range(2000):
                r.set_title(f"c{i}", "x" * 1000)
    except StoreError as e:
        print(e)
    else:
        print("no error")
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY,) * 2)
"""


def test_a_file_size_limit_is_named_file_too_large_first(tmp_path):
    # Regression: EFBIG (RLIMIT_FSIZE, `ulimit -f`) was reported as LMDB's bare
    # "mdb_txn_commit: File too large", not named first like ENOSPC (specs/storage.md §6).
    import subprocess
    import sys
    path = str(tmp_path / "r")
    done = subprocess.run([sys.executable, "-c", _FILE_SIZE_LIMIT_CHILD, path],
                          capture_output=True, text=True, check=True, timeout=60)
    message = done.stdout.strip()
    assert message.startswith(f"{path}: write failed: file too large (over the process's "
                              f"file size limit"), message
    assert "File too large" in message  # LMDB's own words follow, in brackets


# -- a damaged page of LMDB's own structure ---------------------------------------------------


# faults.md §4: a page whose type flags were damaged must be caught by LMDB's own checks.
def test_a_page_of_the_wrong_type_is_a_corrupt_store_error_and_a_verify_problem(tmp_path, capsys):
    # Regression (a CI run of the short real fault run): LMDB's "mdb_cursor_get:
    # MDB_CORRUPTED: Located page was wrong type" reached callers as a plain StoreError
    # naming no file, and `crdtim verify` died of it ("verify failed: ...") instead of
    # reporting the damage, so the operator's flow (verify, then repair or replace) broke.
    import random

    from crdtim import cli, maintenance
    from crdtim.errors import CorruptStoreError
    from crdtim.replica import Replica
    from tests.faults.disk import damage_data_file, live_values

    path = str(tmp_path / "r")
    with Replica.open(path) as r:  # a few conversations: one leaf page, the root of `convs`
        for i in range(3):
            r.set_title(f"c{i}", f"title {i}")
    damage = damage_data_file(path, random.Random(1), live_values(path, random.Random(1)),
                              structure=True)
    assert damage.live
    data = f"{path}/data.mdb"
    with Replica.open(path, create=False) as r:
        with pytest.raises(CorruptStoreError) as caught:
            r.get("c1")
    assert f"damaged database ({data}): " in str(caught.value)
    assert "MDB_CORRUPTED" in str(caught.value)
    for repair in (False, True):  # reported, not raised; and not repairable by the walk
        found = maintenance.verify(path, repair=repair)
        assert not found.ok and found.crashed is None and found.repaired is None
        assert found.problems[0].database == "data.mdb"
        assert "page structure is damaged" in found.problems[0].problem
    capsys.readouterr()
    assert cli.main(["--data", path, "show", "c1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("crdtim: error: ") and data in err
