"""`python -m tests.faults`: run the simulation and the real-process cluster, print the report.

    python -m tests.faults [--sim-runs N] [--real-seconds S] [--seed S] [--json FILE]
    python -m tests.faults --replay SEED        # one simulation run, verbosely

Exit status 0 when every run converged with no lost, diverged or wrong write; 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import trio

from .cluster import ClusterConfig, run_cluster
from .sim import run_many, run_one


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__.split("\n")[0])
    p.add_argument("--sim-runs", type=int, default=10_000, help="simulation runs (default 10000)")
    p.add_argument("--real-seconds", type=float, default=180.0,
                   help="seconds of faults on real processes (0: none; default 180)")
    p.add_argument("--round-seconds", type=float, default=20.0,
                   help="faults between two heals in the real-process run (default 20)")
    p.add_argument("--servers", type=int, default=5, help="crdtim serve processes (default 5)")
    p.add_argument("--seed", type=int, default=0, help="first simulation seed; cluster seed")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                   help="processes for the simulation runs (default 2)")
    p.add_argument("--json", metavar="FILE", help="also write the report here as JSON")
    p.add_argument("--replay", type=int, metavar="SEED", help="replay one simulation seed")
    args = p.parse_args(argv)
    if args.replay is not None:
        return _replay(args.replay)
    if args.sim_runs < 0 or args.real_seconds < 0 or args.servers < 2:
        p.error("--sim-runs and --real-seconds must not be negative, --servers at least 2")

    report: dict[str, Any] = {"seed": args.seed}
    ok = True
    if args.sim_runs:
        print(f"simulation: {args.sim_runs} runs from seed {args.seed} on {args.workers} "
              f"process(es)...", flush=True)
        started = time.perf_counter()
        summary = run_many(args.sim_runs, args.seed, args.workers)
        sim = summary.to_json()
        sim["wall_seconds"] = round(time.perf_counter() - started, 1)
        report["simulation"] = sim
        ok &= not summary.failing_seeds
    if args.real_seconds:
        print(f"real processes: {args.servers} servers, {args.real_seconds:g} s of faults "
              f"in rounds of {args.round_seconds:g} s...", flush=True)
        config = ClusterConfig(servers=args.servers, seconds=args.real_seconds,
                               round_seconds=min(args.round_seconds, args.real_seconds))
        cluster = trio.run(run_cluster, args.seed, config, lambda line: print("  " + line,
                                                                              flush=True))
        report["real"] = cluster.to_json()
        ok &= cluster.ok
    report["ok"] = ok
    print(format_report(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")
    return 0 if ok else 1


def format_report(report: dict[str, Any]) -> str:
    lines = ["", "crdtim fault report", "==================="]
    if report.get("simulation"):
        lines += _sim_lines(report["simulation"])
    if report.get("real"):
        lines += _real_lines(report["real"])
    lines.append("result: " + ("OK" if report["ok"] else "FAILED"))
    return "\n".join(lines)


def _kinds(kinds: dict[str, int]) -> str:
    return "  acknowledged by kind: " + ", ".join(f"{k} {n}" for k, n in kinds.items())


def _sim_lines(sim: dict[str, Any]) -> list[str]:
    spread = ", ".join(f"{k} ({sim['runs_by_clock_spread'][k]}, {v})"
                       for k, v in sim["max_converge_virtual_ms_by_clock_spread"].items())
    lines = [f"simulation ({sim['wall_seconds']} s): {sim['runs']} runs, "
             f"{sim['acked_ops']} operations acknowledged", _faults(sim["faults"]),
             _kinds(sim.get("acked_ops_by_kind", {}))]
    lines.append(f"  longest convergence after heal: {sim['max_converge_virtual_ms_after_heal']}"
                 f" ms of virtual time; by clock spread (runs, longest ms): {spread}")
    lines.append("  (synced: +-50 ms, skewed: +-2.5 min, wild: +-1 h; beyond the 5 min drift "
                 "bound a peer's values stamped ahead are held until time passes)")
    lines.append(_outcome(sim, "diverged_runs", "errors"))
    if sim["failing_seeds"]:
        lines.append(f"  FAILING SEEDS {sim['failing_seeds']} (replay: python -m "
                     f"tests.faults --replay SEED): {sim['first_failure']}")
    return lines


def _real_lines(real: dict[str, Any]) -> list[str]:
    lines = [f"real processes: {real['servers']} servers, {real['seconds_under_faults']} s "
             f"under faults, {real['rounds']} heals, clock offsets (ms) "
             f"{real['clock_offsets_ms']}", _faults(real["faults"]),
             _kinds(real.get("acked_ops_by_kind", {}))]
    lines.append(f"  operations acknowledged {real['acked_ops']} (unrecorded "
                 f"{real['unrecorded_ops']}); in progress when their workload was killed "
                 f"{real['maybe_ops']}")
    lines.append(f"  disks: made full by {real['disk_full_method']}; calls refused (not "
                 f"acknowledged: disk full, or an append/edit of a message deleted meanwhile) "
                 f"{real['refused_ops']}; server log lines saying the disk is "
                 f"full {real['disk_full_log_lines']}; damaged files: "
                 + (", ".join(f"{k} {v}" for k, v in real["damaged_file_outcomes"].items())
                    or "none")
                 + f"; acknowledged writes at risk from damage {real['at_risk_ops']}; "
                 f"tracebacks in server logs {real['server_tracebacks']}")
    d = real["damages"]
    lines.append(f"  damages tried {d['tried']}, hit live data {d['hit_live_data']}, detected "
                 f"{d['detected']}, crashed a crdtim process (liblmdb abort) {d['crashed']}; "
                 f"problems {len(real['problems'])}")
    lines.append(f"  convergence after heal (s): {real['converge_seconds_after_heal']}; longest "
                 f"{real['max_converge_seconds_after_heal']} s; not converged "
                 f"{real['not_converged']}")
    lines.append(_outcome(real, "diverged", "not_converged"))
    if real["first_problem"]:
        lines.append(f"  PROBLEM: {real['first_problem']} (logs in {real['logs']})")
    return lines


def _outcome(part: dict[str, Any], diverged: str, errors: str) -> str:
    return (f"  {diverged.replace('_', ' ')} {part[diverged]}, lost writes "
            f"{part['lost_writes']}, wrong values {part['wrong_values']}, unchecked "
            f"{part['unchecked_ops']}, {errors.replace('_', ' ')} {part[errors]}")


def _faults(counts: dict[str, int]) -> str:
    return "  faults: " + ", ".join(f"{k} {v}" for k, v in counts.items())


def _replay(seed: int) -> int:
    result = run_one(seed)
    print(f"seed {seed}: {result.replicas} replicas, {result.steps} steps, "
          f"{result.acked_ops} operations acknowledged, faults {dict(result.faults)}, "
          f"converged {result.converge_virtual_ms} ms (virtual) after the heal; "
          f"digest {result.digest()}")
    if result.error:
        print(result.error)
    elif result.verdict is not None:
        v = result.verdict
        for line in v.diverged + v.lost + v.wrong + v.unchecked:
            print(line)
        print("ok" if v.ok else "FAILED")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
