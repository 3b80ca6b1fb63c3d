"""A damaged replica directory never kills the process and is never read as if it were whole
(specs/storage.md §2 "Checksums", §8 step 7): truncated files, garbled meta pages, files
that are not files, flipped bytes. Each damaged copy is opened in a child process
(tests/damage_child.py), so that a signal is seen as a crash of that case, not of the run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import lmdb
import pytest

import crdtim.store
from crdtim import Replica, maintenance
from crdtim.errors import CorruptStoreError

HERE = Path(__file__).parent
PAGE = 4096
ENV = dict(os.environ, PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def make_store(path: Path) -> None:
    """A few hundred conversations, a few pinned and read, in some dozens of log entries."""
    with Replica.open(path, durability="nosync") as r:
        for b in range(10):
            with r.batch():
                for i in range(b * 30, b * 30 + 30):
                    r.set_title(f"conv-{i}", f"title {i}")
                    r.message_arrived(f"conv-{i}", i + 1, preview=f"hello {i}",
                                      at=1_700_000_000_000 + i * 1000)
        for i in range(0, 300, 7):
            r.pin(f"conv-{i}")
        for i in range(0, 300, 11):
            r.mark_read(f"conv-{i}", i)


def run_cases(paths: list[Path]) -> dict[Path, dict[str, str]]:
    """Every path through tests/damage_child.py; a child that dies (a signal) marks the case
    it was on as crashed, and a new child takes the rest."""
    out: dict[Path, dict[str, str]] = {}
    todo = list(paths)
    while todo:
        child = subprocess.Popen([sys.executable, str(HERE / "damage_child.py")], env=ENV,
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
        assert child.stdin is not None and child.stdout is not None
        child.stdin.write("".join(f"{p}\n" for p in todo))
        child.stdin.close()
        done = 0
        for line in child.stdout:
            out[todo[done]] = json.loads(line)
            done += 1
        rc = child.wait()
        if done < len(todo):
            out[todo[done]] = {"outcome": "crashed", "error": f"exit status {rc}"}
            done += 1
        todo = todo[done:]
    return out


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("damage") / "original"
    make_store(path)
    return path


def damaged_copy(original: Path, to: Path, change) -> Path:
    to.mkdir(parents=True)
    data = bytearray((original / "data.mdb").read_bytes())
    (to / "data.mdb").write_bytes(change(data))
    return to


def truncations(size: int) -> list[int]:
    rng = random.Random(12)
    # Every page boundary but 0 (an empty data.mdb is what an interrupted `init` leaves:
    # a new replica, specs/storage.md §8 step 5), and seeded offsets inside pages.
    return sorted(set(range(PAGE, size, PAGE)) | {rng.randrange(1, size) for _ in range(24)})


def garbled_metas() -> dict[str, object]:
    def zero(*pages):
        def change(b):
            for p in pages:
                b[p * PAGE:(p + 1) * PAGE] = bytes(PAGE)
            return b
        return change

    def poke(offset, value):
        def change(b):
            for p in (0, 1):
                b[p * PAGE + offset:p * PAGE + offset + len(value)] = value
            return b
        return change

    return {
        "meta 0 zeroed": zero(0), "meta 1 zeroed": zero(1), "both zeroed": zero(0, 1),
        "bad magic": poke(16, b"\x00\x00\x00\x00"), "bad version": poke(20, b"\x07\x00\x00\x00"),
        "last page past the end": poke(136, struct.pack("<Q", 10**6)),
        "root past the last page": poke(40 + 48 + 40, struct.pack("<Q", 10**6)),
    }


def test_truncated_data_file_is_refused_at_open_never_a_signal(original, tmp_path):
    """Was SIGBUS for most offsets: LMDB maps the file and reads past its end."""
    data = (original / "data.mdb").read_bytes()
    cases = {damaged_copy(original, tmp_path / f"cut{n}", lambda b, n=n: b[:n]): n
             for n in truncations(len(data))}
    results = run_cases(list(cases))
    assert len(results) >= 40
    for path, result in results.items():
        assert result["outcome"] == "refused", (cases[path], result)
        assert "data.mdb" in result["error"] and "damaged" in result["error"]


def test_garbled_meta_pages_are_refused_at_open(original, tmp_path):
    cases = {damaged_copy(original, tmp_path / name.replace(" ", "-"), change): name
             for name, change in garbled_metas().items()}
    for path, result in run_cases(list(cases)).items():
        assert result["outcome"] == "refused", (cases[path], result)


def test_cli_on_damaged_files_says_one_line_and_never_dies_of_a_signal(original, tmp_path):
    size = len((original / "data.mdb").read_bytes())
    cuts = [PAGE, 2 * PAGE + 100, size // 2, size - PAGE, size - 1]
    dirs = [damaged_copy(original, tmp_path / f"cut{n}", lambda b, n=n: b[:n]) for n in cuts]
    metas = garbled_metas()
    dirs += [damaged_copy(original, tmp_path / name.replace(" ", "-"), metas[name])
             for name in ("both zeroed", "last page past the end")]
    commands = [["status"], ["ls"], ["show", "conv-3"], ["arrive", "conv-3", "9"]]
    for d in dirs:
        before = (d / "data.mdb").read_bytes()
        for command in commands:
            p = subprocess.run([sys.executable, "-m", "crdtim", "--data", str(d), *command],
                               env=ENV, capture_output=True, text=True, timeout=60)
            assert p.returncode in (1, 2), (d.name, command, p.returncode, p.stderr)
            assert p.stderr.count("\n") == 1 and "damaged" in p.stderr, (d.name, p.stderr)
        assert (d / "data.mdb").read_bytes() == before


# storage.md §8 step 7: data.mdb must be a regular file.
def test_data_file_that_is_not_a_regular_file_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / "data.mdb")
    zero = tmp_path / "zero"
    zero.mkdir()
    os.symlink("/dev/zero", zero / "data.mdb")
    for d in (fifo, zero):
        with pytest.raises(CorruptStoreError, match="not a regular file"):
            Replica.open(d)
        # `init` used to block forever opening the FIFO.
        p = subprocess.run([sys.executable, "-m", "crdtim", "--data", str(d), "init"], env=ENV,
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 1 and "not a regular file" in p.stderr


# storage.md §8 step 7: meta.format must be 8 bytes, else CorruptStoreError (damaged).
def test_a_damaged_format_field_says_damaged_not_upgrade(tmp_path):
    path = tmp_path / "r"
    with Replica.open(path):
        pass
    env = lmdb.open(str(path), max_dbs=8)
    with env.begin(write=True) as t:
        t.put(b"format", b"\x00\x00\x00\x02", db=env.open_db(b"meta", txn=t))
    env.close()
    with pytest.raises(CorruptStoreError, match="damaged: meta.format is 4 bytes") as info:
        Replica.open(path)
    assert "upgrade" not in str(info.value)


# faults.md §4: the stored value's checksum must catch a flipped byte; a damaged value must
# never be read back altered.
def test_flipped_bytes_are_never_read_back_as_altered_values(original, tmp_path):
    """Format 1 read 15 of 120 such copies with altered values ('title 30' -> 'titlE 30').

    Each copy has one byte changed at a seeded offset of data.mdb. It must be refused at
    open, reported (CorruptStoreError) when read, or read back identical (the byte was in
    unused space). A crash inside liblmdb (a damaged page layout) is allowed only in this
    in-process read: `crdtim verify` (tests/test_maintenance.py) survives it.
    """
    reference = run_cases([original])[original]
    data = (original / "data.mdb").read_bytes()
    rng = random.Random(3)

    def flip(b, offset, mask):
        b[offset] ^= mask
        return b

    cases = {}
    for n in range(150):
        offset, mask = rng.randrange(len(data)), rng.randrange(1, 256)
        cases[damaged_copy(original, tmp_path / f"m{n}",
                           lambda b, o=offset, m=mask: flip(b, o, m))] = offset
    counts: Counter[str] = Counter()
    crashed = []
    for path, result in run_cases(list(cases)).items():
        outcome = result["outcome"]
        if outcome == "read":
            outcome = "identical" if result["digest"] == reference["digest"] else "silent"
        counts[outcome] += 1
        if outcome == "crashed":
            crashed.append(path)
        assert outcome in ("refused", "reported", "identical", "crashed"), \
            (cases[path], result)
    print(f"mutated copies: tried {sum(counts.values())}, {dict(counts)}")
    assert counts["silent"] == 0 and counts["uncaught"] == 0
    assert counts["refused"] + counts["reported"] > 20  # the flips did hit data
    for path in crashed:  # verify's child may die of it; verify itself reports it
        assert not maintenance.verify(path).ok


def make_message_store(path: Path) -> None:
    """Conversations with message histories: regenerated, branched, streamed, edited."""
    with Replica.open(path, durability="nosync") as r:
        for c in range(12):
            cid = f"chat-{c}"
            u = r.post(cid, f"question {c} " + "q" * (c * 40), id=f"u{c}")
            a = r.post(cid, f"answer {c}", role="assistant", id=f"a{c}")
            for n in range(c % 5):
                r.append(cid, a.id, f" part {n}")
            if c % 3 == 0:
                r.regenerate(cid, a.id, f"again {c}", id=f"a{c}b")
            if c % 4 == 1:
                r.post(cid, f"other branch {c}", reply_to=u.id, id=f"u{c}b")
            if c % 5 == 2:
                r.edit(cid, a.id, f"edited {c}")
            if c % 6 == 5:
                r.delete_message(cid, u.id)


def sealed_value_ranges(path: Path, database: str) -> list[tuple[int, int]]:
    """(offset, length) in data.mdb of every value of `database` (each found once)."""
    data = (path / "data.mdb").read_bytes()
    env = lmdb.open(str(path), max_dbs=10, readonly=True, lock=False)
    with env.begin() as t:
        values = [bytes(v) for _, v in t.cursor(db=env.open_db(database.encode(), txn=t,
                                                                create=False))]
    env.close()
    ranges = []
    for v in values:
        offset = data.find(v)
        assert offset >= 0 and data.find(v, offset + 1) < 0, "a value not found once"
        ranges.append((offset, len(v)))
    return ranges


def test_flipped_bytes_in_message_records_are_never_read_back_as_altered_values(tmp_path):
    """Flips aimed at the `messages` values: the CRC catches each one (a history page, a
    message or the whole state read reports CorruptStoreError), never an altered text."""
    original = tmp_path / "original"
    make_message_store(tmp_path / "made")
    maintenance.backup(tmp_path / "made", original)  # compacted: no stale copies of a value
    reference = run_cases([original])[original]
    assert reference["outcome"] == "read", reference
    ranges = sealed_value_ranges(original, "messages")
    assert len(ranges) > 30
    rng = random.Random(11)

    def flip(b, offset, mask):
        b[offset] ^= mask
        return b

    cases = {}
    for n in range(120):
        start, length = rng.choice(ranges)
        offset, mask = start + rng.randrange(length), rng.randrange(1, 256)
        cases[damaged_copy(original, tmp_path / f"m{n}",
                           lambda b, o=offset, m=mask: flip(b, o, m))] = offset
    counts: Counter[str] = Counter()
    for path, result in run_cases(list(cases)).items():
        outcome = result["outcome"]
        if outcome == "read":
            outcome = "identical" if result["digest"] == reference["digest"] else "silent"
        counts[outcome] += 1
        assert outcome == "reported", (cases[path], result)  # every flip hits a value
        assert "checksum mismatch" in result["error"]
    print(f"flipped message records: {dict(counts)}")


# storage.md §9: an older format is migrated when opened (in one transaction: the test below).
def test_a_format_1_directory_is_migrated_when_opened(original, tmp_path):
    """Format 1 had no checksums: rewrite a copy as format 1 (values without their checksum,
    empty `order` values), open it, and read the same state as format 2."""
    path = tmp_path / "old"
    shutil.copytree(original, path)
    env = lmdb.open(str(path), max_dbs=8)
    with env.begin(write=True) as t:
        for name, strip in ((b"convs", 4), (b"log", 4), (b"order", 4)):
            db = env.open_db(name, txn=t)
            for k, v in list(t.cursor(db=db)):
                t.put(k, v[:-strip], db=db)
        t.put(b"format", struct.pack(">Q", 1), db=env.open_db(b"meta", txn=t))
    env.close()
    with Replica.open(original, create=False) as r:
        want = (list(r), r.state(), r.head, list(r.changes_since(0)))
    with Replica.open(path, create=False) as r:
        assert (list(r), r.state(), r.head, list(r.changes_since(0))) == want
        assert r.store.read(lambda t: t.meta(b"format")) == struct.pack(">Q", crdtim.store.FORMAT)
        r.set_title("conv-1", "after the migration")
    with Replica.open(path, create=False) as r:
        assert r.get("conv-1").title == "after the migration"


MAP_GROWTH_CHILD = """
import resource, sys
import crdtim.store
from crdtim import Replica, maintenance
from crdtim.errors import StoreError
crdtim.store.INITIAL_MAP_SIZE = 16 << 20
r = Replica.open(sys.argv[1], durability="nosync")
r.set_title("a", "before")
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
used = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (used + (8 << 20), hard))  # no room for a 32 MiB map
try:
    for i in range(3000):
        r.set_title(f"c{i}", "y" * 10000)
    print("grew")
except StoreError as e:
    print("refused:", e)
resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
r.set_title("b", "after")
print("later write:", r.get("b").title, r.get("a").title)
"""


def test_failed_map_growth_is_a_store_error_and_the_handle_stays_usable(tmp_path):
    """Was a raw lmdb.MemoryError, then "closed/deleted/dropped object" on every later write."""
    p = subprocess.run([sys.executable, "-c", MAP_GROWTH_CHILD, str(tmp_path / "r")], env=ENV,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "refused:" in p.stdout and "cannot grow the database map" in p.stdout, p.stdout
    assert "later write: after before" in p.stdout


class _FailingWrites:
    """An LMDB environment whose write transactions fail as a full or failing disk makes
    them fail (LMDB's message: the call, then strerror)."""

    def __init__(self, env, message):
        self._env, self._message = env, message

    def begin(self, write=False, **kw):
        if write:
            raise lmdb.Error(self._message)
        return self._env.begin(write=write, **kw)

    def __getattr__(self, name):
        return getattr(self._env, name)


@pytest.mark.parametrize("message, words", [
    ("mdb_txn_commit: No space left on device", "no space left on device"),
    ("mdb_page_flush: Input/output error", "I/O error"),
])
def test_disk_full_and_io_errors_say_so_with_the_path(tmp_path, message, words):
    with Replica.open(tmp_path / "r") as r:
        r.set_title("a", "kept")
        real = r.store._env
        r.store._env = _FailingWrites(real, message)
        try:
            with pytest.raises(crdtim.errors.StoreError) as info:
                r.set_title("a", "lost")
            assert str(info.value).startswith(f"{tmp_path / 'r'}: write failed: {words}")
            assert r.get("a").title == "kept"  # reads go on
        finally:
            r.store._env = real


# storage.md §9: an older format must be migrated in one write transaction that also writes
# the new format, so a crash leaves either the old layout or the new one.
def test_a_migration_that_dies_before_its_commit_leaves_the_old_format_whole(
        original, tmp_path, monkeypatch):
    path = tmp_path / "old"
    shutil.copytree(original, path)
    env = lmdb.open(str(path), max_dbs=8)
    with env.begin(write=True) as t:  # format 1, as in the test above
        for name in (b"convs", b"log", b"order"):
            db = env.open_db(name, txn=t)
            for k, v in list(t.cursor(db=db)):
                t.put(k, v[:-4], db=db)
        t.put(b"format", struct.pack(">Q", 1), db=env.open_db(b"meta", txn=t))
    env.close()
    migrate = crdtim.store.migrate

    def dies_after_migrating(t, current):
        migrate(t, current)
        raise RuntimeError("killed before the commit")
    monkeypatch.setattr(crdtim.store, "migrate", dies_after_migrating)
    with pytest.raises(RuntimeError):
        Replica.open(path, create=False)
    monkeypatch.undo()
    env = lmdb.open(str(path), max_dbs=8, readonly=True, lock=False)
    with env.begin() as t:  # nothing of the migration was committed: still format 1
        assert t.get(b"format", db=env.open_db(b"meta", txn=t)) == struct.pack(">Q", 1)
        convs = env.open_db(b"convs", txn=t)
        unsealed = {k: v for k, v in t.cursor(db=convs)}
    env.close()
    with Replica.open(original, create=False) as r:
        want = (list(r), r.state(), r.head)
    with Replica.open(path, create=False) as r:  # and it migrates whole on the next open
        assert (list(r), r.state(), r.head) == want
    assert unsealed
