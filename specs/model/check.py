"""Run the spin checks of the anti-entropy model (specs/protocol.md §14).

Each check compiles specs/model/antientropy.pml with its scope (and seeded bug, if any) in a
scratch directory, runs pan, and prints the states explored, the errors and, for a seeded bug,
the length of the trail spin wrote. Exit status 0 when the real model has 0 errors in every
check and every seeded bug is found with a trail; 1 otherwise. Standard library only: it is
run by `make model` and by tests/test_model.py (with --quick).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

MODEL = pathlib.Path(__file__).with_name("antientropy.pml")


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    defines: tuple[str, ...]
    liveness: bool = False  # pan -a -f with the ltl property; else safety + invalid end states
    bug: str | None = None  # a seeded bug: the check passes when spin finds an error
    big: bool = False  # millions of states: worth compiling pan with -O2 (~7-14 s, vs ~1.5 s)


SMALL = ("-DN=2", "-DW=1", "-DRET=1")  # 2 replicas, 1 write each, retention 1 entry
WIDE = ("-DN=2", "-DW=2", "-DWIN=1")  # 2 replicas, 2 writes each, window 1
# 3 replicas, window 1. A line 0 - 2 - 1 (replica 2 relays: 0 and 1 are not peers), with one
# write (at 0) or one at each end; a full mesh with one write (at 0), or one at each replica.
LINE1 = ("-DN=3", "-DLINE", "-DWR=1", "-DW=1", "-DWIN=1")
LINE2 = ("-DN=3", "-DLINE", "-DWR=2", "-DW=1", "-DWIN=1")
MESH1 = ("-DN=3", "-DWR=1", "-DW=1", "-DWIN=1")
MESH3 = ("-DN=3", "-DWR=3", "-DW=1", "-DWIN=1")

CHECKS = (
    Check("safety, 2 replicas x 2 writes", WIDE, big=True),
    Check("safety, 2 replicas x 1 write, retention 1", SMALL),
    Check("liveness, 2 replicas x 1 write, retention 1", SMALL, liveness=True),
    Check("safety, 3 in a line x 1 write", LINE1),
    Check("liveness, 3 in a line x 1 write", LINE1, liveness=True),
    Check("safety, 3 in a line x 1 write at each end", LINE2, big=True),
    Check("safety, 3 in a line x 1 write at each end, retention 1", (*LINE2, "-DRET=1"),
          big=True),
    Check("safety, 3 in a mesh x 1 write", MESH1, big=True),
    *(
        (
            Check("liveness, 2 replicas x 2 writes", WIDE, liveness=True, big=True),
            Check("liveness, 3 in a line x 1 write at each end", LINE2, liveness=True, big=True),
            Check("safety, 3 in a mesh x 1 write each", MESH3, big=True),
        )
        if "--wide" in sys.argv else ()
    ),
    *(
        Check(f"seeded bug {bug}", SMALL, bug=bug)
        for bug in ("ACK_BEFORE_APPLY", "TRIM_PAST_ACK", "BACK_PROPAGATE", "RESUME_FORGETS")
    ),
    # bugs only a relay shows: at 2 replicas the one peer is the origin and every peer
    *(Check(f"seeded bug {bug}", LINE1, bug=bug) for bug in ("ORIGIN_IS_WRITER", "TRIM_ONE_PEER")),
)
QUICK = ("safety, 2 replicas x 1 write, retention 1", "seeded bug ACK_BEFORE_APPLY",
         "safety, 3 in a line x 1 write", "seeded bug TRIM_ONE_PEER")


@dataclasses.dataclass(frozen=True)
class Result:
    check: Check
    states: int
    errors: int
    trail_steps: int | None
    seconds: float
    detail: str

    @property
    def ok(self) -> bool:
        if self.check.bug:
            return self.errors > 0 and self.trail_steps is not None
        return self.errors == 0


def run(check: Check, timeout: float = 600.0) -> Result:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="crdtim-model-") as scratch:
        work = pathlib.Path(scratch)
        shutil.copy(MODEL, work / MODEL.name)
        defines = list(check.defines) + ([f"-DBUG_{check.bug}"] if check.bug else [])
        subprocess.run(["spin", *defines, "-a", MODEL.name], cwd=work, check=True,
                       capture_output=True, timeout=timeout)
        # NFAIR=3: weak fairness over 3 replicas, Faults, Quiescence, init and the claim
        flags = ["-DCOLLAPSE", "-DMEMLIM=4096", "-DNFAIR=3"]
        if not check.liveness:
            flags += ["-DSAFETY", "-DNOCLAIM"]
        optimize = "-O2" if check.big else "-O0"
        subprocess.run(["cc", "-w", optimize, *flags, "-o", "pan", "pan.c"], cwd=work,
                       check=True, capture_output=True, timeout=timeout)
        pan_args = ["./pan", "-m1000000"] + (["-a", "-f"] if check.liveness else [])
        out = subprocess.run(pan_args, cwd=work, capture_output=True, text=True,
                             timeout=timeout).stdout
        errors = int(_find(r"errors: (\d+)", out))
        states = int(_find(r"(\d+) states, stored", out))
        trail = work / (MODEL.name + ".trail")
        steps = None
        if trail.exists():
            steps = sum(1 for line in trail.read_text().splitlines()
                        if line and not line.startswith("-"))
        found = re.search(r"pan:\d+: (.*?) \(at depth", out)
        detail = found.group(1) if found else ""
    return Result(check, states, errors, steps, time.monotonic() - started, detail)


def _find(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"pan output without {pattern!r}:\n{text}")
    return match.group(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="one real check and one seeded bug at 2 and at 3 replicas")
    parser.add_argument("--wide", action="store_true",
                        help="add liveness at 2 replicas x 2 writes and at 3 in a line x 2 "
                             "writes, safety at 3 in a mesh x 3 writes (~10 min)")
    args = parser.parse_args(argv)
    for tool in ("spin", "cc"):
        if shutil.which(tool) is None:
            print(f"{tool} is not on PATH", file=sys.stderr)
            return 1
    checks = [c for c in CHECKS if not args.quick or c.name in QUICK]
    failed = 0
    for check in checks:
        result = run(check)
        verdict = "ok" if result.ok else "FAILED"
        if check.bug:
            what = (f"found: {result.detail}; trail of {result.trail_steps} steps"
                    if result.errors else "NOT found")
        else:
            what = f"{result.errors} errors"
        print(f"{check.name:56} {result.states:>10,} states  {what}  "
              f"({result.seconds:.1f} s)  {verdict}")
        failed += not result.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
