"""The fault harness (tests/faults/, specs/faults.md), in a short version for `make test`.

- the clock offset that the harness gives each process (CRDTIM_CLOCK_OFFSET_MS) and the drift
  bound `serve` can be given (--max-clock-drift);
- the checker's rules, from the intents of the calls, and that it flags a lost write, a
  divergence, a wrong value and an acknowledged call that silently did nothing, and accepts
  either outcome of a call whose process was killed in the middle of it;
- a few hundred seeded simulation runs, with every kind of fault actually injected (a crash
  inside a write transaction too), and a seed that replays exactly;
- a peer an hour ahead: its future values held until time catches up, losing nothing;
- a refused call (StoreError) that left a trace, and ops at risk from a damaged replica;
- a short run of real `crdtim serve` processes behind the fault-injecting proxy, with kill -9
  of servers and of the workload processes that write, a full disk and a damaged data file
  (repaired as an operator would).
`make faults` runs the long version (10,000 simulation runs, minutes of real processes).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import trio

from crdtim import cli
from crdtim.crdt import DEFAULT_MAX_DRIFT_MS, ConversationMap, Flag, Stamp
from crdtim.crdt.message import MessageState
from crdtim.errors import StoreError
from crdtim.replica._message_index import MessageIndex
from tests.faults import ops as fault_ops
from tests.faults.checker import AckedOp, Intent, check, expected_view, plain, reached
from tests.faults.cluster import ClusterConfig, run_cluster
from tests.faults.sim import SESSION_CONFIG, SimConfig, Wire, run_many, run_one
from crdtim.protocol import RemoteProtocolError, SyncSession
from crdtim.replica import CLOCK_OFFSET_ENV, InvalidArgument, Replica
from crdtim.store import Store

HOUR_MS = 3_600_000


# -- the clock offset and the drift bound ------------------------------------------------------


def test_clock_offset_env_moves_the_wall_clock_of_every_write(tmp_path, monkeypatch):
    monkeypatch.setenv(CLOCK_OFFSET_ENV, str(-HOUR_MS))
    with Replica.open(tmp_path / "r", durability="nosync") as r:
        before = time.time_ns() // 1_000_000
        r.set_title("c", "t")
        r.message_arrived("c", 1, "m")
        after = time.time_ns() // 1_000_000
        stamp = r.state().fields("c")["title"].stamp
        assert before - HOUR_MS <= stamp.wall <= after - HOUR_MS
        assert before - HOUR_MS <= r.get("c").last_at <= after - HOUR_MS


@pytest.mark.parametrize("value", ["soon", "1.5", str(8 * 24 * HOUR_MS), "--3"])
def test_a_bad_clock_offset_is_refused_at_open_naming_the_variable(tmp_path, monkeypatch, value):
    monkeypatch.setenv(CLOCK_OFFSET_ENV, value)
    with pytest.raises(InvalidArgument, match=CLOCK_OFFSET_ENV):
        Replica.open(tmp_path / "r")
    assert not (tmp_path / "r").exists()  # refused before anything was made


def test_a_bad_clock_offset_is_a_usage_error_on_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(CLOCK_OFFSET_ENV, "an hour")
    assert cli.main(["--data", str(tmp_path / "r"), "init"]) == 2
    err = capsys.readouterr().err
    assert CLOCK_OFFSET_ENV in err and "Traceback" not in err


def test_serve_takes_a_clock_drift_bound_and_refuses_a_bad_one(capsys):
    parser, _ = cli.build_parser()
    args = parser.parse_args(["serve", "--listen", ":0", "--max-clock-drift", "7500000"])
    assert args.max_clock_drift == 7_500_000
    assert cli.main(["serve", "--listen", ":0", "--max-clock-drift", "-1"]) == 2
    assert "max-clock-drift" in capsys.readouterr().err


# -- the checker ---------------------------------------------------------------------------------


def _acked(r: Replica, kind: str, cid: str, flag: str = "", text: str = "", seq: int = 0,
           at: int = 0) -> AckedOp:
    """Make one call on `r` and record it as both harnesses do: intent, log entry, defect."""
    op = fault_ops.perform(r, Intent(kind, cid, flag, text, seq, at), exclusive=True)
    assert op.defect is None, op.defect
    return op


def _sync(x: Replica, y: Replica) -> None:
    y.apply_delta(x.delta_since(0))
    x.apply_delta(y.delta_since(0))


def test_the_checker_accepts_converged_replicas_and_follows_the_rules(open_replica):
    a, b = open_replica("a"), open_replica("b")
    ops = [_acked(a, "enable", "c", "pinned"), _acked(a, "enable", "c", "muted")]
    _sync(a, b)
    ops.append(_acked(b, "disable", "c", "pinned"))  # saw the pin: removes it
    ops.append(_acked(a, "enable", "c", "muted"))  # a new mute b has not seen...
    ops.append(_acked(b, "disable", "c", "muted"))  # ...so it wins this unmute
    ops.append(_acked(a, "title", "c", text="first"))
    ops.append(_acked(b, "title", "c", text="second"))
    ops.append(_acked(a, "arrive", "c", text="hi", seq=7, at=5))
    ops.append(_acked(b, "arrive", "c", text="older", seq=2, at=4))
    _sync(a, b)  # b reads message 3, so it must have it (specs/crdt.md §6)
    ops.append(_acked(b, "read", "c", seq=3))
    ops.append(_acked(a, "read", "c", seq=1))  # below the marker: logs nothing, still acked
    _sync(a, b)
    want = expected_view("c", ops)
    titles = sorted((op.delta.fields("c")["title"].stamp, op.intent.text)
                    for op in ops if op.kind == "title")
    assert (want["pinned"], want["muted"], want["title"]) == (False, True, titles[-1][1])
    assert (want["last_seq"], want["read_seq"], want["unread"]) == (7, 3, 4)
    assert (want["last_preview"], want["last_at"]) == ("hi", 5)
    verdict = check({"a": a.state(), "b": b.state()}, ops)
    assert verdict.ok, verdict.summary()
    got = a.get("c")
    assert {k: getattr(got, k) for k in ("title", "pinned", "muted", "last_seq", "read_seq",
                                         "unread", "last_preview", "last_at")} == {
        k: v for k, v in want.items() if not k.endswith("_stamp")}


def test_the_checker_flags_a_lost_write_and_a_divergence(open_replica):
    a, b = open_replica("a"), open_replica("b")
    ops = [_acked(a, "title", "c", text="kept"), _acked(b, "arrive", "d", seq=4, at=1)]
    _sync(a, b)
    ops.append(_acked(a, "enable", "c", "pinned"))  # never reaches b: lost there
    verdict = check({"a": a.state(), "b": b.state()}, ops)
    assert not verdict.ok
    assert verdict.lost_ops == 1
    assert "enable" in verdict.lost[0] and "missing at b" in verdict.lost[0]
    assert verdict.diverged and "c" in verdict.diverged[0]
    assert any("pinned=False (expected True)" in w for w in verdict.wrong)


def test_the_checker_flags_a_value_no_acknowledged_write_explains(open_replica):
    # Every acknowledged op is there and the replicas agree, but the title is one nobody
    # acknowledged writing (say, a write resurrected from a torn log entry): wrong.
    a = open_replica("a")
    ops = [_acked(a, "title", "c", text="acked")]
    stamp = a.state().fields("c")["title"].stamp
    forged = a.state().join(ConversationMap.bottom().set_title(
        "c", "never acked", Stamp(stamp.wall + 1, 0, a.id)))
    verdict = check({"a": forged, "b": forged}, ops)
    assert not verdict.diverged and not verdict.lost
    assert len(verdict.wrong) == 2 and all("title='never acked' (expected 'acked')" in w
                                           for w in verdict.wrong)


@pytest.mark.parametrize("kind,flag,seq", [("title", "", 0), ("enable", "pinned", 0),
                                           ("disable", "muted", 0), ("arrive", "", 9),
                                           ("read", "", 5)])
def test_the_checker_flags_an_acknowledged_call_that_did_nothing(open_replica, monkeypatch,
                                                                 kind, flag, seq):
    # The call returns (acknowledged) but changes nothing and logs nothing: judged from its
    # intent, that is a lost write at the replica that acknowledged it, and a wrong value.
    a = open_replica("a")
    a.mute("c")
    ops = [_acked(a, "enable", "c", "muted")]
    name = {"title": "set_title", "enable": "enable", "disable": "disable",
            "arrive": "message_arrived", "read": "mark_read"}[kind]
    monkeypatch.setattr(Replica, name, lambda self, *args, **kw: None)
    op = fault_ops.perform(a, Intent(kind, "c", flag, "x", seq, 1), exclusive=True)
    assert op.defect is not None
    verdict = check({"a": a.state()}, [*ops, op])
    assert not verdict.ok and verdict.lost_ops == 1 and "did nothing" in verdict.lost[0]


def test_a_call_killed_in_progress_may_or_may_not_take_effect(open_replica):
    a, b = open_replica("a"), open_replica("b")
    ops = [_acked(a, "title", "c", text="acked"), _acked(a, "arrive", "c", text="m", seq=3,
                                                           at=10), _acked(a, "read", "c", seq=1)]
    _sync(a, b)
    killed = [Intent("title", "c", text="killed"), Intent("read", "c", seq=2),
              Intent("enable", "c", "pinned"), Intent("arrive", "c", text="k", seq=9, at=11)]
    # The killed calls left nothing: fine.
    assert check({"a": a.state(), "b": b.state()}, ops, [(a.id, i) for i in killed]).ok
    # ...or they all took effect before the process died: fine too.
    for i in killed:
        fault_ops.call(a, i)
    _sync(a, b)
    assert check({"a": a.state(), "b": b.state()}, ops, [(a.id, i) for i in killed]).ok
    # Not declared as in progress, the same effects are values nobody acknowledged...
    verdict = check({"a": a.state(), "b": b.state()}, ops)
    assert not verdict.ok and len(verdict.wrong) == 2
    # ...and the acknowledged ops are still required: dropping one is caught.
    verdict = check({"a": a.state(), "b": b.state()},
                    [*ops, _acked(b, "arrive", "d", seq=4, at=1)], [(a.id, i) for i in killed])
    assert verdict.lost_ops == 1 and "missing at a" in verdict.lost[0]


def test_an_op_at_risk_from_a_damaged_replica_may_be_lost_and_nothing_else(open_replica):
    # b's file was damaged after its pin and title reached a but before its arrival did: the
    # repair may lose the arrival (at risk), never what a holds (reached), nor a's writes.
    a, b = open_replica("a"), open_replica("b")
    reached_a = [_acked(b, "enable", "c", "pinned"), _acked(b, "title", "c", text="t")]
    _sync(a, b)
    unreached = _acked(b, "arrive", "c", text="late", seq=5, at=9)
    assert all(reached(op, plain(a.state().fields("c"))) for op in reached_a)
    assert not reached(unreached, plain(a.state().fields("c")))
    mine = _acked(a, "read", "c", seq=0)
    ops = [*reached_a, unreached, mine]
    lost_there = {"a": a.state(), "b": a.state()}  # b refilled from a: the arrival is gone
    assert not check(lost_there, ops).ok
    assert check(lost_there, ops, at_risk=[unreached]).ok
    verdict = check(lost_there, ops, at_risk=[unreached, reached_a[0]])  # over-relaxed...
    assert verdict.ok  # ...passes: so the harness must pass only what reached no replica
    _sync(a, b)  # the arrival survived after all: fine too
    assert check({"a": a.state(), "b": b.state()}, ops, at_risk=[unreached]).ok


def test_reached_tells_a_message_call_held_elsewhere_from_one_that_is_not(open_replica):
    a, b = open_replica("a"), open_replica("b")
    post = fault_ops.perform(b, Intent("post", "c", text="hi", mid="m1", role="user"),
                             exclusive=True)
    _sync(a, b)
    append = fault_ops.perform(b, Intent("append", "c", text="more", mid="m1"), exclusive=True)
    held = plain(a.state().fields("c"))
    assert reached(post, held) and not reached(append, held)
    _sync(a, b)
    assert reached(append, plain(a.state().fields("c")))


# faults.md §1: a refused call is not acknowledged and must have committed nothing.
def test_a_refused_call_must_leave_no_trace(open_replica, monkeypatch):
    a = open_replica("a")
    ops = [_acked(a, "title", "c", text="kept")]
    refused = [(a.id, Intent("title", "c", text="refused")),
               (a.id, Intent("post", "c", text="r", mid="m9", role="user"))]
    assert check({"a": a.state()}, ops, refused=refused).ok
    monkeypatch.setattr(Replica, "set_title", lambda *args: (_ for _ in ()).throw(
        StoreError("no space left on device")))
    with pytest.raises(fault_ops.Refused):
        fault_ops.perform(a, refused[0][1], exclusive=True)
    monkeypatch.undo()
    fault_ops.call(a, refused[1][1])  # a call reported refused that committed after all
    verdict = check({"a": a.state()}, ops, refused=refused)
    assert not verdict.ok and "refused at" in verdict.wrong[0] and "m9" in verdict.wrong[0]


def test_an_op_whose_log_entry_was_never_read_is_unchecked_and_fails(open_replica):
    a = open_replica("a")
    op = _acked(a, "title", "c", text="t")
    trimmed = AckedOp(op.replica, op.intent, None, None, unrecorded=True)
    verdict = check({"a": a.state()}, [trimmed])
    assert not verdict.ok and verdict.unchecked and not verdict.lost


def test_acked_ops_survive_their_json_round_trip(open_replica):
    a = open_replica("a")
    for op in (_acked(a, "enable", "c", "muted"), _acked(a, "read", "c", seq=0),
               _acked(a, "arrive", "c", text="é", seq=2, at=3)):
        assert AckedOp.from_json(op.to_json()) == op


# -- the simulation ------------------------------------------------------------------------------


def test_short_simulation_converges_with_every_fault_injected():
    summary = run_many(150, first_seed=0)
    assert summary.failing_seeds == [], summary.first_failure
    assert summary.runs == 150 and summary.acked_ops > 500
    # A harness that injected nothing would pass vacuously.
    for kind in ("crash", "crash_in_write", "drop", "partition", "split_read", "idle_timeout",
                 "clock_held", "clock_step", "state_transfer", "reconciliation"):
        assert summary.faults[kind] > 0, kind
    for kind in ("post", "regenerate", "append", "edit", "switch", "delete_message", "title",
                 "arrive"):
        assert summary.kinds[kind] > 0, kind


def test_the_simulation_flags_an_ack_for_more_than_the_peer_applied(monkeypatch):
    # A broken acknowledgement (one entry too far) must fail runs, by the safety check made
    # after every step, before any trim can turn it into a lost write.
    record_ack = Replica.record_ack
    monkeypatch.setattr(Replica, "record_ack",
                        lambda self, peer, seq: record_ack(self, peer, seq + 1))
    summary = run_many(20, first_seed=0)
    assert summary.errors > 0 and "holds ack" in summary.first_failure


@pytest.mark.parametrize("broken", ["mark_read", "pin"])
def test_the_simulation_flags_a_call_that_silently_does_nothing(monkeypatch, broken):
    # The reviewer's mutation: the call returns (so the op is acknowledged) but does nothing.
    if broken == "mark_read":
        monkeypatch.setattr(Replica, "mark_read", lambda self, cid, seq: None)
    else:
        enable = Replica.enable
        monkeypatch.setattr(Replica, "enable", lambda self, cid, flag: None
                            if flag == "pinned" else enable(self, cid, flag))
    # The conversation operations alone, as when these thresholds were set (the message
    # operations have their own mutations below).
    summary = run_many(20, first_seed=0, config=SimConfig(message_share=0.0))
    # A read lands only on a conversation with arrivals at that replica (mark_read above
    # last_seq is refused, specs/crdt.md §6), so fewer runs hold a read that changes anything.
    assert summary.lost_writes > 0 and len(summary.failing_seeds) > (
        5 if broken == "mark_read" else 10)


# faults.md §3 (crash_in_write): after the restart the head and state must be those before
# the call.
def test_the_simulation_flags_a_write_that_a_crash_leaves_half_done(monkeypatch):
    # A store whose transaction is not all-or-nothing: the work of a write that dies before
    # its commit is committed anyway. The crash inside a write must show it.
    write = Store.write

    def leaky_write(self, fn):
        died = []

        def body(t):
            try:
                return fn(t)
            except Exception as e:
                died.append(e)
        result = write(self, body)
        if died:
            raise died[0]
        return result

    monkeypatch.setattr(Store, "write", leaky_write)
    summary = run_many(20, first_seed=0)
    assert summary.errors > 0 and "left a trace" in summary.first_failure


def test_the_simulation_flags_a_join_that_drops_an_enable(monkeypatch):
    # A flag join that forgets the other side's unseen dots: replicas end up disagreeing.
    def one_sided_join(self, other):
        if other.is_bottom() or self.is_bottom():
            return other if self.is_bottom() else self
        dots = (self.dots & other.dots) | {d for d in self.dots if not other.context.contains(d)}
        return Flag(frozenset(dots), self.context.join(other.context))

    monkeypatch.setattr(Flag, "join", one_sided_join)
    summary = run_many(40, first_seed=0)
    assert summary.diverged_runs > 0 and summary.wrong_values > 0


# -- message histories under faults (tests/faults/messages.py) -----------------------------------


def test_the_simulation_flags_an_append_that_silently_does_nothing(monkeypatch):
    monkeypatch.setattr(Replica, "append", lambda self, cid, mid, text: None)
    summary = run_many(20, first_seed=0)
    assert summary.lost_writes > 0 and "append" in summary.first_failure


def test_the_simulation_flags_a_text_that_shows_streamed_pieces_out_of_order(monkeypatch):
    # Every replica agrees, and wrongly: the pages show the appends newest first.
    def reversed_text(self):
        return self.base.value + "".join(a.text for a in self.current_appends()[::-1])

    monkeypatch.setattr(MessageState, "text", property(reversed_text))
    summary = run_many(30, first_seed=0)
    assert summary.wrong_values > 0 and "pages text" in summary.first_failure


def test_the_simulation_flags_a_delete_that_does_not_travel(monkeypatch):
    join = MessageState.join

    def forgetful(self, other):
        if other.deleted and not self.deleted and not self.is_bottom():
            return self  # a delete from elsewhere is ignored
        return join(self, other)

    monkeypatch.setattr(MessageState, "join", forgetful)
    summary = run_many(60, first_seed=0)
    assert summary.lost_writes > 0 and "deleted" in summary.first_failure


def test_the_simulation_flags_history_pages_that_disagree_with_the_visible_path(monkeypatch):
    # An index that never marks a message visible: the pages miss what the state shows.
    monkeypatch.setattr(MessageIndex, "_refresh", lambda self, seeds: None)
    summary = run_many(20, first_seed=0)
    assert summary.wrong_values > 0 and "visible path" in summary.first_failure


def test_a_seed_replays_exactly():
    first, again = run_one(4), run_one(4)
    assert first.ok and again.ok
    assert first.ops == again.ops and first.faults == again.faults
    assert first.final_state == again.final_state
    assert first.converge_virtual_ms == again.converge_virtual_ms
    assert first.digest() == again.digest() != run_one(5).digest()
    # ...and in another process, whose string hashing (set order) differs.
    for hash_seed in ("1", "2"):
        out = subprocess.run(
            [sys.executable, "-m", "tests.faults", "--replay", "4"], capture_output=True,
            text=True, env={**os.environ, "PYTHONHASHSEED": hash_seed}, check=True).stdout
        assert f"digest {first.digest()}" in out


def _exchange(a: Replica, b: Replica) -> list[str]:
    """Connect a and b, run to quiescence; the reasons of any refusals."""
    wire = Wire((0, 1), (SyncSession(a, SESSION_CONFIG), SyncSession(b, SESSION_CONFIG)))
    for s in wire.sessions:
        s.initiate(0.0)
    wire.collect(0.0)
    refused = []
    while not wire.quiet() or any(s.pump() for s in wire.sessions):
        wire.collect(0.0)
        for k in (0, 1):
            if wire.queues[k]:
                data = bytes(wire.queues[k])
                wire.queues[k].clear()
                try:
                    wire.sessions[1 - k].receive_data(data, 0.0)
                except RemoteProtocolError as e:
                    refused.append(e.reason)
                    return refused
                wire.collect(0.0)
    return refused


def test_a_peer_an_hour_ahead_has_its_future_values_held_until_time_catches_up(tmp_path):
    # Was: its whole delta refused until then, stalling everything after it (specs/faults.md
    # §5); now only the value stamped past the bound waits, durably, and nothing is lost.
    true_ms = [1_700_000_000_000]
    fast = Replica.open(tmp_path / "fast", durability="nosync",
                        now_ms=lambda: true_ms[0] + HOUR_MS)
    slow = Replica.open(tmp_path / "slow", durability="nosync", now_ms=lambda: true_ms[0])
    try:
        fast.set_title("c", "from the fast clock")
        fast.pin("c")
        slow.set_title("c", "from the slow clock")
        assert _exchange(fast, slow) == []
        assert slow.get("c").title == "from the slow clock" and slow.get("c").pinned
        assert slow.status()["pending"]["count"] == 1
        true_ms[0] += HOUR_MS - DEFAULT_MAX_DRIFT_MS  # the fast stamp is now just in bounds
        slow.housekeeping()
        assert _exchange(fast, slow) == []
        assert fast.state() == slow.state()
        assert slow.get("c").title == "from the fast clock" and slow.get("c").pinned
    finally:
        fast.close()
        slow.close()


# -- real processes --------------------------------------------------------------------------------


# faults.md §4: every op a killed workload acknowledged must be there; a server restarted on
# a full disk exits with one error line (no traceback, server_tracebacks == 0).
def test_real_servers_converge_after_kill_9_cuts_partitions_clock_skew_and_disk_faults():
    config = ClusterConfig(servers=3, seconds=10.0, round_seconds=5.0, fault_gap=(0.1, 0.6),
                           converge_deadline=60.0, damage_share=1.0, disk_full_weight=5,
                           disk_mib=64)  # small: a fill writes what is free
    report = trio.run(run_cluster, 7, config)
    assert report.ok, report.to_json()
    # A disk filled and emptied; each heal damaged the killed server's file first (a value,
    # then LMDB's structure), where live records are, and the operator's steps (verify,
    # repair or replace, before the server starts) found both; no server logged a traceback.
    assert report.faults["disk_full"] >= 1 and report.faults["damaged_file"] == 2
    assert report.faults["damage_value"] == 1 and report.faults["damage_structure"] == 1
    assert report.damages["tried"] == report.damages["hit_live_data"] == 2, report.damage_notes
    assert report.damages["detected"] == 2 and report.damage["no_damage_seen"] == 0
    assert report.server_tracebacks == 0
    assert report.rounds == 2 and len(report.converge_seconds) == 2
    assert report.acked_ops > 50 and report.faults["kill9_server"] >= 2
    assert report.kinds["post"] > 0 and report.kinds["append"] > 0  # histories too
    assert report.faults["kill9_workload"] >= 1
    assert report.faults["partition"] >= 2
    assert max(abs(o) for o in report.offsets_ms) > 5 * 60_000  # beyond the default bound
