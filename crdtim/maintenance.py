"""Operations on a replica directory as a whole: verify (and repair), backup and restore
(specs/storage.md §8a, §8b); what `crdtim verify`, `backup` and `restore` run.

`verify` walks every record in a child process (`python -m crdtim.maintenance`), so that
damage inside liblmdb (an assertion's abort, a read past the end of the file) ends the
child, never the caller; `walk` is what the child runs. Nothing here imports lmdb: the
records come through store.Txn.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from . import codec
from .errors import CorruptStoreError, CrdtimError, DecodeError, StoreError
from .replica import InvalidArgument, Replica
from .replica._core import new_replica_id
from .replica._message_index import MessageIndex, conversation_number
from .store import Txn, copy_environment, describe_key, order_key_of, unseal

__all__ = ["Problem", "VerifyReport", "backup", "restore", "verify", "walk"]

#: Meta values of fixed width (specs/storage.md §2, `meta`).
_META_WIDTHS = {b"clock": 12, b"log_floor": 8, b"format": 8}
_ACK_KINDS = {ord("a"): 8, ord("r"): 8, ord("i"): None, ord("s"): None}


@dataclass(frozen=True, slots=True)
class Problem:
    """One damaged record: its database, its key as a person reads it, and what is wrong."""

    database: str
    key: str
    problem: str


@dataclass(slots=True)
class VerifyReport:
    """What `verify` found. `crashed` names the signal when the walk itself died."""

    path: str
    problems: list[Problem] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=dict)
    crashed: str | None = None
    repaired: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return not self.problems and self.crashed is None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "ok": self.ok, "crashed": self.crashed,
                "checked": self.checked, "repaired": self.repaired,
                "problems": [{"database": p.database, "key": p.key, "problem": p.problem}
                             for p in self.problems]}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> VerifyReport:
        return cls(obj["path"], [Problem(**p) for p in obj["problems"]], obj["checked"],
                   obj["crashed"], obj["repaired"])


# -- verify: in a child process --------------------------------------------------------------


def verify(path: str | os.PathLike[str], repair: bool = False) -> VerifyReport:
    """Check (and with `repair`, heal) the replica at `path` in a child process."""
    argv = [sys.executable, "-m", "crdtim.maintenance", "verify", os.fspath(path)]
    child = subprocess.run(argv + (["--repair"] if repair else []), capture_output=True,
                           text=True, check=False)
    if child.returncode < 0:
        name = signal.Signals(-child.returncode).name
        return VerifyReport(os.fspath(path), crashed=name)
    try:
        return VerifyReport.from_json(json.loads(child.stdout))
    except (ValueError, KeyError, TypeError):
        last = (child.stderr.strip().splitlines() or ["no output"])[-1]
        raise StoreError(f"{path}: verify failed: {last}") from None


class _Findings:
    """What one walk over a transaction found, and what a repair would change."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []
        self.checked: dict[str, int] = {}
        self.bad_convs: list[bytes] = []
        self.bad_order: list[bytes] = []
        self.missing_order: list[bytes] = []
        self.bad_log_upto = 0
        self.bad_messages: list[bytes] = []  # `messages` keys
        self.reindex: list[str] = []  # conversations whose `mindex` differs from a rebuild
        self.stray_index: list[bytes] = []  # `mindex` keys under no conversation's number
        self.last_number: bytes | None = None  # to write as the last number made

    def add(self, database: str, key: bytes, problem: str) -> None:
        self.problems.append(Problem(database, describe_key(database, key), problem))


def _why(e: Exception) -> str:
    if isinstance(e, CorruptStoreError):
        return "checksum mismatch"
    return f"{type(e).__name__}: {e}"


def _find(t: Txn, path: str, replica: Replica) -> _Findings:
    f = _Findings()
    expected: dict[bytes, bytes] = {}  # order key -> conversation key
    bad: set[bytes] = set()
    for n, (k, v) in enumerate(t.raw_records("convs"), 1):
        f.checked["convs"] = n
        try:
            cid = k.decode()
            fields = codec.decode_fields(unseal(path, "convs", k, v), replica.schema,
                                         codec.STORAGE_LIMITS, cid)
            key = order_key_of(cid, fields)
            if key is None:
                if conversation_number(t, cid, False) is not None:
                    # A conversation known only by its messages: its record is empty, and
                    # listed nowhere (specs/storage.md §8a).
                    continue
                raise DecodeError("an empty state (a stored state is never empty but for "
                                  "a conversation with messages)")
        except (CrdtimError, UnicodeDecodeError) as e:
            f.add("convs", k, _why(e))
            f.bad_convs.append(k)
            bad.add(k)
            continue
        expected[key] = k
    found: set[bytes] = set()
    for n, (k, v) in enumerate(t.raw_records("order"), 1):
        f.checked["order"] = n
        if k[9:] in bad:
            f.bad_order.append(k)  # the damaged conversation's entry goes with it
            continue
        try:
            unseal(path, "order", k, v)
        except CorruptStoreError as e:
            f.add("order", k, _why(e))
            f.bad_order.append(k)
            continue
        if k not in expected:
            f.add("order", k, "index entry that matches no conversation's state")
            f.bad_order.append(k)
        else:
            found.add(k)
    for key in sorted(set(expected) - found):
        f.add("order", expected[key], "conversation missing from the listing index")
        f.missing_order.append(key)
    previous = t.log_floor()
    for n, (k, v) in enumerate(t.raw_records("log"), 1):
        f.checked["log"] = n
        seq = int.from_bytes(k, "big") if len(k) == 8 else previous + 1
        try:
            if len(k) != 8:
                raise DecodeError(f"key of {len(k)} bytes, not 8")
            if seq != previous + 1:
                raise DecodeError(f"follows seq {previous}: a gap in the log")
            entry = unseal(path, "log", k, v)
            entry[1:1 + entry[0]].decode()
            codec.decode_map(entry[1 + entry[0]:], replica.schema, codec.STORAGE_LIMITS)
        except (CrdtimError, UnicodeDecodeError, IndexError) as e:
            f.add("log", k, _why(e))
            f.bad_log_upto = max(f.bad_log_upto, seq)
        previous = seq
    _find_messages(t, path, f, {k.decode() for k in bad if _utf8(k)})
    for k, v in t.raw_records("meta"):
        width = _META_WIDTHS.get(k)
        if width is not None and len(v) != width:
            f.add("meta", k, f"{len(v)} bytes, not {width}")
    for k, v in t.raw_records("acks"):
        if not k or k[0] not in _ACK_KINDS:
            f.add("acks", k, "unknown kind of record")
        elif _ACK_KINDS[k[0]] is not None and len(v) != _ACK_KINDS[k[0]]:
            f.add("acks", k, f"{len(v)} bytes, not 8")
    return f


# -- the message histories: records, then their index against a rebuild --------------------

_KINDS = {b"s": "shape", b"g": "member", b"k": "child", b"v": "visible"}


def _find_messages(t: Txn, path: str, f: _Findings, dropped: set[str]) -> None:
    """Every `messages` record: its key's shape, its checksum, that it decodes; then each
    conversation's `mindex` entries against what MessageIndex.rebuild makes from the
    records that are sound (specs/storage.md §8a). The records of the `dropped`
    conversations (their `convs` record is damaged) are dropped with them, unreported."""
    numbers: dict[bytes, str] = {}  # P -> conversation id
    last = None
    for k, v in t.raw_records("mindex"):
        if k == _CIDS:
            last = v
        elif k[:1] != _CIDS:
            continue
        elif len(v) != 8 or not _utf8(k[1:]):
            f.add("mindex", k, "damaged conversation number")
            f.stray_index.append(k)
        else:
            numbers[v] = k[1:].decode()
    if numbers and (last is None or len(last) != 8 or last < max(numbers)):
        # Numbers are never reused: the last one made must be at least every one in use.
        f.add("mindex", _CIDS, "the last conversation number made is missing or too small")
        f.last_number = max(numbers)
    damaged: dict[bytes, set[bytes]] = {}  # P -> keys of its damaged records
    for n, (k, v) in enumerate(t.raw_records("messages"), 1):
        f.checked["messages"] = n
        number, kind, name = k[:8], k[8:9], k[9:]
        cid = numbers.get(number)
        where = _message_key(cid, k)
        if cid in dropped:
            # A state transfer lists conversations by their records (specs/protocol.md §5):
            # messages kept without one would not be sent to the peers that ask first, and
            # what they hold that no peer has would never leave this replica. The
            # conversation goes whole; the peers fill it again (specs/storage.md §8a).
            f.bad_messages.append(k)
            damaged.setdefault(number, set()).add(k)
            continue
        try:
            if cid is None:
                raise DecodeError("a record of no conversation (its number is unknown)")
            if kind not in (b"m", b"c") or not _utf8(name) or not name or b"\x00" in name:
                raise DecodeError(f"not a message or choice key ({kind!r})")
            body = unseal(path, "messages", k, v)
            if kind == b"m":
                if codec.decode_message(body).is_bottom():
                    raise DecodeError("a bottom message (a stored message never is)")
            else:
                codec.decode_choice(body)
        except CrdtimError as e:
            f.problems.append(Problem("messages", where, _why(e)))
            f.bad_messages.append(k)
            damaged.setdefault(number, set()).add(k)
    stored = _Stored(t, damaged)
    entries = 0
    for k, _ in t.raw_records("mindex"):
        if k[:1] == _CIDS:
            continue
        entries += 1
        if k[:8] not in numbers:
            f.problems.append(Problem("mindex", _message_key(None, k),
                                      "index entry of no conversation"))
            f.stray_index.append(k)
    if entries:
        f.checked["mindex"] = entries
    for number, cid in sorted(numbers.items()):
        rebuilt = stored.rebuilt(cid)
        found = dict(t.scan("mindex", number, _after(number)))
        if rebuilt == found:
            continue
        f.reindex.append(cid)
        if number in damaged:
            continue  # the damaged records explain it; repair rebuilds without them
        for k in sorted(rebuilt.keys() | found.keys()):
            if k not in found:
                why = "index entry missing (a rebuild from the records has it)"
            elif k not in rebuilt:
                why = "index entry that a rebuild from the records does not make"
            elif found[k] != rebuilt[k]:
                why = "index entry differs from a rebuild from the records"
            else:
                continue
            f.problems.append(Problem("mindex", _message_key(cid, k), why))


class _Stored(Txn):
    """The read transaction with `mindex` replaced by an empty one in memory, and the
    damaged `messages` records left out: what MessageIndex.rebuild writes into it is the
    index the sound records call for, made by the code that keeps the real one, without
    writing to the replica."""

    __slots__ = ("_damaged", "_index", "_keys")

    def __init__(self, t: Txn, damaged: dict[bytes, set[bytes]]):
        super().__init__(t._t, t._s)  # the same LMDB transaction, read through
        self._damaged = {k for keys in damaged.values() for k in keys}
        self._index: dict[bytes, bytes] = {}
        self._keys: list[bytes] = []

    def rebuilt(self, cid: str) -> dict[bytes, bytes]:
        self._index, self._keys = {}, []
        index = MessageIndex(self, cid)
        index.rebuild()
        return self._index

    def get(self, database: str, key: bytes) -> bytes | None:
        if database == "mindex" and key[:1] != _CIDS:
            return self._index.get(key)
        return super().get(database, key)

    def get_sealed(self, database: str, key: bytes) -> bytes | None:
        if database == "messages" and key in self._damaged:
            return None
        return super().get_sealed(database, key)

    def put(self, database: str, key: bytes, value: bytes) -> None:
        assert database == "mindex" and key[:1] != _CIDS, "a rebuild writes only the index"
        if key not in self._index:
            self._keys.insert(bisect_left(self._keys, key), key)
        self._index[key] = value

    def delete(self, database: str, key: bytes) -> None:
        assert database == "mindex"
        if self._index.pop(key, None) is not None:
            self._keys.remove(key)

    def put_sealed(self, database: str, key: bytes, value: bytes) -> None:
        raise AssertionError("a rebuild writes only the index")

    def scan(self, database: str, start: bytes, stop: bytes | None = None,
             reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        if database != "mindex":
            for k, v in super().scan(database, start, stop, reverse):
                if k not in self._damaged:
                    yield k, v
            return
        keys = [k for k in self._keys[bisect_left(self._keys, start):]
                if stop is None or k < stop]
        for k in reversed(keys) if reverse else keys:
            yield k, self._index[k]


_CIDS = b"\xff"


def _after(prefix: bytes) -> bytes:
    return (int.from_bytes(prefix, "big") + 1).to_bytes(8, "big")


def _utf8(b: bytes) -> bool:
    try:
        b.decode()
    except UnicodeDecodeError:
        return False
    return True


def _message_key(cid: str | None, k: bytes) -> str:
    """A `messages` or `mindex` key as a person reads it: conversation, kind, the rest."""
    who = repr(cid) if cid is not None else f"#{int.from_bytes(k[:8], 'big')}"
    kind = {b"m": "message", b"c": "choice", **_KINDS}.get(k[8:9], repr(k[8:9]))
    rest = k[9:].split(b"\x00")[0] if k[8:9] in (b"g", b"k") else k[9:]
    if k[8:9] == b"v":
        rest = k[9:][k[9:].rfind(b"\x00") + 1:]
    return f"{who} {kind} {rest.decode('utf-8', 'backslashreplace')!r}"


def _repair(t: Txn, f: _Findings) -> dict[str, Any]:
    """Drop what is damaged, rebuild the index, and make peers send everything again
    (specs/storage.md §8a)."""
    for k in f.bad_convs:
        t.delete_record("convs", k)
    for k in f.bad_order:
        t.delete_record("order", k)
    for k in f.missing_order:
        t.put_order_key(k)
    for k in f.bad_messages:
        t.delete_record("messages", k)
    for k in f.stray_index:
        t.delete_record("mindex", k)
    if f.last_number is not None:
        t.put("mindex", _CIDS, f.last_number)
    for cid in f.reindex:
        MessageIndex(t, cid).rebuild()
    done: dict[str, Any] = {"conversations_dropped": len(f.bad_convs),
                            "index_entries_fixed": len(f.bad_order) + len(f.missing_order),
                            "message_records_dropped": len(f.bad_messages),
                            "message_indexes_rebuilt": len(f.reindex)}
    if f.bad_convs or f.bad_log_upto or f.bad_messages:
        # Peers leave out of what they send us the entries that came from us: under our old
        # id they would never send back our own writes to the dropped conversations. Under a
        # new id, with every resume point cleared, they send everything (specs/storage.md §8a).
        t.forget_peers(b"ars")
        t.drop_log_upto(t.head())
        new_id = new_replica_id()
        t.reidentify(new_id)
        done.update(log_dropped_upto=t.log_floor(), new_id=new_id)
    return done


def walk(path: str | os.PathLike[str], repair: bool = False) -> VerifyReport:
    """Check every record of the replica at `path` in this process (what the child of
    `verify` runs; damage inside liblmdb may kill the process running it)."""
    report = VerifyReport(os.fspath(path))
    try:
        replica = Replica.open(path, create=False)
    except CrdtimError as e:
        report.problems.append(Problem("data.mdb", "", str(e)))
        return report
    with replica:
        store = replica.store
        try:
            if repair:
                def fix(t: Txn) -> tuple[_Findings, dict[str, Any]]:
                    f = _find(t, store.path, replica)
                    return f, _repair(t, f)
                found, report.repaired = store.write(fix)
            else:
                found = store.read(lambda t: _find(t, store.path, replica))
        except CorruptStoreError as e:
            # LMDB's own checks failed on a page (MDB_CORRUPTED, MDB_PAGE_NOTFOUND): the walk
            # cannot get past it, so nothing can be repaired (specs/storage.md §8a).
            report.problems.append(Problem("data.mdb", "", "LMDB's page structure is "
                                           "damaged, the walk cannot go on: "
                                           + str(e).removesuffix("; run `crdtim verify`")))
            return report
    report.problems, report.checked = found.problems, found.checked
    return report


# -- backup and restore -----------------------------------------------------------------------


def _empty_destination(dest: str, what: str) -> None:
    if os.path.exists(dest) and not (os.path.isdir(dest) and not os.listdir(dest)):
        raise InvalidArgument(f"{dest}: exists and is not an empty directory; {what} refuses to "
                              f"write into it")


def backup(source: str | os.PathLike[str] | Replica, dest: str | os.PathLike[str]) -> None:
    """A consistent, compacted copy of the replica at `source` (a path, or a Replica this
    process has open) in the new (or empty) directory `dest`, while other processes go on
    writing to it (specs/storage.md §8b)."""
    dest = os.fspath(dest)
    _empty_destination(dest, "backup")
    if isinstance(source, Replica):
        _copy(source, dest)
        return
    with Replica.open(source, create=False) as replica:
        _copy(replica, dest)


def _copy(replica: Replica, dest: str) -> None:
    made = not os.path.exists(dest)
    os.makedirs(dest, exist_ok=True)
    try:
        replica.store.copy_compacted(dest)
    except StoreError:
        if made:
            shutil.rmtree(dest, ignore_errors=True)
        raise


def restore(src: str | os.PathLike[str], dest: str | os.PathLike[str]) -> str:
    """A new replica in `dest` (new or empty) holding the state of the backup `src`, under a
    new id, with no peer's ack, resume point, binding or scope and an empty log; returns the
    new id (specs/storage.md §8b). `src` is left as it is. Built beside `dest` and renamed
    into place, so that a crash never leaves a half-restored replica at `dest`."""
    src, dest = os.fspath(src), os.path.abspath(dest)
    _empty_destination(dest, "restore")
    work = f"{dest}.restoring-{os.getpid()}"
    os.makedirs(work)
    try:
        copy_environment(src, work)
        report = verify(work)  # a damaged backup is refused, not restored
        if not report.ok:
            first = report.problems[0] if report.problems else None
            what = f"liblmdb died of {report.crashed} reading it" if first is None else \
                f"{first.database} {first.key}: {first.problem}"
            raise CorruptStoreError(f"{src}: the backup is damaged ({what}); nothing was "
                                    f"restored")
        new_id = new_replica_id()
        with Replica.open(work, create=False) as replica:
            def reset(t: Txn) -> None:
                t.forget_peers(b"aris")
                t.drop_log_upto(t.head())
                t.reidentify(new_id)
            replica.store.write(reset)
        if os.path.isdir(dest):
            os.rmdir(dest)
        os.rename(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return new_id


def _main(argv: list[str]) -> int:
    if len(argv) not in (2, 3) or argv[0] != "verify" or argv[2:] not in ([], ["--repair"]):
        sys.stderr.write("usage: python -m crdtim.maintenance verify DIR [--repair]\n")
        return 2
    report = walk(argv[1], repair=argv[2:] == ["--repair"])
    sys.stdout.write(json.dumps(report.to_json()) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
