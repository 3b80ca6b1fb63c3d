"""Workload child process: writes to one server's data directory and reports what was acked.

Run by cluster.py as `python -m tests.faults.workload --data DIR --seed N --name NAME`, in
the environment of its server (same CRDTIM_CLOCK_OFFSET_MS), beside the running server
(other processes may write to a directory `serve` uses: specs/storage.md §7). Each operation
(ops.draw: the mix the simulation uses) goes to stdout as a `{"calling": intent}` line
*before* its call is made, and as one `checker.AckedOp` line once the call has returned --
only then is it acknowledged. The harness may kill -9 this process at any moment: an intent
with no acknowledgement after it is a call that may or may not have taken effect. A call the
replica refuses with `StoreError` (the disk is full: specs/storage.md §6) is reported as a
`{"refused": intent, "error": message}` line: not acknowledged, and it must have committed
nothing; the workload carries on with its next operation.
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

from crdtim.replica import Replica, clock_offset_ms

from . import ops

CIDS = tuple(f"c{i}" for i in range(6))
MESSAGE_SHARE = 0.4  # of the operations, those on message histories (ops._message_op)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.faults.workload")
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
    offset_ms = clock_offset_ms()
    with Replica.open(args.data, create=False) as r:
        while not stopped.is_set():
            running.wait()
            if stopped.is_set():
                break
            with idle:
                if not running.is_set():
                    continue
                n += 1
                now_ms = time.time_ns() // 1_000_000 + offset_ms
                intent = ops.readable(r, ops.draw(rng, CIDS, f"{args.name}-{n}", 10_000, now_ms,
                                                  r, MESSAGE_SHARE))
                emit({"calling": intent.to_json()})  # before the call: it may die in it
                try:
                    acked = ops.perform(r, intent, exclusive=False)
                except ops.Refused as e:  # nothing committed: not acknowledged
                    emit({"refused": intent.to_json(), "error": str(e)})
                else:
                    emit(acked.to_json())
            time.sleep(rng.uniform(0, 2 * args.interval))
    emit({"done": True})
    return 0


if __name__ == "__main__":
    sys.exit(main())
