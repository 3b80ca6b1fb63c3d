"""The durable replica (LMDB) against a plain-dict model, and its storage guarantees one by one.

`ReplicaMachine` drives one or two real replicas (durability="nosync", in a temporary
directory) through local ops, batches, batches that raise, close-and-reopen with the wall
clock set back, log trims and delta exchanges in either direction, and after every step
compares get()/list()/head/log floor with a model made of plain dicts, sets and tuples:

    title         the largest (stamp, text) known; a local write's stamp is read back from the
                  replica and must beat every stamp the replica held (the HLC promise)
    pinned/muted  the set of enable events known and the set of them that a later enable or a
                  disable covered (observed-remove: concurrent pin and unpin leave it pinned)
    last/read seq the largest sequence seen / read
    last message  the largest (time, seq, replica id, preview)

Because every state change is logged and `delta_since(s)` returns every entry after `s` (or
the whole state below the log floor), a receiver that has had the sender's log up to `s`
knows, after applying `delta_since(s)`, all the sender knew: the model merges the sender's
dicts into the receiver's, and predicts exactly which ids change and whether head moves.

The named tests below pin down one guarantee each (specs/storage.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import unittest.mock
from pathlib import Path

import lmdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

import crdtim.store
import strategies
from crdtim import (
    Change,
    ClockDriftError,
    Conversation,
    CorruptStoreError,
    DecodeError,
    FormatVersionError,
    InvalidArgument,
    NotAReplicaError,
    Replica,
    ReplicaClosedError,
    StoreError,
)
from crdtim import codec
from crdtim.crdt import ConversationMap, Lww, MaxReg, Stamp
from crdtim.store import Store

HERE = Path(__file__).resolve().parent
T0 = 1_700_000_000_000  # a plausible wall clock, in ms
MINUTE = 60_000

# -- the model ------------------------------------------------------------------------------

FLAGS = ("pinned", "muted")


def blank() -> dict:
    return {
        "title": None,  # ((wall, counter, replica), text)
        "enables": {f: set() for f in FLAGS},  # enable events known
        "covered": {f: set() for f in FLAGS},  # ... of which a later pin or an unpin covered
        "last_seq": 0,
        "read_seq": 0,
        "message": None,  # (at, seq, replica, preview)
    }


def flag_on(conv: dict, flag: str) -> bool:
    return bool(conv["enables"][flag] - conv["covered"][flag])


def exists(conv: dict) -> bool:
    return bool(
        conv["title"] is not None or any(conv["enables"].values()) or conv["message"] is not None
        or conv["last_seq"] or conv["read_seq"]
    )


def expected_view(cid: str, conv: dict) -> Conversation:
    msg = conv["message"]
    return Conversation(
        id=cid,
        title="" if conv["title"] is None else conv["title"][1],
        pinned=flag_on(conv, "pinned"),
        muted=flag_on(conv, "muted"),
        unread=max(0, conv["last_seq"] - conv["read_seq"]),
        last_seq=conv["last_seq"],
        read_seq=conv["read_seq"],
        last_preview="" if msg is None else msg[3],
        last_at=0 if msg is None else msg[0],
    )


def list_order(model: dict[str, dict]) -> list[str]:
    """Pinned first, then newest message first, then by id (str order is UTF-8 byte order)."""
    live = [(cid, c) for cid, c in model.items() if exists(c)]
    live.sort(key=lambda x: (not flag_on(x[1], "pinned"), -expected_view(*x).last_at, x[0]))
    return [cid for cid, _ in live]


def merge_conv(dst: dict, src: dict) -> bool:
    """dst := dst joined with src; True if dst changed."""
    changed = False
    if src["title"] is not None and (dst["title"] is None or src["title"] > dst["title"]):
        dst["title"] = src["title"]
        changed = True
    for f in FLAGS:
        for part in ("enables", "covered"):
            if not src[part][f] <= dst[part][f]:
                dst[part][f] |= src[part][f]
                changed = True
    for reg in ("last_seq", "read_seq"):
        if src[reg] > dst[reg]:
            dst[reg] = src[reg]
            changed = True
    if src["message"] is not None and (dst["message"] is None or src["message"] > dst["message"]):
        dst["message"] = src["message"]
        changed = True
    return changed


# -- strategies -----------------------------------------------------------------------------

CIDS = ("a", "b", "c", "é", "日本語", "z" * 40)
cids = st.sampled_from(CIDS)
texts = st.text(max_size=6)
seqs = st.one_of(st.integers(0, 12), st.just(codec.MAX_INT))
ats = st.one_of(st.integers(0, 3), st.integers(0, T0))  # message times up to "now"

ops = st.one_of(
    st.tuples(st.just("title"), cids, texts),
    st.tuples(st.sampled_from(["pin", "unpin", "mute", "unmute"]), cids),
    st.tuples(st.just("arrive"), cids, seqs, texts, ats),
    st.tuples(st.just("read"), cids, seqs),
)


def do(r: Replica, op: tuple) -> None:
    kind, cid, *args = op
    if kind == "title":
        r.set_title(cid, *args)
    elif kind == "arrive":
        seq, preview, at = args
        r.message_arrived(cid, seq, preview=preview, at=at)
    elif kind == "read":
        r.mark_read(cid, *args)
    else:
        getattr(r, kind)(cid)


class Boom(Exception):
    pass


RETENTION = 6  # small, so that trims by retention happen within a run


class ReplicaMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = tempfile.mkdtemp(prefix="crdtim-machine-")
        self.time = T0
        self.replicas: list[Replica] = []
        self.offsets: list[int] = []  # per replica: how far its wall clock is set back
        self.models: list[dict[str, dict]] = []
        self.heads: list[int] = []
        self.floors: list[int] = []
        self.acks: list[dict[str, int]] = []
        self.sent: dict[tuple[int, int], int] = {}  # (src, dst) -> src's head last shipped
        self.events = 0

    # -- set-up and helpers -------------------------------------------------------------------

    @initialize(n=st.integers(1, 2))
    def start(self, n: int) -> None:
        for i in range(n):
            self.offsets.append(0)
            self.replicas.append(self.open(i))
            self.models.append({cid: blank() for cid in CIDS})
            self.heads.append(0)
            self.floors.append(0)
            self.acks.append({})
        ids = {r.id for r in self.replicas}
        assert len(ids) == n

    @property
    def n(self) -> int:
        return len(self.replicas)

    def open(self, i: int) -> Replica:
        return Replica.open(
            os.path.join(self.root, f"r{i}"), durability="nosync",
            now_ms=lambda i=i: self.time + self.offsets[i], log_retention=RETENTION,
        )

    def now(self, i: int) -> int:
        return self.time + self.offsets[i]

    def max_title_clock(self, i: int) -> tuple[int, int]:
        stamps = [c["title"][0][:2] for c in self.models[i].values() if c["title"] is not None]
        return max(stamps, default=(-1, -1))

    def model_op(self, i: int, op: tuple) -> bool:
        """Apply a local op to replica i's model; True if it changes the state."""
        kind, cid, *args = op
        conv = self.models[i][cid]
        rid = self.replicas[i].id
        if kind == "title":
            conv["title"] = (None, args[0])  # stamp filled in after the commit
            return True
        if kind in ("pin", "mute"):
            flag = "pinned" if kind == "pin" else "muted"
            self.events += 1
            conv["covered"][flag] |= conv["enables"][flag]
            conv["enables"][flag].add((rid, self.events))
            return True
        if kind in ("unpin", "unmute"):
            flag = "pinned" if kind == "unpin" else "muted"
            if not flag_on(conv, flag):
                return False
            conv["covered"][flag] |= conv["enables"][flag]
            return True
        if kind == "read":
            if args[0] <= conv["read_seq"]:
                return False
            conv["read_seq"] = args[0]
            return True
        seq, preview, at = args
        changed = False
        if seq > conv["last_seq"]:
            conv["last_seq"] = seq
            changed = True
        msg = (at, seq, rid, preview)
        if conv["message"] is None or msg > conv["message"]:
            conv["message"] = msg
            changed = True
        return changed

    def reads_unseen(self, i: int, batch: list[tuple]) -> bool:
        """Whether an op of the batch reads past the last_seq it would see."""
        last = {cid: conv["last_seq"] for cid, conv in self.models[i].items()}
        for kind, cid, *args in batch:
            if kind == "arrive":
                last[cid] = max(last[cid], args[0])
            elif kind == "read" and args[0] > last[cid]:
                return True
        return False

    def local(self, i: int, batch: list[tuple]) -> None:
        """Run ops on replica i (several: in one batch) and check them against the model."""
        self.time += 1000
        r = self.replicas[i]
        clock_before = self.max_title_clock(i)
        head_before = r.head
        if self.reads_unseen(i, batch):
            # mark_read above the conversation's last_seq is refused, and with it the whole
            # batch (specs/crdt.md §6): nothing changes.
            state_before = r.state()
            with pytest.raises(InvalidArgument, match="record the message's arrival first"):
                with r.batch():
                    for op in batch:
                        do(r, op)
            assert r.head == head_before and r.state() == state_before
            return
        if len(batch) == 1:
            do(r, batch[0])
        else:
            with r.batch():
                for op in batch:
                    do(r, op)
        changed = False
        titled = {}
        for op in batch:
            changed |= self.model_op(i, op)
            if op[0] == "title":
                titled[op[1]] = op[2]
        state = r.state()
        for cid, text in titled.items():
            stamp = state.fields(cid)["title"].stamp
            # The hybrid clock: later than anything this replica has seen, and not behind
            # its wall clock -- even after a restart with the wall clock set back.
            assert stamp.replica == r.id
            assert stamp[:2] > clock_before
            assert stamp.wall >= self.now(i)
            self.models[i][cid]["title"] = (tuple(stamp), text)
        if changed:
            self.heads[i] += 1
        assert r.head == head_before + changed  # one log entry per commit that changed anything

    # -- rules --------------------------------------------------------------------------------

    @rule(i=st.integers(0, 1), cid=cids, text=texts)
    def set_title(self, i, cid, text):
        self.local(i % self.n, [("title", cid, text)])

    @rule(i=st.integers(0, 1), kind=st.sampled_from(["pin", "unpin", "mute", "unmute"]), cid=cids)
    def flag(self, i, kind, cid):
        self.local(i % self.n, [(kind, cid)])

    @rule(i=st.integers(0, 1), cid=cids, seq=seqs, preview=texts, at=ats)
    def message_arrived(self, i, cid, seq, preview, at):
        self.local(i % self.n, [("arrive", cid, seq, preview, at)])

    @rule(i=st.integers(0, 1), cid=cids, seq=seqs)
    def mark_read(self, i, cid, seq):
        self.local(i % self.n, [("read", cid, seq)])

    @rule(i=st.integers(0, 1), batch=st.lists(ops, min_size=2, max_size=6))
    def batch(self, i, batch):
        self.local(i % self.n, batch)

    @rule(i=st.integers(0, 1), batch=st.lists(ops, min_size=1, max_size=6), data=st.data())
    def batch_that_raises(self, i, batch, data):
        r = self.replicas[i % self.n]
        stop = data.draw(st.integers(0, len(batch)), label="raise before op")
        head, state, clock = r.head, r.state(), r.status()["clock"]
        with pytest.raises(Boom):
            with r.batch():
                for op in batch[:stop]:
                    do(r, op)
                raise Boom
        assert (r.head, r.state(), r.status()["clock"]) == (head, state, clock)

    @rule(i=st.integers(0, 1), back=st.one_of(st.just(0), st.integers(1, 2 * MINUTE)))
    def close_and_reopen(self, i, back):
        i %= self.n
        r = self.replicas[i]
        before = (r.id, r.head, r.log_floor, r.state(), r.peers())
        clock = r.status()["clock"]
        r.close()
        with pytest.raises(ReplicaClosedError):
            r.head
        self.offsets[i] = -back  # the wall clock moved backwards while we were down
        self.replicas[i] = self.open(i)
        r = self.replicas[i]
        assert (r.id, r.head, r.log_floor, r.state(), r.peers()) == before
        # The reopened clock continues from its lease (specs/storage.md §3a): never back.
        assert r.status()["clock"] >= clock

    @precondition(lambda self: self.n == 2)
    @rule(src=st.integers(0, 1), full=st.booleans(), ack=st.booleans())
    def exchange(self, src, full, ack):
        self.ship(src, 1 - src, full, ack)

    def ship(self, src: int, dst: int, full: bool = False, ack: bool = True) -> None:
        self.time += 1000
        a, b = self.replicas[src], self.replicas[dst]
        since = 0 if full else self.sent.get((src, dst), 0)
        head = a.head
        data = a.delta_since(since)
        changed = b.apply_delta(data, origin=a.id)
        expected = {
            cid for cid, conv in self.models[src].items()
            if exists(conv) and merge_conv(self.models[dst][cid], conv)
        }
        assert changed == expected
        if changed:
            self.heads[dst] += 1
        self.sent[(src, dst)] = head
        if ack:
            a.record_ack(b.id, head)
            self.acks[src][b.id] = max(head, self.acks[src].get(b.id, 0))

    @rule(i=st.integers(0, 1))
    def trim_log(self, i):
        i %= self.n
        r = self.replicas[i]
        head, old = self.heads[i], self.floors[i]
        acked = min(self.acks[i].values()) if self.acks[i] else 0
        floor = max(old, min(head, max(acked, head - RETENTION)))
        assert r.trim_log() == floor - old
        self.floors[i] = floor
        if floor:  # below the floor, delta_since falls back to the whole state
            whole = codec.decode_map(r.delta_since(floor - 1))
            assert whole == r.state()

    @rule(i=st.integers(0, 1), k=st.integers(1, 4))
    def page_through(self, i, k):
        i %= self.n
        r = self.replicas[i]
        seen, cursor = [], None
        for _ in range(len(CIDS) + 1):  # bounded: a cursor that does not advance must fail
            page = r.list(limit=k, cursor=cursor)
            assert len(page.items) <= k
            seen += [c.id for c in page.items]
            if not page.has_more:
                assert page.cursor is None
                break
            assert len(page.items) == k and page.cursor is not None
            cursor = page.cursor
        else:
            raise AssertionError(f"paging with limit={k} never ended: {seen}")
        assert seen == list_order(self.models[i])

    @precondition(lambda self: self.n == 2)
    @rule()
    def converge(self):
        self.converged()

    def converged(self) -> None:
        self.ship(0, 1)
        self.ship(1, 0)
        a, b = self.replicas
        assert a.state() == b.state()
        assert list(a) == list(b)

    @invariant()
    def views_match_model(self):
        for i, r in enumerate(self.replicas):
            model = self.models[i]
            for cid, conv in model.items():
                assert r.get(cid) == (expected_view(cid, conv) if exists(conv) else None)
            order = list_order(model)
            page = r.list(limit=10_000)
            assert [c.id for c in page.items] == order
            assert page.items == [expected_view(cid, model[cid]) for cid in order]
            assert (page.has_more, page.cursor) == (False, None)
            assert len(r) == len(order)
            assert (r.head, r.log_floor) == (self.heads[i], self.floors[i])

    def teardown(self):
        try:
            if self.n == 2:
                self.converged()
        finally:
            for r in self.replicas:
                r.close()
            shutil.rmtree(self.root, ignore_errors=True)


ReplicaMachine.TestCase.settings = settings(
    max_examples=50, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestReplicaMachine = ReplicaMachine.TestCase


# -- fixtures and helpers for the named tests --------------------------------------------------


@pytest.fixture
def replica(tmp_path):
    r = Replica.open(tmp_path / "r", durability="nosync")
    yield r
    r.close()


def open_pair(tmp_path, now_ms=None):
    kw = {} if now_ms is None else {"now_ms": now_ms}
    return (Replica.open(tmp_path / "a", durability="nosync", **kw),
            Replica.open(tmp_path / "b", durability="nosync", **kw))


def log_of(r: Replica) -> list[tuple[int, str, ConversationMap]]:
    return [(seq, origin, codec.decode_map(payload))
            for seq, origin, payload in r.store.read(lambda t: list(t.log_entries(0)))]


def commits(r: Replica) -> int:
    return r.store._env.info()["last_txnid"]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root, by relative path, with its bytes.

    An existing lock.mdb is LMDB's reader table, not data: a safe read registers in it (a
    writer may be at work), so it is listed but its bytes are not compared.
    """
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = b""
        for f in filenames:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = b"" if f == "lock.mdb" else Path(p).read_bytes()
    return out


def everything(r: Replica):
    return r.head, r.log_floor, r.state(), r.status()["clock"], r.peers()


# -- the delta log ---------------------------------------------------------------------------


def test_apply_delta_logs_only_the_novel_part_with_its_origin(tmp_path):
    a, b = open_pair(tmp_path)
    a.set_title("x", "hello")
    a.pin("x")
    first = a.delta_since(0)
    assert b.apply_delta(first, origin=a.id) == {"x"}
    assert b.head == 1
    [(seq, origin, logged)] = log_of(b)
    assert (seq, origin) == (1, a.id)
    assert logged == codec.decode_map(first)

    # The same delta again: nothing new, nothing logged, head stays.
    assert b.apply_delta(first, origin=a.id) == set()
    assert b.head == 1 and len(log_of(b)) == 1

    # A delta that is part old, part new: only the new part is logged.
    a.message_arrived("y", 3, "hi", at=5)
    a.mark_read("x", 0)  # no-op, logs nothing
    both = a.delta_since(0)
    assert b.apply_delta(both, origin=a.id) == {"y"}
    (_, origin, logged) = log_of(b)[-1]
    assert origin == a.id
    assert set(logged.convs) == {"y"} and set(logged.convs["y"]) == {"last_seq", "last_message"}
    assert b.state() == a.state()

    # Local writes are logged with the replica's own id; a delta of unknown origin with ""
    # (forwarded to every peer).
    a.set_title("z", "zed")
    assert {origin for _, origin, _ in log_of(a)} == {a.id}
    assert b.apply_delta(a.delta_since(3)) == {"z"}
    assert log_of(b)[-1][1] == ""
    a.close(), b.close()


def test_delta_interval_leaves_out_what_came_from_that_peer(tmp_path):
    a, b = open_pair(tmp_path)
    a.set_title("from-a", "1")
    b.set_title("mine", "2")  # b:1, local
    b.apply_delta(a.delta_since(0), origin=a.id)  # b:2, from a
    b.pin("mine")  # b:3, local
    assert [o for _, o, _ in log_of(b)] == [b.id, a.id, b.id]

    to, delta = b.delta_interval(0, skip_origin=a.id)
    assert to == 3
    assert set(delta.convs) == {"mine"} and set(delta.convs["mine"]) == {"title", "pinned"}

    to, delta = b.delta_interval(0)  # without skip_origin: everything
    assert to == 3 and set(delta.convs) == {"mine", "from-a"}

    # A range holding only the peer's own entries: nothing to send, but `to` moves on.
    assert b.delta_interval(1, skip_origin=a.id, max_entries=1) == (2, None)
    # Bounded by max_entries; empty past the head.
    to, delta = b.delta_interval(0, max_entries=2)
    assert to == 2 and set(delta.convs) == {"mine", "from-a"}
    assert b.delta_interval(3) == (3, None)
    a.close(), b.close()


def test_trim_log_drops_what_every_peer_acked_and_what_is_past_retention(tmp_path):
    r = Replica.open(tmp_path / "r", durability="nosync", log_retention=10)
    for i in range(6):
        r.set_title(f"c{i}", str(i))
    assert r.trim_log() == 0  # no known peer, within retention: keep everything
    r.record_ack("p", 4)
    r.record_ack("q", 2)
    r.record_ack("q", 1)  # acks never move back
    assert r.peers() == {"p": 4, "q": 2}
    assert r.trim_log() == 2  # the slowest peer acked 2
    assert r.log_floor == 2 and [s for s, _, _ in log_of(r)] == [3, 4, 5, 6]
    r.record_ack("q", 3)
    assert r.trim_log() == 1 and r.log_floor == 3
    r.record_ack("q", 6)
    assert r.trim_log() == 1 and r.log_floor == 4  # now p is the slowest
    assert r.trim_log() == 0

    # Below the floor, delta_since is the whole state; at or above it, the log.
    whole = codec.decode_map(r.delta_since(3))
    assert whole == r.state() and len(whole) == 6
    assert set(codec.decode_map(r.delta_since(4)).convs) == {"c4", "c5"}

    # A peer that never returns: the retention bound drops entries it did not ack.
    for i in range(6, 20):
        r.set_title(f"c{i}", str(i))
    assert r.head == 20
    assert r.trim_log() == 6 and r.log_floor == 10  # head - retention
    assert [s for s, _, _ in log_of(r)] == list(range(11, 21))
    assert codec.decode_map(r.delta_since(4)) == r.state()

    # Everyone acked everything: the log empties, the head stays, new entries follow it.
    r.record_ack("p", 20), r.record_ack("q", 20)
    assert r.trim_log() == 10 and r.log_floor == 20 and log_of(r) == []
    assert codec.decode_map(r.delta_since(20)).is_bottom()
    r.set_title("new", "after trim")
    assert r.head == 21 and [s for s, _, _ in log_of(r)] == [21]
    assert set(codec.decode_map(r.delta_since(20)).convs) == {"new"}
    r.close()
    with Replica.open(tmp_path / "r", durability="nosync") as again:
        assert (again.head, again.log_floor) == (21, 20)


# -- subscriptions -----------------------------------------------------------------------------


def test_callback_subscription_sees_local_and_remote_changes(tmp_path):
    a, b = open_pair(tmp_path)
    seen: list[Change] = []
    sub = b.subscribe(seen.append)
    b.set_title("x", "t")
    assert seen == [Change("x", frozenset({"title"}), "local", None)]
    b.unpin("x")  # changes nothing: no event
    assert len(seen) == 1

    a.pin("x")
    a.message_arrived("y", 2, "p", at=1)
    b.apply_delta(a.delta_since(0), origin=a.id)
    remote = sorted(seen[1:], key=lambda c: c.conversation)
    assert remote == [
        Change("x", frozenset({"pinned"}), "remote", a.id),
        Change("y", frozenset({"last_seq", "last_message"}), "remote", a.id),
    ]
    b.apply_delta(a.delta_since(0), origin=a.id)  # nothing new: no event
    assert len(seen) == 3

    with b.batch():  # one event per conversation, with the fields of the whole batch
        b.set_title("z", "1")
        b.mute("z")
        b.set_title("z", "2")
    # (mute writes muted_until too: 0, until unmuted; specs/crdt.md §6)
    assert seen[3:] == [Change("z", frozenset({"title", "muted", "muted_until"}), "local", None)]

    sub.close()
    b.set_title("x", "after")
    assert len(seen) == 4
    a.close(), b.close()


async def test_trio_channel_subscription(tmp_path):
    a, b = open_pair(tmp_path)
    sub = b.subscribe()
    b.set_title("x", "t")
    a.mute("y")
    b.apply_delta(a.delta_since(0), origin=a.id)
    got = []
    async for change in sub:
        got.append(change)
        if len(got) == 2:
            break
    assert got == [
        Change("x", frozenset({"title"}), "local", None),
        Change("y", frozenset({"muted", "muted_until"}), "remote", a.id),
    ]

    # A slow consumer: past max_buffer, events are counted as dropped, not buffered.
    small = b.subscribe(max_buffer=1)
    b.set_title("x", "1")
    b.set_title("x", "2")
    assert small.dropped == 1
    assert (await small.receive_channel.receive()).conversation == "x"

    # Closing the replica ends the subscriptions' iteration.
    b.close()
    async for change in sub:  # drains what was buffered, then stops
        pass
    a.close()


def test_batch_is_one_log_entry_and_one_commit(replica):
    r = replica
    r.set_title("x", "0")
    head, txn = r.head, commits(r)
    with r.batch():
        r.set_title("x", "1")
        r.pin("y")
        r.message_arrived("z", 4, "m", at=9)
        r.mark_read("z", 2)
        assert r.get("y") is None  # reads in the block see the state before it
    assert (r.head, commits(r)) == (head + 1, txn + 1)
    [(_, origin, logged)] = [e for e in log_of(r) if e[0] == head + 1]
    assert origin == r.id and set(logged.convs) == {"x", "y", "z"}
    assert r.get("x").title == "1" and r.get("y").pinned and r.get("z").unread == 2

    with r.batch():  # a batch of no-ops: no commit, no entry
        r.unpin("x")
        r.mark_read("z", 1)
    assert (r.head, commits(r)) == (head + 1, txn + 1)

    with r.batch():  # nested batches are part of the outer one
        r.set_title("x", "2")
        with r.batch():
            r.set_title("w", "3")
    assert (r.head, commits(r)) == (head + 2, txn + 2)


# -- opening a directory ---------------------------------------------------------------------


def _make_file(p: Path) -> Path:
    p.write_bytes(b"not a directory")
    return p


def _make_foreign_files(p: Path) -> Path:
    p.mkdir()
    (p / "notes.txt").write_text("mine")
    return p


def _make_garbage(p: Path) -> Path:
    p.mkdir()
    (p / "data.mdb").write_bytes(hashlib.sha512(b"garbage").digest() * 200)
    return p


def _make_lmdb_holding(key: bytes, value: bytes, p: Path) -> Path:
    env = lmdb.open(str(p))
    with env.begin(write=True) as t:
        t.put(key, value)
    env.close()
    return p


def _make_foreign_lmdb(p: Path) -> Path:
    return _make_lmdb_holding(b"hello", b"world", p)


def _make_foreign_lmdb_with_meta_key(p: Path) -> Path:
    return _make_lmdb_holding(b"meta", b"a plain key that happens to be called meta", p)


def _make_foreign_lmdb_with_meta_db(p: Path) -> Path:
    env = lmdb.open(str(p), max_dbs=2)
    db = env.open_db(b"meta")
    with env.begin(write=True) as t:
        t.put(b"version", b"3", db=db)
    env.close()
    return p


def _patch_meta(p: Path, changes: dict[bytes, bytes | None], drop_db: bytes | None = None) -> None:
    env = lmdb.open(str(p), max_dbs=8)
    meta = env.open_db(b"meta")
    with env.begin(write=True) as t:
        for k, v in changes.items():
            if v is None:
                t.delete(k, db=meta)
            else:
                t.put(k, v, db=meta)
        if drop_db is not None:
            t.drop(env.open_db(drop_db, txn=t), delete=True)
    env.close()


def _make_replica(p: Path) -> None:
    with Replica.open(p, durability="nosync") as r:
        r.set_title("x", "kept")


def _make_newer_format(p: Path) -> Path:
    _make_replica(p)
    _patch_meta(p, {b"format": struct.pack(">Q", crdtim.store.FORMAT + 1)})
    return p


def _make_newer_format_other_layout(p: Path) -> Path:
    # A future format that dropped a database, copied without its lock file.
    _make_replica(p)
    _patch_meta(p, {b"format": struct.pack(">Q", crdtim.store.FORMAT + 1)}, drop_db=b"acks")
    (p / "lock.mdb").unlink()
    return p


def _make_garbled_format(p: Path) -> Path:
    _make_replica(p)
    _patch_meta(p, {b"format": b"\x01"})
    return p


def _make_missing_id(p: Path) -> Path:
    _make_replica(p)
    _patch_meta(p, {b"replica_id": None})
    return p


# storage.md §8 step 7: meta.magic must be crdtim, meta.format 8 bytes, meta.replica_id
# non-empty; refused before anything is written.
@pytest.mark.parametrize("make, error", [
    (_make_file, NotAReplicaError),
    (_make_foreign_files, NotAReplicaError),
    (_make_garbage, CorruptStoreError),
    (_make_foreign_lmdb, NotAReplicaError),
    (_make_foreign_lmdb_with_meta_key, NotAReplicaError),
    (_make_foreign_lmdb_with_meta_db, NotAReplicaError),
    (_make_newer_format, FormatVersionError),
    (_make_newer_format_other_layout, FormatVersionError),
    (_make_garbled_format, CorruptStoreError),  # "damaged", not "upgrade crdtim"
    (_make_missing_id, CorruptStoreError),
], ids=lambda x: getattr(x, "__name__", "").removeprefix("_make_"))
def test_opening_what_is_not_a_usable_replica_fails_and_touches_nothing(tmp_path, make, error):
    path = make(tmp_path / "target")
    before = snapshot(tmp_path)
    for durability in ("sync", "nosync"):
        with pytest.raises(error) as info:
            Replica.open(path, durability=durability)
        assert str(path) in str(info.value)
        assert snapshot(tmp_path) == before  # byte-identical, and no new file


def test_create_false_never_makes_a_directory(tmp_path):
    with pytest.raises(NotAReplicaError):
        Replica.open(tmp_path / "missing", create=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotAReplicaError):
        Replica.open(tmp_path / "empty", create=False)
    assert snapshot(tmp_path) == {"empty/": b""}
    with pytest.raises(ValueError):
        Replica.open(tmp_path / "bad", durability="fast")
    assert not (tmp_path / "bad").exists()


def test_a_wiped_directory_gets_a_new_replica_id(tmp_path):
    path = tmp_path / "r"
    with Replica.open(path) as r:
        first = r.id
        r.set_title("x", "y")
    with Replica.open(path) as r:
        assert r.id == first and r.get("x").title == "y"
    for f in path.iterdir():
        f.unlink()
    with Replica.open(path) as r:
        second = r.id
        assert second != first and len(r) == 0 and r.head == 0
    shutil.rmtree(path)
    with Replica.open(path) as r:
        assert r.id not in (first, second)


def _interrupted_after_lock_file(p: Path) -> None:
    p.mkdir()
    env = lmdb.open(str(p))
    env.close()
    (p / "data.mdb").unlink()


def _interrupted_with_empty_data_file(p: Path) -> None:
    _interrupted_after_lock_file(p)
    (p / "data.mdb").write_bytes(b"")


def _interrupted_between_databases(p: Path) -> None:
    env = lmdb.open(str(p), max_dbs=8)
    env.open_db(b"meta")
    env.open_db(b"convs")
    env.close()


def _interrupted_before_stamping(p: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def killed(self, make_replica_id):
        raise KeyboardInterrupt  # as if the process died here

    with monkeypatch.context() as m:
        m.setattr(Store, "init_meta", killed)
        with pytest.raises(KeyboardInterrupt):
            Replica.open(p)


@pytest.mark.parametrize("interrupt", [
    _interrupted_after_lock_file,
    _interrupted_with_empty_data_file,
    _interrupted_between_databases,
    _interrupted_before_stamping,
], ids=lambda f: f.__name__.removeprefix("_interrupted_"))
def test_a_replica_whose_creation_was_interrupted_is_created_again(tmp_path, monkeypatch, interrupt):
    # A crash while `crdtim init` runs leaves LMDB files that hold nothing yet: no write was
    # acknowledged, so the next open must simply finish creating the replica.
    path = tmp_path / "r"
    if interrupt is _interrupted_before_stamping:
        interrupt(path, monkeypatch)
    else:
        interrupt(path)
    with Replica.open(path, durability="nosync") as r:
        rid = r.id
        r.set_title("x", "y")
    with Replica.open(path, durability="nosync") as r:
        assert r.id == rid and r.get("x").title == "y"


# -- growth, concurrency ---------------------------------------------------------------------


# storage.md §3: a transaction function re-run after map growth computes everything again
# from a fresh transaction (head and state as if it had run once).
def test_the_map_grows_as_needed(tmp_path, monkeypatch):
    monkeypatch.setattr(crdtim.store, "INITIAL_MAP_SIZE", 64 * 1024)
    path = tmp_path / "r"
    r = Replica.open(path, durability="nosync")
    map_size = lambda: r.store._env.info()["map_size"]  # noqa: E731
    assert map_size() == 64 * 1024
    for i in range(150):
        r.set_title(f"t{i}", "x" * 1000)
    grown = map_size()
    assert grown >= 4 * 64 * 1024
    with r.batch():  # one transaction larger than the whole map was
        for i in range(1500):
            r.message_arrived(f"m{i}", i + 1, "p" * 400, at=i)
    assert map_size() >= 4 * grown
    assert len(r) == 1650 and r.head == 151
    assert r.get("t149").title == "x" * 1000 and r.get("m1499").last_seq == 1500
    r.close()
    with Replica.open(path, durability="nosync") as r:  # reopens at the grown size
        assert len(r) == 1650 and r.get("m0").last_preview == "p" * 400
        r.set_title("after", "reopen")
        assert r.get("after").title == "reopen"


def test_a_second_handle_in_one_process_is_refused_clearly(tmp_path):
    path = tmp_path / "r"
    with Replica.open(path, durability="nosync") as r:
        r.set_title("x", "y")
        with pytest.raises(StoreError) as info:
            Replica.open(path, durability="nosync")
        assert not isinstance(info.value, CorruptStoreError)  # nothing is damaged
        assert "already open" in str(info.value)
        assert r.get("x").title == "y"
    with Replica.open(path, durability="nosync") as again:  # closed: opens again
        assert again.get("x").title == "y"


def _child(path: Path, map_size: int) -> subprocess.Popen:
    env = dict(os.environ, CRDTIM_TEST_MAP_SIZE=str(map_size),
               PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, str(HERE / "replica_child.py"), "serve", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )


def _ask(child: subprocess.Popen, cmd: dict) -> dict:
    child.stdin.write(json.dumps(cmd) + "\n")
    child.stdin.flush()
    return json.loads(child.stdout.readline())


def test_two_processes_writing_one_directory(tmp_path, monkeypatch):
    map_size = 64 * 1024  # small, so each process meets the other's map growth
    monkeypatch.setattr(crdtim.store, "INITIAL_MAP_SIZE", map_size)
    path = tmp_path / "r"
    r = Replica.open(path, durability="nosync")
    child = _child(path, map_size)
    try:
        assert json.loads(child.stdout.readline())["ready"] == r.id
        # Alternating: every write takes the next head and a strictly later clock, whichever
        # process makes it, and both see the other's writes at once.
        heads, clocks = [], []
        for i in range(40):
            if i % 2:
                reply = _ask(child, {"op": "title", "cid": "shared", "text": f"child {i}"})
                heads.append(reply["head"])
                clocks.append(tuple(reply["clock"]))
            else:
                r.set_title("shared", f"parent {i}" + "z" * 3000)
                status = r.status()
                heads.append(status["head"])
                clocks.append(tuple(status["clock"]))
            writer = "child" if i % 2 else "parent"
            assert r.get("shared").title.startswith(f"{writer} {i}")  # the last write wins
        assert heads == list(range(1, 41))
        assert clocks == sorted(set(clocks))

        # At the same time: no write lost, one log entry each, stamps rising with the log.
        child.stdin.write(json.dumps({"op": "burst", "prefix": "c", "n": 150}) + "\n")
        child.stdin.flush()
        for i in range(150):
            r.set_title(f"p{i}", "x" * 1500)
        assert json.loads(child.stdout.readline())["head"] >= 190
        child.stdin.write(json.dumps({"op": "quit"}) + "\n")
        child.stdin.flush()
        assert child.wait(timeout=30) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert r.head == 340
    for prefix in ("c", "p"):
        for i in range(150):
            assert r.get(f"{prefix}{i}") is not None
    entries = log_of(r)
    assert [s for s, _, _ in entries] == list(range(1, 341))
    stamps = [next(iter(m.convs.values()))["title"].stamp[:2] for _, _, m in entries]
    assert stamps == sorted(set(stamps))
    # meta.clock is the clock's lease (specs/storage.md §3a): at or above every stamp made.
    assert tuple(r.status()["clock"]) >= stamps[-1]
    r.close()


# -- refusals --------------------------------------------------------------------------------

A_DELTA = codec.encode_map(ConversationMap({"q": {"read_seq": MaxReg(1)}}))
BAD_CALLS = [
    ("set_title", ("", "t")),
    ("set_title", (None, "t")),
    ("set_title", (b"x", "t")),
    ("set_title", ("x" * 257, "t")),
    ("set_title", ("😀" * 256, "t")),  # 256 characters, but 1024 bytes: over LMDB's key size
    ("set_title", ("\ud800", "t")),  # a lone surrogate cannot be stored as UTF-8
    ("set_title", ("x", "t" * (codec.DEFAULT_LIMITS.max_text + 1))),
    ("set_title", ("x", None)),
    ("set_title", ("x", "bad \udfff")),
    ("pin", ("",)),
    ("unmute", (7,)),
    ("message_arrived", ("x", -1)),
    ("message_arrived", ("x", True)),
    ("message_arrived", ("x", 1.0)),
    ("message_arrived", ("x", "3")),
    ("message_arrived", ("x", codec.MAX_INT + 1)),
    ("message_arrived", ("x", 1, "p" * (codec.DEFAULT_LIMITS.max_text + 1))),
    ("message_arrived", ("x", 1, "", -5)),
    ("message_arrived", ("x", 1, "", False)),
    ("message_arrived", ("x", 1, "\ud800")),
    ("message_arrived", ("x", 1, "", codec.MAX_INT)),  # a message time far in the future
    ("mark_read", ("x", -1)),
    ("mark_read", ("x", None)),
    ("mark_read", ("x", False)),
    ("get", ("",)),
    ("get", (3,)),
    ("delta_since", (-1,)),
    ("delta_since", ("0",)),
    ("delta_since", (True,)),
    ("delta_since", (0.5,)),
    ("list", (0,)),
    ("list", (True,)),
    ("list", (10, "garbage")),
    ("list", (10, "")),
    ("list", (10, 42)),
    ("list", (10, "AgAAAAAAAAAAeA")),  # decodes, but not to an ordering key
    ("list", (10, "é")),
    ("apply_delta", (A_DELTA, 5)),  # origin: a replica id
    ("apply_delta", (A_DELTA, "o" * 300)),  # longer than a log entry can frame
    ("record_ack", ("p", -1)),
    ("record_ack", ("p", "3")),
    ("record_ack", ("", 3)),
    ("record_ack", (None, 3)),
    ("delta_interval", (-2,)),
    ("delta_interval", ("0",)),
]


# crdt.md §7: a writer must refuse to make states a decoder would refuse (over-long texts or
# ids, negative or over-2^63-1 integers).
@pytest.mark.parametrize("method, args", BAD_CALLS)
def test_invalid_arguments_are_refused_and_change_nothing(replica, method, args):
    replica.set_title("x", "kept")
    replica.pin("x")
    before = everything(replica)
    with pytest.raises(InvalidArgument) as info:
        getattr(replica, method)(*args)
    assert isinstance(info.value, ValueError)
    assert everything(replica) == before
    with replica.batch():  # and inside a batch, refused at the call: the rest still commits
        with pytest.raises(InvalidArgument):
            getattr(replica, method)(*args)
        replica.set_title("x", "batch")
    assert replica.get("x").title == "batch"


def _delta(convs: dict) -> bytes:
    return codec.encode_map(ConversationMap(convs))


def test_values_from_too_far_in_the_future_are_held_and_the_rest_applied(tmp_path):
    # Was: the whole delta refused, which stalled every later write of that peer behind
    # it (issue 12, finding 4). Now only the values past the bound wait (specs/crdt.md §1).
    clock = [T0]
    r = Replica.open(tmp_path / "r", durability="nosync", now_ms=lambda: clock[0])
    now = T0
    r.set_title("x", "kept")
    limit = 5 * MINUTE
    future = _delta({
        "y": {"title": Lww(Stamp(now + limit + 1, 0, "peer"), "from the future")},
        "z": {"title": Lww(Stamp(now, 0, "peer"), "fine on its own")},
    })
    assert r.apply_delta(future, origin="peer") == {"z"}
    assert r.get("y") is None and r.get("z").title == "fine on its own"
    assert r.status()["pending"] == {"count": 1, "earliest": now + limit + 1}
    assert r.status()["clock"][0] < now + limit  # not past the held value
    clock[0] += 1
    assert r.apply_pending() == {"y"}
    assert r.get("y").title == "from the future" and r.status()["pending"]["count"] == 0
    r.close()
    r = Replica.open(tmp_path / "r2", durability="nosync", now_ms=lambda: now)
    r.set_title("x", "kept")

    # Exactly at the bound is accepted, and the clock moves past it.
    ok = _delta({"y": {"title": Lww(Stamp(now + limit, 0, "peer"), "just in time")}})
    assert r.apply_delta(ok, origin="peer") == {"y"}
    assert r.status()["clock"] == [now + limit, 1]
    r.set_title("x", "later")  # a local write after it still wins over it
    assert r.state().fields("x")["title"].stamp[:2] > (now + limit, 0)
    r.close()


def test_a_delta_with_a_clock_counter_beyond_the_stored_clock_is_refused(tmp_path):
    r = Replica.open(tmp_path / "r", durability="nosync", now_ms=lambda: T0)
    r.set_title("x", "kept")
    before = everything(r)
    bad = _delta({"y": {"title": Lww(Stamp(T0, 2**32 - 1, "peer"), "counter overflow")}})
    with pytest.raises(ClockDriftError):
        r.apply_delta(bad, origin="peer")
    assert everything(r) == before
    ok = _delta({"y": {"title": Lww(Stamp(T0, 2**31 - 1, "peer"), "at the bound")}})
    assert r.apply_delta(ok, origin="peer") == {"y"}
    assert r.status()["clock"] == [T0, 2**31]
    r.close()


def test_a_delta_with_an_id_too_long_to_store_is_refused(replica):
    replica.set_title("x", "kept")
    before = everything(replica)
    bad = _delta({"😀" * 256: {"read_seq": MaxReg(1)}, "ok": {"read_seq": MaxReg(1)}})
    with pytest.raises(DecodeError):
        replica.apply_delta(bad, origin="peer")
    assert everything(replica) == before


# -- regressions from review ------------------------------------------------------------------


async def test_a_batch_belongs_to_its_task_not_to_the_replica(tmp_path):
    # Regression: another task's writes joined an open batch and were lost when it raised.
    import trio

    r = Replica.open(tmp_path / "r", durability="nosync")
    inside = trio.Event()
    release = trio.Event()

    async def batcher():
        with pytest.raises(RuntimeError):
            with r.batch():
                r.set_title("a", "in the batch")
                inside.set()
                await release.wait()
                raise RuntimeError("the batch fails")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(batcher)
        await inside.wait()
        r.pin("b")  # another task, meanwhile: commits at once, on its own
        assert r.get("b").pinned
        release.set()
    assert r.get("a") is None and r.get("b").pinned
    r.close()


# crdt.md §6: an app's text register must be declared clocked=True to be written with
# set_register.
def test_set_register_refuses_a_register_that_is_not_clocked(tmp_path):
    # Regression: stamped with the hybrid clock but not advanced past by receivers, a
    # causally later write could lose.
    schema = crdtim.DEFAULT_SCHEMA.extend(
        crdtim.Field("nickname", 64, Lww), crdtim.Field("folder", 65, Lww, clocked=True))
    with Replica.open(tmp_path / "r", schema=schema) as r:
        with pytest.raises(InvalidArgument, match="not a clocked register"):
            r.set_register("c", "nickname", "x")
        with pytest.raises(InvalidArgument):
            r.set_register("c", "last_message", "x")
        r.set_register("c", "folder", "hello")
        assert r.get("c").extra["folder"] == "hello"


def test_a_delta_claiming_enables_this_replica_never_made_is_joined(tmp_path):
    # Was refused (a forged claim then cut the link it came over, specs/security.md §1); now
    # joined, and our own dots coming back are still fine (tests/test_hardening.py has more).
    from crdtim.crdt import CausalContext, Flag

    with Replica.open(tmp_path / "r", durability="nosync") as r:
        r.pin("c")
        forged = ConversationMap({"c": {"pinned": Flag(
            frozenset(), CausalContext({r.id: 5}, frozenset()))}})
        assert r.apply_delta(codec.encode_map(forged)) == {"c"}
        assert not r.get("c").pinned
        r.pin("c")
        assert r.state().fields("c")["pinned"].dots == {(r.id, 6)}
        assert r.apply_delta(r.delta_since(0)) == set()


def test_a_failing_subscriber_does_not_fail_a_committed_write(tmp_path):
    with Replica.open(tmp_path / "r", durability="nosync") as r:
        seen = []
        r.subscribe(lambda change: 1 / 0)
        r.subscribe(seen.append)
        r.set_title("c", "t")  # no exception: the write is committed
        assert r.get("c").title == "t" and [c.conversation for c in seen] == ["c"]


# storage.md §4: a stored value over a peer's per-message caps must still read back.
def test_own_records_over_the_wire_limits_still_read_back(tmp_path):
    # Regression: the per-message limits applied to the replica's own log; a large batch
    # made an entry that delta_since, changes_since and every sender failed to read.
    wire_limits = codec.Limits(max_bytes=4096)  # what this replica accepts from peers
    with Replica.open(tmp_path / "r", durability="nosync", limits=wire_limits) as r:
        with r.batch():
            for i in range(200):
                r.set_title(f"c{i:03}", "x" * 40)
        assert len(list(r.changes_since(0))) == 200
        assert len(codec.decode_map(r.delta_since(0), limits=codec.Limits(max_bytes=2**30))) == 200
        end, delta = r.delta_interval(0)
        assert end == 1 and len(delta) == 200


# -- a state chunk's shortcuts ------------------------------------------------------------------


def _log_after(r: Replica, seq: int) -> list[tuple[str, ConversationMap]]:
    return [(origin, codec.decode_map(payload, r.schema, codec.Limits(2**40, 2**40, 2**40)))
            for _, origin, payload in r.store.read(lambda t: list(t.log_entries(seq)))]


@strategies.FAST
@given(before=strategies.conversation_maps(), chunk=strategies.conversation_maps(),
       shared_ids=st.booleans())
def test_apply_state_chunk_does_what_apply_map_does(before, chunk, shared_ids):
    # Whether the receiver holds none, some or all of the chunk: the same states (stored
    # from the bytes as received where new), the same changes, the same log entry (the
    # payload itself when all of it was novel).
    with tempfile.TemporaryDirectory() as tmp:
        far = 2**50  # every generated stamp is in the past
        # One replica id for both, so that the same chunk claims (or not) each one's dots.
        with unittest.mock.patch("crdtim.replica.new_replica_id", lambda: "receiver"):
            by_map = Replica.open(Path(tmp) / "m", durability="nosync", now_ms=lambda: far)
            by_chunk = Replica.open(Path(tmp) / "c", durability="nosync", now_ms=lambda: far)
        try:
            if shared_ids:  # the receiver's own id in the chunk's table: dots checked
                chunk = chunk.join(ConversationMap.bottom().enable("own", "pinned", by_chunk.id))
            for r in (by_map, by_chunk):
                r.apply_map(before, "earlier")
            head = by_map.head
            payload = codec.encode_map(chunk)
            decoded, wire = codec.decode_map_as_received(payload)
            outcomes = []
            for r, apply in ((by_map, lambda: by_map.apply_map(decoded, "peer")),
                             (by_chunk, lambda: by_chunk.apply_state_chunk(decoded, wire, "peer"))):
                try:
                    outcomes.append(apply())
                except (ClockDriftError, DecodeError) as e:
                    outcomes.append(type(e))
            assert outcomes[0] == outcomes[1]
            assert by_chunk.state() == by_map.state()
            assert _log_after(by_chunk, head) == _log_after(by_map, head)
            entries = by_chunk.store.read(lambda t: list(t.log_entries(head)))
            # All of it new: the log entry is the payload as received, unless it holds
            # messages, which are joined record by record and logged as joined (§3).
            holds_messages = any("messages" in f for f in decoded.convs.values())
            if entries and before.novel(decoded) == decoded and not holds_messages:
                assert [p for _, _, p in entries] == [payload]
            for cid, fields in by_chunk.state().convs.items():
                assert by_chunk.get(cid) == by_map.get(cid)
        finally:
            by_map.close()
            by_chunk.close()
