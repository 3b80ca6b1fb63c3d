"""verify, repair, backup, restore and unbind-peer (specs/storage.md §8a, §8b): what an
operator runs on a replica directory, through Python and the command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest

from crdtim import maintenance
from crdtim.cli import main
from crdtim.replica import Replica
from crdtim.store import seal
from tests.test_protocol_sim import connect

HERE = Path(__file__).parent
ENV = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def cli(path: Path, *argv: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "crdtim", "--data", str(path),
                           *map(str, argv)], env=ENV, capture_output=True, text=True,
                          timeout=60)


def sync(*replicas: Replica, rounds: int = 2) -> None:
    """Every pair connects through the sans-IO sessions until quiet, `rounds` times over."""
    for _ in range(rounds):
        for i, x in enumerate(replicas):
            for y in replicas[i + 1:]:
                connect(x, y).run_until_quiet()


def damage_value(path: Path, cid: str, *, reseal: bool = False) -> None:
    """Change one byte inside a stored conversation value (keeping its checksum valid with
    `reseal`, as a bug writing garbage would), while no Replica has it open."""
    env = lmdb.open(str(path), max_dbs=8)
    with env.begin(write=True) as t:
        db = env.open_db(b"convs", txn=t)
        raw = bytearray(t.get(cid.encode(), db=db))
        raw[len(raw) // 2] ^= 0x20
        value = bytes(raw)
        if reseal:
            value = seal(cid.encode(), value[:-4])
        t.put(cid.encode(), value, db=db)
    env.close()


def populate(r: Replica, n: int = 40) -> None:
    with r.batch():
        for i in range(n):
            r.set_title(f"c{i}", f"title {i}")
            r.message_arrived(f"c{i}", i + 1, preview=f"p{i}", at=1_700_000_000_000 + i)


def test_verify_passes_a_whole_replica_and_names_a_damaged_value(tmp_path):
    path = tmp_path / "r"
    with Replica.open(path, durability="nosync") as r:
        populate(r)
        r.pin("c3")
    report = maintenance.verify(path)
    assert report.ok and report.checked == {"convs": 40, "order": 40, "log": 2}
    damage_value(path, "c7")
    report = maintenance.verify(path)
    assert not report.ok
    assert [(p.database, p.key, p.problem) for p in report.problems] == \
        [("convs", "'c7'", "checksum mismatch")]
    with Replica.open(path, create=False) as r:  # never shown, never sent
        with pytest.raises(Exception, match=r"database 'convs', key 'c7': checksum mismatch"):
            r.get("c7")
        with pytest.raises(Exception, match="checksum mismatch"):
            r.encoded_state_chunk(None, 100, 1 << 20)


def test_verify_finds_a_value_that_does_not_decode_and_an_index_that_disagrees(tmp_path):
    path = tmp_path / "r"
    with Replica.open(path, durability="nosync") as r:
        populate(r, 5)
    damage_value(path, "c2", reseal=True)  # checksum fine, content not a state
    env = lmdb.open(str(path), max_dbs=8)
    with env.begin(write=True) as t:
        order = env.open_db(b"order", txn=t)
        stray = b"\x00" + bytes(8) + b"c4"
        t.put(stray, seal(stray, b""), db=order)
    env.close()
    report = maintenance.verify(path)
    found = {(p.database, p.key) for p in report.problems}
    assert ("convs", "'c2'") in found
    assert any(db == "order" for db, _ in found)


def test_repair_drops_the_damaged_conversation_and_a_peer_heals_it(tmp_path):
    """Damage one conversation (its last writes made here), repair, sync with a peer that
    has it: identical again, including the writes that came from the repaired replica."""
    a = Replica.open(tmp_path / "a", durability="nosync")
    b = Replica.open(tmp_path / "b", durability="nosync")
    populate(a)
    a.pin("c7")
    a.set_title("c7", "made on a")
    sync(a, b)
    assert a.state() == b.state()
    a.close()
    damage_value(tmp_path / "a", "c7")
    report = maintenance.verify(tmp_path / "a", repair=True)
    assert [p.key for p in report.problems] == ["'c7'"]
    assert report.repaired is not None and report.repaired["conversations_dropped"] == 1
    assert maintenance.verify(tmp_path / "a").ok
    a = Replica.open(tmp_path / "a", durability="nosync")
    assert a.get("c7") is None and a.id == report.repaired["new_id"]
    sync(a, b)
    assert a.state() == b.state()
    assert a.get("c7").title == "made on a" and a.get("c7").pinned
    a.close()
    b.close()


def test_verify_reports_a_child_killed_inside_liblmdb(tmp_path, monkeypatch, capsys):
    def aborted(argv, **kw):
        return subprocess.CompletedProcess(argv, -6, "", "Assertion 'IS_LEAF(mp)' failed")

    monkeypatch.setattr(maintenance.subprocess, "run", aborted)
    assert main(["--data", str(tmp_path), "verify"]) == 1
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "damaged: liblmdb aborted reading it (SIGABRT)" in out


# storage.md §8b: backup's DEST must not exist or be an empty directory (else exit 2).
def test_backup_is_consistent_while_the_replica_is_open_and_refuses_a_full_dest(tmp_path):
    path = tmp_path / "r"
    with Replica.open(path, durability="nosync") as r:
        populate(r)
        assert cli(path, "backup", tmp_path / "bk").returncode == 0  # another process
        r.set_title("c1", "after the backup")
        refused = cli(path, "backup", tmp_path / "bk")
        assert refused.returncode == 2 and "not an empty directory" in refused.stderr
        want = [c for c in r if c.id != "c1"]
    assert maintenance.verify(tmp_path / "bk").ok
    with Replica.open(tmp_path / "bk", create=False) as copy:
        assert copy.get("c1").title == "title 1"
        assert [c for c in copy if c.id != "c1"] == want


# crdt.md §5, storage.md §8: a replica's state must never go back under its id -- restore makes
# a new id, with no peer's ack and no log of its own.
def test_restore_an_old_backup_beside_live_peers_converges_with_nothing_lost_or_resurrected(
        tmp_path):
    a, b, c = (Replica.open(tmp_path / n, durability="nosync") for n in "abc")
    populate(a, 10)
    a.pin("c1")
    b.pin("c2")
    sync(a, b, c)
    maintenance.backup(a, str(tmp_path / "backup"))  # while a is open here
    # After the backup, on every replica:
    b.unpin("c1")                     # pinned in the backup: must stay unpinned
    c.set_title("c2", "newer title")  # must win over the backup's
    a.set_title("c3", "a after")
    a.pin("c4")
    sync(a, b, c)
    assert main(["--data", str(tmp_path / "d"), "restore", str(tmp_path / "backup")]) == 0
    d = Replica.open(tmp_path / "d", durability="nosync")
    assert d.id not in (a.id, b.id, c.id)
    assert d.peers() == {} and d.head == d.log_floor
    d.set_title("c5", "made on the restored replica")
    sync(a, b, c, d)
    state = a.state()
    assert b.state() == state and c.state() == state and d.state() == state
    assert not a.get("c1").pinned and a.get("c2").title == "newer title"
    assert a.get("c3").title == "a after" and a.get("c4").pinned
    assert a.get("c5").title == "made on the restored replica"
    for r in (a, b, c, d):
        r.close()


# storage.md §8b: restore's --data directory must not exist or be empty.
def test_restore_refuses_a_damaged_backup_and_a_full_destination(tmp_path):
    with Replica.open(tmp_path / "r", durability="nosync") as r:
        populate(r, 5)
    maintenance.backup(tmp_path / "r", tmp_path / "bk")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    assert main(["--data", str(tmp_path / "full"), "restore", str(tmp_path / "bk")]) == 2
    damage_value(tmp_path / "bk", "c1")
    assert main(["--data", str(tmp_path / "new"), "restore", str(tmp_path / "bk")]) == 1
    assert not (tmp_path / "new").exists()
    assert [p.name for p in tmp_path.iterdir() if "restoring" in p.name] == []


def test_unbind_peer_from_the_command_line(tmp_path):
    path = tmp_path / "r"
    with Replica.open(path) as r:
        r.bind_peer("peer1", "key-1")
    p = cli(path, "unbind-peer", "peer1")
    assert p.returncode == 0, p.stderr
    with Replica.open(path) as r:
        r.bind_peer("peer1", "key-2")  # refused (PeerIdentityError) while still bound


# -- message histories: the records and their index (specs/storage.md §8a) -------------------


def chat(r: Replica, cid: str = "chat") -> None:
    """A history with every shape: regenerate, branch, appends, an edit, a delete, a switch."""
    u1 = r.post(cid, "hello", id="u1")
    a1 = r.post(cid, "hi", role="assistant", id="a1")
    r.append(cid, a1.id, " there")
    r.post(cid, "how are you", id="u2")
    a2 = r.regenerate(cid, a1.id, "hey", id="a2")
    r.post(cid, "branch", reply_to=u1.id, id="u3")
    r.edit(cid, a2.id, "hey you")
    r.delete_message(cid, "u2")
    r.switch(cid, a1.id)
    r.post("other", "elsewhere", id="o1")


def history_of(r: Replica, cid: str = "chat") -> list[str]:
    return [m.id for m in r.history(cid, limit=100).items]


def poke(path: Path, database: str, change) -> None:
    """Run `change(txn, db)` on one database of the directory, no Replica having it open."""
    env = lmdb.open(str(path), max_dbs=10)
    with env.begin(write=True) as t:
        change(t, env.open_db(database.encode(), txn=t))
    env.close()


def message_key(path: Path, cid: str, kind: bytes, name: str) -> bytes:
    env = lmdb.open(str(path), max_dbs=10, readonly=True, lock=False)
    with env.begin() as t:
        number = t.get(b"\xff" + cid.encode(), db=env.open_db(b"mindex", txn=t, create=False))
    env.close()
    return number + kind + name.encode()


def test_verify_walks_the_message_records_and_names_a_damaged_one(tmp_path):
    path = tmp_path / "r"
    with Replica.open(path, durability="nosync") as r:
        chat(r)
    report = maintenance.verify(path)
    assert report.ok, report.problems
    assert report.checked["messages"] == 6 + 1  # five messages, "other"'s one, one choice
    assert report.checked["mindex"] > 0
    key = message_key(path, "chat", b"m", "a1")

    def flip(t, db):
        raw = bytearray(t.get(key, db=db))
        raw[3] ^= 0x04
        t.put(key, bytes(raw), db=db)
    poke(path, "messages", flip)
    report = maintenance.verify(path)
    assert [(p.database, p.key, p.problem) for p in report.problems] == \
        [("messages", "'chat' message 'a1'", "checksum mismatch")]
    choice = message_key(path, "chat", b"c", "a1")
    poke(path, "messages", lambda t, db: t.put(choice, seal(choice, b"\x93\x01\x90\xc0"), db=db))
    problems = {(p.key, p.problem.split(":")[0]) for p in maintenance.verify(path).problems}
    assert ("'chat' choice 'a1'", "DecodeError") in problems


def test_verify_compares_the_message_index_with_a_rebuild_and_names_each_wrong_entry(tmp_path):
    path = tmp_path / "r"
    with Replica.open(path, durability="nosync") as r:
        chat(r)
        shown = history_of(r)
    visible = message_key(path, "chat", b"v", "")
    shape = message_key(path, "chat", b"s", "u3")
    stray = message_key(path, "chat", b"k", "nobody") + b"\x00x"

    def damage(t, db):
        with t.cursor(db=db) as cur:  # drop the newest visible entry, whatever its position
            cur.set_range(visible)
            keys = [k for k, _ in cur if k.startswith(visible)]
        t.delete(keys[-1], db=db)
        t.put(stray, b"", db=db)
        raw = bytearray(t.get(shape, db=db))
        raw[0] ^= 1  # the visible flag
        t.put(shape, bytes(raw), db=db)
    poke(path, "mindex", damage)
    report = maintenance.verify(path)
    assert {(p.database, p.key, p.problem) for p in report.problems} == {
        ("mindex", f"'chat' visible '{shown[0]}'",
         "index entry missing (a rebuild from the records has it)"),
        ("mindex", "'chat' child 'nobody'", "index entry that a rebuild from the records does not make"),
        ("mindex", "'chat' shape 'u3'", "index entry differs from a rebuild from the records"),
    }
    with Replica.open(path, create=False) as r:
        assert history_of(r) != shown  # the damage shows: that is what verify is for
        before = r.id
    report = maintenance.verify(path, repair=True)
    assert report.repaired["message_indexes_rebuilt"] == 1
    assert "new_id" not in report.repaired  # nothing of the lattice was lost
    assert maintenance.verify(path).ok
    with Replica.open(path, create=False) as r:
        assert history_of(r) == shown and r.id == before


def test_repair_drops_an_undecodable_message_record_and_a_peer_heals_it(tmp_path):
    a = Replica.open(tmp_path / "a", durability="nosync")
    b = Replica.open(tmp_path / "b", durability="nosync")
    chat(a)
    sync(a, b)
    shown = history_of(a)
    a.close()
    key = message_key(tmp_path / "a", "chat", b"m", "u1")  # the root: all hangs from it
    poke(tmp_path / "a", "messages", lambda t, db: t.put(key, seal(key, b"\x01"), db=db))
    report = maintenance.verify(tmp_path / "a", repair=True)
    assert [(p.database, p.key) for p in report.problems] == [("messages", "'chat' message 'u1'")]
    assert report.repaired["message_records_dropped"] == 1 and "new_id" in report.repaired
    assert maintenance.verify(tmp_path / "a").ok
    a = Replica.open(tmp_path / "a", durability="nosync")
    assert a.message("chat", "u1") is None and history_of(a) == []  # nothing reaches a root
    sync(a, b)
    assert history_of(a) == shown == history_of(b)
    assert a.state() == b.state()
    a.close()
    b.close()
