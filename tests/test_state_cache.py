"""The cache of decoded conversation states (crdtim/replica/_state_cache.py) never serves a
state older than the last commit of any process: it is used only when the stored bytes are
exactly the ones it decoded or wrote, so another process's write and an aborted write of
this process are both read from the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import crdtim.store
from crdtim import Replica
from crdtim.replica._state_cache import StateCache

HERE = Path(__file__).resolve().parent


def test_an_aborted_write_leaves_no_cached_state_behind(tmp_path, monkeypatch):
    r = Replica.open(tmp_path / "r", durability="nosync")
    r.set_title("c", "one")

    def fail(*args, **kwargs):
        raise RuntimeError("the disk went away")

    # The new state is encoded, stored and remembered; then the transaction aborts.
    with monkeypatch.context() as m:
        m.setattr(crdtim.store.Txn, "append_log", fail)
        with pytest.raises(RuntimeError):
            r.set_title("c", "two")
    assert r.get("c").title == "one"
    r.pin("c")  # a write loads the state: the stored one, not the aborted one
    assert r.get("c").title == "one" and r.get("c").pinned
    r.close()
    with Replica.open(tmp_path / "r") as again:
        assert again.get("c").title == "one" and again.get("c").pinned


def test_a_write_after_another_process_wrote_joins_into_that_process_state(tmp_path):
    path = tmp_path / "r"
    r = Replica.open(path, durability="nosync")
    r.set_title("c", "first")
    r.set_title("c", "parent")  # loaded, then encoded and cached here
    env = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen([sys.executable, str(HERE / "replica_child.py"), "serve", str(path)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert json.loads(child.stdout.readline())["ready"] == r.id
        for cmd in ({"op": "title", "cid": "c", "text": "child"}, {"op": "quit"}):
            child.stdin.write(json.dumps(cmd) + "\n")
            child.stdin.flush()
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    r.pin("c")  # joined into the child's state, not into the one this process cached
    assert r.get("c").title == "child" and r.get("c").pinned
    r.close()


def test_the_cache_is_bounded_and_starts_again_empty_when_full():
    cache = StateCache(limit=2)
    cache.put("a", b"A", {})
    cache.put("b", b"B", {})
    assert cache.get("a", b"A") == {} and cache.get("b", b"B") == {}
    assert cache.get("a", b"other bytes") is None
    cache.put("c", b"C", {})
    assert cache.get("c", b"C") == {}
    assert cache.get("a", b"A") is None and cache.get("b", b"B") is None


def test_the_cache_holds_a_bounded_number_of_bytes():
    # Found by test_damage's map growth under a tight address-space limit: states with
    # 10,000-character titles, each remembered, used the memory the map needed.
    from crdtim.replica._state_cache import MAX_CACHED_BYTES, MAX_CACHED_VALUE
    cache = StateCache(limit=10**6)
    cache.put("big", b"x" * (MAX_CACHED_VALUE + 1), {})
    assert cache.get("big", b"x" * (MAX_CACHED_VALUE + 1)) is None
    for i in range(2 * MAX_CACHED_BYTES // MAX_CACHED_VALUE):
        cache.put(f"c{i}", bytes([i % 256]) * MAX_CACHED_VALUE, {})
    assert cache._bytes <= MAX_CACHED_BYTES
    assert cache.get("c0", bytes([0]) * MAX_CACHED_VALUE) is None  # dropped when it filled
