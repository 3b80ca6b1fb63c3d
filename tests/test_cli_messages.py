"""The command line of the message history (specs/crdt.md §8): every command, the text and
--json shapes of history and versions, paging with --cursor, TEXT "-" from stdin (append
streams it piece by piece), and every bad input (exit 2, one line on stderr, nothing
changed)."""

from __future__ import annotations

import io
import json
import sys

import pytest

from crdtim import Replica

MESSAGE_FIELDS = ["id", "cid", "parent", "role", "author", "text", "at", "seq", "edited",
                  "deleted", "version", "versions", "visible"]


@pytest.fixture(autouse=True)
def no_data_env(monkeypatch):
    monkeypatch.delenv("CRDTIM_DATA", raising=False)


def history(cli, cid: str = "c", *flags: object) -> dict:
    status, out, err = cli("history", cid, "--json", *flags)
    assert status == 0, err
    return json.loads(out)


def thread(cli, cid: str = "c") -> list[tuple[str, str]]:
    """The visible history, oldest first, as (id, text)."""
    return [(m["id"], m["text"]) for m in reversed(history(cli, cid, "--limit", 10000)["items"])]


def head(cli) -> int:
    status, out, _ = cli("status", "--json")
    assert status == 0
    return int(json.loads(out)["head"])


class _Chunks(io.RawIOBase):
    """A pipe's read end: each read returns the next chunk, as a writer flushed it."""

    def __init__(self, chunks: list[bytes]):
        self.chunks = list(chunks)
        self.reads = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        self.reads += 1
        if not self.chunks:
            return 0
        chunk = self.chunks.pop(0)
        buffer[:len(chunk)] = chunk
        return len(chunk)


def stdin_of(monkeypatch, *chunks: bytes) -> _Chunks:
    raw = _Chunks(list(chunks))
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(raw), "utf-8"))
    return raw


# -- writes ------------------------------------------------------------------------------------


def test_post_prints_the_id_and_creates_the_conversation(cli, data):
    status, out, err = cli("post", "c", "hello")
    assert status == 0 and "created a new replica" in err
    mid = out.strip()
    assert out == mid + "\n" and mid
    assert thread(cli) == [(mid, "hello")]
    status, out, _ = cli("show", "c", "--json")
    assert status == 0 and json.loads(out)["last_preview"] == "hello"
    with Replica.open(data, create=False) as r:
        assert r.message("c", mid).text == "hello"


def test_post_options_reach_the_message(cli):
    cli("init")
    assert cli("post", "c", "q", "--id", "q1") == (0, "q1\n", "")
    assert cli("post", "c", "a", "--id", "a1", "--role", "assistant")[1] == "a1\n"
    assert cli("post", "c", "from bob", "--id", "b1", "--author", "bob", "--seq", 7)[0] == 0
    assert cli("post", "c", "other branch", "--id", "b2", "--reply-to", "a1")[0] == 0
    items = {m["id"]: m for m in history(cli)["items"]}
    assert list(items) == ["b2", "a1", "q1"]  # b2 is a new version of b1, shown instead
    assert (items["a1"]["role"], items["a1"]["parent"]) == ("assistant", "q1")
    assert (items["b2"]["parent"], items["b2"]["version"], items["b2"]["versions"]) == ("a1", 1, 2)
    status, out, _ = cli("versions", "c", "b1", "--json")
    bob = json.loads(out)["items"][0]
    assert (bob["author"], bob["seq"], bob["role"]) == ("bob", 7, "user")
    assert json.loads(cli("show", "c", "--json")[1])["last_seq"] == 7
    # the same post again (a client retrying) changes nothing
    before = head(cli)
    assert cli("post", "c", "q", "--id", "q1") == (0, "q1\n", "")
    assert head(cli) == before


def test_a_streamed_reply_then_edit_and_delete(cli):
    cli("post", "c", "question", "--id", "q")
    cli("post", "c", "", "--id", "a", "--role", "assistant")
    for token in ("The ", "answer ", "is 42."):
        assert cli("append", "c", "a", token) == (0, "", "")
    assert thread(cli) == [("q", "question"), ("a", "The answer is 42.")]
    assert cli("edit", "c", "a", "It is 42.") == (0, "", "")
    assert history(cli)["items"][0]["edited"] is not None
    assert cli("delete-message", "c", "q") == (0, "", "")
    items = history(cli)["items"]
    assert [(m["id"], m["deleted"], m["text"]) for m in items] == [
        ("a", False, "It is 42."), ("q", True, "")]  # the reply stays, after its place
    _, out, _ = cli("history", "c")
    assert out.splitlines() == ["q  user: (deleted)", "a  assistant: It is 42. (edited)"]


def test_regenerate_versions_and_switch(cli):
    cli("post", "c", "q", "--id", "q")
    cli("post", "c", "first", "--id", "a1", "--role", "assistant")
    cli("post", "c", "thanks", "--id", "u2")
    status, out, _ = cli("regenerate", "c", "a1")  # TEXT is optional: append to it later
    a2 = out.strip()
    assert status == 0 and a2 and a2 != "a1"
    cli("append", "c", a2, "second")
    assert cli("regenerate", "c", a2, "third", "--id", "a3", "--role", "bot") == (0, "a3\n", "")
    assert thread(cli) == [("q", "q"), ("a3", "third")]  # u2 followed a version not shown
    _, out, _ = cli("versions", "c", "a1")
    assert out.splitlines() == [
        f"  {'a1':<{len(a2)}}  1/3 assistant: first",
        f"  {a2}  2/3 assistant: second",
        f"* {'a3':<{len(a2)}}  3/3 bot: third"]
    assert cli("switch", "c", "a1") == (0, "", "")
    assert thread(cli) == [("q", "q"), ("a1", "first"), ("u2", "thanks")]
    status, out, _ = cli("versions", "c", "a3", "--json")
    shown = json.loads(out)
    assert status == 0 and shown["visible"] == "a1"
    assert [m["id"] for m in shown["items"]] == ["a1", a2, "a3"]
    assert all(list(m) == MESSAGE_FIELDS for m in shown["items"])
    _, out, _ = cli("history", "c")
    assert out.splitlines()[1] == "a1  1/3 assistant: first"


def test_versions_when_none_is_shown_says_so(cli):
    cli("post", "c", "q", "--id", "q")
    cli("post", "c", "a", "--id", "a1", "--role", "assistant")
    cli("post", "c", "u", "--id", "u2")
    cli("regenerate", "c", "a1", "other", "--id", "a2")  # u2's path now goes through a1
    status, out, _ = cli("versions", "c", "u2", "--json")
    assert status == 0 and json.loads(out)["visible"] is None
    _, out, _ = cli("versions", "c", "u2")
    lines = out.splitlines()
    assert lines[0] == "  u2  1/1 user: u" and "none of them is in the history" in lines[1]


def test_versions_finds_the_shown_one_however_old(cli, data):
    with Replica.open(data) as r:
        r.post("c", "q", id="q")
        r.post("c", "a", id="a1", role="assistant")
        for n in range(5):
            r.post("c", f"later {n}")
    assert json.loads(cli("versions", "c", "a1", "--json")[1])["visible"] == "a1"
    assert json.loads(cli("versions", "c", "q", "--json")[1])["visible"] == "q"


# -- history -----------------------------------------------------------------------------------


def test_history_json_shape(cli):
    cli("post", "c", "hi", "--id", "m1", "--seq", 1)
    shown = history(cli)
    assert list(shown) == ["items", "cursor", "has_more"]
    assert (shown["cursor"], shown["has_more"]) == (None, False)
    (m,) = shown["items"]
    assert list(m) == MESSAGE_FIELDS
    assert {k: m[k] for k in MESSAGE_FIELDS if k != "at"} == {
        "id": "m1", "cid": "c", "parent": None, "role": "user", "author": None, "text": "hi",
        "seq": 1, "edited": None, "deleted": False, "version": 0, "versions": 1,
        "visible": True}
    assert isinstance(m["at"], int)


def test_history_pages_with_the_cursor(cli, data):
    with Replica.open(data) as r:
        for n in range(7):
            r.post("c", f"message {n}", id=f"m{n}")
    seen, cursor, pages = [], None, 0
    while True:
        page = history(cli, "c", "--limit", 3, *(["--cursor", cursor] if cursor else []))
        seen += [m["id"] for m in page["items"]]
        pages += 1
        if not page["has_more"]:
            assert page["cursor"] is None
            break
        cursor = page["cursor"]
    assert seen == [f"m{n}" for n in reversed(range(7))] and pages == 3
    # the text form: oldest first within the page, then how to get the older ones
    status, out, _ = cli("history", "c", "--limit", 3)
    lines = out.splitlines()
    assert lines[:3] == ["m4  user: message 4", "m5  user: message 5", "m6  user: message 6"]
    cursor = history(cli, "c", "--limit", 3)["cursor"]
    assert lines[3] == f"older: crdtim --data {data} history c --limit 3 --cursor={cursor}"
    _, out, _ = cli("history", "c", "--limit", 3, f"--cursor={cursor}")
    assert out.splitlines()[0] == "m1  user: message 1"


def test_history_text_of_many_lines_authors_and_terminal_escapes(cli):
    cli("post", "my chat", "line one\nline two", "--id", "m1", "--author", "bob")
    cli("post", "my chat", "\x1b[31mred\x1b[0m", "--id", "m2")
    status, out, _ = cli("history", "my chat")
    assert status == 0
    assert out.splitlines() == ["m1  user (bob): line one",
                                "                line two",
                                "m2  user: \\x1b[31mred\\x1b[0m"]
    assert "\x1b" not in out


def test_history_of_an_empty_conversation(cli):
    cli("init")
    assert cli("history", "nothing") == (0, "no messages\n", "")
    assert history(cli, "nothing") == {"items": [], "cursor": None, "has_more": False}


@pytest.mark.parametrize("argv", [["history", "c"], ["versions", "c", "m"]])
def test_the_reads_never_create_a_replica(cli, data, argv):
    status, out, err = cli(*argv)
    assert (status, out) == (1, "") and "no replica at" in err
    assert not data.exists()


def test_versions_of_an_unknown_message_exits_1_like_show(cli):
    cli("post", "c", "hi")
    assert cli("versions", "c", "nope") == (
        1, "", "crdtim: error: no message 'nope' in conversation 'c'\n")


# -- TEXT "-": stdin ---------------------------------------------------------------------------


def test_append_dash_appends_stdin_piece_by_piece(cli, monkeypatch):
    cli("post", "c", "", "--id", "a", "--role", "assistant")
    before = head(cli)
    # "é" is split between two reads: it must not become two broken pieces
    raw = stdin_of(monkeypatch, b"Bonjour, ", b"caf\xc3", b"\xa9 ", b"au lait.")
    assert cli("append", "c", "a", "-") == (0, "", "")
    assert thread(cli) == [("a", "Bonjour, café au lait.")]
    assert raw.reads == 5  # read until EOF, one chunk per read
    # one commit per piece that had whole characters: the reply grows as it is streamed
    assert head(cli) - before == 4  # "Bonjour, ", "caf", "é ", "au lait."


def test_append_dash_refuses_an_unknown_message_before_reading_stdin(cli, monkeypatch):
    cli("post", "c", "hi", "--id", "m")
    raw = stdin_of(monkeypatch, b"never read")
    status, out, err = cli("append", "c", "nope", "-")
    assert (status, out, err) == (2, "", "crdtim: error: append to 'nope': no such message\n")
    assert raw.reads == 0


@pytest.mark.parametrize("argv", [["post", "c", "-"], ["edit", "c", "m", "-"],
                                  ["regenerate", "c", "m", "-", "--id", "m2"]])
def test_dash_reads_the_whole_text_from_stdin(cli, monkeypatch, argv):
    cli("post", "c", "old", "--id", "m")
    stdin_of(monkeypatch, "multi\nline ".encode(), "text ✓".encode())
    assert cli(*argv)[0] == 0
    assert thread(cli)[-1][1] == "multi\nline text ✓"


def test_stdin_that_is_not_utf8_is_refused_and_nothing_changes(cli, monkeypatch):
    cli("post", "c", "", "--id", "a")
    before = (head(cli), thread(cli))
    stdin_of(monkeypatch, b"\xff\xfe")
    status, out, err = cli("post", "c", "-")
    assert (status, out) == (2, "")
    assert err.startswith("crdtim: error: stdin is not UTF-8") and err.count("\n") == 1
    assert (head(cli), thread(cli)) == before


def test_dash_without_a_stdin_is_refused(cli, monkeypatch):
    cli("init")
    monkeypatch.setattr(sys, "stdin", None)
    assert cli("post", "c", "-") == (
        2, "", "crdtim: error: TEXT - reads stdin, but there is no stdin\n")
    assert history(cli) == {"items": [], "cursor": None, "has_more": False}


# -- bad input: exit 2, one line, nothing changed ----------------------------------------------


@pytest.mark.parametrize("argv, says", [
    (["append", "c", "nope", "x"], "append to 'nope': no such message"),
    (["edit", "c", "nope", "x"], "no such message"),
    (["switch", "c", "nope"], "switch to 'nope': no such message"),
    (["delete-message", "c", "nope"], "delete 'nope': no such message"),
    (["regenerate", "c", "nope"], "regenerate 'nope': no such message"),
    (["versions", "c", ""], "message id ''"),
    (["post", "c", "x" * 65_537], "over the limit of 65536"),
    (["append", "c", "a", "x" * 65_537], "over the limit"),
    (["edit", "c", "a", "x" * 65_537], "over the limit"),
    (["regenerate", "c", "a", "x" * 65_537], "over the limit"),
    (["post", "c", "bad \udcff text"], "surrogate"),
    (["post", "c", "x", "--id", ""], "message id ''"),
    (["post", "c", "x", "--id", "i" * 129], "must be 1..128 characters"),
    (["post", "c", "x", "--id", "a\x00b"], "message id"),
    (["post", "c", "x", "--role", ""], "role ''"),
    (["post", "c", "x", "--author", ""], "author"),
    (["post", "c", "x", "--reply-to", "nope"], "reply_to 'nope': no such message"),
    (["post", "c", "x", "--id", "q", "--role", "assistant"], "exists with different"),
    (["post", "c", "x", "--seq", "-1"], "whole number"),
    (["post", "c", "x", "--seq", "seven"], "whole number"),
    (["regenerate", "c", "a", "x", "--id", "q"], "q"),
    (["edit", "c", "gone", "x"], "deleted"),
    (["append", "c", "gone", "x"], "deleted"),
    (["history", "c", "--cursor", "zz"], "invalid cursor 'zz'"),
    (["history", "c", "--cursor", "AAAA"], "invalid cursor"),
    (["history", "c", "--limit", 0], "whole number from 1"),
    (["history", "c", "--limit", 10_001], "limit must be an integer from 1 to 10000"),
    (["history", ""], "cannot be empty"),
    (["post", "", "x"], "cannot be empty"),
])
def test_bad_input_exits_2_with_one_line_and_changes_nothing(cli, argv, says):
    cli("post", "c", "q", "--id", "q")
    cli("post", "c", "a", "--id", "a", "--role", "assistant")
    cli("post", "c", "gone", "--id", "gone")
    cli("delete-message", "c", "gone")
    before = (head(cli), history(cli))
    status, out, err = cli(*argv)
    assert (status, out) == (2, "")
    errors = [line for line in err.splitlines() if line.startswith("crdtim: error: ")]
    assert len(errors) == 1 and says in errors[0], err
    assert err.splitlines()[-1] == errors[0]  # argparse's usage may come first, nothing after
    assert (head(cli), history(cli)) == before
