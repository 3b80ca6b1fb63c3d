"""The whole benchmark suite: every figure beside its references, the goals, tables and plots.

    python -m benchmarks [--quick | --tiny] [--out DIR] [--dir DIR] [--runs N]
                         [--only GROUP,...] [--profile] [--no-plots]

(`make bench`, `make bench QUICK=1` and `crdtim bench [--quick]` run this.) It runs the
measurements of bench_local and bench_sync and the ones below, then writes, into --out
(default benchmarks/results/):

  <date>-<host>[-quick|-tiny].json   every figure: median, min, max and number of runs of the
                                     value, of its reference and of their ratio; the machine;
                                     the goals, met or not; the data behind the plots
  <date>-<host>[...].md              the same as markdown tables
  <date>-<host>[...]-<plot>.png      propagation, apply-rate, latency, bootstrap
  <date>-<host>[...]-profile-*.txt   with --profile: a cProfile summary of each missed goal

Groups (the --only names), in the order they run:

  hw        the hardware: raw LMDB puts (sync / nosync, one per txn / 1000 per txn), raw
            msgpack pack and unpack of a one-field delta (beside crdtim's codec), raw trio
            frames over loopback TCP (one way, and ping-pong round trips)
  local     bench_local a, b, c, d, e: durable single and batched ops vs raw LMDB, remote
            deltas applied one by one (apply_delta) vs pycrdt, bytes per change, 1M
            conversations (50k with --quick): size, RSS, first page
  nosync    crdtim's single and batched ops without fsync, vs raw LMDB nosync; and local
            updates vs pycrdt's (in memory)
  session   remote deltas as a receiving replica applies them: one-op DELTA frames fed to a
            SyncSession over a real Replica in bursts of 1..256 frames (the session applies up
            to 64 consecutive DELTAs in one transaction), sync and nosync, vs pycrdt applying
            the same changes (bursts merged with merge_updates); and a live stream between two
            Nodes over loopback TCP
  automerge the same changes in Automerge (if it imports): local updates, remote updates
            applied through its sync protocol, bytes per change
  sync      bench_sync a, b, c, d: mesh/star/line bytes vs the floor, classic delta and state
            propagation; bytes per change on the wire; commit-to-peer latency; bootstrap of 1M
  messages  bench_messages: durable posts (single, batched) vs raw LMDB and set_title; first
            history page of 100k messages vs a raw cursor read; a reply streamed as 1000
            appends to a Node peer (wire bytes vs pycrdt, latency vs raw); bootstrap of
            2,000 (--boot-convs: 10,000 for the full 1M) conversations x 100 messages vs a raw
            copy of the LMDB environment
  http      bench_http: GET /api/im/conversations req/s from a real `serve --http` beside the
            same Starlette/Hypercorn stack answering a fixed body; peer write -> SSE client
  catchup   bench_catchup: a replica offline past log retention, 1% of its 1M
            conversations (100k with --quick) differing, caught up by reconciliation: bytes
            vs the differing state, time vs a whole state transfer of the same replica
  curves    the plots' extra points: bytes to converge for 2..12 replicas, bootstrap time for
            several sizes
  big       10M conversations (200k with --quick): build, disk, RSS and first page in a fresh
            process

Every timed figure is the median of several runs (5; 3 with --quick; 1 with --tiny), with min
and max. Size-dependent goals (1M bootstrap, 10M RSS and first page) are judged only at their
size (full mode); in quick mode they show "not judged". --tiny exists for the test suite:
it checks that everything runs and writes its files, and its figures mean nothing.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import gc
import importlib.metadata
import io
import json
import os
import platform
import pstats
import socket
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import lmdb
import msgpack
import pycrdt
import trio

from crdtim import Node, Replica, codec
from crdtim.protocol import PROTOCOL_VERSION, Delta, Hello, SyncSession, encode_frame

from . import bench_catchup, bench_http, bench_local, bench_messages, bench_sync
from .report import (
    PROJECT,
    Row,
    Workdir,
    cid,
    filesystem_of,
    git_rev,
    print_table,
    ratio_at_least,
    rm,
    run_child,
    spread,
    value_at_most,
)

GROUPS = ("hw", "local", "nosync", "session", "automerge", "sync", "messages", "http",
          "catchup", "curves", "big")
MIB = 1024 * 1024
T0 = 1_700_000_000_000


# -- sizes per mode ----------------------------------------------------------------------------


SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(runs=1, single_ops=20, sync_deltas=20, batches=2, deltas=100, big=2000,
                 list_calls=20, mesh_writes=6, byte_samples=5, latency_writes=6, sync_big=600,
                 d_runs=1, hw_puts=100, hw_msgpack=500, hw_frames=200, session_n=100,
                 session_groups=[1, 64], stream_n=30, automerge_n=50, curve_replicas=[2, 3],
                 curve_writes=4, curve_boot=[300], big10=3000, http_seconds=0.3,
                 http_writes=5),
    "quick": dict(runs=3, single_ops=300, sync_deltas=300, batches=5, deltas=2000, big=50_000,
                  list_calls=300, mesh_writes=40, byte_samples=100, latency_writes=30,
                  sync_big=20_000, d_runs=2, hw_puts=1000, hw_msgpack=20_000, hw_frames=5000,
                  session_n=1000, session_groups=[1, 4, 16, 64, 256], stream_n=500,
                  automerge_n=1000, curve_replicas=[2, 3, 5, 8], curve_writes=20,
                  curve_boot=[2000, 5000, 10_000], big10=200_000, http_seconds=2.0,
                  http_writes=100),
    "full": dict(runs=5, single_ops=2000, sync_deltas=10_000, batches=20, deltas=10_000,
                 big=1_000_000, list_calls=2000, mesh_writes=200, byte_samples=300,
                 latency_writes=500, sync_big=1_000_000, d_runs=3, hw_puts=5000,
                 hw_msgpack=200_000, hw_frames=50_000, session_n=5000,
                 session_groups=[1, 4, 16, 64, 256], stream_n=5000, automerge_n=5000,
                 curve_replicas=[2, 3, 5, 8, 12], curve_writes=100,
                 curve_boot=[100_000, 300_000], big10=10_000_000, http_seconds=5.0,
                 http_writes=300),
}


# -- progress ----------------------------------------------------------------------------------


class Progress:
    """A text progress bar on stderr: one line per step (stderr may be a file or a pipe)."""

    def __init__(self, steps: list[str], stream: Any = None):
        self.steps = steps
        self.done = 0
        self.t0 = time.perf_counter()
        self.stream = stream or sys.stderr

    def step(self, name: str) -> None:
        width = 24
        filled = width * self.done // max(1, len(self.steps))
        bar = "#" * filled + "." * (width - filled)
        el = time.perf_counter() - self.t0
        self.stream.write(f"[{bar}] {self.done + 1}/{len(self.steps)} {name}  "
                          f"({el:,.0f} s elapsed)\n")
        self.stream.flush()
        self.done += 1

    def finish(self) -> None:
        el = time.perf_counter() - self.t0
        self.stream.write(f"[{'#' * 24}] done in {el:,.1f} s\n")
        self.stream.flush()


def note(text: str) -> None:
    print(f"    {text}", file=sys.stderr, flush=True)


# -- machine -----------------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(workdir: str) -> dict[str, Any]:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "host": socket.gethostname(), "cpu": cpu, "cores": os.cpu_count(),
        "memory_bytes": mem, "python": platform.python_version(),
        "implementation": platform.python_implementation(), "platform": platform.platform(),
        "packages": {d: _version(d) for d in ("crdtim", "lmdb", "msgpack", "trio", "pycrdt",
                                              "automerge", "matplotlib")},
        "lmdb_library": ".".join(map(str, lmdb.version())), "git": git_rev(),
        "workdir": filesystem_of(workdir), "loadavg_start": os.getloadavg(),
    }


# -- helpers -----------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> float:
    gc.collect()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def keyed(prefix: str, rows: list[Row]) -> list[Row]:
    for r in rows:
        r.key = f"{prefix}.{r.key}"
    return rows


plan_of = bench_local.plan_of


def pycrdt_convs(n_convs: int) -> tuple[pycrdt.Doc, list[pycrdt.Map]]:
    """A pycrdt Doc holding n_convs conversations as Maps (the fields the plans change)."""
    doc = pycrdt.Doc()
    root = doc.get("convs", type=pycrdt.Map)
    with doc.transaction():
        for i in range(n_convs):
            root[cid(i)] = pycrdt.Map({"title": f"Conversation {i}", "read_seq": 0})
    return doc, [root[cid(i)] for i in range(n_convs)]


# == hw: the hardware ==========================================================================


def lmdb_rate(wd: Workdir, *, sync: bool, per_txn: int, n: int) -> float:
    d = wd.fresh(f"hw-lmdb-{'sync' if sync else 'nosync'}-{per_txn}")
    env = bench_local.raw_env(d, sync=sync)
    db = env.open_db(b"convs")
    keys = [cid(i).encode() for i in range(1000)]
    bench_local.raw_populate(env, db, keys, 100)
    value = os.urandom(100)
    # Warm up: the first commits of a fresh file also grow it (an inode update per fsync);
    # a replica in use reuses freed pages instead.
    for k in range(200):
        with env.begin(write=True) as t:
            t.put(keys[k % 1000], value, db=db)

    def go() -> None:
        for lo in range(0, n, per_txn):
            with env.begin(write=True) as t:
                for k in range(lo, min(n, lo + per_txn)):
                    t.put(keys[(k * 7919) % 1000], value, db=db)

    dt = timed(go)
    env.close()
    rm(d)
    return n / dt


def one_field_delta() -> tuple[bytes, Any, Any]:
    """An encoded one-field delta (a set_title), its decoded map, and its raw msgpack object."""
    import tempfile

    d = tempfile.mkdtemp(prefix="crdtim-bench-delta-")
    try:
        r = Replica.open(d, durability="nosync")
        r.set_title(cid(1), "Weekend plans 12345")
        payload = r.delta_since(0)
        r.close()
    finally:
        rm(d)
    return payload, codec.decode_map(payload), msgpack.unpackb(payload, strict_map_key=False)


async def trio_frames(n: int, size: int = 60) -> tuple[float, list[float]]:
    """One-way frames/s (4-byte length + `size` bytes, each its own send_all) over loopback
    TCP, parsed by the receiver; then the round-trip times (ms) of `min(n, 2000)` ping-pongs."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    frame = size.to_bytes(4, "big") + os.urandom(size)
    rtts: list[float] = []
    result: list[float] = []
    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def receiver() -> None:
            s = await listeners[0].accept()
            buf = bytearray()
            got = 0
            while got < n:
                data = await s.receive_some(65536)
                buf += data
                while len(buf) >= 4 and len(buf) >= 4 + int.from_bytes(buf[:4], "big"):
                    del buf[:4 + int.from_bytes(buf[:4], "big")]
                    got += 1
            done.set()
            for _ in range(min(n, 2000)):  # echo
                data = await s.receive_some(65536)
                await s.send_all(data)
            await s.aclose()

        nursery.start_soon(receiver)
        client = await trio.open_tcp_stream("127.0.0.1", port)
        t = time.perf_counter()
        for _ in range(n):
            await client.send_all(frame)
        await done.wait()
        result.append(n / (time.perf_counter() - t))
        for _ in range(min(n, 2000)):
            t = time.perf_counter()
            await client.send_all(frame)
            await client.receive_some(65536)
            rtts.append((time.perf_counter() - t) * 1000)
        await client.aclose()
    for lst in listeners:
        await lst.aclose()
    return result[0], rtts


def bench_hw(sz: dict[str, Any], wd: Workdir) -> tuple[list[Row], dict[str, Any]]:
    runs, n = sz["runs"], sz["hw_puts"]
    res: dict[str, list[float]] = {k: [] for k in (
        "sync-1", "nosync-1", "sync-1000", "nosync-1000", "pack", "unpack", "encode", "decode",
        "frames", "rtt50", "rtt99")}
    payload, delta_map, raw_obj = one_field_delta()
    m = sz["hw_msgpack"]
    for run in range(runs):
        res["sync-1"].append(lmdb_rate(wd, sync=True, per_txn=1, n=n))
        res["nosync-1"].append(lmdb_rate(wd, sync=False, per_txn=1, n=10 * n))
        res["sync-1000"].append(lmdb_rate(wd, sync=True, per_txn=1000, n=100 * n))
        res["nosync-1000"].append(lmdb_rate(wd, sync=False, per_txn=1000, n=100 * n))
        pack, unpack = msgpack.packb, msgpack.unpackb
        res["pack"].append(m / timed(lambda: [pack(raw_obj) for _ in range(m)]))
        res["unpack"].append(m / timed(lambda: [unpack(payload, strict_map_key=False)
                                                 for _ in range(m)]))
        res["encode"].append(m / timed(lambda: [codec.encode_map(delta_map) for _ in range(m)]))
        res["decode"].append(m / timed(lambda: [codec.decode_map(payload) for _ in range(m)]))
        rate, rtts = trio.run(trio_frames, sz["hw_frames"])
        res["frames"].append(rate)
        res["rtt50"].append(bench_sync.percentile(rtts, 50))
        res["rtt99"].append(bench_sync.percentile(rtts, 99))
    rows = [
        Row("lmdb-sync-1", "raw LMDB put, sync, 1 put per txn", "puts/s", res["sync-1"],
            goal="(hardware)", note="100 B values over 1000 keys; fsync per commit"),
        Row("lmdb-nosync-1", "raw LMDB put, nosync, 1 put per txn", "puts/s", res["nosync-1"],
            goal="(hardware)"),
        Row("lmdb-sync-1000", "raw LMDB put, sync, 1000 puts per txn", "puts/s",
            res["sync-1000"], goal="(hardware)"),
        Row("lmdb-nosync-1000", "raw LMDB put, nosync, 1000 puts per txn", "puts/s",
            res["nosync-1000"], goal="(hardware)"),
        Row("msgpack-pack", f"raw msgpack.packb of a 1-field delta ({len(payload)} B)", "ops/s",
            res["pack"], goal="(hardware)"),
        Row("msgpack-unpack", "raw msgpack.unpackb of it", "ops/s", res["unpack"],
            goal="(hardware)"),
        Row("codec-encode", "  crdtim codec.encode_map of the same delta", "ops/s",
            res["encode"], res["pack"], ref_label="raw msgpack.packb", goal="(context)"),
        Row("codec-decode", "  crdtim codec.decode_map (validating) of it", "ops/s",
            res["decode"], res["unpack"], ref_label="raw msgpack.unpackb", goal="(context)"),
        Row("trio-frames", "raw trio frames one way over loopback TCP (64 B)", "frames/s",
            res["frames"], goal="(hardware)",
            note="each frame its own send_all; the receiver parses the length prefix"),
        Row("trio-rtt-p50", "raw trio ping-pong round trip over loopback: p50", "ms",
            res["rtt50"], goal="(hardware)", fmt="{:,.3f}"),
        Row("trio-rtt-p99", "  same, p99", "ms", res["rtt99"], goal="(hardware)",
            fmt="{:,.3f}"),
    ]
    return rows, {}


# == nosync: crdtim without fsync, and local updates vs pycrdt ==================================


def bench_nosync(sz: dict[str, Any], wd: Workdir, hw: dict[str, Row]) -> list[Row]:
    n_convs, n = 1000, 10 * sz["single_ops"]
    plan = plan_of(n, n_convs)
    mine, py, batched = [], [], []
    for run in range(sz["runs"]):
        d = wd.fresh("nosync-single")
        r = Replica.open(d, durability="nosync")
        # the first message's seq is the plan's highest read marker (mark_read checks it)
        bench_local.populate(r, n_convs, last_seq=max(1, -(-n // n_convs)))

        def crdtim_ops() -> None:
            for what, i, arg in plan:
                if what == "title":
                    r.set_title(cid(i), arg)
                else:
                    r.mark_read(cid(i), arg)

        mine.append(n / timed(crdtim_ops))

        def crdtim_batched() -> None:
            for lo in range(0, n, 1000):
                with r.batch():
                    for what, i, arg in plan[lo:lo + 1000]:
                        if what == "title":
                            r.set_title(cid(i), arg)
                        else:
                            r.mark_read(cid(i), arg)

        batched.append(n / timed(crdtim_batched))
        r.close()
        rm(d)
        doc, convs = pycrdt_convs(n_convs)

        def pycrdt_ops() -> None:
            for what, i, arg in plan:
                convs[i][what] = arg

        py.append(n / timed(pycrdt_ops))
    hw1, hw1000 = hw.get("hw.lmdb-nosync-1"), hw.get("hw.lmdb-nosync-1000")
    return [
        Row("single", "crdtim single ops/s, nosync (1 op = 1 commit)", "ops/s", mine,
            hw1.values if hw1 else None, ref_label="raw LMDB nosync, 1 put per txn (hw)",
            goal=">= 0.50x", check=ratio_at_least(0.5),
            ratios=[statistics.median(mine) / statistics.median(hw1.values)] if hw1 else None),
        Row("batched", "crdtim batched ops/s, nosync (1000 per batch)", "ops/s", batched,
            hw1000.values if hw1000 else None, ref_label="raw LMDB nosync, 1000 puts per txn (hw)",
            goal="(context)",
            ratios=[statistics.median(batched) / statistics.median(hw1000.values)]
            if hw1000 else None),
        Row("local-pycrdt", "local updates/s: crdtim nosync single op", "ops/s", mine, py,
            ref_label=f"pycrdt {pycrdt.__version__}: Map item set on a Doc in memory (one "
                      "transaction per change, no storage)", goal="(report)",
            note=f"{n} changes (half title, half read marker) over {n_convs} conversations"),
    ]


# == session: remote deltas as a receiving replica applies them =================================


def make_remote(sz: dict[str, Any], wd: Workdir, n: int) -> dict[str, Any]:
    """n one-op deltas made on a replica A, as DELTA frames chaining from 0, and the same
    changes as pycrdt updates."""
    n_convs = 1000
    adir = wd.fresh("session-A")
    a = Replica.open(adir, durability="nosync")
    bench_local.populate(a, n_convs, last_seq=max(1, -(-n // n_convs)))
    init = a.delta_since(0)
    plan = plan_of(n, n_convs)
    frames = [encode_frame(Delta(start=0, end=1, payload=init))]
    for k, (what, i, arg) in enumerate(plan):
        if what == "title":
            a.set_title(cid(i), arg)
        else:
            a.mark_read(cid(i), arg)
        frames.append(encode_frame(Delta(start=k + 1, end=k + 2, payload=a.delta_since(a.head - 1))))
    state, a_id = a.state(), a.id
    a.close()
    rm(adir)
    doc, convs = pycrdt_convs(n_convs)
    init_update = doc.get_update()
    updates: list[bytes] = []
    sub = doc.observe(lambda e: updates.append(e.update))
    for what, i, arg in plan:
        convs[i][what] = arg
    doc.unobserve(sub)
    final = {c: dict(m) for c, m in doc.get("convs", type=pycrdt.Map).items()}
    return {"frames": frames, "state": state, "a_id": a_id, "init_update": init_update,
            "updates": updates, "final": final, "n": n, "n_convs": n_convs}


def session_receiver(src: dict[str, Any], path: str, durability: str) -> tuple[Replica, SyncSession]:
    b = Replica.open(path, durability=durability)
    s = SyncSession(b)
    s.initiate()
    s.receive_data(encode_frame(Hello(version=PROTOCOL_VERSION, replica_id=src["a_id"])))
    s.receive_data(src["frames"][0])
    s.data_to_send()
    return b, s


def session_apply(src: dict[str, Any], wd: Workdir, durability: str, group: int,
                  check: bool) -> float:
    path = wd.fresh(f"session-B-{durability}-{group}")
    b, s = session_receiver(src, path, durability)
    frames = src["frames"][1:]
    bursts = [b"".join(frames[i:i + group]) for i in range(0, len(frames), group)]

    def go() -> None:
        for burst in bursts:
            s.receive_data(burst)
            s.data_to_send()

    dt = timed(go)
    if check:
        assert b.state() == src["state"], "the receiving replica did not converge"
    b.close()
    rm(path)
    return src["n"] / dt


def pycrdt_apply(src: dict[str, Any], group: int, check: bool) -> float:
    q = pycrdt.Doc()
    q.apply_update(src["init_update"])
    ups = src["updates"]
    bursts = [ups[i:i + group] for i in range(0, len(ups), group)]

    def go() -> None:
        for burst in bursts:
            q.apply_update(burst[0] if len(burst) == 1 else pycrdt.merge_updates(*burst))

    dt = timed(go)
    if check:
        got = {c: dict(m) for c, m in q.get("convs", type=pycrdt.Map).items()}
        assert got == src["final"], "pycrdt did not converge"
    return src["n"] / dt


async def node_stream(n: int, wd: Workdir) -> float:
    """A (nosync) writes n single-field changes one after another, yielding to trio after
    each; B (sync) is connected over loopback TCP. Changes/s from the first write until B has
    received them all."""
    adir, bdir = wd.fresh("stream-A"), wd.fresh("stream-B")
    a = Replica.open(adir, durability="nosync")
    b = Replica.open(bdir, durability="sync")
    bench_local.populate(a, 1000, last_seq=max(1, -(-n // 1000)))
    plan = plan_of(n, 1000)
    out: list[float] = []
    try:
        with trio.CancelScope() as everything:  # torn down cancelled: see bench_sync
            async with Node(a, listen=("127.0.0.1", 0)) as na:
                async with Node(b, peers=[("127.0.0.1", na.port)]):
                    await bench_sync._wait_until(lambda: b.received_from(a.id) >= a.head)
                    t = time.perf_counter()
                    for op in plan:
                        bench_local.apply_op(a, *op)
                        await trio.sleep(0)
                    await bench_sync._wait_until(lambda: b.received_from(a.id) >= a.head, 600)
                    out.append(n / (time.perf_counter() - t))
                    everything.cancel()
        assert b.state() == a.state()
    finally:
        a.close()
        b.close()
        rm(adir, bdir)
    return out[0]


def bench_session(sz: dict[str, Any], wd: Workdir) -> tuple[list[Row], dict[str, Any]]:
    n, groups = sz["session_n"], sz["session_groups"]
    src = make_remote(sz, wd, n)
    res: dict[str, dict[int, list[float]]] = {k: {g: [] for g in groups}
                                              for k in ("sync", "nosync", "pycrdt")}
    stream = []
    for run in range(sz["runs"]):
        check = run == 0
        for g in groups:
            order = ("crdtim", "pycrdt") if run % 2 == 0 else ("pycrdt", "crdtim")
            for what in order:
                if what == "pycrdt":
                    res["pycrdt"][g].append(pycrdt_apply(src, g, check))
                else:
                    res["sync"][g].append(session_apply(src, wd, "sync", g, check))
                    res["nosync"][g].append(session_apply(src, wd, "nosync", g, check))
        stream.append(trio.run(node_stream, sz["stream_n"], wd))
    py1 = res["pycrdt"][1] if 1 in groups else None
    ref = f"pycrdt {pycrdt.__version__}: apply_update of each captured update, in memory"
    rows = []
    for g in groups:
        commits = -(-g // 64)
        rows.append(Row(
            f"burst{g}-sync", f"remote deltas applied/s via SyncSession, bursts of {g}, sync",
            "deltas/s", res["sync"][g], res["pycrdt"][g], ref_label=f"{ref}, bursts of {g}",
            goal=">= 0.50x" if g == 64 else "(context)",
            check=ratio_at_least(0.5) if g == 64 else None,
            note=f"{n} one-op DELTA frames (half title, half read marker; 1000 conversations)"
                 f" fed {g} at a time to receive_data: {commits} commit(s) and ACK(s) per "
                 "burst; rate includes frame parsing, decoding, join, commit, ACK"
                 if g in (1, 64) else ""))
        rows.append(Row(f"burst{g}-nosync", f"  same, nosync", "deltas/s", res["nosync"][g],
                        res["pycrdt"][g], ref_label=f"{ref}, bursts of {g}", goal="(context)"))
        rows.append(Row(f"burst{g}-pycrdt", f"  pycrdt, bursts of {g} (merge_updates + apply)",
                        "deltas/s", res["pycrdt"][g], py1, ref_label=ref, goal="(context)"))
    rows.append(Row(
        "stream", "live stream Node -> Node over loopback, receiver sync", "changes/s", stream,
        py1, ref_label=ref, goal="(context)",
        note=f"{sz['stream_n']} writes on A (nosync, one commit each, yielding to trio between "
             "writes) until B (sync) has them all; both Nodes share this one process and core"))
    plot = {"groups": groups, **{k: {str(g): statistics.median(v[g]) for g in groups}
                                 for k, v in res.items()}}
    return rows, {"apply_rate": plot}


# == automerge =================================================================================


def automerge_version() -> tuple[Any, str]:
    """(automerge.core, version) or (None, why it cannot run)."""
    version = _version("automerge")
    if version is None:
        return None, ("automerge is not installed (pip install --pre 'automerge>=1.0.0rc1'; "
                      "make bench tries)")
    try:
        from automerge import core  # 1.0 pre-releases: the low-level API
        core.Document, core.SyncState, core.Message.decode  # noqa: B018
    except (ImportError, AttributeError) as e:
        return None, (f"automerge {version} is installed but has no Document/SyncState API "
                      f"({e}); 0.1.x exposes only Doc(obj).json()/merge(bytes): no way to make "
                      "or ship one change")
    return core, version


def bench_automerge(sz: dict[str, Any], wd: Workdir, by_key: dict[str, Row]
                    ) -> tuple[list[Row], dict[str, Any]]:
    core, version = automerge_version()
    if core is None:
        return [], {"automerge": {"ran": False, "reason": version}}
    n, n_convs = sz["automerge_n"], 1000
    plan = plan_of(n, n_convs)
    S = core.ScalarType
    local, remote, change_bytes, msg_bytes = [], [], [], []
    for run in range(sz["runs"]):
        a = core.Document()
        objs = []
        with a.transaction() as tx:
            root = tx.put_object(core.ROOT, "convs", core.ObjType.Map)
            for i in range(n_convs):
                o = tx.put_object(root, cid(i), core.ObjType.Map)
                tx.put(o, "title", S.Str, f"Conversation {i}")
                tx.put(o, "read_seq", S.Uint, 0)
                objs.append(o)
        init = a.save()

        def put(doc: Any, what: str, i: int, arg: Any) -> None:
            with doc.transaction() as tx:
                if what == "title":
                    tx.put(objs[i], "title", S.Str, arg)
                else:
                    tx.put(objs[i], "read_seq", S.Uint, arg)

        def local_ops() -> None:
            for op in plan:
                put(a, *op)

        local.append(n / timed(local_ops))
        # The same changes again on a fresh source, shipped to a shadow peer through the sync
        # protocol after each; the messages A sent are replayed into a fresh receiver, timed.
        a = core.Document.load(init)
        shadow = core.Document.load(init)
        s_a, s_b = core.SyncState(), core.SyncState()

        def exchange() -> list[bytes]:
            sent = []
            while True:
                m1, m2 = a.generate_sync_message(s_a), shadow.generate_sync_message(s_b)
                if m1 is None and m2 is None:
                    return sent
                if m1 is not None:
                    sent.append(m1.encode())
                    shadow.receive_sync_message(s_b, core.Message.decode(sent[-1]))
                if m2 is not None:
                    a.receive_sync_message(s_a, core.Message.decode(m2.encode()))

        hello = exchange()
        msgs: list[list[bytes]] = []
        heads = a.get_heads()
        for what, i, arg in plan:
            put(a, what, i, arg)
            if run == 0 and what == "title":
                change_bytes.extend(len(c.bytes) for c in a.get_changes(heads))
            heads = a.get_heads()
            msgs.append(exchange())
            if run == 0 and what == "title":
                msg_bytes.append(sum(map(len, msgs[-1])))
        b = core.Document.load(init)
        st = core.SyncState()
        for e in hello:
            b.receive_sync_message(st, core.Message.decode(e))

        def apply_all() -> None:
            for sent in msgs:
                for e in sent:
                    b.receive_sync_message(st, core.Message.decode(e))

        remote.append(n / timed(apply_all))
        assert b.get_heads() == a.get_heads(), "automerge receiver did not converge"
    label = f"automerge {version}"
    rows = []
    # crdtim's figure for the same thing, measured earlier in this run, beside Automerge's.
    for key, mine, theirs, what in (
            ("local", "nosync.single", local, "local updates/s: crdtim nosync single op"),
            ("remote", "session.burst64-sync", remote,
             "remote changes applied/s: crdtim SyncSession bursts of 64, sync"),
            ("bytes", "local.d", change_bytes, "bytes per title change: crdtim delta")):
        if mine in by_key:
            m = by_key[mine].values
            rows.append(Row(f"vs-{key}", what, by_key[mine].unit, m, theirs,
                            ratios=[statistics.median(m) / statistics.median(theirs)],
                            ref_label=f"{label}, below", goal="(report)"))
    rows += [
        Row("local", f"{label}: local updates/s (1 transaction per change)", "ops/s", local,
            goal="(reference)", note=f"{n} changes (half title, half read marker) over {n_convs} "
                                     "conversations, a Map per conversation, in memory"),
        Row("remote", f"{label}: remote changes applied/s (sync protocol)", "changes/s", remote,
            goal="(reference)",
            note="receive_sync_message of the messages a peer sent after each change (one "
                 "message per change), decoded and applied"),
        Row("bytes", f"{label}: bytes per title change (Change.bytes)", "B", change_bytes,
            goal="(reference)",
            note=f"the sync message that carried it: {statistics.median(msg_bytes):.0f} B "
                 "median (heads, need and a Bloom filter around the change)"),
    ]
    return rows, {"automerge": {"ran": True, "version": version}}


# == curves: the extra points of the plots =====================================================


def propagation_curve(sz: dict[str, Any], wd: Workdir) -> dict[str, Any]:
    """Bytes to converge on a full mesh for several numbers of replicas (one seed each): the
    floor, crdtim, classic delta propagation, and full state."""
    out: dict[str, Any] = {"replicas": [], "floor": [], "crdtim": [], "classic": [],
                           "state": [], "writes_per_replica": sz["curve_writes"]}
    for n in sz["curve_replicas"]:
        plan = bench_sync.make_plan(n, sz["curve_writes"], 100, seed=2000 + n)
        real = bench_sync.run_crdtim_mesh("mesh", n, plan, 10, wd)
        classic = bench_sync.run_model_mesh("mesh", n, real["events"], real["ids"], "classic")
        state = bench_sync.run_state_mesh("mesh", n, real["events"])
        assert real["converged"] and classic["converged"]
        out["replicas"].append(n)
        out["floor"].append(real["floor"])
        out["crdtim"].append(real["bytes"])
        out["classic"].append(classic["bytes"])
        out["state"].append(state["bytes"])
    return out


def bootstrap_point(n: int, wd: Workdir) -> dict[str, float]:
    src_dir = wd.fresh(f"curve-boot-{n}")
    built = run_child(bench_sync.MODULE, "build", {"path": src_dir, "n": n, "batch": 10_000})
    out = {"n": n}
    for what in ("crdtim", "raw"):
        path = wd.fresh(f"curve-boot-{what}-{n}")
        if what == "raw":
            p, info = bench_sync.spawn_child("rawserve", {"path": src_dir})
            res = trio.run(bench_sync.raw_copy, info["port"], "sync", path)
        else:
            p, info = bench_sync.spawn_child("serve", {"path": src_dir})
            res = trio.run(bench_sync.bootstrap, info["port"], info, "sync", path,
                           max(120.0, n / 1000))
        bench_sync.finish_child(p)
        out[what] = res["s"]
        rm(path)
    rm(src_dir)
    out["build_s"] = built["build_s"]
    return out


# == big: 10M conversations ====================================================================


def bench_big(sz: dict[str, Any], wd: Workdir) -> tuple[list[Row], dict[str, Any]]:
    n = sz["big10"]
    path = wd.fresh("big10")
    batch = 100_000 if n >= 1_000_000 else 10_000
    t = time.perf_counter()
    built = run_child(bench_local.MODULE, "build", {"path": path, "n": n, "batch": batch})
    build_total = time.perf_counter() - t
    note(f"built {n:,} conversations in {built['build_s']:.0f} s "
         f"({built['file_bytes'] / MIB:,.0f} MiB)")
    calls = min(2000, sz["list_calls"] * 2)
    reo = run_child(bench_local.MODULE, "reopen", {"path": path, "n": n, "calls": calls})
    rm(path)
    label = f"N={n:,}"
    judged = n >= 10_000_000
    rss = reo["rss_listed"]["VmRSS"] / MIB
    rows = [
        Row("build", f"build {label} (Replica API, nosync batches of {batch:,})", "conv/s",
            [n / built["build_s"]], goal="(report)",
            note=f"{built['build_s']:,.0f} s ({build_total:,.0f} s with the child process); "
                 f"data.mdb {built['file_bytes'] / MIB:,.0f} MiB; peak RSS while building "
                 f"{built['rss_built']['VmHWM'] / MIB:,.0f} MiB"),
        Row("rss", f"VmRSS of a fresh process after open + list(), {label}", "MiB", [rss],
            goal="<= 200 MB" if judged else "(not judged below 10M)",
            check=value_at_most(200 * 1e6 / MIB) if judged else None, fmt="{:,.1f}",
            note=f"after imports {reo['rss_start']['VmRSS'] / MIB:,.1f} MiB; RssAnon "
                 f"{reo['rss_listed']['RssAnon'] / MIB:,.1f} MiB, RssFile "
                 f"{reo['rss_listed']['RssFile'] / MIB:,.1f} MiB"),
        Row("page", f"list(limit=50) first page, {label}", "us", reo["list_us"],
            goal="<= 1000 us" if judged else "(not judged below 10M)",
            check=value_at_most(1000) if judged else None, fmt="{:,.0f}",
            note=f"median of {calls} calls in a fresh process; first (cold) call "
                 f"{reo['first_call_us']:,.0f} us; get(cid) "
                 f"{statistics.median(reo['get_us']):,.1f} us"),
    ]
    return rows, {"big": {"build": {k: v for k, v in built.items() if k != "dbs"},
                          "dbs": built["dbs"], "reopen_rss": reo["rss_listed"],
                          "first_call_us": reo["first_call_us"], "build_total_s": build_total}}


# == goals =====================================================================================


@dataclass
class Goal:
    text: str
    key: str  # the row it reads
    target: float
    kind: str  # "ratio>=", "value>=", "value<="
    full_only: bool = False  # judged only at the full-mode size

    def judge(self, rows: dict[str, Row], mode: str) -> dict[str, Any]:
        row = rows.get(self.key)
        out: dict[str, Any] = {"goal": self.text, "figure": self.key, "target": self.target,
                               "kind": self.kind}
        if row is None:
            return out | {"met": None, "why": "not measured in this run"}
        value, ratio = row.value, row.ratio
        if self.kind == "ratio>=":
            met, shown = ratio is not None and ratio >= self.target, ratio
        elif self.kind == "ratio<=":
            met, shown = ratio is not None and ratio <= self.target, ratio
        elif self.kind == "value>=":
            met, shown = value >= self.target, value / self.target
        else:
            met, shown = value <= self.target, value / self.target
        out |= {"value": value, "unit": row.unit, "ratio": shown,
                "ratio_meaning": "vs reference" if self.kind.startswith("ratio")
                else "value / target"}
        if self.full_only and mode != "full":
            return out | {"met": None, "why": f"not judged in {mode} mode (smaller size)"}
        return out | {"met": bool(met)}


GOALS = [
    Goal("durable single ops >= 0.9x raw LMDB", "local.a", 0.9, "ratio>="),
    Goal("batched durable ops >= 150k ops/s", "local.b", 150_000, "value>="),
    Goal("nosync single ops >= 0.5x raw LMDB nosync", "nosync.single", 0.5, "ratio>="),
    Goal("remote apply >= 0.5x pycrdt (SyncSession, bursts of 64, sync)",
         "session.burst64-sync", 0.5, "ratio>="),
    Goal("remote apply >= 0.95x raw LMDB sync put (apply_delta one by one, sync)", "local.c",
         0.95, "ratio>="),
    Goal("bytes per change <= pycrdt's (title delta vs update)", "local.d", 1.0, "ratio<="),
    Goal("mesh bytes <= 1.3x the floor", "sync.a-mesh", 1.3, "ratio<="),
    Goal("bytes per single-field change <= 40 B (set_title, on the wire in a session)",
         "sync.b-title-p", 40, "value<="),
    Goal("latency under load: p99 <= 5 ms while 2 peers stream 2,000 changes/s each in",
         "sync.e-load99", 5.0, "value<="),
    Goal("latency p50 <= 2 ms (sync, default linger)", "sync.c-sy-ld", 2.0, "value<="),
    Goal("latency p99 <= 20 ms (sync, default linger)", "sync.c-sy-ld99", 20.0, "value<="),
    Goal("bootstrap 1M conversations <= 4 s", "sync.d", 4.0, "value<=", full_only=True),
    Goal("history first page (50 of 100k messages) <= 2 ms", "messages.history", 2000.0,
         "value<=", full_only=True),
    Goal("streamed reply: wire bytes per append <= pycrdt's update", "messages.stream-bytes",
         1.0, "ratio<="),
    Goal("streamed reply: append -> peer p99 <= 20 ms (sync)", "messages.stream-p99", 20.0,
         "value<="),
    Goal("HTTP list >= 0.6x the same stack's fixed answer", "http.list", 0.6, "ratio>="),
    Goal("HTTP: peer write -> SSE client p99 <= 50 ms", "http.sse-p99", 50.0, "value<="),
    Goal("catch-up, 1% of 1M differing: bytes <= 3x the differing state", "catchup.bytes",
         3.0, "ratio<="),
    Goal("catch-up, 1% of 1M differing: <= 2 s", "catchup.time", 2.0, "value<=",
         full_only=True),
    Goal("10M conversations: RSS <= 200 MB", "big.rss", 200 * 1e6 / MIB, "value<=",
         full_only=True),
    Goal("10M conversations: first page <= 1 ms", "big.page", 1000.0, "value<=",
         full_only=True),
]


# == profiles of missed goals ==================================================================


def _summary(prof: cProfile.Profile, title: str, path: str) -> None:
    out = io.StringIO()
    st = pstats.Stats(prof, stream=out)
    st.strip_dirs()
    out.write(f"== {title}: top 30 by cumulative time ==\n")
    st.sort_stats("cumulative").print_stats(30)
    out.write(f"== {title}: top 20 by own time ==\n")
    st.sort_stats("tottime").print_stats(20)
    text = "\n".join(line.rstrip() for line in out.getvalue().splitlines())
    with open(path, "w") as f:
        f.write(text + "\n")


def profile_goal(key: str, sz: dict[str, Any], wd: Workdir) -> tuple[cProfile.Profile, str] | None:
    """An extra, uncounted run of the crdtim side of a figure under cProfile."""
    prof = cProfile.Profile()
    if key in ("local.a", "local.b"):
        d = wd.fresh("profile-ops")
        r = Replica.open(d, durability="sync")
        n = sz["single_ops"] if key == "local.a" else 10 * sz["single_ops"]
        bench_local.populate(r, 1000, last_seq=max(1, -(-n // 1000)))
        plan = plan_of(n, 1000)

        def ops() -> None:
            for what, i, arg in plan:
                (r.set_title if what == "title" else r.mark_read)(cid(i), arg)

        def batched() -> None:
            for lo in range(0, len(plan), 1000):
                with r.batch():
                    for what, i, arg in plan[lo:lo + 1000]:
                        (r.set_title if what == "title" else r.mark_read)(cid(i), arg)

        prof.runcall(ops if key == "local.a" else batched)
        r.close()
        rm(d)
        return prof, ("durable single ops (sync), set_title / mark_read" if key == "local.a"
                      else "batched durable ops (sync), 1000 per batch")
    if key in ("session.burst64-sync", "local.c"):
        src = make_remote(sz, wd, sz["session_n"])
        path = wd.fresh("profile-session")
        if key == "local.c":
            b = Replica.open(path, durability="sync")
            from crdtim.protocol import FrameDecoder

            dec = FrameDecoder(1 << 30)
            for f in src["frames"]:
                dec.feed(f)
            payloads = []
            while (m := dec.next_message()) is not None:
                payloads.append(m.payload)
            b.apply_delta(payloads[0], origin=src["a_id"])
            prof.runcall(lambda: [b.apply_delta(p, origin=src["a_id"]) for p in payloads[1:]])
            b.close()
            rm(path)
            return prof, "apply_delta one by one (sync)"
        b, s = session_receiver(src, path, "sync")
        frames = src["frames"][1:]
        bursts = [b"".join(frames[i:i + 64]) for i in range(0, len(frames), 64)]
        prof.runcall(lambda: [(s.receive_data(x), s.data_to_send()) for x in bursts])
        b.close()
        rm(path)
        return prof, "SyncSession.receive_data, bursts of 64 one-op DELTA frames (sync)"
    if key == "sync.d":
        n = sz["sync_big"] if sz["sync_big"] <= 200_000 else 200_000
        src_dir = wd.fresh("profile-boot")
        run_child(bench_sync.MODULE, "build", {"path": src_dir, "n": n, "batch": 10_000})
        p, info = bench_sync.spawn_child("serve", {"path": src_dir})
        path = wd.fresh("profile-boot-new")
        prof.runcall(lambda: trio.run(bench_sync.bootstrap, info["port"], info, "sync", path,
                                      max(120.0, n / 1000)))
        bench_sync.finish_child(p)
        rm(src_dir, path)
        return prof, f"bootstrap newcomer (sync), {n:,} conversations (in-process side only)"
    if key == "messages.history":
        path = wd.fresh("profile-history")
        bench_messages.build_history(path, sz["messages"]["history"])
        r = Replica.open(path, durability="sync")
        prof.runcall(lambda: [r.history("long", limit=50) for _ in range(1000)])
        r.close()
        rm(path)
        return prof, "history(limit=50), first page, 1000 calls"
    if key in ("messages.stream-p99", "messages.stream-bytes"):
        prof.runcall(lambda: trio.run(bench_messages.stream_reply, sz["messages"]["appends"],
                                      wd))
        return prof, "a reply streamed as appends to a Node peer (both Nodes)"
    if key in ("sync.c-sy-ld", "sync.c-sy-ld99"):
        prof.runcall(lambda: trio.run(bench_sync.crdtim_latency, "sync", None,
                                      sz["latency_writes"], wd))
        return prof, "commit -> visible at peer, sync, default linger (both Nodes)"
    return None


# == the run ===================================================================================


def results_stem(out_dir: str, mode: str) -> str:
    host = socket.gethostname().split(".")[0] or "host"
    date = datetime.date.today().isoformat()
    return os.path.join(out_dir, f"{date}-{host}" + ("" if mode == "full" else f"-{mode}"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="every benchmark at small sizes, 3 runs (under two minutes)")
    size.add_argument("--tiny", action="store_true",
                      help="tiny sizes, 1 run: checks that the suite runs (figures meaningless)")
    p.add_argument("--out", default=os.path.join(PROJECT, "benchmarks", "results"),
                   help="results directory (default: benchmarks/results)")
    p.add_argument("--dir", default=None,
                   help="working directory for the databases (default: the system temp dir; "
                        "the 10M replica needs ~3 GB)")
    p.add_argument("--runs", type=int, default=None, help="runs per timed figure")
    p.add_argument("--only", default=",".join(GROUPS),
                   help=f"comma-separated groups, of: {', '.join(GROUPS)}")
    p.add_argument("--profile", action="store_true",
                   help="profile (cProfile) the crdtim side of every missed goal; summaries "
                        "are written beside the results")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--boot-convs", type=int, default=None,
                   help="conversations (x 100 messages) of the messages bootstrap (default "
                        f"{bench_messages.SIZES['full']['boot_convs']:,} in the full suite; "
                        f"{bench_messages.BOOT_FULL_CONVS:,} for 1M messages)")
    cfg = p.parse_args(argv)
    mode = "tiny" if cfg.tiny else "quick" if cfg.quick else "full"
    only = [g.strip() for g in cfg.only.split(",") if g.strip()]
    unknown = set(only) - set(GROUPS)
    if unknown:
        p.error(f"unknown group(s) {', '.join(sorted(unknown))}; the groups are "
                f"{', '.join(GROUPS)}")
    sz = dict(SIZES[mode])
    if cfg.runs:
        sz["runs"] = cfg.runs
        sz["d_runs"] = min(cfg.runs, sz["d_runs"])
    sz["messages"] = dict(bench_messages.SIZES[mode], runs=sz["runs"])
    if cfg.boot_convs:
        sz["messages"]["boot_convs"] = cfg.boot_convs
    os.makedirs(cfg.out, exist_ok=True)
    if cfg.dir:
        os.makedirs(cfg.dir, exist_ok=True)
    wd = Workdir(cfg.dir, prefix="crdtim-bench-suite-")
    machine = machine_info(wd.root)
    stem = results_stem(cfg.out, mode)
    if machine["workdir"]["fstype"] in ("tmpfs", "ramfs"):
        note("WARNING: the working directory is in memory: sync figures mean nothing; "
             "pass --dir on a real disk")

    local_cfg = argparse.Namespace(
        runs=sz["runs"], single_ops=sz["single_ops"], sync_deltas=sz["sync_deltas"],
        batches=sz["batches"], deltas=sz["deltas"], big=sz["big"], list_calls=sz["list_calls"])
    sync_cfg = argparse.Namespace(
        runs=sz["runs"], mesh_writes=sz["mesh_writes"], byte_samples=sz["byte_samples"],
        latency_writes=sz["latency_writes"], big=sz["sync_big"], d_runs=sz["d_runs"],
        load_writes=sz["latency_writes"])
    no_prof = bench_sync.Profiler(None)

    rows: list[Row] = []
    details: dict[str, Any] = {}
    plots: dict[str, Any] = {}
    by_key: dict[str, Row] = {}

    def add(prefix: str, new: list[Row]) -> None:
        for r in keyed(prefix, new):
            rows.append(r)
            by_key[r.key] = r

    steps: list[tuple[str, Callable[[], None]]] = []
    if "hw" in only:
        steps.append(("hardware: raw LMDB, msgpack, trio loopback",
                      lambda: add("hw", bench_hw(sz, wd)[0])))
    if "local" in only:
        def local_ops() -> None:
            add("local", bench_local.bench_single(local_cfg, wd))
            add("local", bench_local.bench_batched(local_cfg, wd))

        def local_remote() -> None:
            src = bench_local.make_deltas(local_cfg, wd)
            add("local", bench_local.bench_remote(local_cfg, wd, src))
            add("local", bench_local.bench_bytes(src))

        def local_million() -> None:
            r, details["million"] = bench_local.bench_million(local_cfg, wd)
            add("local", r)

        steps += [("durable single and batched ops vs raw LMDB", local_ops),
                  ("remote deltas one by one vs pycrdt; bytes per change", local_remote),
                  (f"{sz['big']:,} conversations: size, RSS, first page", local_million)]
    if "nosync" in only:
        steps.append(("nosync ops; local updates vs pycrdt",
                      lambda: add("nosync", bench_nosync(sz, wd, by_key))))
    if "session" in only:
        def session() -> None:
            r, d = bench_session(sz, wd)
            add("session", r)
            plots.update(d)

        steps.append(("remote deltas through SyncSession and Node vs pycrdt", session))
    if "automerge" in only:
        def automerge() -> None:
            r, d = bench_automerge(sz, wd, by_key)
            add("automerge", r)
            details.update(d)
            if not d["automerge"]["ran"]:
                note(f"automerge: {d['automerge']['reason']}")

        steps.append(("Automerge: local, remote, bytes", automerge))
    if "sync" in only:
        def mesh() -> None:
            r, details["mesh"] = bench_sync.bench_mesh(sync_cfg, wd, no_prof)
            add("sync", r)
            add("sync", bench_sync.bench_bytes(sync_cfg, wd))

        def latency() -> None:
            r, d = bench_sync.bench_latency(sync_cfg, wd, no_prof)
            add("sync", r)
            plots["latency"] = {dur: {name: quantiles(xs) for name, xs in by_name.items()}
                                for dur, by_name in d.pop("samples", {}).items()}
            details["latency"] = d

        def boot() -> None:
            r, details["bootstrap"] = bench_sync.bench_bootstrap(sync_cfg, wd, no_prof)
            add("sync", r)

        def load() -> None:
            r, details["load"] = bench_sync.bench_load(sync_cfg, wd)
            add("sync", r)

        steps += [("bytes to converge (mesh/ring/star/line); bytes per change on the wire", mesh),
                  ("commit -> visible at peer latency", latency),
                  ("commit -> visible at peer latency under load", load),
                  (f"bootstrap {sz['sync_big']:,} conversations", boot)]
    if "messages" in only:
        msz = sz["messages"]

        def messages_post() -> None:
            add("messages", bench_messages.bench_post(msz, wd))
            add("messages", bench_messages.bench_history(msz, wd))

        def messages_stream() -> None:
            r, plots["messages"] = bench_messages.bench_stream(msz, wd)
            add("messages", r)

        def messages_boot() -> None:
            r, d = bench_messages.bench_boot(msz, wd)
            add("messages", r)
            plots.setdefault("messages", {}).update(d)

        steps += [("messages: durable posts; first history page of "
                   f"{msz['history']:,}", messages_post),
                  (f"messages: a reply streamed as {msz['appends']:,} appends to a peer",
                   messages_stream),
                  (f"messages: bootstrap {msz['boot_convs']:,} x {msz['boot_messages']} "
                   "messages", messages_boot)]
    if "http" in only:
        def http() -> None:
            add("http", bench_http.bench_rows(sz["http_seconds"], sz["http_writes"],
                                              sz["runs"]))

        steps += [("HTTP: list requests/s beside the ceiling; peer write -> SSE client", http)]
    if "catchup" in only:
        n_catchup = bench_catchup.SIZES[mode]

        def catchup() -> None:
            r, details["catchup"] = bench_catchup.bench_catchup(n_catchup, sz["runs"], wd)
            add("catchup", r)

        steps.append((f"catch-up of {n_catchup:,} conversations, 1% differing", catchup))
    if "curves" in only:
        def curve_mesh() -> None:
            plots["propagation"] = propagation_curve(sz, wd)

        def curve_boot() -> None:
            pts = [bootstrap_point(n, wd) for n in sz["curve_boot"]]
            big = by_key.get("sync.d")
            if big is not None and big.refs:
                pts.append({"n": sz["sync_big"], "crdtim": big.value,
                            "raw": statistics.median(big.refs)})
            plots["bootstrap"] = pts

        steps += [("bytes to converge against number of replicas", curve_mesh),
                  ("bootstrap time against number of conversations", curve_boot)]
    if "big" in only:
        def big() -> None:
            r, d = bench_big(sz, wd)
            add("big", r)
            details.update(d)

        steps.append((f"{sz['big10']:,} conversations: RSS and first page", big))

    progress = Progress([name for name, _ in steps])
    t_all = time.perf_counter()
    try:
        for name, fn in steps:
            progress.step(name)
            t = time.perf_counter()
            # Benchmark modules print their own progress lines; keep stdout for the table.
            with _stdout_to_stderr():
                fn()
            details.setdefault("step_seconds", {})[name] = time.perf_counter() - t
        progress.finish()
        elapsed = time.perf_counter() - t_all
        machine["loadavg_end"] = os.getloadavg()
        goals = [g.judge(by_key, mode) for g in GOALS if any(g.key.startswith(x + ".")
                                                             for x in only)]
        profiles = []
        if cfg.profile:
            for g, goal in zip([g for g in GOALS if any(g.key.startswith(x + ".") for x in only)],
                               goals):
                if goal.get("met") is False:
                    note(f"profiling: {g.text}")
                    with _stdout_to_stderr():
                        got = profile_goal(g.key, sz, wd)
                    if got is None:
                        goal["profile"] = None
                        continue
                    prof, title = got
                    path = f"{stem}-profile-{g.key.replace('.', '-')}.txt"
                    _summary(prof, title, path)
                    goal["profile"] = os.path.basename(path)
                    profiles.append(path)
    finally:
        wd.cleanup()

    doc = {
        "schema": 1, "mode": mode, "date": datetime.datetime.now().astimezone().isoformat(
            timespec="seconds"),
        "command": " ".join(["python -m benchmarks", *(argv if argv is not None
                                                       else sys.argv[1:])]),
        "elapsed_s": elapsed, "sizes": sz, "machine": machine,
        "figures": [figure_json(r) for r in rows], "goals": goals, "plots": plots,
        "details": compact(details),
    }
    with open(stem + ".json", "w") as f:
        json.dump(doc, f, indent=1, default=str)
    with open(stem + ".md", "w") as f:
        f.write(markdown(doc, rows))
    written = [stem + ".json", stem + ".md"]
    if not cfg.no_plots:
        from . import plots as plotting

        written += plotting.write_all(doc, stem)
    print_table(rows, key_width=22)
    print()
    print(goals_text(goals))
    print(f"\n{mode} suite: {elapsed:,.1f} s; wrote:")
    for path in written + profiles:
        print(f"  {os.path.relpath(path)}")
    return 0


class _stdout_to_stderr:
    def __enter__(self) -> None:
        self.saved = sys.stdout
        sys.stdout = sys.stderr

    def __exit__(self, *exc: object) -> None:
        sys.stdout = self.saved


#: Sample lists longer than this are summarised in the JSON, to keep results files small.
MAX_SAMPLES = 20


def figure_json(row: Row) -> dict[str, Any]:
    j = row.as_json()
    j["samples"] = compact({"values": row.values, "references": row.refs}, MAX_SAMPLES)
    return j


def compact(obj: Any, limit: int = 50) -> Any:
    """`obj` with every list of over `limit` numbers replaced by its median, min, max and
    count (per-call latencies and per-change sizes would make the JSON megabytes)."""
    if isinstance(obj, dict):
        return {k: compact(v, limit) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        if len(obj) > limit and all(isinstance(x, (int, float)) for x in obj):
            return {"median": statistics.median(obj), "min": min(obj), "max": max(obj),
                    "count": len(obj)}
        return [compact(x, limit) for x in obj]
    return obj


def quantiles(xs: list[float]) -> list[float]:
    """The 0th..100th percentiles: enough to draw a distribution, whatever the sample count."""
    return [round(bench_sync.percentile(xs, p), 4) for p in range(101)] if xs else []


def _fmt(row_fmt: str, x: float | None) -> str:
    return "-" if x is None else row_fmt.format(x)


def goals_text(goals: list[dict[str, Any]]) -> str:
    lines = ["goals:"]
    for g in goals:
        status = {True: "met", False: "MISSED", None: "-"}[g.get("met")]
        if "value" in g:
            lines.append(f"  {status:6}  {g['goal']}: {g['value']:,.3g} {g['unit']}, "
                         f"{g['ratio']:.2f}x {g['ratio_meaning']}"
                         + (f" ({g['why']})" if g.get("why") else ""))
        else:
            lines.append(f"  -       {g['goal']}: {g.get('why')}")
    return "\n".join(lines)


def markdown(doc: dict[str, Any], rows: list[Row]) -> str:
    m = doc["machine"]
    pk = ", ".join(f"{k} {v}" for k, v in m["packages"].items() if v)
    out = [f"# crdtim benchmarks: {doc['date']} ({doc['mode']} mode)", "",
           f"Machine: {m['cpu']}, {m['cores']} cores, "
           f"{(m['memory_bytes'] or 0) / 2**30:.1f} GiB; Python {m['python']} "
           f"({m['platform']}); {pk}; LMDB library {m['lmdb_library']}; git {m['git']}; "
           f"databases on {m['workdir']['fstype']} ({m['workdir']['device']}). Load average "
           f"{m['loadavg_start'][0]:.2f} at the start, {m['loadavg_end'][0]:.2f} at the end. "
           f"Suite time {doc['elapsed_s']:,.0f} s.", "", "## Goals", "",
           "| goal | measured | ratio | met |", "|---|---|---|---|"]
    for g in doc["goals"]:
        if "value" not in g:
            out.append(f"| {g['goal']} | - | - | {g.get('why')} |")
            continue
        met = {True: "yes", False: "**no**", None: g.get("why", "-")}[g["met"]]
        out.append(f"| {g['goal']} | {g['value']:,.3g} {g['unit']} | {g['ratio']:.2f}x "
                   f"({g['ratio_meaning']}) | {met} |")
    out += ["", "## Every figure", "",
            "Median [min..max] of the runs; the reference measured in the same run; the ratio "
            "is the median of per-run ratios.", "",
            "| key | figure | value | runs | reference | ratio | goal |",
            "|---|---|---|---|---|---|---|"]
    for r in rows:
        val = spread(r.values, r.fmt)
        ref = "-" if not r.refs else f"{r.fmt.format(statistics.median(r.refs))} {r.unit}"
        ratio = spread(r.ratios, "{:.2f}x") if r.ratios else "-"
        fig = r.figure.strip().replace("|", "/")
        out.append(f"| {r.key} | {fig} | {val} {r.unit} | {len(r.values)} | {ref} | {ratio} | "
                   f"{r.goal or '-'} |")
    out += ["", "## Notes", ""]
    for r in rows:
        bits = [b for b in (f"reference: {r.ref_label}" if r.ref_label else "", r.note) if b]
        if bits:
            out.append(f"- **{r.key}**: " + "; ".join(bits).replace("|", "/"))
    am = doc["details"].get("automerge")
    if am and not am.get("ran"):
        out.append(f"- **automerge**: did not run: {am['reason']}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.exit(main())
