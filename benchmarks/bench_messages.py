"""The message history's figures, each beside a reference measured in the same run.

    python -m benchmarks.bench_messages [--quick] [--json FILE] [--dir DIR] [--only ...]
                                        [--boot-convs N]

(`make bench` runs these as the suite's `messages` group.) Figures, by --only name:

  post     durable posts/s (sync, one post per commit) beside raw LMDB's one synced put per
           transaction of the mean stored message record, and beside set_title on the same
           replica (a conversation-field op), all three timed in alternating blocks; then
           1000 posts per batch beside raw LMDB's 1000 puts per synced transaction and 1000
           set_titles per batch.
  history  the first page (50 messages) of a conversation holding 100k messages (built in
           nosync batches), in a reopened replica, beside a raw LMDB cursor reading the same
           50 stored records, newest first, from a database keyed by their position.
  stream   a reply streamed as 1000 appends of 4 characters on replica A (sync), replicated
           by a real Node link over loopback TCP to replica B (sync), one append at a time:
           bytes on the wire (both directions: DELTA frames and their ACKs) per append beside
           pycrdt's update for the same text insert, and the latency from calling append on
           A to B's change event naming the message, beside raw LMDB + trio doing the same.
  boot     bootstrap by state transfer of a replica holding 10,000 conversations x 100
           messages (1M; the default run: 2,000 x 100, full size with --boot-convs 10000):
           time and bytes beside a raw copy of the same LMDB environment (env.copyfd, compact)
           over loopback TCP into a file, fsynced.

Timed figures are medians of several runs (5, 3 with --quick), each run measuring crdtim and
its reference back to back; ratios are medians of the per-run ratios. Not part of the test
suite (tests/test_bench_quick.py runs it at tiny sizes and checks only that it reports).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from typing import Any, Callable

import lmdb
import pycrdt
import trio

import crdtim
from crdtim import Node, Replica
from crdtim.replica._message_index import MessageIndex

from . import bench_local, bench_sync
from .report import (
    Row,
    Workdir,
    announce,
    answer_child,
    cid,
    common_args,
    filesystem_of,
    print_table,
    ratio_at_most,
    rm,
    run_child,
    run_meta,
    value_at_most,
    write_json,
)

MODULE = "benchmarks.bench_messages"
T0 = 1_700_000_000_000
MIB = 1024 * 1024

#: Sizes per mode (the suite passes its own; --quick and the default here).
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(runs=1, post_ops=20, post_batches=2, history=2000, history_calls=20,
                 appends=30, boot_convs=20, boot_messages=10, boot_runs=1),
    "quick": dict(runs=3, post_ops=200, post_batches=3, history=20_000, history_calls=300,
                  appends=300, boot_convs=500, boot_messages=100, boot_runs=1),
    "full": dict(runs=5, post_ops=1000, post_batches=10, history=100_000, history_calls=1000,
                 appends=1000, boot_convs=2000, boot_messages=100, boot_runs=3),
}
#: The figure the brief asks for: 10,000 conversations x 100 messages (--boot-convs 10000).
BOOT_FULL_CONVS = 10_000
CHUNK = "abcd"  # one streamed token: ~4 characters


def note(text: str) -> None:
    print(f"    {text}", flush=True)


def mean_record_size(r: Replica) -> int:
    """Mean stored size of the replica's message records (what a raw put would write)."""
    sizes = r.store.read(lambda t: [len(v) for _, v in t.scan("messages", b"")])
    return round(statistics.fmean(sizes)) if sizes else 100


# == post: durable single and batched =========================================================


def interleaved3(fns: list[Callable[[int, int], Any]], n: int, block: int, first: int
                 ) -> list[float]:
    """Total seconds of each fn(lo, hi) over range(n), in blocks, rotating who goes first."""
    times = [0.0] * len(fns)
    for j, lo in enumerate(range(0, n, block)):
        hi = min(n, lo + block)
        k = (j + first) % len(fns)
        for w in list(range(k, len(fns))) + list(range(k)):
            t = time.perf_counter()
            fns[w](lo, hi)
            times[w] += time.perf_counter() - t
    return times


def bench_post(sz: dict[str, Any], wd: Workdir) -> list[Row]:
    n_convs, n, batch, n_batches = 100, sz["post_ops"], 1000, sz["post_batches"]
    res: dict[str, list[float]] = {k: [] for k in ("post", "title", "raw", "bpost", "btitle",
                                                   "braw")}
    sizes = []
    keys = [b"msg-%07d" % i for i in range(10_000)]
    for run in range(sz["runs"]):
        rdir, edir = wd.fresh("post-replica"), wd.fresh("post-raw")
        r = Replica.open(rdir, durability="sync")
        with r.batch():
            for i in range(n_convs):
                r.post(cid(i), f"first message of conversation {i}", at=T0 + i)
        size = mean_record_size(r)
        sizes.append(size)
        env = bench_local.raw_env(edir, sync=True)
        db = env.open_db(b"messages")
        bench_local.raw_populate(env, db, keys[:1000], size)
        value = os.urandom(size)

        def post(lo: int, hi: int) -> None:
            for k in range(lo, hi):
                r.post(cid(k * 7919 % n_convs), f"message {k}: see you at seven?")

        def title(lo: int, hi: int) -> None:
            for k in range(lo, hi):
                r.set_title(cid(k * 7919 % n_convs), f"Title number {k}")

        def raw(lo: int, hi: int) -> None:
            for k in range(lo, hi):
                with env.begin(write=True) as t:
                    t.put(keys[k % 10_000], value, db=db)

        times = interleaved3([post, title, raw], n, bench_local.BLOCK, run)
        for name, dt in zip(("post", "title", "raw"), times):
            res[name].append(n / dt)

        def bpost(lo: int, hi: int) -> None:
            for b in range(lo, hi):
                with r.batch():
                    for k in range(b * batch, (b + 1) * batch):
                        r.post(cid(k * 7919 % n_convs), f"batched message {k}")

        def btitle(lo: int, hi: int) -> None:
            for b in range(lo, hi):
                with r.batch():
                    for k in range(b * batch, (b + 1) * batch):
                        r.set_title(cid(k * 7919 % n_convs), f"Batched title {k}")

        def braw(lo: int, hi: int) -> None:
            for b in range(lo, hi):
                with env.begin(write=True) as t:
                    for k in range(b * batch, (b + 1) * batch):
                        t.put(keys[k % 10_000], value, db=db)

        times = interleaved3([bpost, btitle, braw], n_batches, 1, run)
        for name, dt in zip(("bpost", "btitle", "braw"), times):
            res[name].append(n_batches * batch / dt)
        r.close()
        env.close()
        rm(rdir, edir)
    raw_label = (f"raw LMDB sync=True, 1 put of {statistics.median(sizes):.0f} B (the mean "
                 "stored message record) per write txn")
    return [
        Row("post", "durable posts/s (sync, 1 post = 1 commit)", "ops/s", res["post"],
            res["raw"], ref_label=raw_label, goal="(context)",
            note=f"{n} posts per run over {n_convs} conversations, timed in blocks of "
                 f"{bench_local.BLOCK} alternating with set_title and the raw puts"),
        Row("post-vs-title", "  same posts/s beside set_title on the same replica", "ops/s",
            res["post"], res["title"], ref_label="set_title, sync, 1 op = 1 commit, same "
                                                  "blocks", goal="(context)"),
        Row("post-batch", f"batched durable posts/s (sync, {batch} per batch)", "ops/s",
            res["bpost"], res["braw"], ref_label=f"raw LMDB sync=True, {batch} puts per txn",
            goal="(context)", note=f"{n_batches} batches per run, alternating with set_title "
                                   "batches and the raw transactions"),
        Row("post-batch-vs-title", "  same beside batched set_title", "ops/s", res["bpost"],
            res["btitle"], ref_label=f"set_title, {batch} per batch, sync", goal="(context)"),
    ]


# == history: the first page of a long conversation ===========================================


def build_history(path: str, n: int, batch: int = 10_000) -> float:
    """One conversation of n messages, posted in nosync batches; the build's seconds."""
    r = Replica.open(path, durability="nosync")
    t = time.perf_counter()
    for lo in range(0, n, batch):
        with r.batch():
            for k in range(lo, min(n, lo + batch)):
                r.post("long", f"message {k}: the quick brown fox jumps over the lazy dog",
                       id=f"m{k:08d}", at=T0 + k)
    dt = time.perf_counter() - t
    r.close()
    return dt


def raw_history_env(r: Replica, path: str, n: int) -> lmdb.Environment:
    """A raw LMDB database of the conversation's stored message records keyed by position."""
    def read(t: Any) -> list[tuple[bytes, bytes]]:
        index = MessageIndex(t, "long")
        stored = {name[1:]: v for name, v in index.records()}
        return [(pos, stored[pos[pos.rindex(b"\x00") + 1:]])
                for pos in index.visible_positions(None, n)]

    pairs = r.store.read(read)
    env = bench_local.raw_env(path, sync=False)
    db = env.open_db(b"records")
    with env.begin(write=True) as t:
        for k, v in pairs:
            t.put(k, v, db=db)
    return env


def bench_history(sz: dict[str, Any], wd: Workdir) -> list[Row]:
    n, calls = sz["history"], sz["history_calls"]
    path = wd.fresh("history")
    build_s = build_history(path, n)
    note(f"built {n:,} messages in {build_s:.1f} s")
    r = Replica.open(path, durability="sync")
    env = raw_history_env(r, wd.fresh("history-raw"), n)
    db = env.open_db(b"records")
    first = r.history("long", limit=50)
    assert len(first.items) == 50 and first.items[0].id == f"m{n - 1:08d}", first.items[:1]

    def raw_page() -> list[tuple[bytes, bytes]]:
        with env.begin() as t, t.cursor(db=db) as cur:
            cur.last()
            out = []
            for kv in cur.iterprev():
                out.append(kv)
                if len(out) == 50:
                    break
            return out

    assert len(raw_page()) == 50
    mine, ref = [], []
    for run in range(sz["runs"]):
        a: list[float] = []
        b: list[float] = []
        for k in range(calls):
            for which in ((0, 1) if (k + run) % 2 == 0 else (1, 0)):
                t = time.perf_counter()
                if which == 0:
                    r.history("long", limit=50)
                else:
                    raw_page()
                (a if which == 0 else b).append((time.perf_counter() - t) * 1e6)
        mine.append(statistics.median(a))
        ref.append(statistics.median(b))
    r.close()
    env.close()
    judged = n >= 100_000
    return [Row(
        "history", f"history(limit=50), first page of {n:,} messages", "us", mine, ref,
        ref_label="raw LMDB: a read txn, a cursor from the last key, 50 (key, record) pairs "
                  "of the same stored records keyed by position, no decoding",
        goal="<= 2000 us" if judged else "(not judged below 100k)",
        check=value_at_most(2000) if judged else None,
        note=f"median of {calls} calls per run in a reopened replica (calls alternate with "
             f"the reference's); built in {build_s:.1f} s (nosync batches of 10,000 posts)")]


# == stream: a reply streamed to a peer =======================================================


async def stream_reply(n: int, wd: Workdir) -> dict[str, Any]:
    """A (sync) posts an empty reply, then appends CHUNK n times, each once B (sync, over a
    Node link) has the one before: per-append latency to B's change event, wire bytes."""
    adir, bdir = wd.fresh("stream-A"), wd.fresh("stream-B")
    a = Replica.open(adir, durability="sync")
    b = Replica.open(bdir, durability="sync")
    a.post("chat", "What is a CRDT?", id="question", at=T0)
    target: list[Any] = [None, 0.0]  # the Event to set, time seen

    def seen(change: crdtim.Change) -> None:
        if change.origin == "remote" and "reply" in change.messages and target[0] is not None:
            target[1] = time.perf_counter()
            target[0].set()

    sub = b.subscribe(seen)
    lat: list[float] = []
    wire: list[int] = []
    try:
        with trio.CancelScope() as everything:  # torn down cancelled: see bench_sync
            async with Node(a, listen=("127.0.0.1", 0)) as na:
                async with Node(b, peers=[("127.0.0.1", na.port)]):
                    ev = target[0] = trio.Event()
                    a.post("chat", "", role="assistant", id="reply", at=T0 + 1)
                    with trio.fail_after(30):
                        await ev.wait()
                        await na.wait_caught_up(1)
                    start = na.stats.bytes_sent + na.stats.bytes_received
                    for _ in range(n):
                        ev = target[0] = trio.Event()
                        t0 = time.perf_counter()
                        a.append("chat", "reply", CHUNK)
                        with trio.fail_after(10):
                            await ev.wait()
                        lat.append((target[1] - t0) * 1000)
                        with trio.fail_after(10):
                            await na.wait_caught_up(1)  # its ACK is back: counted, clean start
                    wire.append(na.stats.bytes_sent + na.stats.bytes_received - start)
                    everything.cancel()
        got, want = b.message("chat", "reply"), a.message("chat", "reply")
        assert got is not None and want is not None and got.text == want.text == CHUNK * n
    finally:
        sub.close()
        a.close()
        b.close()
        rm(adir, bdir)
    return {"lat": lat, "wire": wire[0]}


def payload_sizes(n: int, wd: Workdir) -> list[int]:
    """The delta of each of the same n appends, alone (delta_since(head - 1)), on a replica
    with no peer: with a Node, acknowledged entries leave the log and delta_since below the
    floor is no longer that one entry."""
    path = wd.fresh("stream-payload")
    r = Replica.open(path, durability="nosync")
    r.post("chat", "", role="assistant", id="reply", at=T0 + 1)
    sizes = []
    for _ in range(n):
        r.append("chat", "reply", CHUNK)
        sizes.append(len(r.delta_since(r.head - 1)))
    r.close()
    rm(path)
    return sizes


def pycrdt_stream(n: int) -> list[int]:
    """pycrdt's update bytes for the same n inserts at the end of a Text, one transaction
    each (what a Yjs provider would send per token)."""
    doc = pycrdt.Doc()
    text = doc.get("reply", type=pycrdt.Text)
    sizes: list[int] = []
    sub = doc.observe(lambda e: sizes.append(len(e.update)))
    for _ in range(n):
        text += CHUNK
    doc.unobserve(sub)
    assert str(text) == CHUNK * n
    return sizes


def bench_stream(sz: dict[str, Any], wd: Workdir) -> tuple[list[Row], dict[str, Any]]:
    n = sz["appends"]
    res: dict[str, list[float]] = {k: [] for k in ("p50", "p99", "raw50", "raw99", "wire",
                                                   "payload")}
    samples: dict[str, list[float]] = {}
    py = pycrdt_stream(n)
    py_per = sum(py) / n
    payload = statistics.fmean(payload_sizes(n, wd))  # exact: the same in every run
    for run in range(sz["runs"]):
        order = ("crdtim", "raw") if run % 2 == 0 else ("raw", "crdtim")
        for what in order:
            if what == "raw":
                raw = trio.run(bench_sync.raw_latency, "sync", n, wd)
            else:
                got = trio.run(stream_reply, n, wd)
        res["p50"].append(bench_sync.percentile(got["lat"], 50))
        res["p99"].append(bench_sync.percentile(got["lat"], 99))
        res["raw50"].append(bench_sync.percentile(raw, 50))
        res["raw99"].append(bench_sync.percentile(raw, 99))
        res["wire"].append(got["wire"] / n)
        res["payload"].append(payload)
        if run == 0:
            samples = {"crdtim": got["lat"], "raw": raw}
    pylabel = f"pycrdt {pycrdt.__version__}: update of one Text insert (own transaction)"
    raw_label = "raw: LMDB put (sync) + 60 B over trio loopback TCP + LMDB put (sync)"
    rows = [
        Row("stream-bytes", f"streamed reply: bytes on the wire per append ({n} x "
                            f"{len(CHUNK)} chars)", "B", res["wire"], [py_per] * len(res["wire"]),
            ref_label=pylabel, goal="<= 1.00x", check=ratio_at_most(1.0), fmt="{:,.1f}",
            note="both directions of the Node link while the appends stream: DELTA frames "
                 "and their ACKs; one append at a time, each once the peer has the one "
                 f"before; pycrdt's {sum(py):,} B for the same {n} inserts are payload only "
                 "(no framing or acknowledgement)"),
        Row("stream-payload", "  same, the delta payload per append", "B", res["payload"],
            [py_per] * len(res["payload"]), ref_label=pylabel, goal="(context)", fmt="{:,.1f}",
            note="delta_since(head - 1) after each of the same appends on a replica with no "
                 "peer: what a custom transport would send"),
        Row("stream-p50", "append -> visible at peer (B's change event), sync: p50", "ms",
            res["p50"], res["raw50"], ref_label=raw_label, goal="(context)", fmt="{:,.2f}",
            note="from calling append on A (its synced commit included) to B's subscribe "
                 "callback naming the message, B having applied it (synced); default linger"),
        Row("stream-p99", "  same, p99", "ms", res["p99"], res["raw99"],
            ref_label="raw, p99", goal="p99 <= 20 ms", check=value_at_most(20.0),
            fmt="{:,.2f}"),
    ]
    plot = {"latency": {"crdtim": _quantiles(samples.get("crdtim", [])),
                        "raw": _quantiles(samples.get("raw", []))},
            "bytes": {"crdtim wire": statistics.median(res["wire"]),
                      "crdtim payload": statistics.median(res["payload"]),
                      "pycrdt update": py_per}}
    return rows, plot


def _quantiles(xs: list[float]) -> list[float]:
    return [round(bench_sync.percentile(xs, p), 4) for p in range(101)] if xs else []


# == boot: state transfer of a replica with many messages =====================================


def child_build(spec: dict[str, Any]) -> dict[str, Any]:
    """convs conversations x messages posts each, nosync batches of ~10k posts; log trimmed
    so that a newcomer gets the state."""
    path, convs, per = spec["path"], spec["convs"], spec["messages"]
    r = Replica.open(path, durability="nosync", log_retention=0)
    t = time.perf_counter()
    step = max(1, 10_000 // per)
    for lo in range(0, convs, step):
        with r.batch():
            for i in range(lo, min(convs, lo + step)):
                c = cid(i)
                r.set_title(c, f"Conversation {i}")
                for k in range(per):
                    r.post(c, f"message {k} of conversation {i}: see you at seven?",
                           role="user" if k % 2 == 0 else "assistant", at=T0 + i * per + k)
    build_s = time.perf_counter() - t
    r.trim_log()
    out = {"build_s": build_s, "head": r.head, "id": r.id, "count": len(r),
           "file_bytes": os.path.getsize(os.path.join(path, "data.mdb"))}
    r.close()
    return out


def child_copyserve(spec: dict[str, Any]) -> dict[str, Any]:
    """Stream a compact copy of the replica's LMDB environment (env.copyfd) to one client."""
    env = lmdb.open(spec["path"], readonly=True, lock=False, max_dbs=32)
    with socket.create_server(("127.0.0.1", 0)) as srv:
        print(json.dumps({"port": srv.getsockname()[1]}), flush=True)
        conn, _ = srv.accept()
        with conn:
            env.copyfd(conn.fileno(), compact=True)
            conn.shutdown(socket.SHUT_WR)
    env.close()
    return {}


def raw_env_copy(port: int, path: str) -> dict[str, Any]:
    """Receive the copy into path/data.mdb, fsync it; then open it to check it is whole."""
    os.makedirs(path)
    t = time.perf_counter()
    received = 0
    with socket.create_connection(("127.0.0.1", port)) as s, \
            open(os.path.join(path, "data.mdb"), "wb") as f:
        while data := s.recv(1 << 20):
            f.write(data)
            received += len(data)
        f.flush()
        os.fsync(f.fileno())
    dt = time.perf_counter() - t
    env = lmdb.open(path, readonly=True, lock=False, max_dbs=32)
    with env.begin() as txn:
        names = [k for k, _ in txn.cursor()]
    env.close()
    assert b"messages" in names, names
    return {"s": dt, "bytes": received}


def bench_boot(sz: dict[str, Any], wd: Workdir) -> tuple[list[Row], dict[str, Any]]:
    convs, per = sz["boot_convs"], sz["boot_messages"]
    src = wd.fresh("boot-messages-source")
    built = run_child(MODULE, "build", {"path": src, "convs": convs, "messages": per})
    note(f"built {convs:,} x {per} messages in {built['build_s']:.1f} s "
                         f"({built['file_bytes'] / MIB:,.0f} MiB)")
    res: dict[str, list[float]] = {k: [] for k in ("s", "bytes", "raw_s", "raw_bytes")}
    timeout = max(120.0, convs * per / 2000)
    for run in range(sz["boot_runs"]):
        for what in (("crdtim", "raw") if run % 2 == 0 else ("raw", "crdtim")):
            path = wd.fresh(f"boot-messages-{what}")
            if what == "raw":
                p, info = bench_sync.spawn_child("copyserve", {"path": src}, module=MODULE)
                out = raw_env_copy(info["port"], path)
                bench_sync.finish_child(p)
                res["raw_s"].append(out["s"])
                res["raw_bytes"].append(out["bytes"] / MIB)
            else:
                p, info = bench_sync.spawn_child("serve", {"path": src})
                out = trio.run(bench_sync.bootstrap, info["port"], info, "sync", path, timeout)
                bench_sync.finish_child(p)
                assert out["count"] == convs, (out["count"], convs)
                check = Replica.open(path, create=False)
                page = check.history(cid(convs - 1), limit=per)
                check.close()
                assert len(page.items) == per and not page.has_more, len(page.items)
                res["s"].append(out["s"])
                res["bytes"].append(out["bytes"] / MIB)
                note(f"run {run + 1}: {out['s']:.2f} s")
            rm(path)
    rm(src)
    size = f"{convs:,} conversations x {per} messages"
    full = convs >= BOOT_FULL_CONVS
    rows = [
        Row("boot", f"bootstrap {size}, newcomer sync: time", "s", res["s"], res["raw_s"],
            ref_label="raw: env.copyfd(compact) of the source's LMDB environment over "
                      "loopback TCP into a file, fsynced",
            goal="(report)", fmt="{:,.2f}",
            note=f"source built in {built['build_s']:.1f} s (nosync, Replica API), log "
                 "trimmed: the newcomer gets a state transfer; time from Node start until it "
                 "holds the source's head" + ("" if full else f"; the full size is "
                                               f"--boot-convs {BOOT_FULL_CONVS}")),
        Row("boot-B", "  bytes on the wire (both directions)", "MiB", res["bytes"],
            res["raw_bytes"], ref_label=f"the compact copy's bytes (data.mdb at the source: "
                                        f"{built['file_bytes'] / MIB:,.1f} MiB)",
            goal="(report)", fmt="{:,.1f}"),
    ]
    return rows, {"bootstrap": {"crdtim": statistics.median(res["s"]),
                                "raw": statistics.median(res["raw_s"]), "messages": convs * per}}


# == the group, and running it alone ==========================================================


def run_all(sz: dict[str, Any], wd: Workdir, only: list[str]
            ) -> tuple[list[Row], dict[str, Any]]:
    rows: list[Row] = []
    plot: dict[str, Any] = {}
    if "post" in only:
        rows += bench_post(sz, wd)
    if "history" in only:
        rows += bench_history(sz, wd)
    if "stream" in only:
        r, plot = bench_stream(sz, wd)
        rows += r
    if "boot" in only:
        r, boot = bench_boot(sz, wd)
        rows += r
        plot.update(boot)
    return rows, plot


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_messages",
                                description=__doc__.split("\n\n")[0])
    common_args(p, "post,history,stream,boot")
    p.add_argument("--boot-convs", type=int, help=f"conversations of the bootstrap source "
                                                  f"(100 messages each; full: {BOOT_FULL_CONVS})")
    cfg = p.parse_args(argv)
    if answer_child(cfg, {"build": child_build, "copyserve": child_copyserve}):
        return 0
    sz = dict(SIZES["quick" if cfg.quick else "full"])
    if cfg.runs:
        sz["runs"] = cfg.runs
    if cfg.boot_convs:
        sz["boot_convs"] = cfg.boot_convs
    wd = Workdir(cfg.dir)
    fs = filesystem_of(wd.root)
    announce("message history", cfg.quick, sz["runs"], fs)
    try:
        rows, _ = run_all(sz, wd, cfg.only.split(","))
    finally:
        wd.cleanup()
    print_table(rows)
    if cfg.json:
        write_json(cfg.json, run_meta(MODULE, argv, quick=cfg.quick, runs=sz["runs"],
                                      workdir=fs, pycrdt=pycrdt.__version__), rows, {})
    return 0


if __name__ == "__main__":
    sys.exit(main())
