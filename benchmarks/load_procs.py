"""Latency under load (bench_sync figure `e`) with every peer in its own process.

The system under test is the server replica R: it takes two streams of changes from two
peers and relays its own writes to a third peer P, where they become visible. In a real
deployment the streaming peers and P run on other machines; here each runs in a child
process (its own interpreter, its own GIL), so their work competes with R only for the
machine's cores, not for R's event loop. R runs in the benchmark's process.

A change's latency is P's `perf_counter` in its change callback minus R's `perf_counter`
when R's commit returned: on Linux both read CLOCK_MONOTONIC, one clock for every process.
P reports each of R's conversations it sees change on its stdout (one line each); R waits
for that line before the next write, as the in-process harness waited for the callback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import trio

import crdtim
from crdtim import Node, NodeConfig, Replica

from .report import PROJECT, cid, rm

MODULE = "benchmarks.bench_sync"  # whose --child runs these children


def _serve_until_stdin_closes(r: Replica, port: int, config: NodeConfig,
                              started: dict[str, Any], on_go: Any = None) -> dict[str, Any]:
    """Run a Node of `r` connected to R at `port`: print `started` once connected, call
    `on_go(nursery, stop)` on the first stdin line, stop at stdin's end; the Node's stats."""

    async def main() -> dict[str, Any]:
        stop = trio.Event()
        node = Node(r, peers=[("127.0.0.1", port)], config=config)
        try:
            async with node, trio.open_nursery() as nursery:
                await node.wait_caught_up(1, timeout=30)
                print(json.dumps(started | {"id": r.id}), flush=True)
                if await trio.to_thread.run_sync(sys.stdin.readline) and on_go is not None:
                    on_go(nursery, stop)
                await trio.to_thread.run_sync(sys.stdin.read)
                stop.set()
                nursery.cancel_scope.cancel()
        except BaseExceptionGroup as eg:
            # R hung up first; net.py lets a reset escape as an exception group.
            rest = eg.split((trio.BrokenResourceError, trio.ClosedResourceError, OSError))[1]
            if rest is not None:
                raise
        return dict(vars(node.stats))

    return trio.run(main)


async def stream_writes(r: Replica, prefix: str, rate: float, stop: trio.Event,
                        count: list[int]) -> None:
    """`rate` single-op writes per second on `r` (its own conversations), paced by the clock
    (a late tick writes the ones it owes), until `stop`."""
    t0 = trio.current_time()
    k = 0
    while not stop.is_set():
        due = int((trio.current_time() - t0) * rate)
        while k < due:
            r.set_title(f"{prefix}-{k % 500:03d}", f"streamed {k}")
            k += 1
        count[0] = k
        await trio.sleep(0.001)


def child_streamer(spec: dict[str, Any]) -> dict[str, Any]:
    """A peer streaming `rate` changes/s (nosync) into R from the first stdin line on."""
    r = Replica.open(spec["path"], durability="nosync")
    count = [0]

    def go(nursery: trio.Nursery, stop: trio.Event) -> None:
        nursery.start_soon(stream_writes, r, spec["prefix"], spec["rate"], stop, count)

    try:
        stats = _serve_until_stdin_closes(r, spec["port"], NodeConfig(), {}, go)
    finally:
        r.close()
    return stats | {"written": count[0]}


def child_peer(spec: dict[str, Any]) -> dict[str, Any]:
    """The measuring peer P (sync): prints `<conversation> <perf_counter>` for every remote
    change to one of R's conversations (named `conv-...`), once it holds R's log up to
    `head`."""
    p = Replica.open(spec["path"], durability="sync")
    out = sys.stdout

    def seen(change: crdtim.Change) -> None:
        if change.origin == "remote" and change.conversation.startswith("conv-"):
            out.write(f"{change.conversation} {time.perf_counter()!r}\n")
            out.flush()

    sub = p.subscribe(seen)
    try:
        stats = _serve_until_stdin_closes(p, spec["port"], NodeConfig(), {})
    finally:
        sub.close()
        p.close()
    return stats


class Child:
    """A child process (`python -m MODULE --child KIND SPEC`) read line by line from trio."""

    def __init__(self, proc: trio.Process, err_path: str):
        self.proc = proc
        self.err_path = err_path
        self._buf = b""

    @classmethod
    async def start(cls, kind: str, spec: dict[str, Any], err_path: str) -> Child:
        cmd = [sys.executable, "-m", MODULE, "--child", kind, json.dumps(spec)]
        with open(err_path, "wb") as err:
            proc = await trio.lowlevel.open_process(cmd, cwd=PROJECT, stdin=subprocess.PIPE,
                                                    stdout=subprocess.PIPE, stderr=err)
        return cls(proc, err_path)

    async def readline(self) -> str:
        assert self.proc.stdout is not None
        while b"\n" not in self._buf:
            data = await self.proc.stdout.receive_some(65536)
            if not data:
                with open(self.err_path, errors="replace") as f:
                    raise RuntimeError(f"child exited ({await self.proc.wait()}):\n"
                                       f"{f.read()[-4000:]}")
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode()

    async def first_json(self) -> str:
        """Its first JSON line (P reports R's conversations as it catches up, before)."""
        while not (line := await self.readline()).startswith("{"):
            pass
        return line

    async def send_line(self, text: str) -> None:
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(text.encode() + b"\n")

    async def finish(self) -> dict[str, Any]:
        """Close its stdin (it stops) and return the JSON it printed last."""
        assert self.proc.stdin is not None
        await self.proc.stdin.aclose()
        last = ""
        with trio.fail_after(60):
            while True:
                try:
                    line = await self.readline()
                except RuntimeError:
                    if await self.proc.wait() != 0:
                        raise
                    break
                if line.startswith("{"):
                    last = line
        return json.loads(last) if last else {}


async def crdtim_latency_under_load(rate: float, n_writes: int, wd: Any,
                                    config: NodeConfig | None = None
                                    ) -> tuple[list[float], float]:
    """Server R (sync, this process) with peer P (sync) and streamers S1, S2 (nosync), each
    in its own process, the streamers writing `rate` changes/s each into R over loopback; R's
    single writes timed from commit to P's callback. Returns the latencies (ms) and the rate
    R received from the streamers during them."""
    dirs = [wd.fresh(f"load-{k}") for k in ("R", "P", "S1", "S2")]
    r = Replica.open(dirs[0], durability="sync")
    populate_r = [cid(i) for i in range(100)]
    with r.batch():
        for i, c in enumerate(populate_r):
            r.set_title(c, f"Conversation {i}")
    lat: list[float] = []
    target: list[Any] = [None, None, 0.0]  # conversation, trio.Event, time seen at P
    received = 0.0
    children: list[Child] = []

    watching = trio.CancelScope()

    async def watch_peer(peer: Child) -> None:
        with watching:
            while True:
                conv, t = (await peer.readline()).split()
                if conv == target[0] and target[1] is not None:
                    target[2] = float(t)
                    target[1].set()

    everything = trio.CancelScope()
    try:
        with everything:
            async with Node(r, listen=("127.0.0.1", 0), config=config or NodeConfig()) as nr, \
                    trio.open_nursery() as nursery:
                peer = await Child.start("loadpeer", {"path": dirs[1], "port": nr.port},
                                         dirs[1] + ".err")
                children.append(peer)
                for d, name in zip(dirs[2:], ("s1", "s2"), strict=True):
                    children.append(await Child.start(
                        "streamer", {"path": d, "port": nr.port, "prefix": name, "rate": rate},
                        d + ".err"))
                ids = [json.loads(await ch.first_json())["id"] for ch in children]
                await nr.wait_caught_up(3, timeout=30)  # P and the streamers hold R's log
                nursery.start_soon(watch_peer, peer)
                for ch in children[1:]:
                    await ch.send_line("go")
                await trio.sleep(0.5)  # the streams are flowing
                got0 = sum(r.received_from(x) for x in ids[1:])
                t_start = trio.current_time()
                for k in range(n_writes):
                    c = cid(k % 100)
                    ev = trio.Event()
                    target[:] = [c, ev, 0.0]
                    r.set_title(c, f"Title {k}")
                    t0 = time.perf_counter()
                    with trio.fail_after(10):
                        await ev.wait()
                    lat.append((target[2] - t0) * 1000)
                    await trio.sleep(0.002)  # R's writes are spaced, the streams are not
                elapsed = trio.current_time() - t_start
                received = (sum(r.received_from(x) for x in ids[1:]) - got0) / elapsed
                for ch in children[1:]:  # the streamers stop first, then P
                    await ch.finish()
                watching.cancel()
                await trio.sleep(0)  # the watcher has left P's stdout
                await children[0].finish()
                children.clear()
                everything.cancel()
    finally:
        for ch in children:
            if ch.proc.returncode is None:
                ch.proc.kill()
        r.close()
        rm(*dirs)
        for d in dirs[1:]:
            if os.path.exists(d + ".err"):
                os.remove(d + ".err")
    return lat, received

