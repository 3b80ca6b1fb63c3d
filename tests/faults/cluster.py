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

The servers accept clock readings up to `max_drift_ms` ahead (`serve --max-clock-drift`),
set above the largest offset difference: with the default 5 min bound, a server an hour
behind would refuse its peers' deltas until real time caught up (specs/faults.md, "Clocks").
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import trio

from crdtim.replica import CLOCK_OFFSET_ENV, Replica

from .checker import AckedOp, Intent, Verdict, check
from .proxy import Proxy
from .sim import history_pages, scratch_root

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
    converge_seconds: list[float] = field(default_factory=list)  # per heal
    not_converged: int = 0  # heals after which the deadline passed
    verdict: Verdict | None = None
    error: str | None = None
    logs: str | None = None  # kept when the run failed

    @property
    def ok(self) -> bool:
        # verdict.ok also requires that every acknowledged op was checked (none unrecorded)
        return (self.error is None and self.not_converged == 0 and self.verdict is not None
                and self.verdict.ok and self.unrecorded_ops == 0)

    def to_json(self) -> dict[str, Any]:
        v = self.verdict or Verdict()
        return {
            "servers": self.servers, "seconds_under_faults": round(self.seconds, 1),
            "rounds": self.rounds, "clock_offsets_ms": self.offsets_ms,
            "faults": dict(sorted(self.faults.items())), "acked_ops": self.acked_ops,
            "acked_ops_by_kind": dict(sorted(self.kinds.items())),
            "unrecorded_ops": self.unrecorded_ops, "maybe_ops": self.maybe_ops,
            "converge_seconds_after_heal": [round(s, 3) for s in self.converge_seconds],
            "max_converge_seconds_after_heal": round(max(self.converge_seconds, default=0), 3),
            "not_converged": self.not_converged,
            "diverged": len(v.diverged), "lost_writes": v.lost_ops, "wrong_values": len(v.wrong),
            "unchecked_ops": len(v.unchecked),
            "first_problem": self.error or (None if v.ok else v.summary()),
            "logs": self.logs,
        }


def _free_port(rng: random.Random) -> int:
    """A port for a server to listen on across restarts: below the ephemeral range, so that
    while the server is down (killed), no outgoing connection is given it as source port."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            ephemeral_low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    for _ in range(100):
        port = rng.randrange(10_000, max(10_001, ephemeral_low))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env(offset_ms: int) -> dict[str, str]:
    env = dict(os.environ)
    env[CLOCK_OFFSET_ENV] = str(offset_ms)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


class _Server:
    def __init__(self, index: int, path: str, port: int, offset_ms: int):
        self.index = index
        self.path = path
        self.port = port
        self.offset_ms = offset_ms
        self.process: trio.Process | None = None
        self.killed = False  # by the harness: anything else that ends it is a failure

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self, peers: list[str], max_drift_ms: int, log_path: str) -> None:
        argv = [sys.executable, "-m", "crdtim", "--data", self.path, "serve", "--quiet",
                "--listen", f"127.0.0.1:{self.port}", "--max-clock-drift", str(max_drift_ms)]
        for p in peers:
            argv += ["--peer", p]
        self.killed = False
        with open(log_path, "ab") as log:
            self.process = await trio.lowlevel.open_process(
                argv, env=_child_env(self.offset_ms), stdout=log, stderr=log)

    async def kill9(self) -> None:
        if self.alive:
            self.killed = True
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    async def stop(self) -> None:
        if self.alive:
            self.process.terminate()
            with trio.move_on_after(10):
                await self.process.wait()
            await self.kill9()


class _Workload:
    """One workload child (restarted after each kill -9) and what it reported: operations
    acknowledged, and the calls in progress when it was killed (their effect is optional)."""

    def __init__(self, index: int, path: str, replica_id: str, offset_ms: int,
                 rng: random.Random, interval: float):
        self.index, self.path, self.replica_id, self.offset_ms = index, path, replica_id, offset_ms
        self.rng, self.interval = rng, interval
        self.ops: list[AckedOp] = []
        self.maybe: list[tuple[str, Intent]] = []  # (replica id, intent) killed in the call
        self.incarnation = 0
        self.pending: Intent | None = None  # announced, not yet acknowledged
        self.paused = trio.Event()
        self.done = trio.Event()
        self.process: trio.Process | None = None
        self.killed = False

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self, nursery: trio.Nursery, log_path: str) -> None:
        self.incarnation += 1
        self.killed = False
        self.pending = None
        self.done = trio.Event()
        argv = [sys.executable, "-m", "tests.faults.workload", "--data", self.path,
                "--seed", str(self.rng.getrandbits(32)),
                "--name", f"w{self.index}.{self.incarnation}", "--interval", str(self.interval)]
        with open(log_path, "ab") as log:
            self.process = await trio.lowlevel.open_process(
                argv, env=_child_env(self.offset_ms), stdin=-1, stdout=-1, stderr=log)
        nursery.start_soon(self._read_reports, self.process)

    async def _read_reports(self, process: trio.Process) -> None:
        buf = b""
        async for chunk in process.stdout:
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                obj = json.loads(line)
                if "paused" in obj:
                    self.paused.set()
                elif "done" in obj:
                    pass
                elif "calling" in obj:
                    self.pending = Intent.from_json(obj["calling"])
                else:
                    self.ops.append(AckedOp.from_json(obj))
                    self.pending = None
        # EOF: a line cut short by a kill was never printed whole, so it does not count.
        self.done.set()

    async def kill9(self) -> bool:
        """kill -9; True if it died in the middle of a call (announced, not acknowledged)."""
        if not self.alive:
            return False
        self.killed = True
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()
        await self.done.wait()  # every whole line it printed has been read
        if self.pending is None:
            return False
        self.maybe.append((self.replica_id, self.pending))
        self.pending = None
        return True

    async def command(self, cmd: str) -> None:
        await self.process.stdin.send_all(cmd.encode() + b"\n")

    async def pause(self) -> None:
        self.paused = trio.Event()
        await self.command("pause")
        with trio.fail_after(30):  # a workload that died or hung is a harness failure
            await self.paused.wait()

    async def stop(self) -> None:
        if self.process is None:
            return
        try:
            await self.command("stop")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        with trio.move_on_after(20):
            await self.done.wait()
            await self.process.wait()
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


def read_states(paths: list[str]) -> dict[str, Any]:
    """Every directory's whole state, read by this process (beside the running servers)."""
    return read_histories(paths)[0]


def read_histories(paths: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every directory's whole state, and what its history pages show of each conversation
    (sim.history_pages), read by this process beside the running servers."""
    states, pages = {}, {}
    for path in paths:
        with Replica.open(path, create=False) as r:
            name = f"{r.id}@{os.path.basename(path)}"
            states[name] = r.state()
            pages[name] = {cid: history_pages(r, cid) for cid in states[name].convs}
    return states, pages


async def run_cluster(seed: int, config: ClusterConfig = ClusterConfig(),
                      progress: Any = None) -> ClusterReport:
    rng = random.Random(seed)
    report = ClusterReport(servers=config.servers)
    root = scratch_root()
    paths = [os.path.join(root, f"s{i}") for i in range(config.servers)]
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
    servers = [_Server(i, paths[i], _free_port(port_rng), offsets[i])
               for i in range(config.servers)]
    workloads = [_Workload(i, paths[i], ids[i], offsets[i], random.Random(rng.getrandbits(32)),
                           config.op_interval) for i in range(config.servers)]
    proxy = Proxy(rng)

    def log_of(kind: str, i: int) -> str:
        return os.path.join(root, f"{kind}{i}.log")

    async def start_server(s: _Server) -> None:
        await s.start(proxy.peer_addresses(s.index), config.max_drift_ms, log_of("serve", s.index))

    async def restart_later(s: _Server, delay: float) -> None:
        await trio.sleep(delay)
        if not s.alive:
            if rng.random() < 0.3:  # it comes back with its clock set differently
                s.offset_ms = rng.randint(-config.max_offset_ms, config.max_offset_ms)
                report.faults["clock_jump"] += 1
            await start_server(s)

    async def start_workload(w: _Workload) -> None:
        await w.start(nursery, log_of("workload", w.index))

    async def workload_restart_later(w: _Workload, delay: float) -> None:
        await trio.sleep(delay)
        if not w.alive:
            await start_workload(w)

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
                                       restarts, restart_later, workload_restart_later)
                    restarts.cancel_scope.cancel()
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
                        _died_unkilled(w, "workload", log_of("workload", w.index))
                        await start_workload(w)
                    await w.pause()
                proxy.heal()
                for s in servers:
                    if not s.alive:
                        _died_unkilled(s, "server", log_of("serve", s.index))
                        await start_server(s)
                healed = trio.current_time()
                took = None
                while trio.current_time() - healed < config.converge_deadline:
                    for s in servers:
                        if not s.alive:
                            _died_unkilled(s, "server", log_of("serve", s.index))
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
                states, pages = read_histories(paths)
                report.verdict = check(states, ops, maybe, pages)
                report.rounds += 1
                if progress is not None:
                    progress(f"round {n + 1}/{rounds}: {len(ops)} ops acknowledged, "
                             + (f"converged {took:.2f} s after the heal, " if took is not None
                                else "NOT converged, ")
                             + ("ok" if report.verdict.ok else report.verdict.summary()))
                if not report.verdict.ok or report.not_converged:
                    break
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
    report.acked_ops = sum(len(w.ops) for w in workloads)
    report.kinds = Counter(op.intent.kind for w in workloads for op in w.ops)
    report.unrecorded_ops = sum(op.unrecorded for w in workloads for op in w.ops)
    report.maybe_ops = sum(len(w.maybe) for w in workloads)
    if report.ok:
        shutil.rmtree(root, ignore_errors=True)
    else:
        report.logs = root
    return report


async def _fault_phase(rng: random.Random, config: ClusterConfig, proxy: Proxy,
                       servers: list[_Server], workloads: list[_Workload],
                       report: ClusterReport, restarts: trio.Nursery, restart_later: Any,
                       workload_restart_later: Any) -> None:
    end = trio.current_time() + config.round_seconds
    # Each round opens with a workload kill: drawn at random, a short round could hold none
    # (or find every workload restarting), and a run must always exercise kill -9 mid-use.
    first = True
    while True:
        await trio.sleep(rng.uniform(*config.fault_gap))
        if trio.current_time() >= end:
            return
        kind = "kill9_workload" if first else rng.choices(
            ["kill9_server", "kill9_workload", "cut", "partition", "heal", "delay"],
            [3, 2, 4, 1, 2, 1])[0]
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
                await _until_in_call(w)
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
        else:
            proxy.set_delay(rng.uniform(0.001, 0.05))
        report.faults[kind] += 1


async def _until_in_call(w: _Workload) -> None:
    """Wait (briefly) until the workload has announced a call it has not yet acknowledged."""
    with trio.move_on_after(0.5):
        while w.alive and w.pending is None:
            await trio.sleep(0.0005)


def _died_unkilled(p: _Server | _Workload, what: str, log_path: str) -> None:
    """Raise if the process `p`, found dead, was not killed by the harness."""
    if not p.killed:
        raise RuntimeError(f"{what} {p.index} exited with status {p.process.returncode} "
                           f"(see {log_path})")
