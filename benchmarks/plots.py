"""The suite's PNG plots, drawn with matplotlib (Agg: no display needed) from the results
document that suite.py writes, so a plot can be redrawn from a JSON file alone:

    python -m benchmarks.plots benchmarks/results/<date>-<host>.json

Each plot is small (about 700x420 px, a few tens of KB) so that results stay commit-worthy.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

SIZE = (7.0, 4.2)
DPI = 100


def _save(fig: Any, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def propagation(data: dict[str, Any], path: str) -> str:
    fig, ax = plt.subplots(figsize=SIZE)
    n = data["replicas"]
    for key, label, style in (("state", "full state every round", "s-"),
                              ("classic", "classic delta propagation", "^-"),
                              ("crdtim", "crdtim (delta, no back-propagation)", "o-"),
                              ("floor", "floor: each write once to each replica", "k--")):
        ax.plot(n, [b / 1024 for b in data[key]], style, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("replicas (full mesh)")
    ax.set_ylabel("KiB sent until converged (log)")
    ax.set_title(f"Bytes to converge, {data['writes_per_replica']} writes per replica")
    ax.set_xticks(n)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def apply_rate(data: dict[str, Any], path: str) -> str:
    fig, ax = plt.subplots(figsize=SIZE)
    g = data["groups"]
    for key, label, style in (("pycrdt", "pycrdt (in memory)", "s-"),
                              ("nosync", "crdtim, nosync", "^-"),
                              ("sync", "crdtim, sync (durable)", "o-")):
        ax.plot(g, [data[key][str(x)] for x in g], style, label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(g, [str(x) for x in g])
    ax.set_xlabel("one-op deltas arriving together (crdtim commits up to 64 at once)")
    ax.set_ylabel("deltas applied per second (log)")
    ax.set_title("Remote apply rate against burst size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def latency(data: dict[str, Any], path: str) -> str:
    fig, ax = plt.subplots(figsize=SIZE)
    colors = {"raw": "tab:grey", "linger=0": "tab:orange", "default linger": "tab:blue"}
    for durability, samples in data.items():
        for name, xs in samples.items():
            if not xs:
                continue
            s = sorted(xs)  # the samples, or their 101 percentiles (what the JSON keeps)
            ys = [(k + 1) / len(s) for k in range(len(s))]
            style = "-" if durability == "sync" else ":"
            ax.step(s, ys, style, where="post", color=colors.get(name),
                    label=f"{durability}, {'raw LMDB + trio' if name == 'raw' else name} "
                          f"(p50 {statistics.median(s):.2f} ms)")
    ax.axvline(2.0, color="grey", lw=0.8, ls=":")
    ax.axvline(20.0, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("commit -> visible at the peer, ms (log; dotted: 2 ms and 20 ms goals)")
    ax.set_ylabel("fraction of writes")
    ax.set_title("Commit-to-peer latency over loopback TCP (one run), cumulative")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def bootstrap(points: list[dict[str, Any]], path: str) -> str:
    fig, ax = plt.subplots(figsize=SIZE)
    pts = sorted(points, key=lambda p: p["n"])
    n = [p["n"] for p in pts]
    ax.plot(n, [p["crdtim"] for p in pts], "o-", label="crdtim newcomer (sync), state transfer")
    ax.plot(n, [p["raw"] for p in pts], "s--", label="raw copy of the stored pairs into LMDB")
    if max(n) >= 1_000_000:
        ax.axhline(10.0, color="grey", lw=0.8, ls=":", label="goal at 1M: 10 s")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(
        lambda x, _: f"{x / 1e6:g}M" if x >= 1e6 else f"{x / 1e3:g}k" if x else "0"))
    ax.set_xlabel("conversations (one run per point; the largest is the median of sync.d)")
    ax.set_ylabel("seconds until the newcomer has everything")
    ax.set_title("Bootstrap time against size")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def messages(data: dict[str, Any], path: str) -> str:
    """The message history's figures beside their references: append-to-peer latency
    (cumulative), bytes per streamed append, bootstrap time."""
    fig, axes = plt.subplots(1, 3, figsize=(10.0, 3.8),
                             gridspec_kw={"width_ratios": [1.6, 1, 1]})
    ax = axes[0]
    for name, label, color in (("raw", "raw LMDB + trio", "tab:grey"),
                               ("crdtim", "crdtim append", "tab:blue")):
        xs = data.get("latency", {}).get(name) or []
        if xs:
            s = sorted(xs)
            ax.step(s, [(k + 1) / len(s) for k in range(len(s))], "-", where="post",
                    color=color, label=f"{label} (p50 {statistics.median(s):.2f} ms)")
    ax.axvline(20.0, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xlabel("append -> visible at peer, ms (log; dotted: 20 ms)")
    ax.set_ylabel("fraction of appends")
    ax.set_title("Streamed reply, sync, loopback", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    ax = axes[1]
    sizes = data.get("bytes", {})
    if sizes:
        names = list(sizes)
        ax.bar(range(len(names)), [sizes[n] for n in names],
               color=["tab:blue", "tab:cyan", "tab:grey"][:len(names)])
        ax.set_xticks(range(len(names)), [n.replace(" ", "\n") for n in names], fontsize=7)
    ax.set_ylabel("bytes per 4-character append")
    ax.set_title("Bytes per streamed append", fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    ax = axes[2]
    boot = data.get("bootstrap")
    if boot:
        ax.bar([0, 1], [boot["crdtim"], boot["raw"]], color=["tab:blue", "tab:grey"])
        ax.set_xticks([0, 1], ["crdtim\nstate transfer", "raw LMDB\ncopy"], fontsize=7)
        ax.set_title(f"Bootstrap, {boot['messages']:,} messages", fontsize=9)
    ax.set_ylabel("seconds")
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


def write_all(doc: dict[str, Any], stem: str) -> list[str]:
    """Every plot whose data the document holds; returns the paths written."""
    p = doc.get("plots", {})
    out = []
    if p.get("propagation"):
        out.append(propagation(p["propagation"], f"{stem}-propagation.png"))
    if p.get("apply_rate"):
        out.append(apply_rate(p["apply_rate"], f"{stem}-apply-rate.png"))
    if p.get("latency"):
        out.append(latency(p["latency"], f"{stem}-latency.png"))
    if p.get("bootstrap"):
        out.append(bootstrap(p["bootstrap"], f"{stem}-bootstrap.png"))
    if p.get("messages"):
        out.append(messages(p["messages"], f"{stem}-messages.png"))
    return out


if __name__ == "__main__":
    for path in sys.argv[1:]:
        with open(path) as f:
            for written in write_all(json.load(f), os.path.splitext(path)[0]):
                print(written)
