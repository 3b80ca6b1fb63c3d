"""Fixtures shared by the test modules (tests/ has no __init__.py: helpers such as
`strategies` are imported as top-level modules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import os

import pytest
from hypothesis import settings

from crdtim.replica import Replica

# `make test` is deterministic: the same examples every run (derandomize), no example
# database carried between runs, no per-example deadline on a shared 2-core machine. To hunt
# for new failures, run with HYPOTHESIS_PROFILE=explore: freshly drawn examples each run (the
# suites' own example counts still apply; repeat the run to look further).
settings.register_profile("ci", derandomize=True, database=None, deadline=None,
                          print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def open_replica(tmp_path: Path):
    """open_replica(name, **kw) -> Replica (durability="nosync") in tmp_path/name; everything
    still open is closed after the test."""
    opened: list[Replica] = []

    def open_(name: str, **kw: Any) -> Replica:
        r = Replica.open(tmp_path / name, durability="nosync", **kw)
        opened.append(r)
        return r

    yield open_
    for r in opened:
        r.close()


@pytest.fixture
def a(open_replica) -> Replica:
    return open_replica("a")


@pytest.fixture
def b(open_replica) -> Replica:
    return open_replica("b")


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """The data directory the `cli` fixture points at."""
    return tmp_path / "replica"


@pytest.fixture
def cli(capsys, data):
    """cli("show", "c1") -> (status, stdout, stderr), run in-process with --data pointing at
    `data` (or `data_dir=`); a traceback on stderr fails the test."""
    from crdtim.cli import main

    def run(*argv: object, data_dir: object = None) -> tuple[int, str, str]:
        capsys.readouterr()
        status = main(["--data", str(data if data_dir is None else data_dir), *map(str, argv)])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return status, out, err

    return run
