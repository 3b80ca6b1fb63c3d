"""A second process writing to a replica directory, for tests/test_kill9.py and the
multi-process test in tests/test_replica.py. Not a test module itself.

    python tests/replica_child.py writer DIR SEED PREFIX
        Opens DIR with durability="sync" and writes forever (until killed): titles, message
        arrivals and pins, some of them in batches. After each call returns it prints one JSON
        line per write, and one per batch after the batch's writes, then flushes: a printed
        line is a write acknowledged to its caller.

    python tests/replica_child.py serve DIR
        Opens DIR with durability="nosync" and runs JSON commands read from stdin, one per
        line, answering each with one JSON line ({"head": ..., "clock": [...]}) once done.
        {"op": "title", "cid": C, "text": T}   one write
        {"op": "burst", "prefix": P, "n": N}   N titles P0..P{N-1}, as fast as possible
        {"op": "quit"}

The environment variable CRDTIM_TEST_MAP_SIZE, when set, replaces the initial LMDB map size
so that map growth happens (and is met by the other process) during the test.
"""

from __future__ import annotations

import json
import os
import random
import sys

import crdtim.store
from crdtim import Replica

if os.environ.get("CRDTIM_TEST_MAP_SIZE"):
    crdtim.store.INITIAL_MAP_SIZE = int(os.environ["CRDTIM_TEST_MAP_SIZE"])


def say(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def writer(path: str, seed: int, prefix: str) -> None:
    rng = random.Random(seed)
    r = Replica.open(path, durability="sync")
    n = 0
    for _ in range(100_000):  # bounded, should the parent die without killing us
        ops = []
        for _ in range(rng.choice([1, 1, 1, 2, 5])):
            n += 1
            kind = rng.choice(["title", "title", "arrive", "pin"])
            cid = f"{prefix}-{n}"
            if kind == "title":
                ops.append({"op": "title", "cid": cid, "text": f"title {n} " + "x" * rng.randrange(200)})
            elif kind == "arrive":
                ops.append({"op": "arrive", "cid": cid, "seq": rng.randrange(1, 1000),
                            "at": rng.randrange(10**12)})
            else:
                ops.append({"op": "pin", "cid": cid})
        if len(ops) == 1:
            do(r, ops[0])
        else:
            with r.batch():
                for op in ops:
                    do(r, op)
        head = r.head
        lines = [dict(op, head=head) for op in ops]
        if len(ops) > 1:
            lines.append({"op": "batch", "n": len(ops), "head": head})
        # One write call per batch: the lines of a batch reach the parent together.
        sys.stdout.write("".join(json.dumps(line) + "\n" for line in lines))
        sys.stdout.flush()


def do(r: Replica, op: dict) -> None:
    if op["op"] == "title":
        r.set_title(op["cid"], op["text"])
    elif op["op"] == "arrive":
        r.message_arrived(op["cid"], op["seq"], preview="p", at=op["at"])
    elif op["op"] == "pin":
        r.pin(op["cid"])
    else:
        raise ValueError(op)


def serve(path: str) -> None:
    r = Replica.open(path, durability="nosync")
    say({"ready": r.id})
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["op"] == "quit":
            break
        if cmd["op"] == "burst":
            for i in range(cmd["n"]):
                r.set_title(f"{cmd['prefix']}{i}", "y" * 1500)
        else:
            do(r, cmd)
        status = r.status()
        say({"head": status["head"], "clock": status["clock"]})
    r.close()


if __name__ == "__main__":
    mode, path, *rest = sys.argv[1:]
    if mode == "writer":
        writer(path, int(rest[0]), rest[1])
    elif mode == "serve":
        serve(path)
    else:
        sys.exit(f"unknown mode {mode!r}")
