"""The `crdtim` commands about crdtim itself rather than a replica: `demo` (three replicas
syncing on loopback) and `bench` (the benchmark suite of a source checkout).

Neither touches the user's data directory. `bench` imports the suite by name only when run,
so that neither its heavy imports (pycrdt, matplotlib) nor mypy follow it from here, and it
never runs a `benchmarks` package that is not the one beside this crdtim.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from typing import cast

from ._cli_common import EXIT_USAGE, CommandFailed, Subcommand, arg
from .demo import run_demo

__all__ = ["TOOL_COMMANDS"]


def _benchmark_suite() -> Callable[[list[str]], int]:
    """benchmarks.suite.main, or CommandFailed (exit 2) saying what is missing.

    The suite lives in benchmarks/ beside the package, not in the wheel: it runs from a source
    checkout only (pip install -e, or the project directory), with the bench extra (pycrdt,
    matplotlib). Imported by name, when asked for, so that neither the heavy imports nor mypy
    follow it from here.
    """
    no_checkout = CommandFailed("crdtim bench needs a source checkout of crdtim (the "
                                "benchmarks/ folder next to the crdtim package): clone the "
                                "project and run `make bench` there", EXIT_USAGE)
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isfile(os.path.join(checkout, "benchmarks", "suite.py")):
        raise no_checkout  # another `benchmarks` on sys.path would not be ours
    if checkout not in sys.path:
        sys.path.insert(0, checkout)
    try:
        suite = importlib.import_module("benchmarks.suite")
    except ImportError as e:
        missing = e.name or ""
        if missing == "benchmarks" or missing.startswith("benchmarks."):
            raise no_checkout from None
        raise CommandFailed(f"crdtim bench needs {missing or 'a package'} (the bench extra): "
                            "run `make bench`, or pip install -e '.[bench]' in the checkout",
                            EXIT_USAGE) from None
    return cast(Callable[[list[str]], int], suite.main)


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo()


def cmd_bench(args: argparse.Namespace) -> int:
    run_suite = _benchmark_suite()
    argv = ["--quick"] if args.quick else []
    argv += ["--tiny"] if args.tiny else []
    argv += [f"--out={args.out}"] if args.out else []
    argv += [f"--dir={args.workdir}"] if args.workdir else []
    argv += [f"--only={args.only}"] if args.only else []
    argv += ["--profile"] if args.profile else []
    return run_suite(argv)


TOOL_COMMANDS: dict[str, Subcommand] = {
    "demo": Subcommand(cmd_demo, "three replicas syncing on loopback, step by step"),
    "bench": Subcommand(cmd_bench, "run the benchmark suite (source checkout only); results "
                        "in benchmarks/results/", (
        arg("--quick", action="store_true", help="every benchmark at small sizes (~2 min)"),
        arg("--tiny", action="store_true", help=argparse.SUPPRESS),
        arg("--out", metavar="DIR", default=None, help="results directory"),
        arg("--workdir", metavar="DIR", default=None,
            help="directory for the benchmark databases (the full run needs ~3 GB)"),
        arg("--only", metavar="GROUPS", default=None,
            help="comma-separated groups: hw, local, nosync, session, automerge, sync, "
                 "curves, big"),
        arg("--profile", action="store_true",
            help="write a cProfile summary for every missed goal"),
    )),
}
