"""Real processes: `crdtim serve` servers joined through the fault-injecting proxy.

Each server is a `python -m crdtim serve` subprocess with its own data directory and its own
clock offset (CRDTIM_CLOCK_OFFSET_MS, up to +-1 h), dialing every other server through its
own proxy link. A workload child per server (workload.py, same clock offset) writes into that
server's directory and reports every acknowledged operation. The run is a series of rounds:
faults for `round_seconds` -- kill -9 and restart of servers and of workloads (a call in
progress then may or may not have happened: the checker is told), connections cut, partitions,
delays, all at random times drawn from the seed -- then the heal: workloads paused, faults
lifted, dead servers restarted, and the time until every directory holds the same state is
measured; then the checker judges the states against every operation acknowledged so far.
Disk faults (disk.py, specs/faults.md §4.1-4.2): each data directory is its own tmpfs, filled
for a while during a round (writes refused meanwhile are reported, not acknowledged); and at
some heals the killed server's data file is damaged where live records are, then verified
and repaired (or replaced) as an operator would before its server starts again (repair.py),
and the writes it may legitimately lose are given to the checker. The processes themselves
(start, kill -9, pause, their logs) are processes.py's; this module holds the schedule: the
rounds, the faults and when they happen, the heals, and the report.

The servers accept clock readings up to `max_drift_ms` ahead (`serve --max-clock-drift`),
set above the largest offset difference: with the default 5 min bound, a server an hour
behind would refuse its peers' deltas until real time caught up (specs/faults.md, "Clocks").
"""

from __future__ import annotations

import os
import random
import shutil
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import trio

from crdtim.replica import Replica

from .checker import AckedOp, Verdict, check
from .disk import Disks
from .repair import damage_and_recover
from .processes import (
    Server,
    Workload,
    died_unkilled,
    free_port,
    last_line,
    log_length,
    log_note,
    log_text,
    read_histories,
    read_states,
    until_in_call,
)
from .proxy import Proxy
from .sim import scratch_root

__all__ = ["ClusterConfig", "ClusterReport", "run_cluster"]

HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    servers: int = 5
    seconds: float = 180.0  # total time under faults, over all rounds
    round_seconds: float = 20.0
    max_offset_ms: int = HOUR_MS
    max_drift_ms: int = 2 * HOUR_MS + 5 * 60_000  # above any difference of two offsets
    converge_deadline: float = 90.0  # seconds after a heal before "did not converge"
    op_interval: float = 0.03  # mean seconds between one workload's operations
    fault_gap: tuple[float, float] = (0.2, 1.2)  # seconds between two faults
    # Each data directory's tmpfs (disk.py). Large: under this workload a data.mdb grows by
    # up to about 1 MiB/s (32 to 64 MiB after 40 s were seen), and a tmpfs that fills by
    # itself is a full disk the harness did not make (the filler takes only what is free).
    disk_mib: int = 1024
    disk_full_seconds: tuple[float, float] = (1.0, 4.0)  # how long a disk stays full
    damage_share: float = 0.5  # of the heals, those that damage the killed server's file
    disk_full_weight: int = 1  # of a fault being `disk_full` (the others weigh 1 to 4)


@dataclass
class ClusterReport:
    servers: int = 0
    seconds: float = 0.0
    rounds: int = 0
    offsets_ms: list[int] = field(default_factory=list)
    faults: Counter = field(default_factory=Counter)
    acked_ops: int = 0
    kinds: Counter = field(default_factory=Counter)  # acknowledged operations by kind
    unrecorded_ops: int = 0  # acknowledged, but the log entry was trimmed before it was read
    maybe_ops: int = 0  # calls in progress when their workload was killed: effect optional
    refused_ops: int = 0  # calls the replica refused (StoreError: the disk was full)
    at_risk: list[AckedOp] = field(default_factory=list)  # acknowledged at a replica whose
    # file was damaged and repaired (or replaced) before they reached any other: may be lost
    at_risk_ops: int = 0
    disk_method: str = ""  # how disks are made full: "tmpfs" or "rlimit" (disk.py)
    disk_full_log_lines: int = 0  # server log lines saying the disk is full
    damage: Counter = field(default_factory=Counter)  # what the operator met and did
    # damaged files: "tried", "hit_live_data" (every copy of a live value hit), "detected"
    # (verify, or a one-shot read, saw it), "crashed" (liblmdb aborted a crdtim process)
    damages: Counter = field(default_factory=Counter)
    damage_notes: list[str] = field(default_factory=list)  # what each damage did
    server_tracebacks: int = 0  # tracebacks in the servers' logs (a bug, never a fault)
    problems: list[str] = field(default_factory=list)  # crdtim misbehaving under disk faults
    converge_seconds: list[float] = field(default_factory=list)  # per heal
    not_converged: int = 0  # heals after which the deadline passed
    verdict: Verdict | None = None
    error: str | None = None
    logs: str | None = None  # kept when the run failed

    @property
    def ok(self) -> bool:
        # verdict.ok also requires that every acknowledged op was checked (none unrecorded)
        return (self.error is None and self.not_converged == 0 and self.verdict is not None
                and self.verdict.ok and self.unrecorded_ops == 0 and not self.problems
                and self.server_tracebacks == 0)

    def to_json(self) -> dict[str, Any]:
        v = self.verdict or Verdict()
        return {
            "servers": self.servers, "seconds_under_faults": round(self.seconds, 1),
            "rounds": self.rounds, "clock_offsets_ms": self.offsets_ms,
            "faults": dict(sorted(self.faults.items())), "acked_ops": self.acked_ops,
            "acked_ops_by_kind": dict(sorted(self.kinds.items())),
            "unrecorded_ops": self.unrecorded_ops, "maybe_ops": self.maybe_ops,
            "refused_ops": self.refused_ops, "at_risk_ops": self.at_risk_ops,
            "disk_full_method": self.disk_method,
            "disk_full_log_lines": self.disk_full_log_lines,
            "damaged_file_outcomes": dict(sorted(self.damage.items())),
            "damages": {k: self.damages[k] for k in ("tried", "hit_live_data", "detected",
                                                     "crashed")},
            "damage_notes": self.damage_notes,
            "server_tracebacks": self.server_tracebacks, "problems": self.problems,
            "converge_seconds_after_heal": [round(s, 3) for s in self.converge_seconds],
            "max_converge_seconds_after_heal": round(max(self.converge_seconds, default=0), 3),
            "not_converged": self.not_converged,
            "diverged": len(v.diverged), "lost_writes": v.lost_ops, "wrong_values": len(v.wrong),
            "unchecked_ops": len(v.unchecked),
            "first_problem": self.error or (None if v.ok else v.summary()) or (
                self.problems[0] if self.problems else None),
            "logs": self.logs,
        }


async def run_cluster(seed: int, config: ClusterConfig = ClusterConfig(),
                      progress: Any = None) -> ClusterReport:
    rng = random.Random(seed)
    report = ClusterReport(servers=config.servers)
    root = scratch_root()
    paths = [os.path.join(root, f"s{i}") for i in range(config.servers)]
    disks = Disks(paths, config.disk_mib)
    report.disk_method = disks.mount()
    ids = []
    for path in paths:
        with Replica.open(path) as r:
            ids.append(r.id)
    # Server 0 keeps true time; the others are spread over +-max_offset_ms.
    offsets = [0] + [rng.randint(-config.max_offset_ms, config.max_offset_ms)
                     for _ in range(config.servers - 1)]
    report.offsets_ms = offsets
    # Ports from their own generator: the faults stay those of the seed whatever ports are
    # free on this machine.
    port_rng = random.Random()
    servers = [Server(i, paths[i], free_port(port_rng), offsets[i])
               for i in range(config.servers)]
    workloads = [Workload(i, paths[i], ids[i], offsets[i], random.Random(rng.getrandbits(32)),
                           config.op_interval) for i in range(config.servers)]
    proxy = Proxy(rng)

    def log_of(kind: str, i: int) -> str:
        return os.path.join(root, f"{kind}{i}.log")

    async def start_server(s: Server) -> None:
        s.started_on_full_disk = s.index in full_since
        await s.start(proxy.peer_addresses(s.index), config.max_drift_ms, log_of("serve", s.index))

    async def restart_later(s: Server, delay: float) -> None:
        await trio.sleep(delay)
        if not s.alive:
            if rng.random() < 0.3:  # it comes back with its clock set differently
                s.offset_ms = rng.randint(-config.max_offset_ms, config.max_offset_ms)
                report.faults["clock_jump"] += 1
            await start_server(s)

    async def start_workload(w: Workload) -> None:
        await w.start(nursery, log_of("workload", w.index))

    async def workload_restart_later(w: Workload, delay: float) -> None:
        await trio.sleep(delay)
        if not w.alive:
            await start_workload(w)

    full_since: dict[int, int] = {}  # server index -> its log's length when its disk filled

    async def fill_disk(i: int, seconds: float, restarts: trio.Nursery) -> None:
        pids = [p.process.pid for p in (servers[i], workloads[i]) if p.alive]
        log_note(log_of("serve", i), "disk full")
        full_since[i] = log_length(log_of("serve", i))
        await trio.to_thread.run_sync(disks.fill, i, pids)
        report.faults["disk_full"] += 1

        async def later() -> None:
            await trio.sleep(seconds)
            await release_disk(i)
        restarts.start_soon(later)

    async def release_disk(i: int) -> None:
        """Space comes back; what the server logged meanwhile must say so, in one line. A
        server started while the disk was full may have refused to start: start it again."""
        disks.release(i)
        log_note(log_of("serve", i), "space back")
        s = servers[i]
        if not s.alive and not s.killed:
            last = last_line(s.log_path)
            if s.started_on_full_disk:  # may refuse to start, with one clear line
                report.damage["server_refused_to_start_on_full_disk"] += 1
                if "Traceback" in last or not last.startswith("crdtim: error:"):
                    report.problems.append(f"server {i} refused to start on a full disk "
                                           f"without a clear error: {last!r}")
            else:  # a bug in crdtim: recorded (the run fails), and the run goes on
                report.problems.append(f"server {i} exited while its disk was full: {last!r}"
                                       f" (see {s.log_path})")
            await start_server(s)
        with open(log_of("serve", i), "rb") as f:
            f.seek(full_since.pop(i))
            logged = f.read().decode("utf-8", "replace")
        report.disk_full_log_lines += sum(
            any(w in line for w in ("no space left on device", "File too large", "I/O error"))
            for line in logged.splitlines())
        if "Traceback" in logged:
            report.problems.append(f"server {i} logged a traceback while its disk was full "
                                   f"(see {log_of('serve', i)})")

    try:
        async with trio.open_nursery() as nursery:
            await proxy.start(nursery, {s.index: ("127.0.0.1", s.port) for s in servers})
            for s in servers:
                await start_server(s)
            for w in workloads:
                await start_workload(w)
            rounds = max(1, round(config.seconds / config.round_seconds))
            for n in range(rounds):
                if n:
                    for w in workloads:
                        await w.command("resume")
                async with trio.open_nursery() as restarts:
                    await _fault_phase(rng, config, proxy, servers, workloads, report,
                                       restarts, restart_later, workload_restart_later,
                                       fill_disk if disks.method != "none" else None,
                                       full_since)
                    restarts.cancel_scope.cancel()
                for i in list(full_since):  # space comes back before the heal
                    await release_disk(i)
                report.seconds += config.round_seconds
                # Every round ends under a partition and with a server killed, so that the
                # heal below has work to do: writes on both sides of the cut, one replica
                # restarting from its files.
                side = set(rng.sample(range(len(servers)), rng.randint(1, len(servers) - 1)))
                proxy.partition(side)
                report.faults["partition"] += 1
                await trio.sleep(config.fault_gap[1])
                victim = rng.choice(servers)
                if victim.alive:
                    await victim.kill9()
                    report.faults["kill9_server"] += 1
                # The heal: no writes, no faults, every server up; wait for one state.
                # A process that exits without being killed is a failure, not a fault.
                for w in workloads:
                    if not w.alive:
                        died_unkilled(w, "workload", log_of("workload", w.index))
                        await start_workload(w)
                    await w.pause()
                if victim.killed and not victim.alive and rng.random() < config.damage_share:
                    report.faults["damaged_file"] += 1
                    await damage_and_recover(victim, workloads[victim.index], paths, rng,
                                             report, log_of("serve", victim.index),
                                             start_server, start_workload)
                proxy.heal()
                for s in servers:
                    if not s.alive:
                        died_unkilled(s, "server", log_of("serve", s.index))
                        await start_server(s)
                healed = trio.current_time()
                took = None
                while trio.current_time() - healed < config.converge_deadline:
                    for s in servers:
                        if not s.alive:
                            died_unkilled(s, "server", log_of("serve", s.index))
                            raise RuntimeError(f"server {s.index} is down during the heal")
                    states = read_states(paths)
                    first = next(iter(states.values()))
                    if all(st == first for st in states.values()):
                        took = trio.current_time() - healed
                        report.converge_seconds.append(took)
                        break
                    await trio.sleep(0.05)  # polled: convergence is seen only in the files
                else:
                    report.not_converged += 1
                ops = [op for w in workloads for op in w.ops]
                maybe = [m for w in workloads for m in w.maybe]
                refused = [m for w in workloads for m in w.refused]
                states, pages = read_histories(paths)
                report.verdict = check(states, ops, maybe, pages, at_risk=report.at_risk,
                                       refused=refused)
                report.server_tracebacks = sum(log_text(log_of("serve", s.index)).count(
                    "Traceback") for s in servers)
                report.rounds += 1
                if progress is not None:
                    progress(f"round {n + 1}/{rounds}: {len(ops)} ops acknowledged, "
                             + (f"converged {took:.2f} s after the heal, " if took is not None
                                else "NOT converged, ")
                             + ("ok" if report.verdict.ok else report.verdict.summary()))
                if not report.verdict.ok or report.not_converged:
                    break  # (problems and tracebacks are recorded, and the run goes on)
            for w in workloads:
                await w.stop()
            for s in servers:
                await s.stop()
            nursery.cancel_scope.cancel()
    except Exception as e:  # the harness itself failed: say so, keep the logs
        while isinstance(e, ExceptionGroup):
            e = e.exceptions[0]
        report.error = f"{type(e).__name__}: {e}"
    finally:
        for w in workloads:
            if w.process is not None and w.process.returncode is None:
                w.process.kill()
        for s in servers:
            if s.alive:
                s.process.kill()
        disks.release_all()
    report.acked_ops = sum(len(w.ops) for w in workloads)
    report.kinds = Counter(op.intent.kind for w in workloads for op in w.ops)
    report.unrecorded_ops = sum(op.unrecorded for w in workloads for op in w.ops)
    report.maybe_ops = sum(len(w.maybe) for w in workloads)
    report.refused_ops = sum(len(w.refused) for w in workloads)
    report.at_risk_ops = len(report.at_risk)
    if report.ok:
        disks.unmount()
        shutil.rmtree(root, ignore_errors=True)
    else:  # the directories stay mounted, for a look; `umount` them when done
        report.logs = root
    return report


async def _fault_phase(rng: random.Random, config: ClusterConfig, proxy: Proxy,
                       servers: list[Server], workloads: list[Workload],
                       report: ClusterReport, restarts: trio.Nursery, restart_later: Any,
                       workload_restart_later: Any, fill_disk: Any, full: dict[int, int]) -> None:
    end = trio.current_time() + config.round_seconds
    # Each round opens with a workload kill: drawn at random, a short round could hold none
    # (or find every workload restarting), and a run must always exercise kill -9 mid-use.
    first = True
    while True:
        await trio.sleep(rng.uniform(*config.fault_gap))
        if trio.current_time() >= end:
            return
        kind = "kill9_workload" if first else rng.choices(
            ["kill9_server", "kill9_workload", "cut", "partition", "heal", "delay", "disk_full"],
            [3, 2, 4, 1, 2, 1, config.disk_full_weight if fill_disk else 0])[0]
        if kind == "kill9_server":
            s = rng.choice(servers)
            if not s.alive:
                continue
            await s.kill9()
            restarts.start_soon(restart_later, s, rng.uniform(0.1, 2.0))
        elif kind == "kill9_workload":
            w = rng.choice(workloads)
            # Half of the kills wait for the call in progress, so that some die inside one.
            if rng.random() < 0.5:
                await until_in_call(w)
            if not w.alive:
                continue
            first = False
            if await w.kill9():
                report.faults["kill9_workload_mid_call"] += 1
            restarts.start_soon(workload_restart_later, w, rng.uniform(0.1, 1.0))
        elif kind == "cut":
            proxy.cut_random()
        elif kind == "partition":
            side = set(rng.sample(range(len(servers)), rng.randint(1, len(servers) - 1)))
            proxy.partition(side)
        elif kind == "heal":  # lifts partitions and delays early: faults come and go
            proxy.heal()
            continue
        elif kind == "disk_full":  # counted by fill_disk; released later, or at the heal
            i = rng.randrange(len(servers))
            seconds = rng.uniform(*config.disk_full_seconds)
            if i not in full:
                await fill_disk(i, seconds, restarts)
            continue
        else:
            proxy.set_delay(rng.uniform(0.001, 0.05))
        report.faults[kind] += 1
