"""Real `crdtim serve` processes on loopback for the HTTP end-to-end and browser tests:
free ports found by binding port 0, readiness found by polling a bounded number of times."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(data: Path, *args: str) -> str:
    return subprocess.run([sys.executable, "-m", "crdtim", "--data", str(data), *args],
                          check=True, capture_output=True, text=True).stdout


def write_in_another_process(data: Path, code: str) -> None:
    """Run `code` with `r`, a Replica open on `data`, in a child process: a write that the
    process serving `data` learns of from its log only (as it does the command line's)."""
    script = ("import sys\nfrom crdtim import Replica\n"
              "with Replica.open(sys.argv[1]) as r:\n" + textwrap.indent(code, "    "))
    subprocess.run([sys.executable, "-c", script, str(data)], check=True, capture_output=True)


@contextlib.contextmanager
def serve(data: Path, *args: str) -> Iterator[subprocess.Popen[bytes]]:
    log = open(data.parent / f"{data.name}.log", "wb")  # noqa: SIM115
    child = subprocess.Popen([sys.executable, "-m", "crdtim", "--data", str(data), "serve",
                              *args], stdout=log, stderr=subprocess.STDOUT,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        yield child
    finally:
        child.terminate()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        log.close()


def wait_http(port: int, child: subprocess.Popen[bytes], polls: int = 200) -> None:
    """Until GET /healthz answers (at most `polls` tries, 50 ms apart)."""
    for _ in range(polls):
        if child.poll() is not None:
            raise RuntimeError(f"crdtim serve exited with {child.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.05)
    raise RuntimeError(f"no HTTP answer on port {port}")


@contextlib.contextmanager
def two_replicas(tmp: Path, prepare: bool = True) -> Iterator[tuple[Path, int]]:
    """Replica `a` (peers only) and `b` (peers + --http), peered; yields (a's data
    directory, b's HTTP port). With `prepare`, `a` first holds the demo's conversations and
    "chat", whose message history has a reply in two versions (a1, a2 active)."""
    a, b = tmp / "a", tmp / "b"
    if prepare:  # in-process (a process start per write would cost seconds); closed after
        from crdtim import Replica

        with Replica.open(a) as r:
            r.set_title("family", "Family")
            r.set_title("work", "Work")
            r.pin("work")
            r.message_arrived("family", 2, "bring the cake")
            r.set_title("alice", "Alice")
            r.message_arrived("alice", 1, "hi!")
            r.set_title("chat", "Assistant")  # a history with two versions of a reply
            r.post("chat", "What is a CRDT?", id="q1", at=1_700_000_000_000)
            r.post("chat", "A data type.", role="assistant", id="a1", at=1_700_000_001_000)
            r.regenerate("chat", "a1", "A conflict-free replicated data type: replicas "
                         "merge without coordination.", id="a2")
    peer_port, http_port = free_port(), free_port()
    with serve(a, "--listen", f"127.0.0.1:{peer_port}") as server_a, \
            serve(b, "--listen", "127.0.0.1:0", "--peer", f"127.0.0.1:{peer_port}",
                  "--http", f"127.0.0.1:{http_port}") as server_b:
        wait_http(http_port, server_b)
        assert server_a.poll() is None
        yield a, http_port
