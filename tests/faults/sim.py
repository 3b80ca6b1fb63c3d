"""Deterministic simulation: real Replicas and SyncSessions under a seeded fault scheduler.

In the manner of FoundationDB's simulation testing: one `random.Random(seed)` makes every
choice -- which replica writes what, which connection delivers how many bytes, when a
connection drops, a partition cuts, a replica crashes (between calls, or inside a write
transaction before its commit), time moves -- and every clock is
virtual, so a seed replays exactly (`python -m tests.faults --replay SEED`). The replicas
are real LMDB replicas (durability nosync, in /dev/shm when there is one) driven only through
their public and replication APIs, and the sessions are the sans-IO `SyncSession`s that
`net.py` runs over TCP; a connection is two byte queues that keep order but may be read at
any split, as TCP's are.

A run: a few replicas with clock offsets, a few dozen scheduled steps, then the heal (every
partition lifted, every pair connected, run to quiescence; virtual time moves on in steps
of the drift bound until peers stop refusing each other's clocks), then the checker
(checker.py) on the final states. Fault model and rules: specs/faults.md.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import os
import random
import shutil
import tempfile
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

from crdtim.crdt import DEFAULT_MAX_DRIFT_MS, Flag, History
from crdtim.protocol import RemoteProtocolError, SessionConfig, StateTransferStarted, SyncSession
from crdtim.replica import DEFAULT_LOG_RETENTION, Replica
from crdtim.store import Store

from . import ops
from .checker import AckedOp, Intent, Verdict, check
from .messages import plain_history

__all__ = ["SimConfig", "SimResult", "run_one", "run_many", "scratch_root"]

#: Small batches, chunks and window, so that splitting, back-pressure and multi-chunk state
#: transfers happen within a few dozen steps.
SESSION_CONFIG = SessionConfig(
    max_entries_per_delta=3,
    max_conversations_per_chunk=2,
    max_unacked_frames=2,
    ping_interval=5.0,
    idle_timeout=20.0,
)
START_WALL_MS = 1_700_000_000_000
CIDS = ("c0", "c1", "c2")
TEXTS = ("", "a", "b", "résumé")
HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class SimConfig:
    min_replicas: int = 3
    max_replicas: int = 4
    min_steps: int = 30
    max_steps: int = 120
    max_drift_ms: int = DEFAULT_MAX_DRIFT_MS
    heal_rounds: int = 40  # each: run to quiescence, then move virtual time on by the bound
    message_share: float = 0.5  # of the local operations, those on message histories


@dataclass
class SimResult:
    seed: int
    replicas: int = 0
    skew: str = ""  # synced | skewed | wild: the spread of the clock offsets
    steps: int = 0
    faults: Counter = field(default_factory=Counter)
    acked_ops: int = 0
    converge_virtual_ms: int = 0  # virtual time from the heal to identical replicas
    verdict: Verdict | None = None
    error: str | None = None  # an exception the run should never raise (a bug)
    final_state: Any = None  # the converged state (a ConversationMap), for replay checks
    ops: list[AckedOp] = field(default_factory=list)  # acknowledged, in order
    kinds: Counter = field(default_factory=Counter)  # acknowledged operations by kind

    @property
    def ok(self) -> bool:
        return self.error is None and self.verdict is not None and self.verdict.ok

    def digest(self) -> str:
        """A fingerprint of the run -- its operations, faults and final state, in a canonical
        form (sets sorted) -- equal across replays of the seed, in any process."""
        def canon(m: Any) -> list:
            return sorted((cid, sorted((name, _canonical(state))
                                       for name, state in m.fields(cid).items()))
                          for cid in m.convs)
        fingerprint = (sorted(self.faults.items()), self.converge_virtual_ms,
                       [(op.replica, op.intent, op.defect,
                         None if op.delta is None else canon(op.delta)) for op in self.ops],
                       None if self.final_state is None else canon(self.final_state))
        return hashlib.sha256(repr(fingerprint).encode()).hexdigest()[:16]


def _canonical(state: Any) -> Any:
    if isinstance(state, History):
        return plain_history(state)
    if isinstance(state, Flag):
        return (sorted(state.dots), sorted(state.context.vv.items()), sorted(state.context.cloud))
    return repr(state)


class _Killed(Exception):
    """The process died here (the simulation's kill -9 inside a write transaction)."""


def scratch_root() -> str:
    """A fresh directory for LMDB files: in RAM (/dev/shm) when there is one."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return tempfile.mkdtemp(prefix="crdtim-sim-", dir=base)


class Wire:
    """One connection: `sessions[k]` on replica index `ends[k]`; `queues[k]` holds the bytes
    side k sent that side 1-k has not read yet. Dropping it loses what is queued."""

    def __init__(self, ends: tuple[int, int], sessions: tuple[SyncSession, SyncSession]):
        self.ends = ends
        self.sessions = sessions
        self.queues = (bytearray(), bytearray())

    def collect(self, now: float) -> None:
        for k in (0, 1):
            data = self.sessions[k].data_to_send()
            if data:
                self.queues[k].extend(data)
                self.sessions[k].sent_at(now)

    def quiet(self) -> bool:
        return not self.queues[0] and not self.queues[1]


class Simulation:
    """One run: replicas, connections and faults, every choice drawn from `seed`."""

    def __init__(self, seed: int, root: str, config: SimConfig = SimConfig()):
        self.seed = seed
        self.rng = random.Random(seed)
        self.root = root
        self.config = config
        self.result = SimResult(seed)
        self.now = 0.0  # session time, seconds
        self.wall_ms = START_WALL_MS  # true time; replica i reads wall_ms + offsets[i]
        rng = self.rng
        n = rng.randint(config.min_replicas, config.max_replicas)
        skew = rng.choice(["synced", "skewed", "wild"])  # spread of the clock offsets
        spread = {"synced": 50, "skewed": config.max_drift_ms // 2, "wild": HOUR_MS}[skew]
        self.offsets = [rng.randint(-spread, spread) for _ in range(n)]
        self.result.skew = skew
        # A short log retention drops entries peers have not acknowledged: they get the
        # state instead, possibly in the middle of streaming deltas.
        self.log_retention = rng.choice([DEFAULT_LOG_RETENTION, 2, 6])
        self.ids = [base64.b32encode(rng.getrandbits(64).to_bytes(8, "big")).decode()
                    .rstrip("=").lower() for _ in range(n)]
        self.replicas: list[Replica] = []
        for i in range(n):
            path = self._path(i)
            store = Store(path, "nosync")  # made here, so that its id comes from the seed
            store.init_meta(lambda i=i: self.ids[i])
            store.close()
            self.replicas.append(self._open(i))
        self.wires: list[Wire] = []
        self.cut: frozenset[int] | None = None
        self.ops: list[AckedOp] = self.result.ops
        self.result.replicas = n

    def _path(self, i: int) -> str:
        return os.path.join(self.root, f"r{i}")

    def _open(self, i: int) -> Replica:
        clock: Callable[[], int] = lambda: self.wall_ms + self.offsets[i]
        return Replica.open(self._path(i), durability="nosync", now_ms=clock,
                            max_clock_drift_ms=self.config.max_drift_ms,
                            log_retention=self.log_retention)

    def close(self) -> None:
        for r in self.replicas:
            if not r.closed:
                r.close()

    # -- the scheduler -----------------------------------------------------------------------

    def run(self) -> SimResult:
        rng = self.rng
        steps = rng.randint(self.config.min_steps, self.config.max_steps)
        actions = [(self.local_op, 20), (self.connect, 8), (self.deliver, 45), (self.pump, 4),
                   (self.drop, 3), (self.partition, 1.5), (self.heal_partition, 1.5),
                   (self.crash, 2.5), (self.crash_in_write, 1), (self.trim, 2),
                   (self.tick, 4)]
        funcs = [a for a, _ in actions]
        weights = [w for _, w in actions]
        for _ in range(steps):
            rng.choices(funcs, weights)[0]()
            self.check_acks()
        self.result.steps = steps
        self.heal_and_settle()
        return self.result

    def local_op(self) -> None:
        rng = self.rng
        i = rng.randrange(len(self.replicas))
        r = self.replicas[i]
        intent = ops.readable(r, self._draw(i))
        self.ops.append(ops.perform(r, intent, exclusive=True))
        self.result.kinds[intent.kind] += 1
        if intent.kind == "append":  # a streamed reply: more pieces, each its own call
            for n in range(rng.choice((0, 0, 1, 3, 6))):
                piece = dataclasses.replace(intent, text=f"{intent.text}{n}")
                self.ops.append(ops.perform(r, piece, exclusive=True))
                self.result.kinds["append"] += 1
                self.result.acked_ops += 1
        self.result.acked_ops += 1
        if rng.random() < 0.7:  # a Node pushes a local write at once
            for wire in self.wires:
                if i in wire.ends:
                    wire.sessions[wire.ends.index(i)].pump()
                    wire.collect(self.now)
        if rng.random() < 0.1:
            self.trim()

    def _draw(self, i: int) -> Intent:
        rng = self.rng
        return ops.draw(rng, CIDS, rng.choice(TEXTS), 6, self.wall_ms + self.offsets[i],
                        self.replicas[i], self.config.message_share)

    def crash_in_write(self) -> None:
        """kill -9 in the middle of a local write: the transaction has done all its work
        but not committed when the process dies. The call never returned, so the operation
        is not acknowledged; after the restart nothing of it may be visible."""
        rng = self.rng
        i = rng.randrange(len(self.replicas))
        r = self.replicas[i]
        intent = ops.readable(r, self._draw(i))
        head, state = r.head, r.state()
        store = r.store
        write = store.write

        def dying(fn: Callable) -> Any:
            store.write = write  # one write only

            def body(t: Any) -> Any:
                fn(t)
                raise _Killed()
            return write(body)

        store.write = dying
        try:
            ops.call(r, intent)
        except _Killed:
            pass
        else:
            raise AssertionError("the dying write was never made")
        finally:
            store.write = write
        self.result.faults["crash_in_write"] += 1
        self._restart(i)
        r = self.replicas[i]
        if r.head != head or r.state() != state:
            raise AssertionError(f"a {intent.kind} killed before its commit left a trace "
                                 f"(head {head} -> {r.head})")

    def _across_cut(self, i: int, j: int) -> bool:
        return self.cut is not None and ((i in self.cut) != (j in self.cut))

    def connect(self) -> None:
        n = len(self.replicas)
        i = self.rng.randrange(n)
        j = self.rng.choice([j for j in range(n) if j != i])
        if len(self.wires) < 8 and not self._across_cut(i, j):
            self._connect(i, j)

    def _connect(self, i: int, j: int) -> Wire:
        wire = Wire((i, j), (SyncSession(self.replicas[i], SESSION_CONFIG),
                             SyncSession(self.replicas[j], SESSION_CONFIG)))
        for s in wire.sessions:
            s.initiate(self.now)
        wire.collect(self.now)
        self.wires.append(wire)
        return wire

    def deliver(self) -> None:
        """Some bytes of one direction of one connection: across connections, in any order."""
        busy = [(w, k) for w in self.wires for k in (0, 1) if w.queues[k]]
        if not busy:
            return
        wire, k = self.rng.choice(busy)
        size = len(wire.queues[k])
        n = size if self.rng.random() < 0.6 else self.rng.randint(1, size)
        if n < size:
            self.result.faults["split_read"] += 1
        self._deliver(wire, k, n)

    def _deliver(self, wire: Wire, k: int, n: int | None = None) -> None:
        q = wire.queues[k]
        n = len(q) if n is None else n
        chunk = bytes(q[:n])
        del q[:n]
        try:
            events = wire.sessions[1 - k].receive_data(chunk, self.now)
        except RemoteProtocolError as e:
            if not _is_clock_refusal(e.reason):
                raise  # an honest peer never sends anything to refuse: a bug
            self.result.faults["clock_refusal"] += 1
            self._drop(wire)
            return
        self.result.faults["state_transfer"] += sum(
            isinstance(e, StateTransferStarted) and not e.outbound for e in events)
        if wire.sessions[1 - k].reconciling:  # specs/protocol.md §13, instead of a transfer
            self.result.faults["reconciliation"] += sum(
                isinstance(e, StateTransferStarted) and e.outbound for e in events)
        if events and self.rng.random() < 0.8:  # as a Node's sender does, mostly at once
            for s in wire.sessions:
                s.pump()
        wire.collect(self.now)

    def pump(self) -> None:
        if self.wires:
            wire = self.rng.choice(self.wires)
            for s in wire.sessions:
                s.pump()
            wire.collect(self.now)

    def _drop(self, wire: Wire) -> None:
        if wire in self.wires:
            self.wires.remove(wire)
            # Lost in the middle of a reconciliation: the next connection starts it again.
            self.result.faults["drop_mid_reconciliation"] += any(
                s.reconciling for s in wire.sessions)

    def drop(self) -> None:
        """A lost connection: both ends discard it, bytes in flight are lost."""
        if self.wires:
            self.result.faults["drop"] += 1
            self._drop(self.rng.choice(self.wires))

    def partition(self) -> None:
        n = len(self.replicas)
        side = self.rng.sample(range(n), self.rng.randint(1, n - 1))
        self.cut = frozenset(side)
        self.result.faults["partition"] += 1
        for wire in list(self.wires):
            if self._across_cut(*wire.ends):
                self._drop(wire)

    def heal_partition(self) -> None:
        self.cut = None

    def crash(self) -> None:
        """kill -9 and restart between calls: what was committed stays, what was only in
        memory (acks noted by record_ack and not yet written) is gone, connections drop."""
        self.result.faults["crash"] += 1
        self._restart(self.rng.randrange(len(self.replicas)))

    def _restart(self, i: int) -> None:
        for wire in list(self.wires):
            if i in wire.ends:
                self._drop(wire)
        r = self.replicas[i]
        r._pending_acks.clear()  # never flushed: the process died
        r.close()
        self.replicas[i] = self._open(i)

    def trim(self) -> None:
        # What a Node does every second: apply held values now due, trim the log.
        self.rng.choice(self.replicas).housekeeping()

    def tick(self) -> None:
        dt = self.rng.choice([0.5, 1.0, 3.0, 6.0, 21.0])
        self.now += dt
        self.wall_ms += int(dt * 1000)
        if self.rng.random() < 0.2:  # one process's clock is stepped (NTP, a user)
            i = self.rng.randrange(len(self.replicas))
            self.offsets[i] += self.rng.randint(-60_000, 60_000)
            self.result.faults["clock_step"] += 1
        for wire in list(self.wires):
            try:
                for s in wire.sessions:
                    s.tick(self.now)
            except RemoteProtocolError:
                self.result.faults["idle_timeout"] += 1
                self._drop(wire)
                continue
            wire.collect(self.now)

    def check_acks(self) -> None:
        """Safety, after every step: no replica holds an acknowledgement from a peer for
        more of its log than that peer has durably applied (else a trim could drop an entry
        the peer never got)."""
        for x in self.replicas:
            for y in self.replicas:
                if x is not y:
                    ack = x.peer_ack(y.id)
                    if ack is not None and ack > y.received_from(x.id):
                        raise AssertionError(f"{x.id} holds ack {ack} from {y.id}, which has "
                                             f"applied its log only up to {y.received_from(x.id)}")

    # -- the end -----------------------------------------------------------------------------

    def heal_and_settle(self) -> None:
        """Lift every fault, then repeat: connect every pair afresh and run to quiescence;
        if a peer refused a clock reading, move virtual time on by the drift bound."""
        self.cut = None
        healed_at = self.wall_ms
        n = len(self.replicas)
        for _ in range(self.config.heal_rounds):
            for r in self.replicas:  # a Node's housekeeping: held values now due
                if r.status()["pending"]["count"]:
                    self.result.faults["clock_held"] += 1
                r.apply_pending()
            self.wires.clear()
            for i in range(n):
                for j in range(i + 1, n):
                    self._connect(i, j)
            refused = self._run_to_quiescence()
            states = [r.state() for r in self.replicas]
            if not refused and all(s == states[0] for s in states):
                break
            self.wall_ms += self.config.max_drift_ms
            self.now += 1.0
        self.result.converge_virtual_ms = self.wall_ms - healed_at
        self.wires.clear()
        states = {r.id: r.state() for r in self.replicas}
        pages = {r.id: {cid: history_pages(r, cid) for cid in CIDS} for r in self.replicas}
        self.result.verdict = check(states, self.ops, pages=pages, exact=True)
        self.result.final_state = states[self.replicas[0].id]

    def _run_to_quiescence(self) -> bool:
        refused_before = self.result.faults["clock_refusal"]
        for _ in range(10_000):
            moved = False
            for wire in list(self.wires):
                for s in wire.sessions:
                    moved |= bool(s.pump())
                wire.collect(self.now)
                for k in (0, 1):
                    if wire in self.wires and wire.queues[k]:
                        self._deliver(wire, k)
                        moved = True
            if not moved:
                return self.result.faults["clock_refusal"] > refused_before
        raise AssertionError("the replicas never went quiet")


def history_pages(r: Replica, cid: str) -> list[dict[str, Any]]:
    """The whole visible history of `cid` at `r` through its pages of 4 (newest first), each
    message with the ids of its versions."""
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = r.history(cid, limit=4, cursor=cursor)
        out += [dict(m.to_json(), versions_ids=[v.id for v in r.versions(cid, m.id)])
                for m in page.items]
        if not page.has_more:
            return out
        cursor = page.cursor


def _is_clock_refusal(reason: str) -> bool:
    return reason.startswith("refused:") and ("ahead of the local wall clock" in reason
                                              or "in the future" in reason)


def run_one(seed: int, root: str | None = None, config: SimConfig = SimConfig()) -> SimResult:
    """One run, in a fresh directory under `root` (made and removed here)."""
    own = root is None
    base = scratch_root() if own else root
    path = os.path.join(base, f"seed-{seed}")
    os.makedirs(path)
    sim = None
    try:
        sim = Simulation(seed, path, config)
        return sim.run()
    except Exception:
        result = sim.result if sim is not None else SimResult(seed)
        result.error = traceback.format_exc(limit=8)
        return result
    finally:
        if sim is not None:
            sim.close()
        shutil.rmtree(base if own else path, ignore_errors=True)


@dataclass
class SimSummary:
    runs: int = 0
    faults: Counter = field(default_factory=Counter)
    acked_ops: int = 0
    kinds: Counter = field(default_factory=Counter)
    max_converge_virtual_ms: int = 0
    max_converge_by_skew: Counter = field(default_factory=Counter)  # skew -> longest
    runs_by_skew: Counter = field(default_factory=Counter)
    diverged_runs: int = 0
    lost_writes: int = 0
    wrong_values: int = 0
    unchecked_ops: int = 0
    errors: int = 0
    failing_seeds: list[int] = field(default_factory=list)
    first_failure: str | None = None

    def add(self, r: SimResult) -> None:
        self.runs += 1
        self.faults.update(r.faults)
        self.acked_ops += r.acked_ops
        self.kinds.update(r.kinds)
        self.max_converge_virtual_ms = max(self.max_converge_virtual_ms, r.converge_virtual_ms)
        self.runs_by_skew[r.skew] += 1
        self.max_converge_by_skew[r.skew] = max(self.max_converge_by_skew[r.skew],
                                                r.converge_virtual_ms)
        v = r.verdict
        if v is not None:
            self.diverged_runs += bool(v.diverged)
            self.lost_writes += v.lost_ops
            self.wrong_values += len(v.wrong)
            self.unchecked_ops += len(v.unchecked)
        self.errors += r.error is not None
        if not r.ok:
            self.failing_seeds.append(r.seed)
            if self.first_failure is None:
                self.first_failure = r.error or (v.summary() if v else "no verdict")

    def merge(self, other: SimSummary) -> None:
        self.runs += other.runs
        self.faults.update(other.faults)
        self.acked_ops += other.acked_ops
        self.kinds.update(other.kinds)
        self.max_converge_virtual_ms = max(self.max_converge_virtual_ms,
                                           other.max_converge_virtual_ms)
        self.runs_by_skew.update(other.runs_by_skew)
        for skew, ms in other.max_converge_by_skew.items():
            self.max_converge_by_skew[skew] = max(self.max_converge_by_skew[skew], ms)
        self.diverged_runs += other.diverged_runs
        self.lost_writes += other.lost_writes
        self.wrong_values += other.wrong_values
        self.unchecked_ops += other.unchecked_ops
        self.errors += other.errors
        self.failing_seeds += other.failing_seeds
        self.first_failure = self.first_failure or other.first_failure

    def to_json(self) -> dict[str, Any]:
        return {
            "runs": self.runs, "faults": dict(sorted(self.faults.items())),
            "acked_ops": self.acked_ops, "acked_ops_by_kind": dict(sorted(self.kinds.items())),
            "max_converge_virtual_ms_after_heal": self.max_converge_virtual_ms,
            "runs_by_clock_spread": dict(sorted(self.runs_by_skew.items())),
            "max_converge_virtual_ms_by_clock_spread": dict(sorted(
                self.max_converge_by_skew.items())),
            "diverged_runs": self.diverged_runs, "lost_writes": self.lost_writes,
            "wrong_values": self.wrong_values, "unchecked_ops": self.unchecked_ops,
            "errors": self.errors,
            "failing_seeds": self.failing_seeds[:20], "first_failure": self.first_failure,
        }


def _run_range(args: tuple[int, int, SimConfig]) -> SimSummary:
    first, count, config = args
    summary = SimSummary()
    root = scratch_root()
    try:
        for seed in range(first, first + count):
            summary.add(run_one(seed, root, config))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return summary


def run_many(runs: int, first_seed: int = 0, workers: int = 1,
             config: SimConfig = SimConfig()) -> SimSummary:
    """Seeds first_seed .. first_seed + runs - 1, split across `workers` processes."""
    if workers <= 1 or runs < 2 * workers:
        return _run_range((first_seed, runs, config))
    import multiprocessing

    share = -(-runs // workers)
    parts = [(first_seed + k * share, min(share, runs - k * share), config)
             for k in range(workers) if runs - k * share > 0]
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(len(parts)) as pool:
        total = SimSummary()
        for part in pool.map(_run_range, parts):
            total.merge(part)
    return total
