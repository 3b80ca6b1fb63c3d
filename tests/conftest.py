"""Fixtures shared by the test modules (tests/ has no __init__.py: helpers such as
`strategies` are imported as top-level modules)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from crdtim.replica import Replica


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
