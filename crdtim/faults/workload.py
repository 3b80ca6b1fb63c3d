"""Workload child process: writes to one server's data directory and reports what was acked.

Run by cluster.py as `python -m crdtim.faults.workload --data DIR --seed N --name NAME`, in
the environment of its server (same CRDTIM_CLOCK_OFFSET_MS), beside the running server
(other processes may write to a directory `serve` uses: specs/storage.md §7). Each operation
is a call of the Replica API; when it returns, the operation is acknowledged, and its log
entry -- exactly what it changed -- goes to stdout as one JSON line (checker.AckedOp).
Commands on stdin, one per line: `pause` (answered by a `{"paused": true}` line once no
operation is in progress), `resume`, `stop` (also EOF).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time

from ..replica import Replica
from .checker import AckedOp

CIDS = tuple(f"c{i}" for i in range(6))
FLAGS = ("pinned", "muted")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m crdtim.faults.workload")
    p.add_argument("--data", required=True)
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--interval", type=float, default=0.03, help="seconds between operations")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    running = threading.Event()
    running.set()
    stopped = threading.Event()
    out_lock = threading.Lock()
    idle = threading.Lock()  # held while an operation is in progress

    def emit(obj: dict) -> None:
        with out_lock:
            sys.stdout.write(json.dumps(obj) + "\n")
            sys.stdout.flush()

    def commands() -> None:
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "pause":
                running.clear()
                with idle:  # the operation in progress, if any, has returned and been written
                    emit({"paused": True})
            elif cmd == "resume":
                running.set()
            elif cmd == "stop":
                break
        stopped.set()
        running.set()

    threading.Thread(target=commands, daemon=True).start()
    n = 0
    with Replica.open(args.data, create=False) as r:
        while not stopped.is_set():
            running.wait()
            if stopped.is_set():
                break
            with idle:
                if not running.is_set():
                    continue
                n += 1
                op = _one_op(r, rng, f"{args.name}-{n}")
                if op is not None:
                    emit(op)
            time.sleep(rng.uniform(0, 2 * args.interval))
    emit({"done": True})
    return 0


def _one_op(r: Replica, rng: random.Random, text: str) -> dict | None:
    cid = rng.choice(CIDS)
    kind = rng.choice(["title", "enable", "disable", "arrive", "read"])
    before = r.head
    if kind == "title":
        r.set_title(cid, text)
    elif kind == "enable":
        r.enable(cid, rng.choice(FLAGS))
    elif kind == "disable":
        r.disable(cid, rng.choice(FLAGS))
    elif kind == "arrive":
        r.message_arrived(cid, rng.randint(1, 10_000), text)
    else:
        r.mark_read(cid, rng.randint(0, 10_000))
    # Acknowledged. The server may have logged remote deltas meanwhile: ours is the entry
    # after `before` whose origin is this replica (only this process writes locally here).
    own = r.store.read(lambda t: [p for _, origin, p in t.log_entries(before) if origin == r.id])
    if not own:
        # Changed nothing (a disable of an unset flag, a lower read marker), or -- only if
        # the log was trimmed past `before` meanwhile -- maybe already dropped: say so.
        return {"unrecorded": kind} if r.log_floor > before else None
    return AckedOp(r.id, kind, cid, r._decode_log(own[0])).to_json()


if __name__ == "__main__":
    sys.exit(main())
