"""Regression tests for the rough edges of issue 14, one per bug, each named after it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crdtim.cli import main


@pytest.fixture(autouse=True)
def no_data_env(monkeypatch):
    monkeypatch.delenv("CRDTIM_DATA", raising=False)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "replica"


@pytest.fixture
def cli(capsys, data):
    """cli("show", "c1") -> (status, stdout, stderr), with --data pointing at `data`."""

    def run(*argv: object, data_dir: object = None) -> tuple[int, str, str]:
        capsys.readouterr()
        status = main(["--data", str(data if data_dir is None else data_dir), *map(str, argv)])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return status, out, err

    return run


# -- item 5: emoji sequences are shown as they are ---------------------------------------------

FAMILY = "\U0001f468\u200d\U0001f469\u200d\U0001f467"  # man ZWJ woman ZWJ girl
FLAG = "\U0001f1eb\U0001f1f7"  # regional indicators F R
HEART = "\u2764\ufe0f"  # heart + variation selector 16


def test_ls_escaped_the_zero_width_joiner_inside_a_family_emoji(cli):
    title = f"{FAMILY} {FLAG} {HEART}"
    assert cli("title", "c1", title)[0] == 0
    status, out, _ = cli("ls")
    assert status == 0 and title in out and "\\u200d" not in out and "\\ufe0f" not in out
    status, out, _ = cli("show", "c1")
    assert status == 0 and title in out


def test_ls_still_escapes_controls_and_bidi_overrides(cli):
    assert cli("title", "c1", "a\u202eb\x1b[31mc\nd\u2066e")[0] == 0
    status, out, _ = cli("ls")
    assert status == 0
    assert "a\\u202eb\\x1b[31mc\\nd\\u2066e" in out and "\u202e" not in out


# -- item 8: one wording for one rule; a clear message for a path under a file -----------------


def test_ls_limit_minus_one_and_zero_were_worded_differently(cli):
    cli("title", "c1", "x")
    said = []
    for limit in ("-1", "0"):
        status, _, err = cli("ls", "--limit", limit)
        assert status == 2
        said.append(err.strip().splitlines()[-1].replace(repr(limit), "N"))
    assert said[0] == said[1]
    assert "expected a whole number from 1 to" in said[0]


@pytest.mark.parametrize("argv", [("ls",), ("title", "c1", "x"), ("status",)])
def test_data_under_a_file_printed_a_raw_errno_20(cli, tmp_path, argv):
    afile = tmp_path / "afile"
    afile.write_text("not a directory")
    status, out, err = cli(*argv, data_dir=afile / "sub")
    assert status == 2 and out == ""
    assert "Errno" not in err and err.count("\n") == 1
    assert f"{afile} is a file, not a directory" in err and "afile/sub" in err
    assert afile.read_text() == "not a directory"
