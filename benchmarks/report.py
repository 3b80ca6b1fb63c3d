"""What the benchmark scripts (bench_local, bench_sync) share: their results and the run around them.

A figure's result is a `Row`: the per-run values of crdtim, the per-run values of the reference
measured beside it, their ratios, and an optional goal checked by one of `ratio_at_least`,
`ratio_at_most`, `value_at_least` or `value_at_most`. `print_table` prints the rows as the
table both scripts end with; `Row.as_json` and `write_json` give the --json output. The rest
is the scaffolding of a run: the working directory (`Workdir`, `rm`), the metadata recorded
with the results (`run_meta`, `filesystem_of`, `git_rev`), child processes (`run_child`), and
the conversation ids both scripts use (`cid`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import crdtim

PROJECT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cid(i: int) -> str:
    return f"conv-{i:07d}"


# -- result rows -----------------------------------------------------------------------------


@dataclass
class Row:
    key: str
    figure: str
    unit: str
    values: list[float]
    refs: list[float] | None = None
    ref_label: str = ""
    ratios: list[float] | None = None  # per run; computed from values/refs when not given
    goal: str = ""
    check: Callable[[Row], bool] | None = None
    note: str = ""
    fmt: str = "{:,.0f}"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.ratios is None and self.refs is not None and len(self.refs) == len(self.values):
            self.ratios = [v / r if r else float("nan") for v, r in zip(self.values, self.refs)]

    @staticmethod
    def stats(xs: list[float] | None) -> dict[str, float] | None:
        if not xs:
            return None
        return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "runs": len(xs)}

    @property
    def value(self) -> float:
        return statistics.median(self.values)

    @property
    def ratio(self) -> float | None:
        return statistics.median(self.ratios) if self.ratios else None

    @property
    def met(self) -> bool | None:
        return None if self.check is None else bool(self.check(self))

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key, "figure": self.figure, "unit": self.unit,
            "value": self.stats(self.values), "reference": self.stats(self.refs),
            "reference_label": self.ref_label, "ratio": self.stats(self.ratios),
            "goal": self.goal, "met": self.met, "note": self.note,
            "samples": {"values": self.values, "references": self.refs, "ratios": self.ratios},
            **({"extra": self.extra} if self.extra else {}),
        }


def ratio_at_least(x: float) -> Callable[[Row], bool]:
    return lambda row: row.ratio is not None and row.ratio >= x


def ratio_at_most(x: float) -> Callable[[Row], bool]:
    return lambda row: row.ratio is not None and row.ratio <= x


def value_at_least(x: float) -> Callable[[Row], bool]:
    return lambda row: row.value >= x


def value_at_most(x: float) -> Callable[[Row], bool]:
    return lambda row: row.value <= x


def spread(xs: list[float] | None, fmt: str) -> str:
    """'median [min..max]', or the median alone when there is one sample or all are equal."""
    if not xs:
        return "-"
    med = fmt.format(statistics.median(xs))
    if len(xs) == 1 or min(xs) == max(xs):
        return med
    return f"{med} [{fmt.format(min(xs))}..{fmt.format(max(xs))}]"


def print_table(rows: list[Row], key_width: int = 4) -> None:
    """The rows as a table, then each row's reference label and note, keys right-aligned to
    `key_width` (at least)."""
    table = [("", "figure", "value  median [min..max]", "reference  median",
              "ratio  median [min..max]", "goal", "met?")]
    for row in rows:
        ref = "-" if not row.refs else f"{row.fmt.format(statistics.median(row.refs))} {row.unit}"
        table.append((
            row.key, row.figure, f"{spread(row.values, row.fmt)} {row.unit}", ref,
            spread(row.ratios, "{:.2f}x") if row.ratios else "-", row.goal or "-",
            {True: "yes", False: "NO", None: "-"}[row.met],
        ))
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    for n, r in enumerate(table):
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    print()
    indent = "\n" + " " * (key_width + 2)
    for row in rows:
        lines = []
        if row.ref_label:
            lines.append(f"reference: {row.ref_label}")
        if row.note:
            lines.append(row.note)
        if lines:
            print(f"{row.key:>{key_width}}  " + indent.join(lines))


def write_json(path: str, meta: dict[str, Any], rows: list[Row], details: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": [r.as_json() for r in rows], "details": details},
                  f, indent=1, default=str)


# -- the run around the figures --------------------------------------------------------------


class Workdir:
    """A fresh temporary directory (under `base`, or the system temp dir) for the databases."""

    def __init__(self, base: str | None, prefix: str = "crdtim-bench-"):
        self.root = tempfile.mkdtemp(prefix=prefix, dir=base)
        self._n = 0

    def fresh(self, name: str) -> str:
        self._n += 1
        return os.path.join(self.root, f"{self._n:03d}-{name}")

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def rm(*paths: str) -> None:
    for p in paths:
        shutil.rmtree(p, ignore_errors=True)


def filesystem_of(path: str) -> dict[str, str]:
    path = os.path.realpath(path)
    best = ("", "?", "?")
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, fstype = line.split()[:3]
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                    best = (mnt, fstype, dev)
    except OSError:
        pass
    return {"path": path, "mount": best[0], "fstype": best[1], "device": best[2]}


def git_rev() -> str | None:
    """The project's short HEAD, with '+dirty' when crdtim/ has uncommitted changes."""
    try:
        rev = subprocess.run(["git", "-C", PROJECT, "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", PROJECT, "status", "--porcelain", "--", "crdtim"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return rev + ("+dirty" if dirty else "") if rev else None
    except (OSError, subprocess.SubprocessError):
        return None


def run_meta(module: str, argv: list[str] | None, *, quick: bool, runs: int,
             workdir: dict[str, str], **versions: str) -> dict[str, Any]:
    """The "meta" of the JSON output: command line, machine, versions (crdtim's, and those
    given), git revision, start time and load average."""
    return {
        "command": " ".join([os.path.basename(sys.executable), "-m", module,
                             *(argv if argv is not None else sys.argv[1:])]),
        "quick": quick, "runs": runs, "workdir": workdir,
        "python": platform.python_version(), "platform": platform.platform(),
        "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "crdtim": crdtim.__version__,
        **versions, "git": git_rev(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run_child(module: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run `python -m module --child kind spec` to completion; its last stdout line, as JSON."""
    cmd = [sys.executable, "-m", module, "--child", kind, json.dumps(spec)]
    p = subprocess.run(cmd, cwd=PROJECT, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"child {kind} failed ({p.returncode}):\n{p.stderr[-4000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def common_args(p: argparse.ArgumentParser, figures: str) -> None:
    """The options every benchmark script takes (`figures`: the default of --only)."""
    p.add_argument("--quick", action="store_true", help="small sizes, 3 runs (under a minute)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--dir", help="working directory for the databases (default: system temp)")
    p.add_argument("--only", default=figures, help="comma-separated figures to run")
    p.add_argument("--runs", type=int, help="runs per timed figure (default 5, 3 with --quick)")
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)


def answer_child(cfg: argparse.Namespace, children: dict[str, Callable[[Any], Any]]) -> bool:
    """If this process was started by run_child (--child KIND SPEC): run that child, print
    its result as JSON and say True."""
    if not cfg.child:
        return False
    kind, spec = cfg.child
    print(json.dumps(children[kind](json.loads(spec))))
    return True


def announce(title: str, quick: bool, runs: int, fs: dict[str, Any]) -> None:
    """The first lines of a benchmark script's output: what runs where, and a warning when
    the databases are in memory (durable figures would mean nothing)."""
    print(f"crdtim {title} benchmark ({'quick' if quick else 'full'}, {runs} runs per figure); "
          f"databases in {fs['path']} ({fs['fstype']} on {fs['device']}); load average "
          f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    if fs["fstype"] in ("tmpfs", "ramfs"):
        print("  WARNING: the working directory is in memory; durable (sync) figures are "
              "meaningless here. Pass --dir on a real disk.")
