"""A second process writing to a replica directory, for tests/test_kill9.py and the
multi-process test in tests/test_replica.py. Not a test module itself.

    python tests/replica_child.py writer DIR SEED PREFIX
        Opens DIR with durability="sync" and writes forever (until killed): titles, message
        arrivals and pins, some of them in batches. After each call returns it prints one JSON
        line per write, and one per batch after the batch's writes, then flushes: a printed
        line is a write acknowledged to its caller.

    python tests/replica_child.py streamer DIR SEED
        Opens DIR with durability="sync" and plays a chat in conversation "chat" forever:
        a user message, then an assistant reply streamed as appends (chunk(mid, 0), chunk(mid,
        1), ...) until the reply holds target_chunks(mid) chunks, then the next user message.
        A restarted streamer first finishes the reply it finds unfinished at the end of the
        history. After each call returns it prints one JSON line: {"op": "post", "mid", "role",
        "parent"} or {"op": "append", "mid", "n"} (the reply now holds chunks 0..n).

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


STREAM_CID = "chat"


def chunk(mid: str, n: int) -> str:
    """The n-th streamed piece of reply `mid`: self-delimiting, so a torn or reordered text
    shows; some pieces are long, so an append spans more than one LMDB page now and then."""
    return f"<{mid}:{n}>" + "x" * (n * 37 % 900) + "|"


def target_chunks(mid: str) -> int:
    return random.Random(mid).randint(5, 60)


def streamer(path: str, seed: int) -> None:
    rng = random.Random(seed)
    r = Replica.open(path, durability="sync")
    page = r.history(STREAM_CID, limit=1)
    last = page.items[0] if page.items else None
    for turn in range(100_000):  # bounded, should the parent die without killing us
        if last is None or last.role != "assistant" or \
                last.text.count("|") >= target_chunks(last.id):
            user = r.post(STREAM_CID, f"question {seed}-{turn}", id=f"u{seed}-{turn}")
            say({"op": "post", "mid": user.id, "role": "user",
                 "parent": None if last is None else last.id})
            last = r.post(STREAM_CID, "", role="assistant", reply_to=user.id,
                          id=f"a{seed}-{turn}")
            say({"op": "post", "mid": last.id, "role": "assistant", "parent": user.id})
        done = last.text.count("|")
        while done < target_chunks(last.id):
            if rng.random() < 0.2 and done + 1 < target_chunks(last.id):
                with r.batch():  # two appends, one commit
                    r.append(STREAM_CID, last.id, chunk(last.id, done))
                    r.append(STREAM_CID, last.id, chunk(last.id, done + 1))
                done += 2
            else:
                r.append(STREAM_CID, last.id, chunk(last.id, done))
                done += 1
            say({"op": "append", "mid": last.id, "n": done - 1})
        last = r.message(STREAM_CID, last.id)


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
    elif mode == "streamer":
        streamer(path, int(rest[0]))
    elif mode == "serve":
        serve(path)
    else:
        sys.exit(f"unknown mode {mode!r}")
