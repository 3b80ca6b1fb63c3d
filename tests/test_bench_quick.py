"""The benchmark suite cannot rot: it runs end to end at tiny sizes and writes its results.

`python -m benchmarks --tiny` runs every benchmark group (the same code as `make bench`, at
sizes that take seconds) into a temporary results directory; these tests check the files it
writes and their shape. No figure is judged here: timing never appears in tests, and tiny
figures mean nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# The bench extra (`make bench` installs it; `make test` does not).
pytest.importorskip("pycrdt", reason="the bench extra (pycrdt) is not installed")
pytest.importorskip("matplotlib", reason="the bench extra (matplotlib) is not installed")

from benchmarks import suite  # noqa: E402
from crdtim import cli  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[int, Path]:
    out = tmp_path_factory.mktemp("results")
    work = tmp_path_factory.mktemp("work")
    status = suite.main(["--tiny", f"--out={out}", f"--dir={work}"])
    return status, out


def _one(out: Path, pattern: str) -> Path:
    found = sorted(out.glob(pattern))
    assert len(found) == 1, (pattern, [p.name for p in out.iterdir()])
    return found[0]


def test_tiny_suite_writes_json_with_every_figure_summarised(tiny_run):
    status, out = tiny_run
    assert status == 0
    doc = json.loads(_one(out, "*-tiny.json").read_text())
    assert doc["schema"] == 1 and doc["mode"] == "tiny"
    keys = [f["key"] for f in doc["figures"]]
    assert len(keys) == len(set(keys)), "figure keys must be unique"
    for group in suite.GROUPS:
        if group not in ("automerge", "curves"):  # optional; plot data only
            assert any(k.startswith(group + ".") for k in keys), f"no figure from {group}"
    assert set(doc["plots"]) == {"propagation", "apply_rate", "latency", "bootstrap",
                                 "messages"}
    for f in doc["figures"]:
        for part in ("value", "reference", "ratio"):
            stats = f[part]
            if part == "value" or stats is not None:
                assert set(stats) == {"median", "min", "max", "runs"}, (f["key"], part, stats)
                assert stats["min"] <= stats["median"] <= stats["max"], (f["key"], part)
                assert stats["runs"] >= 1
    machine = doc["machine"]
    for field in ("cpu", "cores", "python", "packages", "host"):
        assert machine[field], field
    assert machine["packages"]["crdtim"] and machine["packages"]["pycrdt"]
    automerge = doc["details"]["automerge"]
    assert automerge["ran"] or automerge["reason"], "Automerge: a version or the reason"


#: The message history's figures, each with the reference it is reported beside.
MESSAGE_FIGURES = {
    "messages.post": "raw LMDB", "messages.post-vs-title": "set_title",
    "messages.post-batch": "raw LMDB", "messages.post-batch-vs-title": "set_title",
    "messages.history": "raw LMDB", "messages.stream-bytes": "pycrdt",
    "messages.stream-payload": "pycrdt", "messages.stream-p50": "raw",
    "messages.stream-p99": "raw", "messages.boot": "raw", "messages.boot-B": "copy",
}


def test_tiny_suite_reports_every_message_figure_beside_its_reference(tiny_run):
    _, out = tiny_run
    doc = json.loads(_one(out, "*-tiny.json").read_text())
    figures = {f["key"]: f for f in doc["figures"]}
    for key, reference in MESSAGE_FIGURES.items():
        f = figures.get(key)
        assert f is not None, f"no figure {key}"
        assert f["reference"] is not None and f["ratio"] is not None, key
        assert reference in f["reference_label"], (key, f["reference_label"])
        assert f["value"]["median"] > 0 and f["reference"]["median"] > 0, key
    plot = doc["plots"]["messages"]
    assert plot["latency"]["crdtim"] and plot["latency"]["raw"]
    assert set(plot["bytes"]) == {"crdtim wire", "crdtim payload", "pycrdt update"}
    assert plot["bootstrap"]["crdtim"] > 0 and plot["bootstrap"]["raw"] > 0


def test_tiny_suite_reports_every_goal(tiny_run):
    _, out = tiny_run
    doc = json.loads(_one(out, "*-tiny.json").read_text())
    goals = {g["goal"]: g for g in doc["goals"]}
    assert set(goals) == {g.text for g in suite.GOALS}
    for g in goals.values():
        assert "value" in g and "ratio" in g, g  # measured even at tiny sizes
        assert g["met"] in (True, False, None)
        if g["met"] is None:
            assert "not judged" in g["why"]
    # Size-dependent goals are not judged below their size.
    assert goals["bootstrap 1M conversations <= 4 s"]["met"] is None


def test_tiny_suite_writes_markdown_and_small_png_plots(tiny_run):
    _, out = tiny_run
    md = _one(out, "*-tiny.md").read_text()
    assert "## Goals" in md and "## Every figure" in md
    for plot in ("propagation", "apply-rate", "latency", "bootstrap", "messages"):
        png = _one(out, f"*-tiny-{plot}.png")
        data = png.read_bytes()
        assert data.startswith(PNG_MAGIC), plot
        assert len(data) < 100_000, (plot, len(data))


def test_crdtim_bench_runs_the_suite_from_a_checkout(tmp_path, capsys):
    status = cli.main(["bench", "--tiny", "--only=hw", f"--out={tmp_path}",
                       f"--workdir={tmp_path}"])
    assert status == 0
    doc = json.loads(_one(tmp_path, "*-tiny.json").read_text())
    assert {f["key"].split(".")[0] for f in doc["figures"]} == {"hw"}


def test_crdtim_bench_outside_a_checkout_says_so(monkeypatch, capsys):
    monkeypatch.setattr(os.path, "isfile", lambda path: False)
    assert cli.main(["bench", "--quick"]) == 2
    assert "needs a source checkout" in capsys.readouterr().err
