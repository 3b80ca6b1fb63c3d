"""Replication performance of crdtim, each figure beside a reference measured in the same run.

    python -m benchmarks.bench_sync [--quick] [--json FILE] [--dir DIR] [--only a,b,c,d]
                                    [--runs N] [--profile DIR]

Figures (the letters are the --only names):

  a  bytes on the wire to converge, 5 replicas writing concurrently: every replica makes 200
     (40 with --quick) single-op writes (title / pin / unpin / message arrived / read) over 100
     shared conversations; after every 10 writes (over all replicas) one round of "pump every
     session, deliver every queued byte"; then rounds until quiescent. Real Replicas (LMDB,
     nosync, a virtual clock) and real SyncSessions driven in-process, no sockets, so the
     figure is deterministic for a seed. Topologies: full mesh, ring, star (1 server, 4
     devices) and line; every replica has a RelayIndex shared by its sessions, as a Node
     does (specs/protocol.md §12). Against, on the same schedule and the same writes:
       floor     each write's encoded single-write delta shipped once to each other replica:
                 sum over writes of len(delta) * (n - 1) (no framing, no acks)
       classic   delta propagation as in Almeida et al. 2018, Algorithm 2 (a received delta
                 that inflates the state is buffered whole and sent to every neighbour,
                 including the one it came from): same SyncSession and framing, run over an
                 in-memory replica (MemReplica) that neither skips the origin nor keeps only
                 the novel part
       state     every replica ships its whole state to every neighbour every round, until
                 all states are equal
       oracle    (context) crdtim with an ideal relay filter: a forwarded interval carries only
                 what the receiver does not already hold at pump time -- the most any
                 "what do you already have" knowledge exchange could save
       have      (context) crdtim plus a sketched HAVE exchange (see MemReplica), its own
                 frames counted: what a concrete protocol change could get
  b  bytes per single-field change (title, pin, message arrived) on a replica of 1000
     conversations with a second replica's history, on the wire: the frame A's SyncSession
     sends B (a COMPACT_DELTA on a settled connection, specs/protocol.md §11) and its payload
     (body and new replica ids; goal <= 40 B for title and pin), vs the pycrdt update for the
     same change (Doc > Map of conversation Maps, doc.get_update(state_before), and the
     transaction's own update, doc.observe event.update, the payload's reference).
  c  latency from a local commit's return to the change being visible at a loopback peer
     (Replica.subscribe callback): two crdtim.Nodes in one trio run over 127.0.0.1 TCP;
     durability sync / nosync, NodeConfig(linger=0) / default linger; one write at a time
     (each acknowledged before the next); 500 writes per run (30 with --quick). p50 and p99
     vs a raw reference: the same shape with raw LMDB puts (same durability) at both ends and
     a 60-byte frame over trio TCP.
  e  latency under load: a server R (sync) receives two streams of 2,000 changes/s each
     from two peers (nosync) over loopback while its own single writes are timed from commit
     to a third peer P's subscription callback (sync); p50/p99 beside the same Nodes with no
     streams; all four Nodes in this one process (100 writes with --quick, 500 otherwise).
  d  bootstrap: a new replica (durability sync, and nosync for context) joins a peer holding
     1M conversations (20k with --quick), built in nosync batches of 10k and with its log
     trimmed, so the newcomer gets a state transfer. The peer runs in its own process. Time
     from Node start to STATE_END applied, and bytes on the wire, vs a raw copy of the
     peer's stored (key, value) pairs over loopback TCP into a raw LMDB environment with the
     same durability, 512 pairs per transaction.

Every figure is the median of several runs (5, 3 with --quick; 3 for d; the bytes of a use a
different seed per run) with min and max; the ratio column is the median of per-run ratios.
Timed runs alternate or rotate which of crdtim and its reference goes first. With --profile,
an extra run of each crdtim side is made under cProfile (not counted) and summarised into DIR.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import itertools
import json
import os
import pstats
import random
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

import lmdb
import msgpack
import pycrdt
import trio

import crdtim
from crdtim import Node, NodeConfig, Replica, codec
from crdtim.crdt import DEFAULT_SCHEMA, ConversationMap, join_fields
from crdtim.protocol import (
    Ack,
    ChunkAck,
    CompactDelta,
    Delta,
    FrameDecoder,
    Have,
    Hello,
    RelayIndex,
    SessionConfig,
    StateChunk,
    StateEnd,
    SyncSession,
    encode_frame,
)

from . import load_procs
from .report import (
    announce,
    answer_child,
    common_args,
    PROJECT,
    Row,
    Workdir,
    cid,
    filesystem_of,
    print_table,
    ratio_at_most,
    rm,
    run_child,
    run_meta,
    value_at_most,
    write_json,
)

MODULE = "benchmarks.bench_sync"
T0 = 1_700_000_000_000  # virtual wall clock (ms) of the deterministic runs
EMPTY_MAP = codec.encode_map(ConversationMap.bottom())


# -- helpers -----------------------------------------------------------------------------------


def percentile(xs: list[float], p: float) -> float:
    s = sorted(xs)
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


class Profiler:
    """cProfile of selected crdtim-side sections, summarised into DIR/<name>.txt."""

    def __init__(self, directory: str | None):
        self.dir = directory
        if directory:
            os.makedirs(directory, exist_ok=True)

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        if not self.dir:
            return fn()
        prof = cProfile.Profile()
        try:
            return prof.runcall(fn)
        finally:
            self.save(name, prof)

    def save(self, name: str, prof: cProfile.Profile | str) -> None:
        out = io.StringIO()
        st = pstats.Stats(prof, stream=out)  # a profile, or the path of a dumped one
        st.strip_dirs()
        out.write(f"== {name}: top by tottime ==\n")
        st.sort_stats("tottime").print_stats(30)
        out.write(f"== {name}: top by cumulative ==\n")
        st.sort_stats("cumulative").print_stats(45)
        path = os.path.join(self.dir, f"{name}.txt")
        with open(path, "w") as f:
            f.write(out.getvalue())
        if isinstance(prof, cProfile.Profile):
            prof.dump_stats(os.path.join(self.dir, f"{name}.prof"))
        print(f"    profile of {name}: {path}", flush=True)


# == a. bytes to converge, n replicas ==========================================================


TOPOLOGIES: dict[str, Callable[[int], list[tuple[int, int]]]] = {
    "mesh": lambda n: [(i, j) for i in range(n) for j in range(i + 1, n)],
    "ring": lambda n: [(i, (i + 1) % n) for i in range(n)],
    "star": lambda n: [(0, j) for j in range(1, n)],
    "line": lambda n: [(i, i + 1) for i in range(n - 1)],
}
TOPOLOGY_LABEL = {"mesh": "full mesh", "ring": "ring", "star": "star (1 server, 4 devices)",
                  "line": "line"}


class VirtualClock:
    """Shared wall clock of the deterministic runs: moves 1 ms per local write."""

    def __init__(self) -> None:
        self.ms = T0

    def __call__(self) -> int:
        return self.ms


class MemReplica:
    """In-memory ReplicaPort for the reference algorithms, fed the writes the real run made.

    mode "crdtim":  what crdtim does (skip the origin, log only the novel part); reproduces
                    the real run byte for byte, which checks this harness
    mode "classic": Almeida et al. 2018, Algorithm 2: a received delta that inflates the
                    state is buffered whole, and every interval goes to every neighbour
    mode "oracle":  crdtim, plus each outgoing interval cut down to what the receiver does not
                    hold yet (looked up in `registry`): an ideal relay filter
    mode "have":    crdtim, plus a sketch of a protocol extension: every log entry remembers
                    the end of the sender's interval it came in (`received`), every replica
                    tells its neighbours, once per round, how far it has applied each peer's
                    log (`have`, as of the start of the round), and a relayed entry is left
                    out for a receiver that already holds its sender's log up to that point
    """

    def __init__(self, rid: str, mode: str, registry: dict[str, MemReplica]):
        self.id = rid
        self.schema = DEFAULT_SCHEMA
        self.mode = mode
        self.registry = registry
        self.state = ConversationMap.bottom()
        self.log: list[tuple[str, ConversationMap]] = []
        self.via: list[int] = []  # per log entry: end of the sender's interval it came in
        self._received: dict[str, int] = {}
        self.have: dict[str, int] = {}  # what the neighbours were last told (mode "have")
        self.acks: dict[str, int] = {}

    @property
    def head(self) -> int:
        return len(self.log)

    @property
    def log_floor(self) -> int:
        return 0

    def local(self, delta: ConversationMap) -> None:
        self.state = self.state.join(delta)
        self.log.append(("", delta))
        self.via.append(0)

    def delta_interval(self, after: int, *, skip_origin: str | None = None,
                       max_entries: int = 1000, max_bytes: int | None = None,
                       skip: Callable[[int, str], bool] | None = None
                       ) -> tuple[int, ConversationMap | None]:
        # max_bytes is not modelled: the mesh's deltas stay far below the 1 MiB default.
        entries = self.log[after:after + max_entries]
        if not entries:
            return after, None
        acc: dict[str, dict] = {}
        have = self.registry[skip_origin].have if self.mode == "have" else {}
        for k, (origin, d) in enumerate(entries, start=after):
            if have and origin and self.via[k] and have.get(origin, 0) >= self.via[k]:
                continue  # the receiver holds the sender's log up to where this came from
            if skip is not None and skip(k + 1, origin):
                continue  # the receiver holds it (HAVE, specs/protocol.md §12)
            if self.mode == "classic" or origin != skip_origin:
                for c, fields in d.convs.items():
                    acc[c] = join_fields(acc.get(c, {}), fields)
        m = ConversationMap(acc, self.schema)
        if self.mode == "oracle" and skip_origin in self.registry:
            m = self.registry[skip_origin].state.novel(m)
        return after + len(entries), (m if acc and not m.is_bottom() else None)

    def state_chunk(self, after: str | None, max_conversations: int = 1000,
                    max_bytes: int | None = None) -> tuple[ConversationMap, str | None]:
        return self.state, None

    def apply_map(self, delta: ConversationMap, origin: str | None = None, *,
                  received: tuple[str, int] | None = None) -> set[str]:
        if received is not None:
            self._received[received[0]] = received[1]
        novel = self.state.novel(delta)
        if novel.is_bottom():
            return set()
        self.state = self.state.join(novel)
        self.log.append((origin or "", delta if self.mode == "classic" else novel))
        self.via.append(received[1] if received is not None else 0)
        return set(novel.convs)

    def record_ack(self, peer: str, seq: int) -> None:
        self.acks[peer] = max(seq, self.acks.get(peer, 0))

    def received_from(self, peer: str) -> int:
        return self._received.get(peer, 0)

    # The rest of the ReplicaPort contract, trivial here: the mesh runs unauthenticated.
    def encoded_state_chunk(self, after: str | None, max_conversations: int = 1000,
                            max_bytes: int | None = None, scope: tuple[str, ...] | None = None
                            ) -> tuple[bytes | None, str | None]:
        assert scope is None, "the mesh has no scopes"
        chunk, after = self.state_chunk(after, max_conversations, max_bytes)
        return (None if chunk.is_bottom() else codec.encode_map(chunk)), after

    def apply_state_chunk(self, chunk: ConversationMap, wire: codec.Received,
                          origin: str | None = None) -> set[str]:
        return self.apply_map(chunk, origin)

    def sent_scope(self, peer: str) -> tuple[str, ...] | None:
        return None

    def set_sent_scope(self, peer: str, scope: tuple[str, ...] | None) -> None:
        assert scope is None, "the mesh has no scopes"

    def bind_peer(self, peer: str, identity: str) -> None:
        raise AssertionError("the mesh authenticates nobody")


_FRAME_KIND = {Hello: "HELLO", Delta: "DELTA", Ack: "ACK", StateChunk: "STATE_CHUNK",
               StateEnd: "STATE_END", ChunkAck: "CHUNK_ACK", CompactDelta: "COMPACT_DELTA",
               Have: "HAVE"}


class Tally:
    """Bytes by frame type, decoded from a copy of what crossed each link."""

    def __init__(self) -> None:
        self.bytes: dict[str, int] = {}
        self.frames: dict[str, int] = {}
        self.delta_payload = 0
        self.empty_deltas = 0
        self.total = 0

    def count(self, decoder: FrameDecoder, data: bytes) -> None:
        self.total += len(data)
        decoder.feed(data)
        while True:
            before = decoder.buffered
            m = decoder.next_message()
            if m is None:
                return
            kind = _FRAME_KIND.get(type(m), type(m).__name__.upper())
            self.bytes[kind] = self.bytes.get(kind, 0) + before - decoder.buffered
            self.frames[kind] = self.frames.get(kind, 0) + 1
            if isinstance(m, Delta):
                self.delta_payload += len(m.payload)
                self.empty_deltas += m.payload == EMPTY_MAP
            elif isinstance(m, CompactDelta):
                self.delta_payload += len(m.body)
                self.empty_deltas += m.body == b"\x80"

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "bytes": self.bytes, "frames": self.frames,
                "delta_payload": self.delta_payload, "empty_deltas": self.empty_deltas}


class Mesh:
    """SyncSessions for every edge of a topology, driven in rounds with no I/O."""

    def __init__(self, ports: list[Any], edges: list[tuple[int, int]], relay: bool = True):
        self.ports = ports
        self.links: dict[tuple[int, int], SyncSession] = {}
        # One RelayIndex per replica, shared by its sessions, as a Node does (§12); the
        # reference algorithms run without.
        relays = [RelayIndex() if relay else None for _ in ports]
        for i, j in edges:
            self.links[(i, j)] = SyncSession(ports[i], relay=relays[i])
            self.links[(j, i)] = SyncSession(ports[j], relay=relays[j])
        self.taps = {k: FrameDecoder(SessionConfig().max_frame_bytes) for k in self.links}
        self.tally = Tally()
        self.rounds = 0
        self.before_round: Callable[[Mesh], None] | None = None
        for s in self.links.values():
            s.initiate()

    def round(self) -> int:
        """Pump every session, then deliver everything queued; returns the bytes moved."""
        self.rounds += 1
        if self.before_round is not None:
            self.before_round(self)
        for s in self.links.values():
            s.pump()
        out = {k: s.data_to_send() for k, s in self.links.items()}
        moved = 0
        for (i, j), data in out.items():
            if data:
                moved += len(data)
                self.tally.count(self.taps[(i, j)], data)
                self.links[(j, i)].receive_data(data)
        return moved

    def settle(self, max_rounds: int = 10_000) -> None:
        for _ in range(max_rounds):
            if not self.round():
                return
        raise RuntimeError("the mesh did not quiesce")


def make_plan(n: int, writes_each: int, n_convs: int, seed: int
              ) -> list[tuple[int, str, str, int]]:
    """(replica, kind, conversation, message seq) for every write, in a random interleaving."""
    rng = random.Random(seed)
    order = [i for i in range(n) for _ in range(writes_each)]
    rng.shuffle(order)
    seqs = [0] * n_convs  # messages of each conversation, as the server numbers them
    plan = []
    for k, i in enumerate(order):
        c = rng.randrange(n_convs)
        kind = rng.choices(("title", "arrive", "read", "flag"), weights=(30, 35, 20, 15))[0]
        if kind == "arrive":
            seqs[c] += 1
        plan.append((i, kind, cid(c), max(seqs[c], 1)))
    return plan


def do_write(r: Replica, kind: str, c: str, seq: int, k: int) -> None:
    if kind == "title":
        r.set_title(c, f"Plans for week {k}")
    elif kind == "arrive":
        r.message_arrived(c, seq, f"message {seq}: see you at seven?", at=T0 + 1000 * seq)
    elif kind == "read":  # of what has arrived here: mark_read above last_seq is refused
        conv = r.get(c)
        r.mark_read(c, min(seq, conv.last_seq if conv else 0))
    else:
        conv = r.get(c)
        if conv is not None and conv.pinned:
            r.unpin(c)
        else:
            r.pin(c)


def run_crdtim_mesh(topology: str, n: int, plan: list, writes_per_round: int,
                    wd: Workdir) -> dict[str, Any]:
    """The real thing: Replicas on LMDB, SyncSessions; returns bytes and the write events."""
    clock = VirtualClock()
    dirs = [wd.fresh(f"mesh-{topology}-{i}") for i in range(n)]
    reps = [Replica.open(d, durability="nosync", now_ms=clock) for d in dirs]
    try:
        mesh = Mesh(reps, TOPOLOGIES[topology](n))
        mesh.settle()
        events: list[tuple] = []
        floor = noops = 0
        single_sizes: list[int] = []
        for k, (i, kind, c, seq) in enumerate(plan):
            clock.ms += 1
            r = reps[i]
            before = r.head
            do_write(r, kind, c, seq, k)
            if r.head == before:
                noops += 1
            else:
                payload = r.delta_since(before)
                single_sizes.append(len(payload))
                floor += len(payload) * (n - 1)
                events.append(("w", i, payload))
            if (k + 1) % writes_per_round == 0:
                mesh.round()
                events.append(("r",))
        mesh.round()
        events.append(("r",))
        mesh.settle()
        states = [r.state() for r in reps]
        converged = all(s == states[0] for s in states[1:])
        return {"bytes": mesh.tally.total, "tally": mesh.tally.as_dict(), "floor": floor,
                "rounds": mesh.rounds, "noops": noops, "writes": len(single_sizes),
                "single_mean": statistics.fmean(single_sizes), "converged": converged,
                "events": events, "ids": [r.id for r in reps], "state": states[0]}
    finally:
        for r in reps:
            r.close()
        rm(*dirs)


def run_model_mesh(topology: str, n: int, events: list, ids: list[str], mode: str
                   ) -> dict[str, Any]:
    registry: dict[str, MemReplica] = {}
    reps = [MemReplica(rid, mode, registry) for rid in ids]
    registry.update({r.id: r for r in reps})
    edges = TOPOLOGIES[topology](n)
    mesh = Mesh(reps, edges, relay=mode == "crdtim")
    have_bytes = 0
    tables: dict[tuple[int, int], dict[str, int]] = {}
    if mode == "have":
        neighbours = {i: [j for a, b in edges for i2, j in ((a, b), (b, a)) if i2 == i]
                      for i in range(n)}

        def tell_neighbours(m: Mesh) -> None:
            # One HAVE frame [10, [peer index, seq, ...]] per neighbour with the entries that
            # changed, sent at the end of the last round; a peer id costs its bytes once per link.
            nonlocal have_bytes
            for k, r in enumerate(reps):
                changed = {p: s for p, s in r._received.items() if r.have.get(p) != s}
                for i in neighbours[k]:
                    told = {p: s for p, s in changed.items() if p != reps[i].id}
                    if told:
                        index = tables.setdefault((k, i), {})
                        flat = []
                        for p, s in told.items():
                            if p not in index:  # a peer id goes once per link, then its index
                                index[p] = len(index)
                                have_bytes += len(msgpack.packb(p))
                            flat += (index[p], s)
                        have_bytes += 4 + len(msgpack.packb([10, flat]))
                r.have = dict(r._received)

        mesh.before_round = tell_neighbours
    mesh.settle()
    for ev in events:
        if ev[0] == "w":
            reps[ev[1]].local(codec.decode_map(ev[2]))
        else:
            mesh.round()
    mesh.settle()
    converged = all(r.state == reps[0].state for r in reps[1:])
    tally = mesh.tally.as_dict()
    tally["have_bytes"] = have_bytes
    return {"bytes": mesh.tally.total + have_bytes, "tally": tally, "rounds": mesh.rounds,
            "converged": converged, "state": reps[0].state}


def run_state_mesh(topology: str, n: int, events: list) -> dict[str, Any]:
    """State-based anti-entropy: every round, every replica's whole state to every neighbour."""
    edges = TOPOLOGIES[topology](n)
    directed = edges + [(j, i) for i, j in edges]
    states = [ConversationMap.bottom() for _ in range(n)]
    total = rounds = 0

    def one_round() -> None:
        nonlocal total, rounds, states
        rounds += 1
        sizes = [len(encode_frame(StateChunk(payload=codec.encode_map(s)))) for s in states]
        new = list(states)
        for i, j in directed:
            total += sizes[i]
            new[j] = new[j].join(states[i])
        states = new

    for ev in events:
        if ev[0] == "w":
            states[ev[1]] = states[ev[1]].join(codec.decode_map(ev[2]))
        else:
            one_round()
    while not all(s == states[0] for s in states[1:]):
        one_round()
    return {"bytes": total, "rounds": rounds, "state": states[0]}


def bench_mesh(cfg: argparse.Namespace, wd: Workdir, prof: Profiler) -> tuple[list[Row], dict]:
    n, writes_each, n_convs, per_round = 5, cfg.mesh_writes, 100, 10
    rows: list[Row] = []
    details: dict[str, Any] = {}
    for topo in ("mesh", "ring", "star", "line"):
        res: dict[str, list] = {k: [] for k in ("crdtim", "floor", "classic", "state", "oracle",
                                                "have")}
        runs = []
        t_topo = time.perf_counter()
        if prof.dir:  # an extra run under the profiler, not counted
            plan = make_plan(n, writes_each, n_convs, seed=1000)
            prof.run(f"a-{topo}-crdtim", lambda: run_crdtim_mesh(topo, n, plan, per_round, wd))
        for run in range(cfg.runs):
            plan = make_plan(n, writes_each, n_convs, seed=1000 + run)
            real = run_crdtim_mesh(topo, n, plan, per_round, wd)
            model = run_model_mesh(topo, n, real["events"], real["ids"], "crdtim")
            classic = run_model_mesh(topo, n, real["events"], real["ids"], "classic")
            oracle = run_model_mesh(topo, n, real["events"], real["ids"], "oracle")
            have = run_model_mesh(topo, n, real["events"], real["ids"], "have")
            state = run_state_mesh(topo, n, real["events"])
            ok = (real["converged"] and model["converged"] and classic["converged"]
                  and oracle["converged"] and have["converged"]
                  and have["state"] == real["state"] and model["state"] == real["state"]
                  and classic["state"] == real["state"] and state["state"] == real["state"])
            if not ok:
                raise AssertionError(f"{topo} run {run}: replicas or models did not converge")
            if model["bytes"] != real["bytes"]:
                print(f"    note: {topo} run {run}: in-memory model of crdtim sent "
                      f"{model['bytes']} B, the real run {real['bytes']} B", flush=True)
            res["crdtim"].append(real["bytes"])
            res["floor"].append(real["floor"])
            res["classic"].append(classic["bytes"])
            res["state"].append(state["bytes"])
            res["oracle"].append(oracle["bytes"])
            res["have"].append(have["bytes"])
            runs.append({k: v for k, v in real.items() if k not in ("events", "state", "ids")}
                        | {"model_bytes": model["bytes"], "classic": classic["tally"],
                           "oracle": oracle["tally"], "have": have["tally"],
                           "state_bytes": state["bytes"],
                           "state_rounds": state["rounds"]})
        details[topo] = runs
        print(f"    {topo}: {time.perf_counter() - t_topo:.1f} s", flush=True)
        r0 = runs[0]
        t = r0["tally"]
        label = TOPOLOGY_LABEL[topo]
        floor_label = (f"floor: each write's single-write delta ({r0['single_mean']:.0f} B mean) "
                       f"x (n-1); {r0['writes']} writes")
        split = ", ".join(f"{k} {v:,} B/{t['frames'][k]:,}" for k, v in sorted(t["bytes"].items()))
        rows.append(Row(
            f"a-{topo}", f"bytes to converge, {label}: crdtim", "B", res["crdtim"], res["floor"],
            ref_label=floor_label, goal="<= 1.30x floor", check=ratio_at_most(1.30),
            note=(f"run 1 by frame (bytes/frames): {split}; DELTA payloads "
                  f"{t['delta_payload']:,} B, {t['empty_deltas']} empty DELTAs; {r0['rounds']} "
                  f"rounds; vs classic {statistics.median(res['crdtim']) / statistics.median(res['classic']):.2f}x"
                  + ("; in-memory model reproduces it byte for byte"
                     if all(r["model_bytes"] == r["bytes"] for r in runs) else
                     "; in-memory model differs (see log)"))))
        ct = r0["classic"]
        rows.append(Row(
            f"a-{topo}-cl", f"  classic delta propagation (no BP/RR)", "B", res["classic"],
            res["floor"], ref_label="floor", goal="(reference)",
            note=f"run 1: {ct['frames'].get('DELTA', 0):,} DELTA frames, payloads "
                 f"{ct['delta_payload']:,} B"))
        rows.append(Row(
            f"a-{topo}-st", f"  full state every round", "B", res["state"], res["floor"],
            ref_label="floor", goal="(reference)",
            note=f"run 1: {r0['state_rounds']} rounds (until all states equal)"))
        ot = r0["oracle"]
        rows.append(Row(
            f"a-{topo}-or", f"  crdtim + ideal relay filter (context)", "B", res["oracle"],
            res["floor"], ref_label="floor", goal="(context)",
            note=f"run 1: {ot['frames'].get('DELTA', 0):,} DELTA frames of which "
                 f"{ot['empty_deltas']:,} empty; payloads {ot['delta_payload']:,} B"))
        ht = r0["have"]
        rows.append(Row(
            f"a-{topo}-hv", f"  crdtim + HAVE exchange sketch (context)", "B", res["have"],
            res["floor"], ref_label="floor", goal="(context)",
            note=f"run 1: HAVE frames {ht['have_bytes']:,} B; {ht['frames'].get('DELTA', 0):,} "
                 f"DELTA frames of which {ht['empty_deltas']:,} empty; payloads "
                 f"{ht['delta_payload']:,} B"))
    for r in rows:
        r.extra["setup"] = (f"n=5, {writes_each} writes per replica over {n_convs} conversations, "
                            f"a round after every {per_round} writes")
    return rows, details


# == b. bytes per single-field change ==========================================================


def bench_bytes(cfg: argparse.Namespace, wd: Workdir) -> list[Row]:
    n_convs, samples = 1000, cfg.byte_samples
    rng = random.Random(7)
    adir, bdir = wd.fresh("bytes-A"), wd.fresh("bytes-B")
    a = Replica.open(adir, durability="nosync")
    b = Replica.open(bdir, durability="nosync")
    # History: A made the conversations; B (another device) pinned and renamed some of them.
    with a.batch():
        for i in range(n_convs):
            a.message_arrived(cid(i), 1, "first message of the conversation", at=T0 + i)
            a.set_title(cid(i), f"Conversation {i}")
    b.apply_delta(a.delta_since(0), origin=a.id)
    mark = b.head
    with b.batch():
        for i in range(0, n_convs, 3):
            b.pin(cid(i))
            b.set_title(cid(i), f"Renamed {i}")
    a.apply_delta(b.delta_since(mark), origin=b.id)

    doc = pycrdt.Doc()
    root = doc.get("convs", type=pycrdt.Map)
    with doc.transaction():
        for i in range(n_convs):
            root[cid(i)] = pycrdt.Map({"title": f"Conversation {i}", "pinned": False,
                                       "muted": False, "last_seq": 1, "read_seq": 0,
                                       "last_preview": "first message of the conversation",
                                       "last_at": T0 + i})
    other = pycrdt.Doc()
    other.apply_update(doc.get_update())
    oroot = other.get("convs", type=pycrdt.Map)
    sv = other.get_state()
    with other.transaction():
        for i in range(0, n_convs, 3):
            oroot[cid(i)]["pinned"] = True
            oroot[cid(i)]["title"] = f"Renamed {i}"
    doc.apply_update(other.get_update(sv))

    # A connection A -> B, settled: what a change costs on it is what the session sends.
    sa, sb = SyncSession(a), SyncSession(b)
    sa.initiate()
    sb.initiate()
    while True:
        out_a, out_b = sa.data_to_send(), sb.data_to_send()
        if not out_a and not out_b:
            break
        sb.receive_data(out_a)
        sa.receive_data(out_b)
        sa.pump()
        sb.pump()
    tap = FrameDecoder(SessionConfig().max_frame_bytes)  # what A sends B, as sent
    sizes: dict[str, dict[str, list[int]]] = {
        k: {"frame": [], "payload": [], "py": [], "py_txn": [], "ack": [], "plain": []}
        for k in ("title", "pin", "arrive")}
    txn_updates: list[bytes] = []
    doc.observe(lambda e: txn_updates.append(e.update))
    seq = 1
    for k in range(samples):
        for kind in ("title", "pin", "arrive"):
            i = rng.randrange(n_convs)
            c = cid(i)
            if kind == "pin" and (a.get(c).pinned):
                a.unpin(c)  # so that the measured op is a pin, on a conversation with history
                root[c]["pinned"] = False
            before = a.head
            state = doc.get_state()
            seq += 1
            if kind == "title":
                text = f"Weekend plans {k}"
                a.set_title(c, text)
                root[c]["title"] = text
            elif kind == "pin":
                a.pin(c)
                root[c]["pinned"] = True
            else:
                preview, at = f"message {seq}: see you at seven?", T0 + 1000 * seq
                a.message_arrived(c, seq, preview, at=at)
                with doc.transaction():
                    conv = root[c]
                    conv["last_seq"] = seq
                    conv["last_preview"] = preview
                    conv["last_at"] = at
            assert a.head == before + 1
            assert sa.pump() == 1
            wire = sa.data_to_send()
            tap.feed(wire)
            m = tap.next_message()
            assert tap.next_message() is None
            assert isinstance(m, CompactDelta) and m.end == a.head, (m, before)
            sizes[kind]["payload"].append(len(m.body) + len(codec.pack(m.new_ids)) - 1)
            sizes[kind]["frame"].append(len(wire))
            sizes[kind]["plain"].append(len(a.delta_since(before)))  # version 3's payload
            sb.receive_data(wire)
            ack = sb.data_to_send()
            sizes[kind]["ack"].append(len(ack))
            sa.receive_data(ack)
            sizes[kind]["py"].append(len(doc.get_update(state)))
            sizes[kind]["py_txn"].append(len(txn_updates[-1]))
            txn_updates.clear()
    a.close()
    b.close()
    rm(adir, bdir)
    rows = []
    labels = {"title": "set_title (17-char text)", "pin": "pin",
              "arrive": "message_arrived (seq, 31-char preview, time)"}
    for kind in ("title", "pin", "arrive"):
        s = sizes[kind]
        py = s["py"]
        ref = (f"pycrdt {pycrdt.__version__} update for the same change, doc.get_update(state "
               f"before) (median; min {min(py)}, max {max(py)})")
        txn = s["py_txn"]
        rows.append(Row(
            f"b-{kind}", f"frame on the wire per change: {labels[kind]}", "B", s["frame"], py,
            ref_label=ref, goal="(report)",
            note=f"the COMPACT_DELTA A's session sends B (specs/protocol.md §11), plus an ACK "
                 f"frame back of {statistics.median(s['ack']):.0f} B. "
                 f"get_update(state) carries the document's whole delete set (here from the "
                 f"other device's renames); the transaction's own update (doc.observe "
                 f"event.update, what a y-websocket provider ships) is "
                 f"{statistics.median(txn):.0f} B (min {min(txn)}, max {max(txn)}): frame "
                 f"{statistics.median(s['frame']) / statistics.median(txn):.2f}x, payload "
                 f"{statistics.median(s['payload']) / statistics.median(txn):.2f}x of it",
            extra={"pycrdt_txn_update": Row.stats(txn)}))
        rows.append(Row(
            f"b-{kind}-p", f"  its payload (body and new replica ids)", "B", s["payload"], txn,
            ref_label="pycrdt's update of the same transaction (doc.observe event.update)",
            goal="<= 40 B" if kind != "arrive" else "(report)",
            check=value_at_most(40) if kind != "arrive" else None,
            note=f"protocol version 3 sent the encoded delta with its replica id table: "
                 f"{statistics.median(s['plain']):.0f} B (min {min(s['plain'])}, max "
                 f"{max(s['plain'])})",
            extra={"v3_payload": Row.stats(s["plain"])}))
    for r in rows:
        r.extra["setup"] = (f"{samples} samples per kind on a replica of {n_convs} conversations "
                            "with a second replica's history; DELTA seq numbers ~3000")
    return rows


# == c. commit-to-visible latency over loopback ===============================================


async def _wait_until(pred: Callable[[], bool], timeout: float = 30.0) -> None:
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.001)


def populate(r: Replica, n_convs: int, batch: int = 10_000, *, pins: bool = False) -> None:
    for start in range(0, n_convs, batch):
        with r.batch():
            for i in range(start, min(n_convs, start + batch)):
                c = cid(i)
                r.message_arrived(c, 1 + i % 50, f"last message in conversation {i}",
                                  at=T0 + i * 997 % 86_400_000)
                r.set_title(c, f"Conversation {i}")
                if pins and i % 10 == 0:
                    r.pin(c)
                if pins and i % 3 == 0:
                    r.mark_read(c, 1 + i % 50)


async def _measure_latency(a: Replica, b: Replica, config: NodeConfig, n_writes: int,
                           target: list[Any], lat: list[float], everything: trio.CancelScope
                           ) -> None:
    async with Node(a, listen=("127.0.0.1", 0), config=config) as na:
        async with Node(b, peers=[("127.0.0.1", na.port)], config=config):
            await _wait_until(lambda: b.received_from(a.id) >= a.head)
            await na.wait_caught_up(1)
            for k in range(n_writes):
                c = cid(k % 100)
                ev = trio.Event()
                target[:] = [c, ev, 0.0]
                if k % 3 == 0:
                    a.set_title(c, f"Title {k}")
                elif k % 3 == 1:
                    a.message_arrived(c, 100 + k, f"message {k}: see you at seven?")
                else:
                    (a.unpin if a.get(c).pinned else a.pin)(c)
                t0 = time.perf_counter()
                with trio.fail_after(10):
                    await ev.wait()
                lat.append((target[2] - t0) * 1000)
                with trio.fail_after(10):
                    await na.wait_caught_up(1)  # its ACK is back: the next write starts clean
            everything.cancel()


async def crdtim_latency(durability: str, linger: float | None, n_writes: int, wd: Workdir
                         ) -> list[float]:
    adir, bdir = wd.fresh(f"lat-A-{durability}"), wd.fresh(f"lat-B-{durability}")
    a = Replica.open(adir, durability=durability)
    b = Replica.open(bdir, durability=durability)
    populate(a, 100)
    config = NodeConfig() if linger is None else NodeConfig(linger=linger)
    lat: list[float] = []
    target: list[Any] = [None, None, 0.0]  # conversation, trio.Event, time seen

    def seen(change: crdtim.Change) -> None:
        if change.origin == "remote" and change.conversation == target[0] and target[1] is not None:
            target[2] = time.perf_counter()
            target[1].set()

    sub = b.subscribe(seen)
    # Both nodes are torn down under one cancelled scope: a node whose peer closes first may
    # see a connection reset, which net.py (trio strict exception groups) does not survive.
    everything = trio.CancelScope()
    try:
        with everything:
            await _measure_latency(a, b, config, n_writes, target, lat, everything)
    finally:
        sub.close()
        a.close()
        b.close()
        rm(adir, bdir)
    return lat


async def raw_latency(durability: str, n_writes: int, wd: Workdir) -> list[float]:
    """The same shape without crdtim: raw LMDB put (same durability) at the writer, 60 bytes
    over trio loopback TCP, raw LMDB put at the receiver, then the 'visible' signal."""
    sync = durability == "sync"
    dirs = [wd.fresh("lat-raw-A"), wd.fresh("lat-raw-B")]
    envs = []
    for d in dirs:
        os.makedirs(d)
        envs.append(lmdb.open(d, map_size=1 << 26, sync=sync, metasync=sync))
    lat: list[float] = []
    try:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            got = [trio.Event(), 0.0]
            server_stream: list[trio.SocketStream] = []

            async def serve() -> None:
                s = await listeners[0].accept()
                server_stream.append(s)
                while True:
                    data = await s.receive_some(65536)
                    if not data:
                        return
                    with envs[1].begin(write=True) as t:
                        t.put(b"k" + data[:8], data)
                    got[1] = time.perf_counter()
                    got[0].set()

            nursery.start_soon(serve)
            client = await trio.open_tcp_stream("127.0.0.1", port)
            payload = os.urandom(60)
            for k in range(n_writes):
                got[0] = trio.Event()
                with envs[0].begin(write=True) as t:
                    t.put(b"k%d" % (k % 100), payload)
                t0 = time.perf_counter()
                await client.send_all(payload)
                with trio.fail_after(10):
                    await got[0].wait()
                lat.append((got[1] - t0) * 1000)
            await client.aclose()
            nursery.cancel_scope.cancel()
        for lst in listeners:
            await lst.aclose()
    finally:
        for e in envs:
            e.close()
        rm(*dirs)
    return lat


def bench_latency(cfg: argparse.Namespace, wd: Workdir, prof: Profiler) -> tuple[list[Row], dict]:
    rows: list[Row] = []
    details: dict[str, Any] = {}
    n = cfg.latency_writes
    default_linger = NodeConfig().linger
    for durability in ("sync", "nosync"):
        refs_p50, refs_p99 = [], []
        res: dict[Any, dict[str, list[float]]] = {lg: {"p50": [], "p99": []}
                                                  for lg in (0.0, None)}
        t_dur = time.perf_counter()
        if prof.dir:  # extra runs under the profiler, not counted
            for linger in (0.0, None):
                prof.run(f"c-{durability}-linger{linger}",
                         lambda: trio.run(crdtim_latency, durability, linger, n, wd))
        for run in range(cfg.runs):
            # The reference and the two configurations in turn, rotating which goes first.
            lat_by: dict[Any, list[float]] = {}
            kinds = ["raw", 0.0, None]
            for what in kinds[run % 3:] + kinds[:run % 3]:
                if what == "raw":
                    lat_by[what] = trio.run(raw_latency, durability, n, wd)
                else:
                    lat_by[what] = trio.run(crdtim_latency, durability, what, n, wd)
            raw = lat_by["raw"]
            refs_p50.append(percentile(raw, 50))
            refs_p99.append(percentile(raw, 99))
            for linger in (0.0, None):
                lat = lat_by[linger]
                res[linger]["p50"].append(percentile(lat, 50))
                res[linger]["p99"].append(percentile(lat, 99))
                details.setdefault(f"{durability}-{linger}", []).append(
                    {"p50": percentile(lat, 50), "p90": percentile(lat, 90),
                     "p99": percentile(lat, 99), "max": max(lat), "mean": statistics.fmean(lat)})
            if run == 0:  # one run's samples, for the latency distribution plot
                details.setdefault("samples", {})[durability] = {
                    "raw": raw, "linger=0": lat_by[0.0], "default linger": lat_by[None]}
        print(f"    {durability}: {time.perf_counter() - t_dur:.1f} s", flush=True)
        for linger in (0.0, None):
            lname = "linger=0" if linger == 0.0 else f"default linger ({default_linger * 1000:g} ms)"
            key = f"c-{durability[:2]}-{'l0' if linger == 0.0 else 'ld'}"
            ref = (f"raw: LMDB put ({durability}) + 60 B over trio loopback TCP + LMDB put "
                   f"({durability}), same process")
            rows.append(Row(
                key, f"commit -> visible at peer, {durability}, {lname}: p50", "ms",
                res[linger]["p50"], refs_p50, ref_label=ref, goal="p50 <= 2 ms",
                check=value_at_most(2.0), fmt="{:,.2f}",
                note=f"{n} writes per run, one at a time (title / arrive / pin-unpin)"))
            rows.append(Row(
                key + "99", f"  same, p99", "ms", res[linger]["p99"], refs_p99,
                ref_label="raw, p99", goal="p99 <= 20 ms", check=value_at_most(20.0),
                fmt="{:,.2f}"))
    return rows, details


# == e. latency under load ======================================================================


# The harness (R here, P and the streamers in child processes) is in load_procs.py.


def bench_load(cfg: argparse.Namespace, wd: Workdir) -> tuple[list[Row], dict]:
    rate, n = 2000.0, cfg.load_writes
    p50s, p99s, idle50, idle99, rates = [], [], [], [], []
    details: list[dict[str, Any]] = []
    for run in range(cfg.runs):
        idle = trio.run(load_procs.crdtim_latency_under_load, 0.0, n, wd)[0]
        lat, got = trio.run(load_procs.crdtim_latency_under_load, rate, n, wd)
        p50s.append(percentile(lat, 50))
        p99s.append(percentile(lat, 99))
        idle50.append(percentile(idle, 50))
        idle99.append(percentile(idle, 99))
        rates.append(got)
        details.append({"p50": p50s[-1], "p99": p99s[-1], "max": max(lat),
                        "idle_p50": idle50[-1], "idle_p99": idle99[-1], "received_per_s": got})
    setup = (f"server R (sync) <- 2 streamers (nosync) writing {rate:,.0f} changes/s each, "
             f"-> peer P (sync); {n} writes at R per run, 2 ms apart; R in this process, P "
             f"and each streamer in its own (benchmarks/load_procs.py); streams R received: "
             f"{statistics.median(rates):,.0f} changes/s median")
    rows = [
        Row("e-load", "commit -> visible at peer under load (2 x 2,000 changes/s in): p50",
            "ms", p50s, idle50, ref_label="same Nodes, no streams (idle)", goal="(report)",
            fmt="{:,.2f}", note=setup),
        Row("e-load99", "  same, p99", "ms", p99s, idle99, ref_label="same, idle, p99",
            goal="p99 <= 5 ms", check=value_at_most(5.0), fmt="{:,.2f}"),
        Row("e-load-in", "  changes/s R received from the streamers meanwhile", "changes/s",
            rates, [2 * rate] * len(rates), ref_label="offered: 2 x 2,000/s", goal="(report)"),
    ]
    return rows, {"runs": details}


# == d. bootstrap a new replica by state transfer ==============================================


def child_build(spec: dict[str, Any]) -> dict[str, Any]:
    path, n, batch = spec["path"], spec["n"], spec["batch"]
    t = time.perf_counter()
    r = Replica.open(path, durability="nosync", log_retention=0)
    populate(r, n, batch, pins=True)
    build_s = time.perf_counter() - t
    dropped = r.trim_log()  # retention 0: the whole log goes, a newcomer is behind the floor
    sizes = r.store.read(lambda t: [len(k) + len(v) for k, v in
                                    ((c.encode(), raw) for c, raw in t.conversations())])
    out = {"build_s": build_s, "head": r.head, "log_floor": r.log_floor, "dropped": dropped,
           "count": len(r), "kv_bytes": sum(sizes), "id": r.id}
    r.close()
    return out


def child_serve(spec: dict[str, Any]) -> dict[str, Any]:
    """Serve a replica until stdin closes; prints its address first, its stats last."""
    r = Replica.open(spec["path"], durability="nosync", create=False)
    prof = cProfile.Profile() if spec.get("profile") else None

    async def main() -> dict[str, Any]:
        node = Node(r, listen=("127.0.0.1", 0))
        try:
            async with node:
                print(json.dumps({"port": node.port, "id": r.id, "head": r.head,
                                  "log_floor": r.log_floor, "count": len(r)}), flush=True)
                await trio.to_thread.run_sync(sys.stdin.read)
        except BaseExceptionGroup as eg:
            # The newcomer hung up; net.py lets a reset escape as an exception group.
            rest = eg.split((trio.BrokenResourceError, trio.ClosedResourceError, OSError))[1]
            if rest is not None:
                raise
            return dict(vars(node.stats)) | {"teardown_error": repr(eg.exceptions)[:300]}
        return dict(vars(node.stats))

    if prof:
        prof.enable()
    stats = trio.run(main)
    if prof:
        prof.disable()
        prof.dump_stats(spec["profile"])
    r.close()
    return stats


def child_rawserve(spec: dict[str, Any]) -> dict[str, Any]:
    """Send the stored (key, value) pairs of a replica's conversations to one client."""
    env = lmdb.open(spec["path"], readonly=True, lock=False, max_dbs=8)
    convs = env.open_db(b"convs", create=False)

    async def main() -> int:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        print(json.dumps({"port": listeners[0].socket.getsockname()[1]}), flush=True)
        stream = await listeners[0].accept()
        sent = 0
        async with stream:
            with env.begin(buffers=False) as t:
                it = iter(t.cursor(db=convs))
                while True:
                    pairs = list(itertools.islice(it, 512))
                    body = msgpack.packb(pairs, use_bin_type=True)
                    frame = len(body).to_bytes(4, "big") + body
                    await stream.send_all(frame)
                    sent += len(frame)
                    if not pairs:
                        break
            await stream.receive_some(1)  # until the client closes
        return sent

    sent = trio.run(main)
    env.close()
    return {"sent": sent}


def spawn_child(kind: str, spec: dict[str, Any], module: str = MODULE
                ) -> tuple[subprocess.Popen, dict[str, Any]]:
    cmd = [sys.executable, "-m", module, "--child", kind, json.dumps(spec)]
    p = subprocess.Popen(cmd, cwd=PROJECT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if not line:
        p.wait()
        raise RuntimeError(f"child {kind} failed ({p.returncode}):\n{p.stderr.read()[-4000:]}")
    return p, json.loads(line)


def finish_child(p: subprocess.Popen) -> dict[str, Any]:
    out, err = p.communicate(timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"child failed ({p.returncode}):\n{err[-4000:]}")
    return json.loads(out.strip().splitlines()[-1])


async def bootstrap(port: int, source: dict[str, Any], durability: str, path: str,
                    timeout: float) -> dict[str, Any]:
    r = Replica.open(path, durability=durability)
    try:
        t = time.perf_counter()
        with trio.CancelScope() as everything:  # torn down cancelled: see crdtim_latency
            async with Node(r, peers=[("127.0.0.1", port)]) as node:
                with trio.fail_after(timeout):
                    while r.received_from(source["id"]) < source["head"]:
                        await trio.sleep(0.005)
                dt = time.perf_counter() - t
                stats = dict(vars(node.stats))
                everything.cancel()
        count = len(r)
        return {"s": dt, "bytes": stats["bytes_sent"] + stats["bytes_received"],
                "stats": stats, "count": count, "head": r.head}
    finally:
        r.close()


async def raw_copy(port: int, durability: str, path: str) -> dict[str, Any]:
    sync = durability == "sync"
    os.makedirs(path)
    env = lmdb.open(path, map_size=1 << 34, sync=sync, metasync=sync, max_dbs=2)
    db = env.open_db(b"convs")
    t = time.perf_counter()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    buf = bytearray()
    received = count = 0
    async with stream:
        done = False
        while not done:
            data = await stream.receive_some(65536)
            if not data:
                raise RuntimeError("raw server closed early")
            received += len(data)
            buf += data
            while len(buf) >= 4:
                n = int.from_bytes(buf[:4], "big")
                if len(buf) < 4 + n:
                    break
                pairs = msgpack.unpackb(bytes(buf[4:4 + n]))
                del buf[:4 + n]
                if not pairs:
                    done = True
                    break
                with env.begin(write=True) as txn:
                    for k, v in pairs:
                        txn.put(k, v, db=db)
                count += len(pairs)
    dt = time.perf_counter() - t
    env.close()
    return {"s": dt, "bytes": received, "count": count}


def bench_bootstrap(cfg: argparse.Namespace, wd: Workdir, prof: Profiler
                    ) -> tuple[list[Row], dict]:
    n, batch = cfg.big, 10_000
    src_dir = wd.fresh("boot-source")
    print(f"  d: building the source, {n:,} conversations ...", flush=True)
    built = run_child(MODULE, "build", {"path": src_dir, "n": n, "batch": batch})
    print(f"    built in {built['build_s']:.1f} s", flush=True)
    timeout = max(120.0, n / 1000)
    res: dict[str, dict[str, list[float]]] = {
        d: {"s": [], "bytes": [], "raw_s": [], "raw_bytes": []} for d in ("sync", "nosync")}
    details: dict[str, Any] = {"build": built, "runs": []}
    if prof.dir:  # an extra run with both sides under the profiler, not counted
        spec = {"path": src_dir, "profile": os.path.join(prof.dir, "d-source.prof")}
        p, info = spawn_child("serve", spec)
        path = wd.fresh("boot-profiled")
        print("  d: profiled run, sync newcomer ...", flush=True)
        prof.run("d-newcomer", lambda: trio.run(
            bootstrap, info["port"], info, "sync", path, timeout))
        finish_child(p)
        prof.save("d-source", spec["profile"])
        rm(path)
    for run in range(cfg.d_runs):
        for durability in ("sync", "nosync"):
            # Reference first or second, alternating.
            order = ("raw", "crdtim") if run % 2 else ("crdtim", "raw")
            for what in order:
                path = wd.fresh(f"boot-{what}-{durability}")
                if what == "raw":
                    p, info = spawn_child("rawserve", {"path": src_dir})
                    out = trio.run(raw_copy, info["port"], durability, path)
                    finish_child(p)
                    assert out["count"] == n, out
                    res[durability]["raw_s"].append(out["s"])
                    res[durability]["raw_bytes"].append(out["bytes"])
                else:
                    p, info = spawn_child("serve", {"path": src_dir})
                    out = trio.run(bootstrap, info["port"], info, durability, path, timeout)
                    src_stats = finish_child(p)
                    print(f"  d: run {run + 1}, {durability} newcomer: {out['s']:.2f} s",
                          flush=True)
                    assert out["count"] == n, (out["count"], n)
                    res[durability]["s"].append(out["s"])
                    res[durability]["bytes"].append(out["bytes"])
                    details["runs"].append({"durability": durability, **out, "source": src_stats})
                rm(path)
    rm(src_dir)
    mib = 1024 * 1024
    rows = []
    for durability in ("sync", "nosync"):
        r = res[durability]
        sfx = "" if durability == "sync" else "-ns"
        ctx = durability != "sync"
        rows.append(Row(
            f"d{sfx}", f"bootstrap {n:,} conversations, newcomer {durability}: time", "s",
            r["s"], r["raw_s"], goal="(context)" if ctx else "<= 4 s",
            check=None if ctx else value_at_most(4.0), fmt="{:,.2f}",
            ref_label=f"raw copy of the stored (key, value) pairs over loopback TCP into raw "
                      f"LMDB ({durability}), 512 pairs per txn, no ordering index or log",
            note=(f"source: built in {built['build_s']:.1f} s (nosync batches of {batch:,}), "
                  f"log trimmed to head {built['head']} (floor {built['log_floor']}); runs in "
                  f"its own process; time from Node start to STATE_END applied" if not ctx else "")))
        rows.append(Row(
            f"d{sfx}-B", f"  bytes on the wire (both directions)", "MiB",
            [b / mib for b in r["bytes"]], [b / mib for b in r["raw_bytes"]], fmt="{:,.1f}",
            goal="(report)", ref_label=f"raw copy's bytes; stored keys + values total "
                                       f"{built['kv_bytes'] / mib:,.1f} MiB"))
    return rows, details


# == main ======================================================================================


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}",
                                description=__doc__.split("\n\n")[0])
    common_args(p, "a,b,c,d,e")
    p.add_argument("--profile", metavar="DIR",
                   help="cProfile the crdtim side of each figure's first run into DIR")
    cfg = p.parse_args(argv)
    if answer_child(cfg, {"build": child_build, "serve": child_serve,
                          "rawserve": child_rawserve, "streamer": load_procs.child_streamer,
                          "loadpeer": load_procs.child_peer}):
        return 0

    q = cfg.quick
    cfg.runs = cfg.runs or (3 if q else 5)
    cfg.mesh_writes = 40 if q else 200
    cfg.byte_samples = 100 if q else 300
    cfg.latency_writes = 30 if q else 500
    cfg.load_writes = 100 if q else 500
    cfg.big = 20_000 if q else 1_000_000
    cfg.d_runs = min(cfg.runs, 3)  # a full-size run takes minutes
    only = set(cfg.only.split(","))

    wd = Workdir(cfg.dir, prefix="crdtim-bench-sync-")
    prof = Profiler(cfg.profile)
    fs = filesystem_of(wd.root)
    meta = run_meta(MODULE, argv, quick=q, runs=cfg.runs, workdir=fs, lmdb=lmdb.__version__,
                    pycrdt=pycrdt.__version__, trio=trio.__version__)
    announce("sync", q, cfg.runs, fs)
    rows: list[Row] = []
    details: dict[str, Any] = {}
    t_all = time.perf_counter()
    try:
        if "a" in only:
            print("  a: bytes to converge, 5 replicas, mesh / star / line ...", flush=True)
            a_rows, details["a"] = bench_mesh(cfg, wd, prof)
            rows += a_rows
        if "b" in only:
            print("  b: bytes per single-field change ...", flush=True)
            rows += bench_bytes(cfg, wd)
        if "c" in only:
            print("  c: commit-to-visible latency over loopback ...", flush=True)
            c_rows, details["c"] = bench_latency(cfg, wd, prof)
            rows += c_rows
        if "d" in only:
            d_rows, details["d"] = bench_bootstrap(cfg, wd, prof)
            rows += d_rows
        if "e" in only:
            print("  e: latency under load ...", flush=True)
            e_rows, details["e"] = bench_load(cfg, wd)
            rows += e_rows
    finally:
        wd.cleanup()
    meta["elapsed_s"] = time.perf_counter() - t_all
    meta["loadavg_end"] = os.getloadavg()
    print(f"\ndone in {meta['elapsed_s']:.1f} s: {meta['command']} (load average "
          f"{meta['loadavg_start'][0]:.2f} at the start, {meta['loadavg_end'][0]:.2f} at the end, "
          f"{meta['cpus']} CPUs)\n")
    print_table(rows, key_width=5)
    if cfg.json:
        write_json(cfg.json, meta, rows, details)
        print(f"\nwrote {cfg.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
