"""Local performance of crdtim, each figure beside a reference measured in the same run.

    python -m benchmarks.bench_local [--quick] [--json FILE] [--dir DIR] [--only a,b,...]

Figures (the letters are the --only names):

  a  durable single ops/s: Replica.open(dir, durability="sync"), one set_title or
     message_arrived per commit  vs  raw LMDB (sync=True), one put per write transaction,
     value size = the replica's mean stored conversation size, same filesystem. a2: the
     ceiling of crdtim's layout, raw LMDB writing the same B-trees as a crdtim commit.
  b  batched durable ops/s: `with r.batch():` of 1000 mixed title/arrive/read ops over many
     conversations  vs  raw LMDB, 1000 puts per synced transaction.
  c  remote single-field deltas applied per second: 10k one-op deltas made on replica A
     (each `delta_since(head - 1)`), applied one by one to replica B with apply_delta
     (sync)  vs  pycrdt applying the same changes, captured as one update each, to a fresh
     Doc in memory. Also nosync, and in joined batches of 1000 log entries, for context.
  d  bytes per single-field change: len(delta) vs the pycrdt update for the same change.
  e  a replica of 1M conversations (50k with --quick), built in nosync batches of 10k: build
     rate and data.mdb size (vs raw LMDB holding the same keys, values and ordering index),
     process RSS after the build and after reopening in a fresh process (vs the same for a
     10k replica, one batch: the state must not live in Python memory), and list(limit=50) latency (vs a
     raw LMDB read of the same 50 index keys and values).

Timed figures are the median of several runs (5, 3 with --quick) with min and max; each run
measures crdtim and its reference back to back (alternating which goes first), and the ratio
column is the median of the per-run ratios. Durable figures mean nothing on tmpfs: the
working directory (default: the system temp dir, or --dir) is reported with its filesystem.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import random
import statistics
import sys
import time
from typing import Any, Callable

import lmdb
import pycrdt

from crdtim import Replica, codec

from .report import (
    announce,
    answer_child,
    common_args,
    Row,
    Workdir,
    cid,
    filesystem_of,
    print_table,
    ratio_at_least,
    ratio_at_most,
    rm,
    run_child,
    run_meta,
    value_at_least,
    value_at_most,
    write_json,
)

MODULE = "benchmarks.bench_local"
T0 = 1_700_000_000_000  # message times (ms) used when building states


# -- measurement helpers ---------------------------------------------------------------------


def proc_status() -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, VmHWM of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                out[name] = int(rest.split()[0]) * 1024
    return out


def timed(fn: Callable[[], Any]) -> float:
    gc.collect()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


#: Single durable ops are timed in blocks of this many, alternating crdtim and its reference,
#: so that both meet the same disk conditions (other processes share the disk and the CPUs).
BLOCK = 50


def interleaved(mine: Callable[[int, int], Any], ref: Callable[[int, int], Any], n: int,
                block: int, first: int = 0) -> tuple[float, float]:
    """Total seconds of mine(lo, hi) and ref(lo, hi) over range(n), in alternating blocks."""
    gc.collect()
    times = [0.0, 0.0]
    fns = (mine, ref)
    for j, lo in enumerate(range(0, n, block)):
        hi = min(n, lo + block)
        for w in ((0, 1) if (j + first) % 2 == 0 else (1, 0)):
            t = time.perf_counter()
            fns[w](lo, hi)
            times[w] += time.perf_counter() - t
    return times[0], times[1]


def raw_env(path: str, *, sync: bool, map_size: int = 1 << 30, max_dbs: int = 4) -> lmdb.Environment:
    os.makedirs(path, exist_ok=True)
    return lmdb.open(path, map_size=map_size, max_dbs=max_dbs, sync=sync, metasync=sync,
                     readahead=False)


def stored_sizes(r: Replica, limit: int = 20_000) -> float:
    """Mean encoded size of the replica's stored conversations (the first `limit`)."""
    return r.store.read(lambda t: statistics.fmean(
        len(v) for _, v in itertools.islice(t.conversations(), limit)))


# -- a. durable single ops -------------------------------------------------------------------


def populate(r: Replica, n_convs: int, batch: int = 10_000, last_seq: int = 1) -> None:
    """One message (sequence `last_seq`) and a title in each conversation."""
    for start in range(0, n_convs, batch):
        with r.batch():
            for i in range(start, min(n_convs, start + batch)):
                c = cid(i)
                r.message_arrived(c, last_seq, "first message of the conversation", at=T0 + i)
                r.set_title(c, f"Conversation {i}")


def raw_populate(env: lmdb.Environment, db: Any, keys: list[bytes], size: int) -> None:
    with env.begin(write=True) as t:
        for k in keys:
            t.put(k, os.urandom(size), db=db)


def bench_single(cfg: argparse.Namespace, wd: Workdir) -> list[Row]:
    n_convs, n_ops = 1000, cfg.single_ops
    ops_c, ops_r, sizes = [], [], []
    pattern_p, pattern_r = [], []
    keys = [cid(i).encode() for i in range(n_convs)]
    for run in range(cfg.runs):
        p, q = raw_pattern_vs_put(wd, keys, n_ops, run)
        pattern_p.append(p)
        pattern_r.append(q)
        rdir, edir = wd.fresh("single-replica"), wd.fresh("single-raw")
        r = Replica.open(rdir, durability="sync")
        populate(r, n_convs)
        size = round(stored_sizes(r))
        sizes.append(size)
        env = raw_env(edir, sync=True)
        db = env.open_db(b"convs")
        raw_populate(env, db, keys, size)
        payload = os.urandom(size)

        def crdtim_ops(lo: int, hi: int) -> None:
            for k in range(lo, hi):
                c = cid((k * 7919) % n_convs)
                if k & 1:
                    r.message_arrived(c, k + 2, f"message {k}: see you at seven?")
                else:
                    r.set_title(c, f"Title number {k}")

        def raw_ops(lo: int, hi: int) -> None:
            for k in range(lo, hi):
                with env.begin(write=True) as t:
                    t.put(keys[(k * 7919) % n_convs], payload, db=db)

        tc, tr = interleaved(crdtim_ops, raw_ops, n_ops, BLOCK, first=run % 2)
        ops_c.append(n_ops / tc)
        ops_r.append(n_ops / tr)
        r.close()
        env.close()
        rm(rdir, edir)
    extra_us = [1e6 / c - 1e6 / r for c, r in zip(ops_c, ops_r)]
    return [Row(
        "a", "durable single ops/s (sync, 1 op = 1 commit)", "ops/s", ops_c, ops_r,
        ref_label=f"raw LMDB sync=True, 1 put ({statistics.median(sizes):.0f} B, the mean stored "
                  f"conversation) per write txn, {n_convs} keys",
        goal=">= 0.90x", check=ratio_at_least(0.9),
        note=f"{n_ops} ops per run, alternating set_title / message_arrived over {n_convs} "
             f"conversations; timed in alternating blocks of {BLOCK} ops (crdtim, raw, raw, "
             f"crdtim, ...); crdtim adds {statistics.median(extra_us):,.0f} us per commit "
             f"(median; raw commit {1e6 / statistics.median(ops_r):,.0f} us) - the ratio "
             "rises towards 1 as the disk's fsync gets slower",
        extra={"extra_us_per_commit": extra_us},
    ), Row(
        "a2", "  ceiling: raw LMDB writing crdtim's B-trees, sync", "ops/s", pattern_p, pattern_r,
        ref_label="raw LMDB sync=True, 1 put (98 B) per write txn, timed in alternating blocks",
        goal="(context)",
        note="what any code doing crdtim's commit in these databases can reach: per write txn "
             "a 98 B state put, a 64 B log append (its own database) and, every other op (as "
             "message_arrived), an order key moved in a third; no Python work beyond the puts",
    )]


def raw_pattern_vs_put(wd: Workdir, keys: list[bytes], n_ops: int, run: int
                       ) -> tuple[float, float]:
    """(raw LMDB commits/s writing crdtim's B-trees, raw 1-put commits/s), interleaved."""
    pdir, edir = wd.fresh("single-pattern"), wd.fresh("single-raw")
    penv, env = raw_env(pdir, sync=True), raw_env(edir, sync=True)
    convs, order, log = (penv.open_db(n) for n in (b"convs", b"order", b"log"))
    db = env.open_db(b"convs")
    raw_populate(penv, convs, keys, 98)
    raw_populate(env, db, keys, 98)
    okeys = [b"\x01" + (2**63 - i).to_bytes(8, "big") + k for i, k in enumerate(keys)]
    raw_populate(penv, order, okeys, 4)
    value, entry = os.urandom(98), os.urandom(64)
    seq = [0]

    def pattern(lo: int, hi: int) -> None:
        for k in range(lo, hi):
            i = (k * 7919) % len(keys)
            with penv.begin(write=True) as t:
                t.put(keys[i], value, db=convs)
                seq[0] += 1
                t.put(seq[0].to_bytes(8, "big"), entry, db=log, append=True)
                if k & 1:
                    t.delete(okeys[i], db=order)
                    okeys[i] = b"\x01" + (2**62 - k).to_bytes(8, "big") + keys[i]
                    t.put(okeys[i], b"0000", db=order)

    def put(lo: int, hi: int) -> None:
        for k in range(lo, hi):
            with env.begin(write=True) as t:
                t.put(keys[(k * 7919) % len(keys)], value, db=db)

    tp, tr = interleaved(pattern, put, n_ops, BLOCK, first=run % 2)
    penv.close()
    env.close()
    rm(pdir, edir)
    return n_ops / tp, n_ops / tr


# -- b. batched durable ops ------------------------------------------------------------------


def bench_batched(cfg: argparse.Namespace, wd: Workdir) -> list[Row]:
    n_convs, batch, n_batches = 10_000, 1000, cfg.batches
    rng = random.Random(1)
    seqs = [1] * n_convs
    ops: list[tuple[int, str, Any]] = []
    for k in range(batch * n_batches):
        i = rng.randrange(n_convs)
        kind = k % 3
        if kind == 0:
            ops.append((0, cid(i), f"Renamed {k}"))
        elif kind == 1:
            seqs[i] += 1
            ops.append((1, cid(i), seqs[i]))
        else:
            ops.append((2, cid(i), seqs[i]))
    keys = [c.encode() for _, c, _ in ops]
    all_keys = [cid(i).encode() for i in range(n_convs)]
    ops_c, ops_r = [], []
    for run in range(cfg.runs):
        rdir, edir = wd.fresh("batch-replica"), wd.fresh("batch-raw")
        r = Replica.open(rdir, durability="sync")
        populate(r, n_convs)
        size = round(stored_sizes(r))
        env = raw_env(edir, sync=True)
        db = env.open_db(b"convs")
        raw_populate(env, db, all_keys, size)
        payload = os.urandom(size)

        def crdtim_ops(lo: int, hi: int) -> None:
            for b in range(lo, hi):
                with r.batch():
                    for kind, c, arg in ops[b * batch:(b + 1) * batch]:
                        if kind == 0:
                            r.set_title(c, arg)
                        elif kind == 1:
                            r.message_arrived(c, arg, "a new message", at=T0 + 10 * arg)
                        else:
                            r.mark_read(c, arg)

        def raw_ops(lo: int, hi: int) -> None:
            for b in range(lo, hi):
                with env.begin(write=True) as t:
                    for k in keys[b * batch:(b + 1) * batch]:
                        t.put(k, payload, db=db)

        tc, tr = interleaved(crdtim_ops, raw_ops, n_batches, 1, first=run % 2)
        ops_c.append(len(ops) / tc)
        ops_r.append(len(ops) / tr)
        r.close()
        env.close()
        rm(rdir, edir)
    return [Row(
        "b", f"batched durable ops/s (sync, {batch} ops per batch)", "ops/s", ops_c, ops_r,
        ref_label=f"raw LMDB sync=True, {batch} puts per write txn",
        goal=">= 150,000 ops/s", check=value_at_least(150_000),
        note=f"{n_batches} batches per run, alternating with the reference's; ops cycle "
             f"title / message_arrived / mark_read over random ids of {n_convs} conversations",
    )]


# -- c, d. remote deltas, and bytes per change ------------------------------------------------


def plan_of(n: int, n_convs: int) -> list[tuple[str, int, Any]]:
    """The n single-field changes of the remote-apply figures: half set_title, half
    mark_read, spread over the conversations."""
    read_at = [0] * n_convs
    plan: list[tuple[str, int, Any]] = []
    for k in range(n):
        i = (k * 7919) % n_convs
        if k % 2 == 0:
            plan.append(("title", i, f"Weekend plans {k}"))
        else:
            read_at[i] += 1
            plan.append(("read_seq", i, read_at[i]))
    return plan


def apply_op(r: Replica, what: str, i: int, arg: Any) -> None:
    """One step of plan_of, on a crdtim replica."""
    if what == "title":
        r.set_title(cid(i), arg)
    else:
        r.mark_read(cid(i), arg)


def make_deltas(cfg: argparse.Namespace, wd: Workdir) -> dict[str, Any]:
    """The same n single-field changes made on a crdtim replica and on a pycrdt Doc."""
    n_convs, n = 1000, cfg.deltas
    adir = wd.fresh("deltas-A")
    a = Replica.open(adir, durability="nosync")
    # Read markers are of messages that have arrived (mark_read above last_seq is refused):
    # the first message's seq is the plan's highest read marker.
    populate(a, n_convs, last_seq=max(1, -(-n // n_convs)))
    init_delta = a.delta_since(0)
    first = a.head
    kinds, deltas = [], []
    plan = plan_of(n, n_convs)
    t = time.perf_counter()
    for what, i, arg in plan:
        apply_op(a, what, i, arg)
        deltas.append(a.delta_since(a.head - 1))
        kinds.append(what)
    produce_s = time.perf_counter() - t
    # Joined batches of up to 1000 log entries, as the sync protocol sends them.
    batches, after = [], first
    while after < a.head:
        to, m = a.delta_interval(after, max_entries=1000)
        batches.append(codec.encode_map(m))
        after = to
    a_state = a.state()
    a_id = a.id
    a.close()
    rm(adir)

    doc = pycrdt.Doc()
    root = doc.get("convs", type=pycrdt.Map)
    with doc.transaction():
        for i in range(n_convs):
            root[cid(i)] = pycrdt.Map({"title": f"Conversation {i}", "last_seq": 1, "read_seq": 0,
                                       "last_preview": "first message of the conversation",
                                       "last_at": T0 + i})
    init_update = doc.get_update()
    updates: list[bytes] = []
    sub = doc.observe(lambda e: updates.append(e.update))
    convs = [root[cid(i)] for i in range(n_convs)]
    for what, i, arg in plan:
        convs[i][what] = arg
    doc.unobserve(sub)
    assert len(updates) == n, (len(updates), n)
    merged = [pycrdt.merge_updates(*updates[s:s + 1000]) for s in range(0, n, 1000)]
    final = {c: dict(m) for c, m in root.items()}
    return {"init_delta": init_delta, "deltas": deltas, "batches": batches, "kinds": kinds,
            "a_state": a_state, "a_id": a_id, "init_update": init_update, "updates": updates,
            "merged": merged, "final": final, "produce_s": produce_s, "n_convs": n_convs}


def bench_remote(cfg: argparse.Namespace, wd: Workdir, src: dict[str, Any]) -> list[Row]:
    deltas, batches, updates, merged = src["deltas"], src["batches"], src["updates"], src["merged"]
    n, a_id = len(deltas), src["a_id"]
    res: dict[str, list[float]] = {k: [] for k in ("sync", "nosync", "sync_batch", "nosync_batch",
                                                   "py", "py_batch", "raw_sync", "raw_nosync",
                                                   "raw_sync_1")}
    keys = [cid(i).encode() for i in range(src["n_convs"])]
    value = os.urandom(100)

    n_sync = min(n, cfg.sync_deltas)  # one fsync each: fewer with --quick

    def raw_run(sync: bool) -> float:
        """The floor under crdtim's one-commit-per-delta: one raw LMDB put per write txn."""
        m = n_sync if sync else n
        d = wd.fresh(f"deltas-raw-{'sync' if sync else 'nosync'}")
        env = raw_env(d, sync=sync)
        db = env.open_db(b"convs")
        raw_populate(env, db, keys, len(value))

        def go() -> None:
            for k in range(m):
                with env.begin(write=True) as t:
                    t.put(keys[(k * 7919) % len(keys)], value, db=db)

        dt = timed(go)
        env.close()
        rm(d)
        return m / dt

    def sync_interleaved(run: int, check: bool) -> tuple[float, float]:
        """apply_delta one by one (sync) and the raw LMDB sync put, in alternating blocks of
        BLOCK, so that both meet the same disk: (crdtim deltas/s, raw puts/s)."""
        d, e = wd.fresh("deltas-B-sync"), wd.fresh("deltas-raw-sync")
        b = Replica.open(d, durability="sync")
        b.apply_delta(src["init_delta"], origin=a_id)
        env = raw_env(e, sync=True)
        db = env.open_db(b"convs")
        raw_populate(env, db, keys, len(value))

        def mine(lo: int, hi: int) -> None:
            for p in sync_part[lo:hi]:
                b.apply_delta(p, origin=a_id)

        def raw(lo: int, hi: int) -> None:
            for k in range(lo, hi):
                with env.begin(write=True) as t:
                    t.put(keys[(k * 7919) % len(keys)], value, db=db)

        tc, tr = interleaved(mine, raw, len(sync_part), BLOCK, first=run % 2)
        if check and len(sync_part) == n:
            assert b.state() == src["a_state"], "replica B did not converge to A"
        b.close()
        env.close()
        rm(d, e)
        return len(sync_part) / tc, len(sync_part) / tr

    def crdtim_run(durability: str, payloads: list[bytes], check: bool) -> float:
        d = wd.fresh(f"deltas-B-{durability}")
        b = Replica.open(d, durability=durability)
        b.apply_delta(src["init_delta"], origin=a_id)

        def go() -> None:
            for p in payloads:
                b.apply_delta(p, origin=a_id)

        dt = timed(go)
        full = payloads is deltas or payloads is batches
        if check and full:
            assert b.state() == src["a_state"], "replica B did not converge to A"
        b.close()
        rm(d)
        # Rates count original one-op deltas (a joined batch carries many).
        return (n if full else len(payloads)) / dt

    def pycrdt_run(payloads: list[bytes], check: bool) -> float:
        q = pycrdt.Doc()
        q.apply_update(src["init_update"])

        def go() -> None:
            for u in payloads:
                q.apply_update(u)

        dt = timed(go)
        if check:
            got = {c: dict(m) for c, m in q.get("convs", type=pycrdt.Map).items()}
            assert got == src["final"], "pycrdt doc did not converge"
        return n / dt

    sync_part = deltas if n_sync == n else deltas[:n_sync]
    for run in range(cfg.runs):
        check = run == 0
        mine, raw = sync_interleaved(run, check)
        res["sync"].append(mine)
        res["raw_sync_1"].append(raw)
        res["py"].append(pycrdt_run(updates, check))
        res["nosync"].append(crdtim_run("nosync", deltas, check))
        res["sync_batch"].append(crdtim_run("sync", batches, check))
        res["nosync_batch"].append(crdtim_run("nosync", batches, check))
        res["py_batch"].append(pycrdt_run(merged, check))
        res["raw_sync"].append(raw_run(True))
        res["raw_nosync"].append(raw_run(False))
    ref = f"pycrdt {pycrdt.__version__}: Doc.apply_update of each captured update, in memory"
    ctx = f"{n} one-op deltas over {src['n_convs']} conversations (half set_title, half mark_read)"
    return [
        Row("c", "remote 1-field deltas applied/s, sync, one by one", "deltas/s", res["sync"],
            res["raw_sync_1"], goal=">= 0.95x", check=ratio_at_least(0.95),
            ref_label="raw LMDB sync=True, 1 put (100 B) per write txn, 1000 keys, timed in "
                      f"alternating blocks of {BLOCK} with crdtim's",
            note=ctx + f"; each apply_delta is one synced commit (the first {n_sync} deltas); "
                 f"deltas made on A at {n / src['produce_s']:,.0f} op+delta_since/s"),
        Row("c8", "  same, vs pycrdt", "deltas/s", res["sync"], res["py"], ref_label=ref,
            goal="(context)"),
        Row("c2", "  same, nosync", "deltas/s", res["nosync"], res["py"], ref_label=ref,
            goal="(context)"),
        Row("c3", "  same, sync, joined batches of 1000 log entries", "deltas/s",
            res["sync_batch"], res["py"], ref_label=ref, goal="(context)",
            note=f"{len(batches)} apply_delta calls of delta_interval(max_entries=1000); "
                 "rate counted in original deltas"),
        Row("c4", "  same, nosync, joined batches", "deltas/s", res["nosync_batch"], res["py"],
            ref_label=ref, goal="(context)"),
        Row("c5", "  pycrdt, merge_updates of 1000, for context", "deltas/s", res["py_batch"],
            res["py"], ref_label=ref, goal="(context)"),
        Row("c6", "  ceiling: raw LMDB 1 put per sync txn", "puts/s", res["raw_sync"], res["py"],
            ref_label=ref, goal="(context)",
            note="the most any one-commit-per-delta durable store can do on this disk "
                 f"(100 B values, 1000 keys, {n_sync} puts)"),
        Row("c7", "  ceiling: raw LMDB 1 put per nosync txn", "puts/s", res["raw_nosync"],
            res["py"], ref_label=ref, goal="(context)"),
    ]


def bench_bytes(src: dict[str, Any]) -> list[Row]:
    rows = []
    for what, label in (("title", "set_title"), ("read_seq", "mark_read")):
        mine = [len(d) for d, k in zip(src["deltas"], src["kinds"]) if k == what]
        theirs = [len(u) for u, k in zip(src["updates"], src["kinds"]) if k == what]
        med_t = statistics.median(theirs)
        rows.append(Row(
            "d" if what == "title" else "d2", f"bytes per 1-field change: {label}", "B", mine,
            [med_t], ratios=[m / med_t for m in mine], ref_label=(
                f"pycrdt update for the same change (median; min {min(theirs)}, max {max(theirs)})"),
            goal="(report)", fmt="{:,.0f}",
            note=("crdtim delta: [version, [replica id], {cid: {tag: field}}] msgpack; "
                  "titles 'Weekend plans <k>'" if what == "title" else ""),
        ))
    return rows


# -- e. one million conversations (measured in child processes) --------------------------------


def child_build(spec: dict[str, Any]) -> dict[str, Any]:
    path, n, batch = spec["path"], spec["n"], spec["batch"]
    out: dict[str, Any] = {"rss_start": proc_status()}
    r = Replica.open(path, durability="nosync")
    out["rss_open"] = proc_status()
    t = time.perf_counter()
    for start in range(0, n, batch):
        with r.batch():
            for i in range(start, min(n, start + batch)):
                c = cid(i)
                r.message_arrived(c, 1 + i % 50, f"last message in conversation {i}",
                                  at=T0 + i * 997 % 86_400_000)
                r.set_title(c, f"Conversation {i}")
                if i % 10 == 0:
                    r.pin(c)
                if i % 3 == 0:
                    r.mark_read(c, 1 + i % 50)
    out["build_s"] = time.perf_counter() - t
    gc.collect()
    out["rss_built"] = proc_status()
    out["mean_value"] = stored_sizes(r)
    out["head"] = r.head
    out["count"] = len(r)
    r.close()
    out.update(disk_usage(path, ["meta", "convs", "order", "log", "acks"]))
    return out


def disk_usage(path: str, dbs: list[str]) -> dict[str, Any]:
    f = os.path.join(path, "data.mdb")
    st = os.stat(f)
    env = lmdb.open(path, readonly=True, lock=False, max_dbs=8)
    per_db = {}
    with env.begin() as t:
        for name in dbs:
            try:
                db = env.open_db(name.encode(), txn=t, create=False)
            except lmdb.Error:
                continue
            s = t.stat(db)
            per_db[name] = {"entries": s["entries"], "bytes": s["psize"] * (
                s["branch_pages"] + s["leaf_pages"] + s["overflow_pages"])}
    env.close()
    return {"file_bytes": st.st_size, "allocated_bytes": st.st_blocks * 512, "dbs": per_db}


def child_raw(spec: dict[str, Any]) -> dict[str, Any]:
    """Raw LMDB holding what the replica holds minus the log: convs and the ordering index."""
    path, n, batch, size = spec["path"], spec["n"], spec["batch"], spec["value_size"]
    env = raw_env(path, sync=False, map_size=1 << 36)
    convs, order = env.open_db(b"convs"), env.open_db(b"order")
    payload = os.urandom(size)
    t = time.perf_counter()
    for start in range(0, n, batch):
        with env.begin(write=True) as txn:
            for i in range(start, min(n, start + batch)):
                c = cid(i).encode()
                txn.put(c, payload, db=convs)
                txn.put((b"\x00" if i % 10 == 0 else b"\x01")
                        + (2**64 - 1 - (T0 + i * 997 % 86_400_000)).to_bytes(8, "big") + c, b"",
                        db=order)
    build_s = time.perf_counter() - t
    env.sync(True)

    def first_page() -> list[bytes]:
        with env.begin() as txn:
            cur = txn.cursor(db=order)
            cur.first()
            ks = list(itertools.islice(cur.iternext(keys=True, values=False), 50))
            return [txn.get(k[9:], db=convs) for k in ks]

    assert len(first_page()) == 50
    lat = latencies(first_page, spec["calls"])
    env.close()
    return {"build_s": build_s, "list_us": lat, **disk_usage(path, ["convs", "order"])}


def latencies(fn: Callable[[], Any], calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        t = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t) / 1000)
    return out


def child_reopen(spec: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"rss_start": proc_status()}
    r = Replica.open(spec["path"], durability="sync", create=False)
    out["rss_open"] = proc_status()
    t = time.perf_counter_ns()
    page = r.list(limit=50)
    out["first_call_us"] = (time.perf_counter_ns() - t) / 1000
    assert len(page.items) == 50 and page.has_more
    assert page.items[0].pinned
    out["list_us"] = latencies(lambda: r.list(limit=50), spec["calls"])
    c = cid(spec["n"] // 2)
    out["get_us"] = latencies(lambda: r.get(c), spec["calls"])
    gc.collect()
    out["rss_listed"] = proc_status()
    r.close()
    return out


def bench_million(cfg: argparse.Namespace, wd: Workdir) -> tuple[list[Row], dict[str, Any]]:
    n, small, batch, calls = cfg.big, 10_000, 10_000, cfg.list_calls
    big_dir, small_dir, raw_dir = wd.fresh("big"), wd.fresh("small"), wd.fresh("big-raw")
    print(f"  e: building {n:,} conversations ...", flush=True)
    built = run_child(MODULE, "build", {"path": big_dir, "n": n, "batch": batch})
    built_small = run_child(MODULE, "build", {"path": small_dir, "n": small, "batch": batch})
    raw = run_child(MODULE, "raw", {"path": raw_dir, "n": n, "batch": batch, "calls": calls,
                            "value_size": round(built["mean_value"])})
    rm(raw_dir)
    print("  e: reopening in fresh processes ...", flush=True)
    reo = run_child(MODULE, "reopen", {"path": big_dir, "n": n, "calls": calls})
    reo_small = run_child(MODULE, "reopen", {"path": small_dir, "n": small, "calls": calls})
    rm(big_dir, small_dir)
    mib = 1024 * 1024
    label = f"N={n:,}"
    dbs = built["dbs"]
    rows = [
        Row("e", f"build {label} (nosync batches of {batch:,}), 1 run", "conv/s",
            [n / built["build_s"]], [n / raw["build_s"]],
            ref_label=f"raw LMDB nosync, {batch:,}-conversation txns, put of the value "
                      "+ ordering-index key per conversation",
            goal="(report)",
            note=f"{built['build_s']:.2f} s vs {raw['build_s']:.2f} s; each conversation: "
                 "message_arrived + set_title, every 10th pinned, every 3rd mark_read "
                 f"({built['head']} log entries)"),
        Row("e2", f"data.mdb size, {label}", "MiB", [built["file_bytes"] / mib],
            [raw["file_bytes"] / mib], ref_label="raw LMDB holding the same convs values "
            f"({built['mean_value']:.0f} B mean) and ordering index, no log",
            goal="(report)", fmt="{:,.1f}",
            note="per database (MiB): " + ", ".join(
                f"{k} {v['bytes'] / mib:,.1f}" for k, v in dbs.items()),
            extra={"crdtim": dbs, "raw": raw["dbs"]}),
        Row("e3", f"VmRSS after build, {label}", "MiB", [built["rss_built"]["VmRSS"] / mib],
            [built_small["rss_built"]["VmRSS"] / mib],
            ref_label=f"same build process at N={small:,}", goal="<= 1.10x",
            check=ratio_at_most(1.10), fmt="{:,.1f}",
            note=f"RssAnon {built['rss_built']['RssAnon'] / mib:,.1f} MiB (N={small:,}: "
                 f"{built_small['rss_built']['RssAnon'] / mib:,.1f}), RssFile (LMDB map pages) "
                 f"{built['rss_built']['RssFile'] / mib:,.1f} MiB "
                 f"(N={small:,}: {built_small['rss_built']['RssFile'] / mib:,.1f}); "
                 f"peak VmHWM {built['rss_built']['VmHWM'] / mib:,.1f} MiB"),
        Row("e4", f"RssAnon (heap) after build, {label}", "MiB",
            [built["rss_built"]["RssAnon"] / mib], [built_small["rss_built"]["RssAnon"] / mib],
            ref_label=f"same at N={small:,}", goal="<= 1.10x", check=ratio_at_most(1.10),
            fmt="{:,.1f}"),
        Row("e5", f"VmRSS after reopen + list(), {label}", "MiB",
            [reo["rss_listed"]["VmRSS"] / mib], [reo_small["rss_listed"]["VmRSS"] / mib],
            ref_label=f"fresh process reopening the N={small:,} replica", goal="<= 1.10x",
            check=ratio_at_most(1.10), fmt="{:,.1f}",
            note=f"after imports {reo['rss_start']['VmRSS'] / mib:,.1f} MiB, after open "
                 f"{reo['rss_open']['VmRSS'] / mib:,.1f} MiB; RssAnon "
                 f"{reo['rss_listed']['RssAnon'] / mib:,.1f} MiB (N={small:,}: "
                 f"{reo_small['rss_listed']['RssAnon'] / mib:,.1f})"),
        Row("e6", f"list(limit=50) first page, {label}", "us", reo["list_us"], raw["list_us"],
            ratios=[statistics.median(reo["list_us"]) / statistics.median(raw["list_us"])],
            ref_label="raw LMDB: read txn, 50 ordering-index keys + 50 value gets",
            goal="<= 1000 us", check=value_at_most(1000), fmt="{:,.0f}",
            note=f"median of {calls} calls [min..max]; first (cold) call "
                 f"{reo['first_call_us']:,.0f} us; N={small:,}: "
                 f"{statistics.median(reo_small['list_us']):,.0f} us; get(cid) "
                 f"{statistics.median(reo['get_us']):,.1f} us"),
    ]
    return rows, {"build": built, "build_small": built_small, "raw": raw, "reopen": reo,
                  "reopen_small": reo_small}


# -- main --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}",
                                description=__doc__.split("\n\n")[0])
    common_args(p, "a,b,c,d,e")
    cfg = p.parse_args(argv)
    if answer_child(cfg, {"build": child_build, "raw": child_raw, "reopen": child_reopen}):
        return 0

    q = cfg.quick
    cfg.runs = cfg.runs or (3 if q else 5)
    cfg.single_ops = 300 if q else 2000
    cfg.sync_deltas = 300 if q else 10_000
    cfg.batches = 5 if q else 20
    cfg.deltas = 2000 if q else 10_000
    cfg.big = 50_000 if q else 1_000_000
    cfg.list_calls = 300 if q else 2000
    only = set(cfg.only.split(","))

    wd = Workdir(cfg.dir)
    fs = filesystem_of(wd.root)
    meta = run_meta(MODULE, argv, quick=q, runs=cfg.runs, workdir=fs, lmdb=lmdb.__version__,
                    lmdb_lib=".".join(map(str, lmdb.version())), pycrdt=pycrdt.__version__)
    announce("local", q, cfg.runs, fs)
    rows: list[Row] = []
    details: dict[str, Any] = {}
    t_all = time.perf_counter()
    try:
        if "a" in only:
            print("  a: durable single ops ...", flush=True)
            rows += bench_single(cfg, wd)
        if "b" in only:
            print("  b: batched durable ops ...", flush=True)
            rows += bench_batched(cfg, wd)
        if only & {"c", "d"}:
            print(f"  c/d: making {cfg.deltas:,} deltas on crdtim and pycrdt ...", flush=True)
            src = make_deltas(cfg, wd)
            if "c" in only:
                print("  c: applying remote deltas ...", flush=True)
                rows += bench_remote(cfg, wd, src)
            if "d" in only:
                rows += bench_bytes(src)
            del src
        if "e" in only:
            e_rows, details["e"] = bench_million(cfg, wd)
            rows += e_rows
    finally:
        wd.cleanup()
    meta["elapsed_s"] = time.perf_counter() - t_all
    meta["loadavg_end"] = os.getloadavg()
    print(f"\ndone in {meta['elapsed_s']:.1f} s (load average now {meta['loadavg_end'][0]:.2f}): "
          f"{meta['command']}\n")
    print_table(rows)
    if cfg.json:
        write_json(cfg.json, meta, rows, details)
        print(f"\nwrote {cfg.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
