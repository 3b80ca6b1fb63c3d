"""Catch-up after a long absence: range-based set reconciliation beside a whole state transfer
(specs/protocol.md §13).

Replica A holds N conversations (title, last message, every 10th pinned); B is a restored
copy of A that had received A's log up to A's head. Then A changes 1% of the conversations
(new titles, spread over the id space) and trims its log: B is behind A's log floor. One
run connects two in-memory SyncSessions (no sockets: the protocol's own cost) and pumps both
until nothing moves; B is copied afresh from a template before every run.

Figures (each beside its reference, same run):
  catchup.bytes    bytes on the wire, both directions, vs the differing state: the encoded
                   whole states (codec.encode_map) of the conversations that differ, the
                   least any catch-up must send (goal: <= 3x)
  catchup.time     seconds from connect to converged (goal: <= 2 s at 1M), vs a whole state
                   transfer of the same replica to the same B, timed the same way
  catchup.full-bytes  the whole state transfer's bytes, vs the reconciliation's
  catchup.digests  seconds to read A's digests once (conversation_digests), vs one plain
                   pass over its `convs` records: what the reconciliation's floor is

Both sessions run in this one process, one after the other: the time is the sum of both
sides' work, which two machines would do in parallel.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from typing import Any

from crdtim import Replica
from crdtim.maintenance import restore
from crdtim.protocol import SessionConfig, SyncSession

from .report import Row, Workdir, cid, ratio_at_most, rm, value_at_most

T0 = 1_700_000_000_000
SIZES = {"tiny": 2_000, "quick": 100_000, "full": 1_000_000}  # conversations of A and B
RECONCILE = SessionConfig()
WHOLE_TRANSFER = SessionConfig(reconcile=False)


def _converge(a: Replica, b: Replica, config: SessionConfig) -> tuple[float, int, int]:
    """(seconds, bytes a sent, bytes b sent) from connect until both sides are quiet."""
    t = time.perf_counter()
    sa, sb = SyncSession(a, config), SyncSession(b, config)
    sa.initiate()
    sb.initiate()
    while True:
        sa.pump()
        sb.pump()
        to_b, to_a = sa.data_to_send(), sb.data_to_send()
        if not to_b and not to_a:
            break
        if to_b:
            sb.receive_data(to_b)
        if to_a:
            sa.receive_data(to_a)
    return time.perf_counter() - t, sa.bytes_sent, sb.bytes_sent


def _build(n: int, wd: Workdir) -> tuple[str, str, list[str], int]:
    """A (changed and trimmed) and the template of B; the ids changed; the differing state's
    encoded size."""
    a_path, b_template = wd.fresh("catchup-a"), wd.fresh("catchup-b")
    backup = wd.fresh("catchup-backup")
    for p in (a_path, b_template, backup):
        rm(p)
    now = [T0]

    def clock() -> int:
        now[0] += 1
        return now[0]

    with Replica.open(a_path, durability="nosync", now_ms=clock, log_retention=0) as a:
        for start in range(0, n, 10_000):
            with a.batch():
                for i in range(start, min(n, start + 10_000)):
                    c = cid(i)
                    a.set_title(c, f"conversation {i}")
                    a.message_arrived(c, 1 + i % 7, preview=f"last message of {i}", at=T0 + i)
                    if i % 10 == 0:
                        a.pin(c)
        head = a.head
        os.makedirs(backup)
        a.store.copy_compacted(backup)
        restore(backup, b_template)
        with Replica.open(b_template, durability="nosync") as b:
            # B received A's log up to here (and A B's), then went away past A's retention.
            b.store.write(lambda t: t.put_received(a.id, head))
            b_id, b_head = b.id, b.head
        a.store.write(lambda t: t.put_received(b_id, b_head))
        changed = [cid(i) for i in range(0, n, 100)]  # 1%, spread over the id space
        with a.batch():
            for c in changed:
                a.set_title(c, f"renamed while B was away: {c}")
        a.trim_log()
        assert a.log_floor > head
        differing = _encoded(a, changed)
    rm(backup)
    return a_path, b_template, changed, len(differing)


def _encoded(a: Replica, cids: list[str]) -> bytes:
    payload, taken = a.encoded_conversations([c.encode() for c in cids], len(cids), None)
    assert payload is not None and taken == len(cids)
    return payload


def _digest_pass(a: Replica) -> tuple[float, float]:
    t = time.perf_counter()
    a.conversation_digests()
    digests = time.perf_counter() - t
    t = time.perf_counter()
    a.store.read(lambda t: sum(1 for _ in t.scan("convs", b"")))
    return digests, time.perf_counter() - t


def _run(a_template: str, b_template: str, config: SessionConfig, wd: Workdir,
         check: str) -> tuple[float, float]:
    """(seconds, bytes both ways) of one catch-up between fresh copies of A and B: each run
    starts from the same acks and resume points."""
    a_path, b_path = wd.fresh("catchup-a-run"), wd.fresh("catchup-b-run")
    shutil.copytree(a_template, a_path)
    shutil.copytree(b_template, b_path)
    try:
        with Replica.open(a_path, durability="sync", log_retention=0) as a, \
                Replica.open(b_path, durability="sync") as b:
            seconds, a_sent, b_sent = _converge(a, b, config)
            assert b.get(check) == a.get(check)
        return seconds, float(a_sent + b_sent)
    finally:
        rm(a_path, b_path)


def bench_catchup(n: int, runs: int, wd: Workdir) -> tuple[list[Row], dict[str, Any]]:
    a_template, b_template, changed, differing = _build(n, wd)
    times, ref_times, sent, full_sent, digests, scans = [], [], [], [], [], []
    for _ in range(runs):
        t, b = _run(a_template, b_template, RECONCILE, wd, changed[0])
        times.append(t)
        sent.append(b)
        t, b = _run(a_template, b_template, WHOLE_TRANSFER, wd, changed[0])
        ref_times.append(t)
        full_sent.append(b)
        with Replica.open(a_template, durability="nosync", log_retention=0) as a:
            d, s = _digest_pass(a)
        digests.append(d)
        scans.append(s)
    rm(a_template, b_template)
    rows = [
        Row("bytes", f"catch-up of {n:,} conversations, 1% differing: bytes on the wire",
            "B", sent, refs=[float(differing)] * runs, ref_label="differing state",
            goal="<= 3x the differing state", check=ratio_at_most(3.0)),
        Row("time", f"catch-up of {n:,} conversations, 1% differing: time to converge", "s",
            times, refs=ref_times, ref_label="whole state transfer", fmt="{:,.3f}",
            goal="<= 2 s at 1M", check=value_at_most(2.0)),
        Row("full-bytes", f"whole state transfer of the same {n:,}: bytes on the wire", "B",
            full_sent, refs=sent, ref_label="reconciliation"),
        Row("digests", f"digests of {n:,} conversations read once", "s", digests,
            refs=scans, ref_label="one pass over convs", fmt="{:,.3f}"),
    ]
    details = {"n": n, "changed": len(changed), "differing_state_bytes": differing,
               "median_seconds": statistics.median(times)}
    return rows, details
