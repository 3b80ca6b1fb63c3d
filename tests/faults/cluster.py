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
some heals the killed server's data file is damaged, then started, verified and repaired as
an operator would, and the writes it may legitimately lose are given to the checker.

The servers accept clock readings up to `max_drift_ms` ahead (`serve --max-clock-drift`),
set above the largest offset difference: with the default 5 min bound, a server an hour
behind would refuse its peers' deltas until real time caught up (specs/faults.md, "Clocks").
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import shutil
import signal
import socket
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import trio

from crdtim import maintenance
from crdtim.replica import CLOCK_OFFSET_ENV, Replica

from .checker import AckedOp, Intent, Verdict, check, plain, reached
from .disk import Disks, damage_data_file
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
        self.started_on_full_disk = False  # then it may refuse to start (exit 1, one line)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self, peers: list[str], max_drift_ms: int, log_path: str) -> None:
        argv = [sys.executable, "-m", "crdtim", "--data", self.path, "serve", "--quiet",
                "--listen", f"127.0.0.1:{self.port}", "--max-clock-drift", str(max_drift_ms)]
        for p in peers:
            argv += ["--peer", p]
        self.killed = False
        _log_note(log_path, "start")
        with open(log_path, "ab") as log:
            self.process = await trio.lowlevel.open_process(
                argv, env=_child_env(self.offset_ms), stdout=log, stderr=log)
        self.log_path = log_path

    async def kill9(self) -> None:
        if self.alive:
            self.killed = True
            _log_note(self.log_path, "kill -9")
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
        self.refused: list[tuple[str, Intent]] = []  # (replica id, intent) refused: no effect
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
                elif "refused" in obj:
                    self.refused.append((self.replica_id, Intent.from_json(obj["refused"])))
                    self.pending = None
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
    servers = [_Server(i, paths[i], _free_port(port_rng), offsets[i])
               for i in range(config.servers)]
    workloads = [_Workload(i, paths[i], ids[i], offsets[i], random.Random(rng.getrandbits(32)),
                           config.op_interval) for i in range(config.servers)]
    proxy = Proxy(rng)

    def log_of(kind: str, i: int) -> str:
        return os.path.join(root, f"{kind}{i}.log")

    async def start_server(s: _Server) -> None:
        s.started_on_full_disk = s.index in full_since
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

    full_since: dict[int, int] = {}  # server index -> its log's length when its disk filled

    async def fill_disk(i: int, seconds: float, restarts: trio.Nursery) -> None:
        pids = [p.process.pid for p in (servers[i], workloads[i]) if p.alive]
        _log_note(log_of("serve", i), "disk full")
        full_since[i] = _log_length(log_of("serve", i))
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
        _log_note(log_of("serve", i), "space back")
        s = servers[i]
        if not s.alive and not s.killed:
            last = _last_line(s.log_path)
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

    async def damage_and_recover(s: _Server) -> None:
        """Between rounds: damage the stopped server's data file, then do what an operator
        would (specs/faults.md §4) and note which acknowledged writes it may lose."""
        w = workloads[s.index]
        await w.kill9()  # paused: no call in progress; it must not read the damaged file
        others = await trio.to_thread.run_sync(read_states, [p for p in paths if p != s.path])
        held = [{cid: plain(st.fields(cid)) for cid in st.convs} for st in others.values()]
        mine = [op for op in w.ops if op.replica == w.replica_id]
        unreached = [op for op in mine
                     if not any(reached(op, h.get(op.cid, {})) for h in held)]
        structure = rng.random() < 0.25
        texts = [op.intent.text for op in mine[-30:] if op.intent.text]
        await trio.to_thread.run_sync(damage_data_file, s.path, rng, texts, structure)
        report.faults["damage_structure" if structure else "damage_value"] += 1
        # The operator: start it; if it refuses, or verify finds damage, stop it, repair,
        # and start it again. A walk that dies on the damage cannot repair: replace the
        # directory by a new replica, which its peers fill (specs/storage.md §8a).
        await start_server(s)
        started = trio.current_time()
        while s.alive and trio.current_time() - started < 1.0:
            await trio.sleep(0.05)  # polled: a refusal at open is seen only as an exit
        refused = not s.alive
        if refused:
            report.damage["server_refused_to_start"] += 1
            last = _last_line(log_of("serve", s.index))
            if "Traceback" in last or not last.startswith("crdtim: error:"):
                report.problems.append(f"server {s.index} refused a damaged file without a "
                                       f"clear error: {last!r}")
        found = await trio.to_thread.run_sync(maintenance.verify, s.path)
        if found.crashed:
            report.damage["verify_walk_crashed"] += 1
        elif not found.ok:
            report.damage["verify_found_damage"] += 1
        if not (refused or not found.ok):
            report.damage["no_damage_seen"] += 1
            return await _restart_workload(w)
        await s.stop()
        repair = await trio.to_thread.run_sync(
            functools.partial(maintenance.verify, s.path, repair=True))
        after = await trio.to_thread.run_sync(maintenance.verify, s.path)
        damaged: set[str] | None = set()  # None: every conversation
        if after.ok:
            done = repair.repaired or {}
            report.damage["repaired_new_id" if "new_id" in done else "repaired_same_id"] += 1
            for p in found.problems + repair.problems:
                if p.database in ("convs", "messages"):  # their records may be dropped
                    cid = re.match(r"'([^']*)'", p.key)
                    if cid is None:
                        damaged = None
                        break
                    damaged.add(cid.group(1))
                elif p.database not in ("order", "log", "mindex", "acks"):  # drop no state
                    damaged = None
                    break
            if not (done.get("conversations_dropped") or done.get("message_records_dropped")):
                damaged = set()  # nothing of the state was dropped: nothing can be lost
        else:
            report.damage["replaced_by_new_replica"] += 1
            await trio.to_thread.run_sync(_wipe, s.path)
            damaged = None
        at_risk = [op for op in unreached if damaged is None or op.cid in damaged]
        report.at_risk.extend(at_risk)
        await start_server(s)
        await _restart_workload(w)

    async def _restart_workload(w: _Workload) -> None:
        with Replica.open(w.path, create=False) as r:  # a repair gives it a new id
            w.replica_id = r.id
        await start_workload(w)
        await w.pause()

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
                        _died_unkilled(w, "workload", log_of("workload", w.index))
                        await start_workload(w)
                    await w.pause()
                if victim.killed and not victim.alive and rng.random() < config.damage_share:
                    report.faults["damaged_file"] += 1
                    await damage_and_recover(victim)
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
                refused = [m for w in workloads for m in w.refused]
                states, pages = read_histories(paths)
                report.verdict = check(states, ops, maybe, pages, at_risk=report.at_risk,
                                       refused=refused)
                report.server_tracebacks = sum(_log_text(log_of("serve", s.index)).count(
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
                       servers: list[_Server], workloads: list[_Workload],
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
        elif kind == "disk_full":  # counted by fill_disk; released later, or at the heal
            i = rng.randrange(len(servers))
            seconds = rng.uniform(*config.disk_full_seconds)
            if i not in full:
                await fill_disk(i, seconds, restarts)
            continue
        else:
            proxy.set_delay(rng.uniform(0.001, 0.05))
        report.faults[kind] += 1


async def _until_in_call(w: _Workload) -> None:
    """Wait (briefly) until the workload has announced a call it has not yet acknowledged."""
    with trio.move_on_after(0.5):
        while w.alive and w.pending is None:
            await trio.sleep(0.0005)


def _log_note(path: str, what: str) -> None:
    """A line in a server's log saying what the harness did, to read its log by."""
    with open(path, "ab") as log:
        log.write(f"# harness: {what}\n".encode())


def _log_length(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _log_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _last_line(path: str) -> str:
    """The server's last log line (not the harness's notes)."""
    lines = [line for line in _log_text(path).splitlines() if not line.startswith("# harness:")]
    return lines[-1] if lines else ""


def _wipe(path: str) -> None:
    """Remove a data directory's contents (it may be a mount point) and make a new replica
    there: what an operator does with a replica that cannot be repaired."""
    for name in os.listdir(path):
        os.unlink(os.path.join(path, name))
    Replica.open(path).close()


def _died_unkilled(p: _Server | _Workload, what: str, log_path: str) -> None:
    """Raise if the process `p`, found dead, was not killed by the harness."""
    if not p.killed:
        raise RuntimeError(f"{what} {p.index} exited with status {p.process.returncode} "
                           f"(see {log_path})")
