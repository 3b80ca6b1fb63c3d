"""The `crdtim` command line: main() in-process for speed, and `python -m crdtim` in real
processes to prove the entry point, the exit statuses and that watch sees other processes."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from crdtim import Replica
from crdtim.cli import COMMANDS, Subcommand, arg, build_parser, main, watch_log

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_data_env(monkeypatch):
    monkeypatch.delenv("CRDTIM_DATA", raising=False)


def shown(cli, cid: str) -> dict:
    status, out, _ = cli("show", cid, "--json")
    assert status == 0
    return json.loads(out)


def snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


def python_m_crdtim(*argv: object, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "crdtim", *map(str, argv)], env=_env(),
                          capture_output=True, text=True, timeout=30, **kw)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CRDTIM_DATA", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


# -- init and the data directory ---------------------------------------------------------------


def test_init_prints_an_id_and_is_idempotent(cli, data):
    status, out, err = cli("init")
    assert status == 0
    rid = out.strip()
    assert rid and rid.isalnum() and out == rid + "\n"
    assert "initialized" in err
    status, out, err = cli("init")
    assert (status, out.strip()) == (0, rid)
    assert "already exists" in err
    with Replica.open(data, create=False) as r:
        assert r.id == rid


def test_data_flag_before_or_after_the_subcommand(capsys, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["--data", str(a), "init"]) == 0
    assert main(["init", "--data", str(b)]) == 0
    ids = capsys.readouterr().out.split()
    assert main(["pin", "c1", "--data", str(a)]) == 0
    assert main(["--data", str(b), "title", "c2", "hello"]) == 0
    # given twice, the one after the subcommand is the more specific
    assert main(["--data", str(a), "status", "--json", "--data", str(b)]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == ids[1]
    with Replica.open(a) as r:
        assert r.id == ids[0] and r.get("c1").pinned and r.get("c2") is None
    with Replica.open(b) as r:
        assert r.get("c2").title == "hello" and r.get("c1") is None


def test_data_flag_beats_environment_beats_default(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["init"]) == 0
    default_id = capsys.readouterr().out.strip()
    assert (tmp_path / "crdtim-data" / "data.mdb").exists()

    monkeypatch.setenv("CRDTIM_DATA", str(tmp_path / "from-env"))
    assert main(["init"]) == 0
    env_id = capsys.readouterr().out.strip()
    assert (tmp_path / "from-env" / "data.mdb").exists() and env_id != default_id

    assert main(["--data", "crdtim-data", "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == default_id

    monkeypatch.setenv("CRDTIM_DATA", "")  # empty counts as unset
    assert main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == default_id


def test_a_write_to_a_missing_replica_creates_it_and_says_so(cli, data):
    status, _, err = cli("pin", "c1")
    assert status == 0 and "created a new replica" in err and str(data) in err
    status, _, err = cli("pin", "c2")
    assert status == 0 and err == ""


# -- every mutation, seen by show and ls -------------------------------------------------------


def test_every_mutating_command_shows_in_show_and_ls(cli):
    assert cli("init")[0] == 0
    assert cli("title", "c1", "Family")[0] == 0
    assert shown(cli, "c1")["title"] == "Family"

    assert cli("pin", "c1")[0] == 0
    assert shown(cli, "c1")["pinned"] is True
    assert cli("unpin", "c1")[0] == 0
    assert shown(cli, "c1")["pinned"] is False

    assert cli("mute", "c1")[0] == 0
    assert shown(cli, "c1")["muted"] is True
    assert cli("unmute", "c1")[0] == 0
    assert shown(cli, "c1")["muted"] is False

    assert cli("arrive", "c1", 5, "--preview", "see you", "--at", 1_700_000_000_000)[0] == 0
    assert cli("arrive", "c1", 3, "--preview", "older", "--at", 1_600_000_000_000)[0] == 0
    c1 = shown(cli, "c1")
    assert (c1["last_seq"], c1["unread"], c1["last_preview"], c1["last_at"]) == (
        5, 5, "see you", 1_700_000_000_000)

    assert cli("read", "c1", 4)[0] == 0
    assert shown(cli, "c1")["unread"] == 1
    assert cli("read", "c1", 2)[0] == 0  # the read marker never moves back
    assert shown(cli, "c1") == {
        "id": "c1", "title": "Family", "pinned": False, "muted": False, "unread": 1,
        "last_seq": 5, "read_seq": 4, "last_preview": "see you", "last_at": 1_700_000_000_000,
        "archived": False, "deleted": False, "marked_unread": False, "draft": "",
        "muted_until": 0, "read_by": {},
    }

    status, out, _ = cli("ls", "--json")
    assert status == 0
    assert json.loads(out) == {"items": [shown(cli, "c1")], "cursor": None, "has_more": False}


def test_arrive_without_at_uses_now(cli):
    assert cli("arrive", "c1", 1)[0] == 0
    assert shown(cli, "c1")["last_at"] > 1_600_000_000_000


def test_plain_show_is_aligned_key_value_lines(cli):
    cli("title", "c1", "Family")
    cli("arrive", "c1", 3, "--preview", "hi", "--at", 1_700_000_000_000)
    cli("pin", "c1")
    status, out, _ = cli("show", "c1")
    assert status == 0
    lines = out.splitlines()
    keys = [line.split(":", 1)[0] for line in lines]
    assert keys == ["id", "title", "pinned", "muted", "unread", "last_seq", "read_seq",
                    "last_preview", "last_at", "archived", "deleted", "marked_unread", "draft",
                    "muted_until", "read_by"]
    # values line up, after the longest key ("marked_unread:") and one space
    assert all(line[14] == " " and line[15] != " " for line in lines if not line.endswith(":"))
    assert "pinned:        yes" in lines and "muted:         no" in lines
    assert "unread:        3" in lines
    last_at = lines[keys.index("last_at")]
    assert last_at.startswith("last_at:       2023-11-1") and "(1700000000000 ms)" in last_at


def test_plain_ls_is_a_table_with_markers_and_a_next_page_hint(cli, data):
    cli("title", "c1", "Family")
    cli("arrive", "c1", 3, "--preview", "x" * 100, "--at", 1_700_000_000_000)
    cli("pin", "c1")
    cli("mute", "c2")
    cli("arrive", "c3", 1, "--at", 1_600_000_000_000)
    status, out, _ = cli("ls")
    assert status == 0
    header, first, second, third = out.splitlines()
    assert header.split() == ["PIN", "MUTE", "UNREAD", "ID", "TITLE", "LAST", "AT", "LAST",
                              "MESSAGE", "NOTES"]  # NOTES: the features set, empty here
    assert first.split()[:4] == ["pin", "3", "c1", "Family"]
    assert first.split()[4][:10] in ("2023-11-14", "2023-11-15")  # local time, any zone
    assert first.endswith(" " + "x" * 37 + "...")  # long previews are cut
    assert second.split()[:2] == ["1", "c3"] and len(second.split()) == 3
    assert third.split() == ["mute", "c2", "-"]
    for column, value in [("ID", "c1"), ("TITLE", "Family"), ("LAST MESSAGE", "xxx")]:
        assert first.index(value) == header.index(column)  # columns line up
    assert header.index("MUTE") == third.index("mute")

    status, out, _ = cli("ls", "--limit", 2)
    lines = out.splitlines()
    # The hint is a command to run as it stands: it names the same data directory.
    assert len(lines) == 4 and lines[-1].startswith(
        f"more: crdtim --data {data} ls --limit 2 --cursor=")
    cursor = lines[-1].split("--cursor=")[1]
    status, out, _ = cli("ls", "--limit", 2, "--cursor", cursor)
    assert status == 0 and out.splitlines()[1].split()[:2] == ["mute", "c2"]
    assert "more:" not in out


def test_ls_and_show_escape_control_characters_from_other_devices(cli):
    cli("title", "c1", "evil\x1b[2J\ntitle")
    cli("arrive", "c1", 1, "--preview", "line\nbreak\x07", "--at", 10**17)  # far future too
    for argv in (("ls",), ("show", "c1")):
        status, out, _ = cli(*argv)
        assert status == 0
        assert "\x1b" not in out and "\x07" not in out and "evil\\x1b[2J\\ntitle" in out
    _, out, _ = cli("ls")
    assert len(out.splitlines()) == 2


def test_ls_of_an_empty_replica(cli):
    cli("init")
    assert cli("ls")[:2] == (0, "no conversations\n")
    status, out, _ = cli("ls", "--json")
    assert json.loads(out) == {"items": [], "cursor": None, "has_more": False}


def test_ls_json_pages_return_every_conversation_once_in_order(cli):
    cli("arrive", "a", 1, "--at", 1000)
    cli("pin", "a")
    cli("pin", "b")  # pinned, no message
    cli("arrive", "c", 1, "--at", 5000)
    cli("arrive", "d", 1, "--at", 5000)  # same time as c: by id
    cli("arrive", "e", 1, "--at", 3000)
    cli("title", "f", "no messages")
    cli("arrive", "g", 1, "--at", 9000)
    cli("pin", "g")
    cli("unpin", "g")

    seen, cursor, pages = [], None, 0
    while True:
        argv = ["ls", "--json", "--limit", 3] + ([] if cursor is None else ["--cursor", cursor])
        status, out, _ = cli(*argv)
        assert status == 0
        page = json.loads(out)
        pages += 1
        seen += page["items"]
        if not page["has_more"]:
            assert page["cursor"] is None
            break
        assert len(page["items"]) == 3
        cursor = page["cursor"]
    assert pages == 3
    ids = [c["id"] for c in seen]
    assert ids == ["a", "b", "g", "c", "d", "e", "f"]
    assert seen == sorted(seen, key=lambda c: (not c["pinned"], -c["last_at"], c["id"]))


# -- status ------------------------------------------------------------------------------------


def test_status_reports_head_floor_and_each_peers_lag(cli, data):
    for i in range(4):
        cli("pin", f"c{i}")
    with Replica.open(data) as r:
        rid = r.id
        r.record_ack("peerone", 1)
        r.record_ack("peertwo", 4)
    status, out, _ = cli("status", "--json")
    st = json.loads(out)
    assert status == 0
    assert (st["id"], st["path"], st["conversations"], st["head"], st["log_floor"]) == (
        rid, str(data), 4, 4, 0)
    assert {p: (v["ack"], v["missing"]) for p, v in st["peers"].items()} == {
        "peerone": (1, 3), "peertwo": (4, 0)}

    status, out, _ = cli("status")
    lines = out.splitlines()
    assert lines[:6] == [
        f"replica:       {rid}", f"path:          {data}", "conversations: 4", "head:          4",
        "log floor:     0", "peers:         2"]
    assert [line.split() for line in lines[6:]] == [
        ["PEER", "ACK", "MISSING"], ["peerone", "1", "3"], ["peertwo", "4", "0"]]


# -- bad input: 2, anything else: 1, never a traceback -----------------------------------------


NUMBER = f"expected a whole number from 0 to {2**63 - 1}"


@pytest.mark.parametrize("argv, says", [
    (["arrive", "c1", "abc"], f"argument SEQ: {NUMBER}, not 'abc'"),
    (["read", "c1", "-1"], f"argument SEQ: {NUMBER}, not '-1'"),
    (["read", "c1", "9" * 5000], "argument SEQ: expected a whole number from 0 to"),
    (["arrive", "c1", "1", "--at", "soon"], "argument --at: expected a whole number"),
    (["arrive", "c1", str(2**63)], f"from 0 to {2**63 - 1}, not '{2**63}'"),
    (["watch", "--since", str(2**64)], "argument --since: expected a whole number"),
    (["title", "c1"], "the following arguments are required: TEXT"),
    (["read"], "the following arguments are required: CID, SEQ"),
    (["pin", ""], "a conversation id cannot be empty"),
    (["pin", "x" * 1000], "conversation id must be a string of 1 to"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    ([], "the following arguments are required: COMMAND"),
    (["ls", "--limit", "0"], "expected a whole number from 1 to"),
    (["ls", "--limit", "100000"], "limit must be an integer from 1 to 10000"),
    (["ls", "--cursor", "nonsense"], "invalid cursor"),
    (["show", "c1", "--colour"], "unrecognized arguments: --colour"),
])
def test_bad_usage_or_input_exits_2_with_a_clear_message(cli, argv, says):
    cli("init")
    status, out, err = cli(*argv)
    assert status == 2
    assert out == ""
    last = err.splitlines()[-1]
    assert last.startswith("crdtim: error: ") and says in last


def test_empty_data_flag_is_bad_usage(capsys):
    assert main(["--data", "", "ls"]) == 2
    assert "crdtim: error: --data needs a directory" in capsys.readouterr().err


def test_show_of_an_unknown_conversation_exits_1(cli):
    cli("init")
    assert cli("show", "nope") == (1, "", "crdtim: error: no conversation 'nope'\n")


@pytest.mark.parametrize("argv", [["show", "c1"], ["ls"], ["status"], ["watch"], ["init"],
                                  ["pin", "c1"]])
def test_a_directory_that_is_not_a_replica_is_refused_and_left_unchanged(cli, data, argv):
    data.mkdir()
    (data / "notes.txt").write_text("my notes")
    before = snapshot(data)
    status, out, err = cli(*argv)
    assert status == 1 and out == ""
    assert err.startswith(f"crdtim: error: {data}: ") and "not" in err and "\n" == err[-1]
    assert snapshot(data) == before


@pytest.mark.parametrize("argv", [["show", "c1"], ["ls"], ["status", "--json"], ["watch"]])
def test_reads_never_create_a_replica(cli, data, argv):
    assert cli(*argv) == (
        1, "", f"crdtim: error: no replica at {data} (run `crdtim --data {data} init`)\n")
    assert not data.exists()
    data.mkdir()
    assert cli(*argv)[0] == 1
    assert list(data.iterdir()) == []


def test_a_data_path_that_is_a_file_is_refused(cli, data):
    data.write_text("hello")
    status, _, err = cli("pin", "c1")
    assert status == 1 and "is a file" in err
    assert data.read_text() == "hello"


def test_help_and_version_exit_0(capsys):
    assert main(["--help"]) == 0
    assert "watch" in capsys.readouterr().out
    assert main(["ls", "--help"]) == 0
    assert "--cursor" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("crdtim ")


def test_a_subcommand_is_one_function_and_one_table_row(capsys):
    def cmd_hello(args):
        print(f"hello {args.who} in {args.data}")
        return 0

    table = {**COMMANDS, "hello": Subcommand(cmd_hello, "say hello", (arg("who"),))}
    parser, commands = build_parser(table)
    args = parser.parse_args(["hello", "world", "--data", "d"])
    assert commands[args.command].run(args) == 0
    assert capsys.readouterr().out == "hello world in d\n"
    assert "hello" not in build_parser()[1]  # the shared table was not touched


# -- watch -------------------------------------------------------------------------------------


def test_watch_log_emits_each_change_once_as_it_is_logged(data):
    with Replica.open(data) as r:
        r.pin("old")  # before the watch started: not shown
        writes = iter([
            lambda: None,
            lambda: r.set_title("c1", "hi"),
            lambda: (r.message_arrived("c2", 1, "yo", at=5), r.mute("c1")),
            lambda: None,
        ])
        seen, naps = [], []

        def sleep(seconds):  # stands in for time passing while others write
            naps.append(seconds)
            next(writes)()

        last = watch_log(r, r.head, lambda seq, c: seen.append((seq, c.conversation,
                                                                 sorted(c.fields), c.origin)),
                         sleep=sleep, interval=0.2, polls=5)
        assert naps == [0.2] * 4
        assert seen == [(2, "c1", ["title"], "local"),
                        (3, "c2", ["last_message", "last_seq"], "local"),
                        (4, "c1", ["muted", "muted_until"], "local")]
        assert last == r.head == 4


def test_watch_log_reports_entries_trimmed_before_they_were_shown(data):
    with Replica.open(data, log_retention=1) as r:
        r.pin("c0")
        gaps, seen = [], []

        def sleep(_):
            r.pin("c1")
            r.pin("c2")
            r.pin("c3")
            r.trim_log()  # keeps only the newest entry

        last = watch_log(r, r.head, lambda seq, c: seen.append((seq, c.conversation)),
                         on_gap=gaps.append, sleep=sleep, polls=2)
        assert gaps == [2] and seen == [(4, "c3")] and last == 4

        # all of it trimmed, nothing left to show: the gap is still reported
        def sleep_and_trim_everything(_):
            r.pin("c4")
            r.pin("c5")
            r.log_retention = 0
            r.trim_log()

        gaps.clear()
        seen.clear()
        assert watch_log(r, 4, seen.append, on_gap=gaps.append, sleep=sleep_and_trim_everything,
                         polls=2) == 6
        assert gaps == [2] and seen == []
        assert r.log_floor == 6


def test_watch_log_sees_writes_of_another_process(data):
    with Replica.open(data) as r:
        seen = []

        def sleep(_):  # another process writes while this one holds the replica open
            done = python_m_crdtim("--data", data, "title", "c1", "from elsewhere")
            assert done.returncode == 0, done.stderr

        watch_log(r, r.head, lambda seq, c: seen.append((seq, c.conversation, set(c.fields))),
                  sleep=sleep, polls=2)
        assert seen == [(1, "c1", {"title"})]


# -- the real entry point ----------------------------------------------------------------------


def test_python_m_crdtim_runs_and_exits_with_the_documented_statuses(data):
    done = python_m_crdtim("--data", data, "init")
    assert done.returncode == 0 and done.stdout.strip().isalnum()

    done = python_m_crdtim("arrive", "c1", "abc", "--data", data)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines()[-1] == (
        f"crdtim: error: argument SEQ: {NUMBER}, not 'abc'")

    done = python_m_crdtim("show", "nope", "--data", data)
    assert (done.returncode, done.stderr) == (1, "crdtim: error: no conversation 'nope'\n")


def test_watch_process_prints_other_processes_changes_and_stops_quietly_on_ctrl_c(data):
    assert python_m_crdtim("--data", data, "init").returncode == 0
    watch = subprocess.Popen([sys.executable, "-m", "crdtim", "--data", str(data), "watch"],
                             env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "watching" in _readline(watch.stderr)  # it has read the head: safe to write
        assert python_m_crdtim("--data", data, "pin", "c1").returncode == 0
        assert _readline(watch.stdout).split("\t") == ["1", "c1", "pinned", "local\n"]
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=60)  # a guard against a hang, not a time limit
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0
    assert out == "" and err == ""


def _readline(stream, timeout: float = 15.0) -> str:
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        assert sel.select(timeout), "no output in time"
    return stream.readline()
