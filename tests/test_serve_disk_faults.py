"""A server beside a full or failing disk (specs/protocol.md §9, "A failing store does not stop
the Node"; specs/storage.md §6): the Node's periodic upkeep meets StoreError and goes on,
logging one line per episode; and the messages that name a full disk or a file size limit.

No disk is filled here: the store's commit is made to raise, and trio's MockClock
(autojump) drives the Node's ticks, so the test takes no real time.
"""

from __future__ import annotations

import logging

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
