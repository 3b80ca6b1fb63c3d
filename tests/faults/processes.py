"""The processes of the real-process run (cluster.py): `crdtim serve` servers and workload
children, started, killed (-9), paused and stopped, and what they leave behind (their logs,
their data directories read back). Which faults happen when is cluster.py's; what an operator
does with a damaged file is repair.py's.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import sys
from typing import Any

import trio

from crdtim.replica import CLOCK_OFFSET_ENV, Replica

from .checker import AckedOp, Intent
from .sim import history_pages

__all__ = ["Server", "Workload", "child_env", "died_unkilled", "free_port", "last_line",
           "log_length", "log_note", "log_text", "read_histories", "read_states",
           "until_in_call", "wipe"]


def free_port(rng: random.Random) -> int:
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


def child_env(offset_ms: int) -> dict[str, str]:
    env = dict(os.environ)
    env[CLOCK_OFFSET_ENV] = str(offset_ms)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


class Server:
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
        log_note(log_path, "start")
        with open(log_path, "ab") as log:
            self.process = await trio.lowlevel.open_process(
                argv, env=child_env(self.offset_ms), stdout=log, stderr=log)
        self.log_path = log_path

    async def kill9(self) -> None:
        if self.alive:
            self.killed = True
            log_note(self.log_path, "kill -9")
            self.process.send_signal(signal.SIGKILL)
            await self.process.wait()

    async def stop(self) -> None:
        if self.alive:
            self.process.terminate()
            with trio.move_on_after(10):
                await self.process.wait()
            await self.kill9()


class Workload:
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
                argv, env=child_env(self.offset_ms), stdin=-1, stdout=-1, stderr=log)
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


async def until_in_call(w: Workload) -> None:
    """Wait (briefly) until the workload has announced a call it has not yet acknowledged."""
    with trio.move_on_after(0.5):
        while w.alive and w.pending is None:
            await trio.sleep(0.0005)


def log_note(path: str, what: str) -> None:
    """A line in a server's log saying what the harness did, to read its log by."""
    with open(path, "ab") as log:
        log.write(f"# harness: {what}\n".encode())


def log_length(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def log_text(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def last_line(path: str) -> str:
    """The server's last log line (not the harness's notes)."""
    lines = [line for line in log_text(path).splitlines() if not line.startswith("# harness:")]
    return lines[-1] if lines else ""


def wipe(path: str) -> None:
    """Remove a data directory's contents (it may be a mount point) and make a new replica
    there: what an operator does with a replica that cannot be repaired."""
    for name in os.listdir(path):
        os.unlink(os.path.join(path, name))
    Replica.open(path).close()


def died_unkilled(p: Server | Workload, what: str, log_path: str) -> None:
    """Raise if the process `p`, found dead, was not killed by the harness."""
    if not p.killed:
        raise RuntimeError(f"{what} {p.index} exited with status {p.process.returncode} "
                           f"(see {log_path})")
