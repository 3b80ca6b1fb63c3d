"""HTTP benchmarks (issue #15), run on their own: `python -m benchmarks.bench_http`.

1. `GET /api/im/conversations` (first page, 50 of 200 conversations) from a real `crdtim
   serve --http` process over loopback, by 32 keep-alive clients at once, in requests/s;
   beside the ceiling: the same server stack (Starlette on Hypercorn's trio worker) in a
   process that answers a fixed JSON body of the same size. Goal >= 0.6x the ceiling.
2. A write on a peer replica (this process: a Replica and a Node) visible at an SSE client
   of the `--http` replica it is peered with: p50 and p99 over N writes. Goal p99 <= 50 ms.

The load comes from one separate process speaking HTTP/1.1 over raw trio sockets (a request
is fixed bytes, a response is read by its Content-Length), so that the client costs little
beside the server. `make bench` runs both as its `http` group (`bench_rows`, one row each
beside its reference, a run per repetition); alone, this module prints them as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio

CLIENTS = 32


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_http(port: int) -> None:
    import urllib.request

    for _ in range(400):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answers on {port}")


# -- the ceiling server: the same stack, a fixed body ------------------------------------------


def _ceiling(port: int, body_file: str) -> None:
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    from crdtim.http import serve_http

    body = Path(body_file).read_bytes()

    async def fixed(request: object) -> Response:
        return Response(body, media_type="application/json")

    app = Starlette(routes=[Route("/api/im/conversations", fixed), Route("/healthz", fixed)])
    trio.run(serve_http, app, "127.0.0.1", port)


# -- the load: raw HTTP/1.1 keep-alive --------------------------------------------------------


async def _client(port: int, path: str, stop_at: float, counts: list[int]) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
    buffer = b""
    n = 0
    async with stream:
        while trio.current_time() < stop_at:
            await stream.send_all(request)
            while b"\r\n\r\n" not in buffer:
                buffer += await stream.receive_some(65536)
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            assert head.startswith(b"HTTP/1.1 200"), head[:80]
            while len(buffer) < length:
                buffer += await stream.receive_some(65536)
            buffer = buffer[length:]
            n += 1
    counts.append(n)


def _load(port: int, path: str, seconds: float) -> None:
    async def main() -> float:
        counts: list[int] = []
        start = trio.current_time()
        async with trio.open_nursery() as nursery:
            for _ in range(CLIENTS):
                nursery.start_soon(_client, port, path, start + seconds, counts)
        return sum(counts) / (trio.current_time() - start)

    print(json.dumps({"rps": trio.run(main)}))


def _measure_rps(port: int, path: str, seconds: float) -> float:
    out = subprocess.run([sys.executable, "-m", "benchmarks.bench_http", "--load", str(port),
                          path, str(seconds)], check=True, capture_output=True, text=True)
    return float(json.loads(out.stdout)["rps"])


# -- the two benchmarks ------------------------------------------------------------------------


def bench_list(root: Path, seconds: float) -> dict[str, float]:
    from crdtim import Replica

    data = root / "list"
    with Replica.open(data, durability="nosync") as r, r.batch():
        for i in range(200):
            r.set_title(f"c{i:03d}", f"Conversation {i}")
            r.message_arrived(f"c{i:03d}", i + 1, f"message {i} " + "x" * 40)
            if i % 10 == 0:
                r.pin(f"c{i:03d}")
    port, ceiling_port = _free_port(), _free_port()
    server = subprocess.Popen([sys.executable, "-m", "crdtim", "--data", str(data), "serve",
                               "--quiet", "--http", f"127.0.0.1:{port}"])
    ceiling = None
    try:
        _wait_http(port)
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/im/conversations") as resp:
            body = resp.read()
        (root / "body.json").write_bytes(body)
        ceiling = subprocess.Popen([sys.executable, "-m", "benchmarks.bench_http", "--ceiling",
                                    str(ceiling_port), str(root / "body.json")])
        _wait_http(ceiling_port)
        rps = _measure_rps(port, "/api/im/conversations", seconds)
        top = _measure_rps(ceiling_port, "/api/im/conversations", seconds)
    finally:
        for p in (server, ceiling):
            if p is not None:
                p.terminate()
                p.wait(10)
    return {"list_rps": rps, "ceiling_rps": top, "ratio": rps / top, "body_bytes": len(body)}


async def _sse_latency(root: Path, writes: int) -> list[float]:
    import httpx

    from crdtim import Node, Replica
    from crdtim.net import NodeConfig

    http_port = _free_port()
    with Replica.open(root / "peer", durability="nosync") as peer:
        async with Node(peer, listen=("127.0.0.1", 0), config=NodeConfig()) as node:
            server = subprocess.Popen(
                [sys.executable, "-m", "crdtim", "--data", str(root / "served"), "serve",
                 "--quiet", "--listen", "127.0.0.1:0", "--peer", f"127.0.0.1:{node.port}",
                 "--http", f"127.0.0.1:{http_port}"])
            try:
                await trio.to_thread.run_sync(_wait_http, http_port)
                await node.wait_connected(1)
                delays: list[float] = []
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}",
                                             timeout=30) as c, \
                        c.stream("GET", "/api/im/changes",
                                 params={"feed": "eventsource", "since": "now"}) as stream:
                    lines = stream.aiter_lines()
                    await anext(lines)
                    for i in range(writes):
                        started = time.perf_counter()
                        peer.set_title("bench", f"title {i}")
                        async for line in lines:
                            if line.startswith("data: ") and f'"bench"' in line:
                                break
                        delays.append((time.perf_counter() - started) * 1000)
                        await trio.sleep(0.005)
            finally:
                server.terminate()
                server.wait(10)
    return delays


def bench_rows(seconds: float, writes: int, runs: int) -> list[Any]:
    """The suite's rows (benchmarks/suite.py, group `http`): list requests/s beside the
    ceiling's, and the SSE delay p99 beside p50, `runs` runs of each."""
    from .report import Row

    lists: list[dict[str, float]] = []
    p50s: list[float] = []
    p99s: list[float] = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="crdtim-bench-http-") as tmp:
            lists.append(bench_list(Path(tmp), seconds))
            delays = trio.run(_sse_latency, Path(tmp), writes)
        p50s.append(statistics.median(delays))
        p99s.append(statistics.quantiles(delays, n=100)[98] if len(delays) > 1 else delays[0])
    return [
        Row("list", f"GET /api/im/conversations req/s ({CLIENTS} keep-alive clients, 50 of 200;"
            " no writes meanwhile: the kept answer)", "req/s",
            [x["list_rps"] for x in lists], [x["ceiling_rps"] for x in lists],
            "same stack, a fixed body"),
        Row("sse-p99", "peer write -> SSE client p99", "ms", p99s, p50s, "p50",
            fmt="{:,.1f}"),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_http")
    parser.add_argument("--seconds", type=float, default=5.0, help="per load run")
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--ceiling", nargs=2, metavar=("PORT", "BODY"), help=argparse.SUPPRESS)
    parser.add_argument("--load", nargs=3, metavar=("PORT", "PATH", "S"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.ceiling:
        _ceiling(int(args.ceiling[0]), args.ceiling[1])
        return 0
    if args.load:
        _load(int(args.load[0]), args.load[1], float(args.load[2]))
        return 0
    with tempfile.TemporaryDirectory(prefix="crdtim-bench-http-") as tmp:
        root = Path(tmp)
        listing = bench_list(root, args.seconds)
        delays = trio.run(_sse_latency, root, args.writes)
    cuts = statistics.quantiles(delays, n=100)
    result = {**listing, "sse_p50_ms": statistics.median(delays), "sse_p99_ms": cuts[98],
              "sse_writes": len(delays), "clients": CLIENTS}
    print(json.dumps(result, indent=2))
    print(f"GET /api/im/conversations: {listing['list_rps']:.0f} req/s, ceiling "
          f"{listing['ceiling_rps']:.0f} req/s: {listing['ratio']:.2f}x (goal >= 0.6x)")
    print(f"peer write -> SSE client: p50 {result['sse_p50_ms']:.1f} ms, p99 "
          f"{result['sse_p99_ms']:.1f} ms (goal p99 <= 50 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
