"""Remote apply of the frames a settled peer really sends: COMPACT_DELTAs (specs/protocol.md
§11, and §15 from protocol version 5), through a real SyncSession over a real Replica.

    python -m benchmarks.bench_compact [--runs N] [--n DELTAS] [--dir DIR]

The suite's `session` group feeds DELTA frames, which a peer sends only when its session
table of replica ids is full (§11); every other delta arrives as a COMPACT_DELTA, whose body
the receiver rewrites before the strict decoder sees it. Here the same n one-op deltas as
`session` (suite.make_remote: half set_title, half mark_read over 1,000 conversations) are
cut into COMPACT_DELTA frames by a sender's session table (the first frame, the 1,000
conversations' state, sends every id once; the rest refer to them by index) and fed to a
fresh receiving session in bursts of 1 and of 64 (one commit and one ACK per burst, as in
`session`), sync and nosync. Printed: deltas/s, median [min..max] of the runs, and CPU
microseconds per delta (process time, which an fsync's wait does not count). Runs against
any checkout: `cd <checkout> && PYTHONPATH=. python -m benchmarks.bench_compact`, which is how
a version 4 build (main before §15) is compared with this one. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

from crdtim import Replica, codec
from crdtim.protocol import PROTOCOL_VERSION, CompactDelta, Hello, SyncSession, encode_frame
from crdtim.protocol._messages import FrameDecoder
from crdtim.protocol._table import SentIds

from .report import Workdir, rm
from .suite import make_remote


def compact_frames(frames: list[bytes]) -> list[bytes]:
    """The DELTA frames `frames` as one sender's COMPACT_DELTAs, in order."""
    sent = SentIds()
    out = []
    for frame in frames:
        decoder = FrameDecoder(1 << 24)
        decoder.feed(frame)
        m = decoder.next_message()
        encoded = sent.encode(codec.decode_map(m.payload))
        assert encoded is not None  # one replica id: the table never fills
        ids, body = encoded
        out.append(encode_frame(CompactDelta(start=m.start, end=m.end, new_ids=ids, body=body)))
    return out


def apply_bursts(src: dict[str, Any], frames: list[bytes], wd: Workdir, durability: str,
                 group: int) -> tuple[float, float]:
    """(deltas/s, CPU us per delta) of a fresh receiver fed frames[1:] `group` at a time."""
    path = wd.fresh(f"compact-{durability}-{group}")
    b = Replica.open(path, durability=durability)
    s = SyncSession(b)
    s.initiate()
    s.receive_data(encode_frame(Hello(version=PROTOCOL_VERSION, replica_id=src["a_id"])))
    s.receive_data(frames[0])
    s.data_to_send()
    rest = frames[1:]
    bursts = [b"".join(rest[i:i + group]) for i in range(0, len(rest), group)]
    t, c = time.perf_counter(), time.process_time()
    for burst in bursts:
        s.receive_data(burst)
        s.data_to_send()
    wall, cpu = time.perf_counter() - t, time.process_time() - c
    assert b.state() == src["state"], "the receiving replica did not converge"
    b.close()
    rm(path)
    return len(rest) / wall, cpu / len(rest) * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--n", type=int, default=5000, help="one-op deltas (default 5000)")
    p.add_argument("--dir", help="working directory for the databases (default: temp)")
    cfg = p.parse_args(argv)
    wd = Workdir(cfg.dir, prefix="crdtim-bench-compact-")
    try:
        src = make_remote({}, wd, cfg.n)
        frames = compact_frames(src["frames"])
        res: dict[tuple[str, int], list[tuple[float, float]]] = {}
        for _ in range(cfg.runs):
            for durability in ("sync", "nosync"):
                for group in (1, 64):
                    res.setdefault((durability, group), []).append(
                        apply_bursts(src, frames, wd, durability, group))
    finally:
        wd.cleanup()
    sizes = sorted(len(f) for f in frames[1:])
    print(f"protocol version {PROTOCOL_VERSION}: {cfg.n} COMPACT_DELTA frames, median "
          f"{statistics.median(sizes)} B; {cfg.runs} runs; load average "
          f"{os.getloadavg()[0]:.2f} at the end")
    for (durability, group), v in res.items():
        rates, cpu = [x[0] for x in v], [x[1] for x in v]
        print(f"  {durability:6} bursts of {group:2}: {statistics.median(rates):9,.0f} "
              f"[{min(rates):,.0f}..{max(rates):,.0f}] deltas/s; CPU "
              f"{statistics.median(cpu):6.1f} [{min(cpu):.1f}..{max(cpu):.1f}] us per delta")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
