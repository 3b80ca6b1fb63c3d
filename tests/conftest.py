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
