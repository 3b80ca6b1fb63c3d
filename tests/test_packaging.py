"""crdtim as a library: what importing it costs, its public surface, and its optional parts.

The pure core imports no I/O library (specs/crdt.md: the lattices are pure), the package's
public names all resolve, and the commands that need an optional extra or a source checkout
say so in one line (exit 2) instead of a traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import crdtim
from crdtim import cli

IO_LIBRARIES = ("trio", "lmdb", "msgpack", "ssl", "prometheus_client")


@pytest.mark.parametrize("module", ["crdtim", "crdtim.crdt", "crdtim.errors"])
def test_importing_the_pure_core_imports_no_io_library(module):
    code = (f"import sys, {module}; "
            f"print(' '.join(m for m in {IO_LIBRARIES!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == ""


def test_every_public_name_resolves():
    for name in crdtim.__all__:
        assert getattr(crdtim, name) is not None, name
    assert set(crdtim.__all__) <= set(dir(crdtim))
    with pytest.raises(AttributeError):
        crdtim.NoSuchName  # noqa: B018


def test_the_lazy_names_are_the_modules_own():
    from crdtim.net import Node
    from crdtim.replica import Replica
    from crdtim.security import load_tls

    assert crdtim.Node is Node and crdtim.Replica is Replica and crdtim.load_tls is load_tls


def test_the_package_is_typed():
    assert (Path(crdtim.__file__).parent / "py.typed").is_file()


def test_serve_metrics_without_prometheus_client_says_how_to_install_it(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # as if not installed
    status = cli.main(["--data", str(tmp_path / "r"), "serve", "--listen", "127.0.0.1:0",
                       "--metrics", "127.0.0.1:0"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.strip().splitlines() == [
        "crdtim: error: --metrics needs prometheus_client: pip install 'crdtim[metrics]'"]
    assert not (tmp_path / "r").exists()  # refused before the replica is created


def _forget_benchmarks(monkeypatch):
    for name in [m for m in sys.modules if m == "benchmarks" or m.startswith("benchmarks.")]:
        monkeypatch.delitem(sys.modules, name)


def test_bench_outside_a_source_checkout_says_so(monkeypatch, capsys):
    _forget_benchmarks(monkeypatch)
    monkeypatch.setitem(sys.modules, "benchmarks", None)  # as if not importable
    assert cli.main(["bench", "--tiny"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "needs a source checkout" in lines[0]


def test_bench_without_the_bench_extra_names_what_is_missing(monkeypatch, capsys):
    _forget_benchmarks(monkeypatch)
    monkeypatch.setitem(sys.modules, "pycrdt", None)
    assert cli.main(["bench", "--tiny"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "needs pycrdt" in lines[0] and "[bench]" in lines[0]


def test_metrics_collector_reads_node_stats_and_status():
    pytest.importorskip("prometheus_client", reason="the crdtim[metrics] extra is not installed")
    from crdtim.metrics import NodeCollector
    from crdtim.net import NodeStats

    node = SimpleNamespace(stats=NodeStats(), status_snapshot={
        "head": 7, "conversations": 3, "peers": {"phone": {"missing": 2}}})
    metrics = {m.name: m for m in NodeCollector(node).collect()}
    assert metrics["crdtim_log_head"].samples[0].value == 7
    assert metrics["crdtim_conversations"].samples[0].value == 3
    (lag,) = metrics["crdtim_peer_lag_entries"].samples
    assert lag.labels == {"peer": "phone"} and lag.value == 2
