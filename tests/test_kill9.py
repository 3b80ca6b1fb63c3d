"""kill -9 at any instant loses no acknowledged write (specs/storage.md §3 and §5).

A child process (tests/replica_child.py, mode `writer`) opens a replica with durability="sync"
and writes in a loop -- titles, message arrivals, pins, some in batches -- printing a line for
each write only after the call returned. The parent counts those lines and SIGKILLs the child
after a seeded random number of them, mid-write more often than not. After every kill the
directory must open cleanly, and every write the child printed (including lines still in the
pipe when it died) must be there. Fifteen rounds on one directory, so later rounds also
reopen what earlier kills left. No sleeps: the kill moment is chosen by line count.

The same for a streamed reply (mode `streamer`): a chat whose assistant replies grow by
appends, one fsync'd commit each, killed mid-stream again and again; each restarted child
finishes the reply the last one left. Every acknowledged append must be in the reply's text,
in order, and the text must be exactly chunks 0..k-1 (no torn or partial append), and the
history index must agree with the records.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

from crdtim import Replica, codec
from crdtim.crdt import visible_path
from crdtim.replica._message_index import MessageIndex

sys.path.insert(0, str(Path(__file__).resolve().parent))
from replica_child import STREAM_CID, chunk, target_chunks  # noqa: E402

HERE = Path(__file__).resolve().parent
ROUNDS = 15
SEED = 20240607


def run_until_killed(path: Path, round_no: int, kill_after: int,
                     mode: str = "writer", clock_offset_ms: int = 0) -> list[dict]:
    """Start a child, SIGKILL it after `kill_after` acknowledged lines; all lines it printed."""
    env = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               CRDTIM_CLOCK_OFFSET_MS=str(clock_offset_ms))
    args = [str(SEED + round_no)] + ([f"r{round_no}"] if mode == "writer" else [])
    child = subprocess.Popen(
        [sys.executable, str(HERE / "replica_child.py"), mode, str(path), *args],
        stdout=subprocess.PIPE, env=env,
    )
    lines: list[bytes] = []
    try:
        while len(lines) < kill_after:
            line = child.stdout.readline()
            assert line, f"the writer exited early with status {child.wait()}"
            lines.append(line)
        os.kill(child.pid, signal.SIGKILL)
        # Lines printed before the kill are acknowledged writes too; a line cut short by the
        # kill (no newline) is not.
        lines += child.stdout.read().splitlines(keepends=True)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    return [json.loads(line) for line in lines if line.endswith(b"\n")]


def check_acknowledged(r: Replica, acked: list[dict]) -> None:
    for w in acked:
        if w["op"] == "batch":
            continue
        conv = r.get(w["cid"])
        assert conv is not None, f"acknowledged write lost: {w}"
        if w["op"] == "title":
            assert conv.title == w["text"]  # every write uses a fresh conversation id
        elif w["op"] == "arrive":
            assert conv.last_seq == w["seq"] and conv.last_at == w["at"]
        else:
            assert conv.pinned


def test_kill_9_loses_no_acknowledged_write(tmp_path):
    rng = random.Random(SEED)
    path = tmp_path / "replica"
    acked_so_far: list[dict] = []
    replica_id = None
    for round_no in range(ROUNDS):
        acked = run_until_killed(path, round_no, kill_after=rng.randint(1, 40))
        assert acked
        batch_lines = [w for w in acked if w["op"] == "batch"]
        for b in batch_lines:  # a batch is acknowledged with its writes, one log entry
            assert sum(1 for w in acked if w.get("head") == b["head"] and w["op"] != "batch") == b["n"]
        acked_so_far += acked
        with Replica.open(path, durability="sync") as r:
            replica_id = replica_id or r.id
            assert r.id == replica_id  # the same replica, not a new one
            check_acknowledged(r, acked_so_far)
            # One log entry per acknowledged call (a single write or a batch), each with its
            # own head; at most one more per kill, committed but not yet printed.
            heads = {w["head"] for w in acked_so_far}
            assert r.head >= max(heads)
            assert r.head - len(heads) <= round_no + 1
            assert len(list(r)) == len(r)  # the ordering index agrees with the states


def test_kill_9_never_sets_the_clock_back(tmp_path):
    # The clock lives in memory and meta.clock is only a lease on it (specs/storage.md §3a).
    # Each restarted writer's wall clock is a minute behind the killed one's, so only the
    # lease keeps its stamps above those already made: every title stamp in the log, in log
    # order, across all the kills, must rise.
    rng = random.Random(SEED + 2)
    path = tmp_path / "replica"
    for round_no in range(10):
        acked = run_until_killed(path, round_no, kill_after=rng.randint(1, 40),
                                 clock_offset_ms=-60_000 * round_no)
        assert acked
    with Replica.open(path, durability="sync") as r:
        entries = r.store.read(lambda t: list(t.log_entries(0)))
    stamps = [fields["title"].stamp[:2]
              for _, _, payload in entries
              for fields in codec.decode_map(payload).convs.values() if "title" in fields]
    assert len(stamps) > 20
    assert stamps == sorted(set(stamps))


def whole_history(r: Replica, cid: str) -> list[str]:
    """Every visible id, oldest first, through the pages."""
    ids, cursor = [], None
    while True:
        page = r.history(cid, limit=7, cursor=cursor)
        ids += [m.id for m in page.items]
        if not page.has_more:
            return ids[::-1]
        cursor = page.cursor


def check_stream(r: Replica, acked: list[dict]) -> None:
    posts = [w for w in acked if w["op"] == "post"]
    appended: dict[str, int] = {}
    for w in acked:
        if w["op"] == "append":
            assert w["n"] > appended.get(w["mid"], -1)  # the child streams in order
            appended[w["mid"]] = w["n"]
    for w in posts:
        m = r.message(STREAM_CID, w["mid"])
        assert m is not None, f"acknowledged post lost: {w}"
        assert (m.role, m.parent) == (w["role"], w["parent"])
        if w["role"] == "user":
            continue
        k = m.text.count("|")
        # Exactly chunks 0..k-1: an append is in the text whole or not at all, in order.
        assert m.text == "".join(chunk(m.id, n) for n in range(k)), f"torn text in {m.id}"
        assert appended.get(m.id, -1) < k <= target_chunks(m.id), (m.id, k, appended.get(m.id))
    # The index agrees with the records: pages show the visible path of the stored history,
    # which is the chain of every acknowledged post.
    stored = r.store.read(lambda t: MessageIndex(t, STREAM_CID).state())
    shown = whole_history(r, STREAM_CID)
    assert shown == visible_path(stored)
    assert [w["mid"] for w in posts] == shown[:len(posts)]
    for a, b in zip(shown, shown[1:]):
        assert r.message(STREAM_CID, b).parent == a


def test_kill_9_during_a_streamed_reply_keeps_every_acknowledged_append(tmp_path):
    rng = random.Random(SEED + 1)
    path = tmp_path / "replica"
    acked_so_far: list[dict] = []
    for round_no in range(10):
        acked = run_until_killed(path, round_no, rng.randint(1, 70), mode="streamer")
        assert acked
        acked_so_far += acked
        with Replica.open(path, durability="sync") as r:
            check_stream(r, acked_so_far)
    assert sum(w["op"] == "append" for w in acked_so_far) > 100
    assert sum(w["op"] == "post" for w in acked_so_far) >= 4
