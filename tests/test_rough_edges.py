"""Regression tests for the rough edges of issue 14, one per bug, each named after it."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import trio

from crdtim.cli import main

ROOT = Path(__file__).resolve().parents[1]
GUARD_SECONDS = 10  # only a guard against a hang


@pytest.fixture(autouse=True)
def no_data_env(monkeypatch):
    monkeypatch.delenv("CRDTIM_DATA", raising=False)


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


# -- item 2: a second `crdtim serve` on one directory -----------------------------------------


def test_second_serve_on_one_directory_looped_on_duplicate_connections(cli, data, monkeypatch):
    """The first server holds serve.lock while it runs: a second one is refused at once,
    naming the directory and the pid; a one-shot write beside the server still works."""
    import crdtim._cli_serve as serve_module
    from crdtim._serve_lock import SERVE_LOCK_FILE, ServeLock, ServeLockedError

    seen = {}

    async def fake_serve(replica, listen, peers, metrics, config=None, http=None):
        # Inside the first server: a second one, and a one-shot write beside it.
        with pytest.raises(ServeLockedError) as refused:
            with ServeLock(replica.path):
                pass
        seen["refusal"] = str(refused.value)
        # Another process (LMDB allows one environment per directory per process).
        seen["write"] = subprocess.run(
            [sys.executable, "-m", "crdtim", "--data", str(data), "title", "c1",
             "written beside the server"], capture_output=True, text=True, timeout=30,
            env={**os.environ, "PYTHONPATH": str(ROOT)}).returncode

    monkeypatch.setattr(serve_module, "_serve", fake_serve)
    assert cli("serve", "--listen", "127.0.0.1:0")[0] == 0
    assert f"{data} is already being served by process {os.getpid()}" in seen["refusal"]
    assert seen["write"] == 0
    status, out, _ = cli("show", "c1")
    assert status == 0 and "written beside the server" in out
    assert (data / SERVE_LOCK_FILE).exists()

    with ServeLock(str(data)):  # a server is running: `crdtim serve` says so and exits 1
        monkeypatch.setattr(serve_module, "_serve", pytest.fail)
        status, out, err = cli("serve", "--listen", "127.0.0.1:0")
        assert status == 1 and out == "" and err.count("\n") == 1
        assert f"{data} is already being served by process {os.getpid()}" in err
    # Released when the server stops: the next one starts.
    monkeypatch.setattr(serve_module, "_serve", fake_serve)
    assert cli("serve", "--listen", "127.0.0.1:0")[0] == 0


# -- item 1: wait_caught_up hung; the missing count -------------------------------------------


def test_caught_up_waited_for_an_ack_of_entries_that_came_from_the_peer(open_replica):
    """B's write, applied at A, is an entry of A's log that B already has: A must count B
    as caught up without the empty DELTA covering it being acknowledged (B may leave
    before it acks: the hang of issue 14)."""
    from test_protocol_sim import handshaken

    a, b = open_replica("a"), open_replica("b")
    wire = handshaken(a, b)
    session_a = wire.sessions[0]
    assert session_a.caught_up
    b.set_title("c1", "from b")
    wire.sessions[1].pump()
    wire.collect()
    wire.deliver(1)  # B's DELTA reaches A: A's log grows by an entry from B
    assert a.get("c1").title == "from b" and a.head == 1
    assert session_a.caught_up  # before: False until A's empty DELTA came back acked
    assert a.missing_entries(b.id) == 0 and a.status()["peers"][b.id]["missing"] == 0
    a.set_title("c2", "from a")  # an entry B does lack
    assert not session_a.caught_up and a.missing_entries(b.id) == 1


async def test_wait_caught_up_hung_after_the_other_node_exited_first(open_replica):
    from nodes import FAST, GUARD, LOCAL, settle

    from crdtim.net import Node

    a, b = open_replica("a"), open_replica("b")
    a.set_title("c1", "from a")
    b.set_title("c2", "from b")
    async with Node(b, listen=(LOCAL, 0), config=FAST) as nb:
        async with Node(a, peers=[(LOCAL, nb.port)], config=FAST) as na:
            await settle((na, 1), (nb, 1))
        # A left; B's state is A's and A acknowledged all of B's log: B is caught up.
        with trio.fail_after(GUARD):
            await nb.wait_caught_up(1)
            await nb.wait_caught_up(1, timeout=GUARD)
        assert b.missing_entries(a.id) == 0
        b.set_title("c3", "written after A left")  # now A lacks one: a bounded wait fails
        with pytest.raises(TimeoutError, match=rf"{a.id} \(not connected\) lacks 1 log entr"):
            await nb.wait_caught_up(1, timeout=0.05)


async def test_wait_caught_up_on_a_peer_that_is_down_had_no_timeout(open_replica,
                                                                      autojump_clock):
    from crdtim.net import Node

    a = open_replica("a")
    a.set_title("c1", "x")
    with socket.socket() as closed:  # a port nobody listens on: the peer is down
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    async with Node(a, peers=[("127.0.0.1", port)]) as na:
        started = trio.current_time()
        with pytest.raises(TimeoutError, match=r"0 of 1 peer.*1 more peer.*never connected"):
            await na.wait_caught_up(timeout=30)
        assert trio.current_time() - started == pytest.approx(30)


# -- item 3: a URL as --peer, a node dialing itself, a peer that keeps failing -----------------


def test_peer_given_as_a_url_was_accepted_and_retried_forever(cli, data, monkeypatch):
    import crdtim._cli_serve as serve_module

    async def serve_at_once(*args, **kw):  # (before the fix, serve started: never block)
        pass

    monkeypatch.setattr(serve_module, "_serve", serve_at_once)
    status, out, err = cli("serve", "--listen", "127.0.0.1:0", "--peer", "http://127.0.0.1:17101")
    assert status == 2 and out == ""
    assert "is a URL: give HOST:PORT, without http://" in err
    assert not data.exists()  # refused before anything was created


def _net_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "crdtim.net" and r.levelno >= logging.WARNING]


async def test_node_dialing_its_own_address_logged_two_lines_per_retry_forever(open_replica,
                                                                               caplog):
    from nodes import FAST, LOCAL, wait_until

    from crdtim.net import Node

    caplog.set_level(logging.DEBUG, logger="crdtim.net")
    a = open_replica("a")
    async with Node(a, listen=(LOCAL, 0), config=FAST) as na:
        port = na.port
        na.add_peer((LOCAL, port))
        await wait_until(na, lambda: not na.peers)  # it gave that address up
        with trio.fail_after(GUARD_SECONDS):
            await na.wait_caught_up()  # no configured peer is left to wait for
    (warning,) = _net_warnings(caplog)
    assert f"127.0.0.1:{port} is this node itself" in warning and a.id in warning


async def test_a_peer_that_keeps_failing_was_logged_on_every_retry(open_replica, caplog):
    """A peer that accepts and refuses every time (here: another protocol version) is
    logged once, not once per retry."""
    from nodes import LOCAL

    from crdtim.net import Node, NodeConfig
    from crdtim.protocol import PROTOCOL_VERSION, Hello, encode_frame

    caplog.set_level(logging.DEBUG, logger="crdtim.net")
    a = open_replica("a")
    attempts = 0
    enough = trio.Event()

    async def refuse(stream: trio.SocketStream) -> None:
        nonlocal attempts
        async with stream:
            await stream.send_all(encode_frame(Hello(version=PROTOCOL_VERSION + 1,
                                                     replica_id="otherpeer")))
            with trio.move_on_after(GUARD_SECONDS):
                while await stream.receive_some(1 << 16):
                    pass
        attempts += 1
        if attempts == 5:
            enough.set()

    async with trio.open_nursery() as nursery:
        (listener,) = await nursery.start(partial(trio.serve_tcp, refuse, 0, host=LOCAL))
        port = listener.socket.getsockname()[1]
        config = NodeConfig(backoff_initial=0.001, backoff_max=0.002)
        async with Node(a, peers=[(LOCAL, port)], config=config):
            with trio.fail_after(GUARD_SECONDS):
                await enough.wait()
        nursery.cancel_scope.cancel()
    (warning,) = _net_warnings(caplog)
    assert f"peer 127.0.0.1:{port}: protocol version {PROTOCOL_VERSION + 1}" in warning


# -- item 4: subscribers hear of other processes' writes while a Node serves ------------------


async def test_subscribe_never_fired_for_writes_of_another_process(open_replica, tmp_path):
    from nodes import FAST

    from crdtim.net import Node

    a = open_replica("a")
    events = []
    foreign = trio.Event()

    def on_change(change) -> None:
        events.append(change)
        if change.conversation == "c-cli":
            foreign.set()

    a.subscribe(on_change)
    async with Node(a, config=FAST):
        a.set_title("c-own", "written here")  # delivered at commit, and only then
        await trio.run_process(
            [sys.executable, "-m", "crdtim", "--data", str(tmp_path / "a"), "title", "c-cli",
             "written by the CLI"], env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_stdout=True, capture_stderr=True)
        with trio.fail_after(GUARD_SECONDS):
            await foreign.wait()
    assert [(c.conversation, c.origin, c.peer) for c in events] == [
        ("c-own", "local", None), ("c-cli", "local", None)]
    assert "title" in events[1].fields


# -- item 6: watch on a served replica (trimmed log), and a since beyond the head --------------


def _trimmed_replica(path: Path) -> tuple[int, int]:
    from crdtim import Replica

    with Replica.open(path, durability="nosync") as r:
        for i in range(3):
            r.set_title(f"c{i}", f"title {i}")
        r.pin("c1")
        r.record_ack("somepeer", r.head)  # a peer acknowledged everything: the log is trimmed
        r.trim_log()
        r.set_title("c3", "after the trim")
        return r.log_floor, r.head


def test_watch_since_0_failed_on_any_replica_whose_peers_had_acked(cli, data, monkeypatch):
    import crdtim._cli_replica as replica_commands

    floor, head = _trimmed_replica(data)
    assert floor == 4 and head == 5
    followed = []
    monkeypatch.setattr(replica_commands, "watch_log",
                        lambda replica, after, emit, **kw: followed.append(after) or after)
    status, out, err = cli("watch", "--since", "0")
    assert status == 0 and followed == [floor]
    lines = out.splitlines()
    assert len(lines) == 4 and all(line.endswith("\tsnapshot") for line in lines)
    by_id = {line.split("\t")[1]: line for line in lines}
    assert "title=title 1,pinned=yes" in by_id["c1"] and "title=after the trim" in by_id["c3"]
    assert "were dropped" in err and "trimmed before they could be shown" not in err
    status, out, _ = cli("watch", "--since", "0", "--json")
    first = json.loads(out.splitlines()[0])
    assert first["snapshot"] is True and first["state"]["id"] == first["conversation"]
    followed.clear()
    assert cli("watch", "--since", str(floor))[:2] == (0, "") and followed == [floor]


def test_watch_since_beyond_the_head_was_accepted_silently(cli, data, monkeypatch):
    import crdtim._cli_replica as replica_commands

    _, head = _trimmed_replica(data)
    monkeypatch.setattr(replica_commands, "watch_log", pytest.fail)
    status, out, err = cli("watch", "--since", "99999")
    assert status == 2 and out == ""
    assert f"--since 99999 is beyond the log head {head}" in err and err.count("\n") == 1


# -- item 7: fields of another schema are skipped on read and carried intact -------------------


def test_a_schema_extension_field_made_ls_and_show_fail_for_the_whole_store(
        open_replica, tmp_path, capsys, monkeypatch, caplog):
    """A (app schema) - B (default schema) - C (app schema) in a line: C receives A's app
    fields through B, B's ls and show work, and B warns once per unknown tag."""
    import crdtim.codec._decode as decode_module
    from crdtim import DEFAULT_SCHEMA, Field, Flag, Lww, MaxReg, codec
    from crdtim.crdt import ConversationMap
    from test_protocol_sim import handshaken

    monkeypatch.setattr(decode_module, "_WARNED_TAGS", set(), raising=False)
    caplog.set_level(logging.WARNING, logger="crdtim.codec")
    app = DEFAULT_SCHEMA.extend(Field("nickname", 64, Lww, clocked=True),
                                Field("starred", 65, Flag), Field("stars", 66, MaxReg))
    a, b, c = open_replica("a", schema=app), open_replica("b"), open_replica("c", schema=app)

    def raise_stars(r, n: int) -> None:  # (the API has no mutator for an app's counter)
        r.apply_delta(codec.encode_map(ConversationMap.bottom(app).raise_to("c1", "stars", n)))
    a.set_title("c1", "family")
    a.set_register("c1", "nickname", "fam")
    a.enable("c1", "starred")
    raise_stars(a, 3)
    handshaken(a, b)
    handshaken(b, c)
    assert c.get("c1").extra == {"nickname": "fam", "starred": True, "stars": 3}
    assert c.get("c1").title == "family" and b.get("c1").title == "family"
    # Concurrent writes on both sides of B join at B as they do at A and C.
    c.set_register("c1", "nickname", "the family")
    c.disable("c1", "starred")
    raise_stars(a, 5)
    handshaken(a, b)
    handshaken(b, c)
    handshaken(a, b)
    assert a.get("c1").extra == c.get("c1").extra == {
        "nickname": "the family", "starred": False, "stars": 5}
    warnings = [r.getMessage() for r in caplog.records if r.name == "crdtim.codec"]
    assert len(warnings) == 3 and all("which this schema does not know" in w for w in warnings)
    assert {w.split("tag ")[1].split(",")[0] for w in warnings} == {"64", "65", "66"}
    b.close()
    for argv in (["ls"], ["show", "c1"], ["show", "c1", "--json"]):
        capsys.readouterr()
        assert main(["--data", str(tmp_path / "b"), *argv]) == 0, argv
        out, err = capsys.readouterr()
        assert "family" in out and "fam\"" not in out and "unknown field tag" not in err
