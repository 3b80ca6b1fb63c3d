"""The command line of the conversation features (specs/crdt.md §6): each command, what
show and ls print of it (text and --json), the ls filters, and each bad input (exit 2, one
line, nothing changed)."""

from __future__ import annotations

import json
import time

import pytest



@pytest.fixture(autouse=True)
def no_data_env(monkeypatch):
    monkeypatch.delenv("CRDTIM_DATA", raising=False)


def shown(cli, cid: str) -> dict:
    status, out, _ = cli("show", cid, "--json")
    assert status == 0
    return json.loads(out)


def listed(cli, *flags: str) -> list[str]:
    status, out, _ = cli("ls", "--json", *flags)
    assert status == 0
    return [c["id"] for c in json.loads(out)["items"]]


def test_archive_keep_unarchive_and_ls_archived(cli):
    assert cli("arrive", "a", 1, "--preview", "hi")[0] == 0
    assert cli("arrive", "b", 1)[0] == 0
    assert cli("archive", "a")[0] == 0
    assert shown(cli, "a")["archived"] is True
    assert listed(cli) == ["b"] and listed(cli, "--archived") == ["a"]
    _, out, _ = cli("ls", "--archived")
    assert "archived" in out.splitlines()[1]
    assert cli("arrive", "a", 2)[0] == 0  # a later message brings it back
    assert shown(cli, "a")["archived"] is False
    assert cli("archive", "a", "--keep")[0] == 0
    assert cli("arrive", "a", 3)[0] == 0
    assert shown(cli, "a")["archived"] is True
    assert cli("unarchive", "a")[0] == 0
    assert shown(cli, "a")["archived"] is False


def test_delete_hides_and_show_still_tells(cli):
    cli("arrive", "a", 4, "--preview", "secret", "--at", 1000)
    assert cli("delete", "a")[0] == 0
    c = shown(cli, "a")
    assert (c["deleted"], c["last_preview"], c["unread"]) == (True, "", 0)
    assert listed(cli) == [] and listed(cli, "--archived") == []
    _, out, _ = cli("show", "a")
    assert "deleted:" in out and "secret" not in out


def test_mark_unread_draft_read_by_and_mute_until_show(cli):
    cli("arrive", "a", 2)
    cli("read", "a", 2)
    assert listed(cli, "--unread") == []
    assert cli("mark-unread", "a")[0] == 0
    assert shown(cli, "a")["marked_unread"] is True and listed(cli, "--unread") == ["a"]
    _, out, _ = cli("ls")
    assert "marked unread" in out
    cli("read", "a", 2)
    assert shown(cli, "a")["marked_unread"] is False
    assert cli("draft", "a", "half a thought")[0] == 0
    assert shown(cli, "a")["draft"] == "half a thought"
    assert cli("draft", "a", "")[0] == 0 and shown(cli, "a")["draft"] == ""
    assert cli("read-by", "a", "bob", 2)[0] == 0
    assert shown(cli, "a")["read_by"] == {"bob": 2}
    _, out, _ = cli("show", "a")
    assert "read_by:" in out and "bob: 2" in out
    until = time.time_ns() // 1_000_000 + 3_600_000
    assert cli("mute", "a", "--until", until)[0] == 0
    c = shown(cli, "a")
    assert (c["muted"], c["muted_until"]) == (True, until)
    _, out, _ = cli("ls")
    assert "muted until" in out
    assert cli("mute", "a")[0] == 0  # until unmuted
    assert (shown(cli, "a")["muted"], shown(cli, "a")["muted_until"]) == (True, 0)


def test_ls_pinned_filter_and_paging_carries_the_filter(cli):
    for cid in ("a", "b", "c"):
        cli("pin", cid)
    cli("title", "d", "not pinned")
    assert listed(cli, "--pinned") == ["a", "b", "c"]
    _, out, _ = cli("ls", "--pinned", "--limit", 2)
    assert "--limit 2 --pinned --cursor=" in out.splitlines()[-1]


@pytest.mark.parametrize("argv, says", [
    (["mute", "a", "--until", 1], "not in the future"),
    (["mute", "a", "--until", "soon"], "whole number"),
    (["read", "a", 5], "above conversation 'a''s last_seq 0"),
    (["read-by", "a", "bob\n", 1], "member must be a name"),
    (["read-by", "a", "x" * 65, 1], "member must be a name"),
    (["read-by", "a", "", 1], "member must be a name"),
    (["read-by", "a", "bob", -1], "whole number"),
    (["archive", ""], "cannot be empty"),
    (["draft", "a", "x" * 20_000], "draft must be a string"),
])
def test_feature_commands_refuse_bad_input_with_exit_2(cli, argv, says):
    cli("title", "a", "t")
    before = shown(cli, "a")
    status, out, err = cli(*argv)
    assert status == 2 and says in err
    assert len([line for line in err.splitlines() if line.startswith("crdtim: error")]) == 1
    assert shown(cli, "a") == before
