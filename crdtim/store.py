"""LMDB storage of one replica; the only module that imports lmdb.

One environment per replica directory, with named databases (layout in specs/storage.md):

    meta   b"magic", b"format", b"replica_id", b"clock", b"log_floor"
    (convs, order, log, pending and messages values are sealed with a CRC-32: seal, unseal)
    convs  conversation id (utf-8)          -> encoded conversation state
    order  ordering key (see order_key)     -> b""   (paged listing, pinned first)
    log    local sequence (8-byte big end.) -> origin length, origin, encoded delta
    acks   b"a" + peer id -> highest local sequence the peer acknowledged;
           b"r" + peer id -> highest sequence of the peer's log applied here;
           b"i" + peer id -> the identity the peer first authenticated as (utf-8);
           b"s" + peer id -> the scope the peer's ack was earned under (absent: everything)
    pending  8-byte big-endian wall ms + conversation id (utf-8) -> origin length, origin,
             encoded one-conversation delta held until that time (specs/storage.md §2)
    messages, mindex  the message histories and their index: raw records whose layout is
             crdtim/replica/_messages.py's (specs/storage.md §2)

Every mutation runs as one write transaction through `Store.write`, which re-runs it after
growing the map when it is full, so callers never meet MDB_MAP_FULL. Nothing here decodes
what it stores: encoding belongs to crdtim/codec/, meaning to crdtim/replica/; the bytes of
the records that need no lmdb (the order key, the seals) are _records.py's.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import lmdb

from ._datafile import check_data_file, check_regular_file
from ._format import MAGIC, checked_identity, migrate
from ._records import (
    CHECKSUM_BYTES,
    describe_key,
    describe_lmdb_error,
    lmdb_failure,
    order_key,
    order_key_of,
    seal,
    unseal,
)
from .errors import CorruptStoreError, NotAReplicaError, StoreError

__all__ = [
    "CHECKSUM_BYTES", "FORMAT", "Store", "Txn", "copy_environment", "describe_key",
    "describe_lmdb_error", "order_key", "order_key_of", "seal", "unseal",
]

T = TypeVar("T")

FORMAT = 3
#: Formats this crdtim migrates to FORMAT when it opens them (specs/storage.md §9).
MIGRATABLE_FORMATS = (1, 2)

_U64 = struct.Struct(">Q")
_CLOCK = struct.Struct(">QI")

INITIAL_MAP_SIZE = 64 * 1024 * 1024
#: The named databases, as Store opens them (specs/storage.md).
DATABASES = (b"meta", b"convs", b"order", b"log", b"acks", b"pending", b"messages", b"mindex")
#: LMDB refuses keys longer than 511 bytes (its default build); an ordering key is a 9-byte
#: prefix and the conversation id, so that is the longest id, in UTF-8 bytes, we can store.
MAX_CID_BYTES = 511 - 9
#: A log entry frames its origin with one length byte.
MAX_ORIGIN_BYTES = 255
_OPEN_IN_THIS_PROCESS: set[str] = set()
_PAGE_DAMAGE = (lmdb.CorruptedError, lmdb.PageNotFoundError)  # LMDB's checks of its pages
DURABILITY_MODES = ("sync", "nosync")


def _framed(v: bytes) -> tuple[str, bytes]:
    """(origin, payload) of a value framed as one length byte, the origin, the payload."""
    n = v[0]
    return bytes(v[1 : 1 + n]).decode(), bytes(v[1 + n :])


def _u64(b: bytes | None, default: int = 0) -> int:
    return default if b is None else _U64.unpack(b)[0]


class Txn:
    """A transaction on the replica's databases; read-only or read-write."""

    __slots__ = ("_s", "_t")

    def __init__(self, txn: lmdb.Transaction[bytes], store: Store):
        self._t = txn
        self._s = store

    # meta
    def meta(self, key: bytes) -> bytes | None:
        return self._t.get(key, db=self._s._meta)

    def put_meta(self, key: bytes, value: bytes) -> None:
        self._t.put(key, value, db=self._s._meta)

    def clock(self) -> tuple[int, int]:
        raw = self.meta(b"clock")
        return (0, 0) if raw is None else _CLOCK.unpack(raw)

    def put_clock(self, wall: int, counter: int) -> None:
        self.put_meta(b"clock", _CLOCK.pack(wall, counter))

    def head(self) -> int:
        """The newest log sequence: the last entry's, or the floor when all were dropped.

        Read from the log itself rather than kept in meta, so a commit touches one B-tree
        fewer (the meta page is then written only when the clock moves).
        """
        with self._t.cursor(db=self._s._log) as cur:
            if cur.last():
                return self._log_seq(cur.key())
        return self.log_floor()

    def _log_seq(self, key: bytes) -> int:
        if len(key) != _U64.size:
            raise CorruptStoreError(f"{self._s.path}: damaged key in database 'log': "
                                    f"{len(key)} bytes, not 8")
        return _u64(key)

    def log_floor(self) -> int:
        """Every log entry at or below this sequence has been dropped."""
        return _u64(self.meta(b"log_floor"))

    # conversations (values sealed with a checksum: specs/storage.md §2, "Checksums")
    def conversation(self, cid: str) -> bytes | None:
        key = cid.encode()
        raw = self._t.get(key, db=self._s._convs)
        return None if raw is None else unseal(self._s.path, "convs", key, raw)

    def sealed_conversation(self, cid: str) -> bytes | None:
        """A conversation's value as stored, its seal unchecked (see unseal_conversation)."""
        return self._t.get(cid.encode(), db=self._s._convs)

    def unseal_conversation(self, cid: str, sealed: bytes) -> bytes:
        return unseal(self._s.path, "convs", cid.encode(), sealed)

    def put_conversation(self, cid: str, value: bytes) -> bytes:
        """Store a conversation's value; returns it as stored (sealed)."""
        key = cid.encode()
        sealed = seal(key, value)
        self._t.put(key, sealed, db=self._s._convs)
        return sealed

    def conversation_count(self) -> int:
        return self._t.stat(self._s._convs)["entries"]

    def has_conversation_between(self, first: str, last: str) -> bool:
        """True if a conversation with first <= id <= last is stored (ids compare as their
        UTF-8 bytes do, which is code point order)."""
        with self._t.cursor(db=self._s._convs) as cur:
            return cur.set_range(first.encode()) and cur.key() <= last.encode()

    def conversations(self, after: str | None = None, *, inclusive: bool = False
                      ) -> Iterator[tuple[str, bytes]]:
        """Conversations in id order, starting after `after` (at it, with `inclusive`)."""
        with self._t.cursor(db=self._s._convs) as cur:
            start = b"" if after is None else after.encode()
            if not cur.set_range(start):
                return
            for k, v in cur:
                if after is not None and k == start and not inclusive:
                    continue
                v = unseal(self._s.path, "convs", k, v)
                yield k.decode(), v

    # ordering index
    def replace_order_key(self, old: bytes | None, new: bytes | None) -> None:
        """Move a conversation's `order` key from `old` to `new` (None: no key)."""
        if old == new:
            return
        if old is not None:
            self._t.delete(old, db=self._s._order)
        if new is not None:
            # The value is the key's checksum: a damaged key must not list a phantom.
            self._t.put(new, seal(new, b""), db=self._s._order)

    def order_keys(self, after: bytes | None) -> Iterator[bytes]:
        with self._t.cursor(db=self._s._order) as cur:
            if not cur.set_range(after or b""):
                return
            for k, v in cur:
                if k == after:
                    continue
                unseal(self._s.path, "order", k, v)
                yield k

    # delta log
    def append_log(self, origin: str, payload: bytes) -> int:
        seq = self.head() + 1
        o = origin.encode()
        key = _U64.pack(seq)
        self._t.put(key, seal(key, bytes([len(o)]) + o + payload), db=self._s._log, append=True)
        return seq

    def log_entries(self, after: int, upto: int | None = None) -> Iterator[tuple[int, str, bytes]]:
        """(seq, origin, payload) for retained entries with after < seq <= upto."""
        with self._t.cursor(db=self._s._log) as cur:
            if not cur.set_range(_U64.pack(after + 1)):
                return
            for k, v in cur:
                seq = self._log_seq(k)
                if upto is not None and seq > upto:
                    return
                v = unseal(self._s.path, "log", k, v)
                n = v[0]
                yield seq, v[1 : 1 + n].decode(), v[1 + n :]

    def drop_log_upto(self, seq: int) -> int:
        """Drop entries with sequence <= seq; returns how many."""
        dropped = 0
        with self._t.cursor(db=self._s._log) as cur:
            if cur.first():
                # delete() moves to the next entry; past the last one the key is empty.
                while cur.key() and _U64.unpack(cur.key())[0] <= seq:
                    dropped += 1
                    if not cur.delete():
                        break
        if seq > self.log_floor():
            self.put_meta(b"log_floor", _U64.pack(seq))
        return dropped

    # peers: b"a" + id -> highest seq of OUR log the peer acknowledged;
    #        b"r" + id -> highest seq of THEIR log we applied (written with the delta itself)
    def ack(self, peer: str) -> int | None:
        raw = self._t.get(b"a" + peer.encode(), db=self._s._acks)
        return None if raw is None else _u64(raw)

    def put_ack(self, peer: str, seq: int) -> None:
        self._t.put(b"a" + peer.encode(), _U64.pack(seq), db=self._s._acks)

    def received(self, peer: str) -> int:
        return _u64(self._t.get(b"r" + peer.encode(), db=self._s._acks))

    def put_received(self, peer: str, seq: int) -> None:
        self._t.put(b"r" + peer.encode(), _U64.pack(seq), db=self._s._acks)

    def identity(self, peer: str) -> str | None:
        raw = self._t.get(b"i" + peer.encode(), db=self._s._acks)
        return None if raw is None else bytes(raw).decode("utf-8", "replace")

    def put_identity(self, peer: str, identity: str) -> None:
        self._t.put(b"i" + peer.encode(), identity.encode(), db=self._s._acks)

    def sent_scope(self, peer: str) -> bytes | None:
        raw = self._t.get(b"s" + peer.encode(), db=self._s._acks)
        return None if raw is None else bytes(raw)

    def put_sent_scope(self, peer: str, scope: bytes | None) -> None:
        if scope is None:
            self._t.delete(b"s" + peer.encode(), db=self._s._acks)
        else:
            self._t.put(b"s" + peer.encode(), scope, db=self._s._acks)

    def delete_identity(self, peer: str) -> None:
        self._t.delete(b"i" + peer.encode(), db=self._s._acks)

    def acks(self) -> dict[str, int]:
        with self._t.cursor(db=self._s._acks) as cur:
            cur.set_range(b"a")
            out = {}
            for k, v in cur:
                if not k.startswith(b"a"):
                    break
                out[k[1:].decode()] = _u64(v)
            return out

    # maintenance (crdtim/maintenance.py): every record as stored, and the repairs
    def raw_records(self, database: str) -> Iterator[tuple[bytes, bytes]]:
        """Every (key, value) of one named database, as stored (sealed values unchecked)."""
        with self._t.cursor(db=self._s.database(database)) as cur:
            for k, v in cur:
                yield bytes(k), bytes(v)

    def delete_record(self, database: str, key: bytes) -> None:
        self._t.delete(key, db=self._s.database(database))

    def put_order_key(self, key: bytes) -> None:
        self.replace_order_key(None, key)

    def forget_peers(self, prefixes: bytes = b"ars") -> None:
        """Delete every `acks` record whose kind (its first byte) is in `prefixes`."""
        doomed = [k for k, _ in self.raw_records("acks") if k[:1] and k[0] in prefixes]
        for k in doomed:
            self._t.delete(k, db=self._s._acks)

    def reidentify(self, replica_id: str) -> None:
        """Give the replica a new id (specs/storage.md §8b): only restore and repair do."""
        self.put_meta(b"replica_id", replica_id.encode())

    # raw records of a named database, for the layouts kept elsewhere (the message store's,
    # crdtim/replica/_messages.py; the migrations): nothing sealed or checked here
    def get(self, database: str, key: bytes) -> bytes | None:
        return self._t.get(key, db=self._s._dbs[database])

    def put(self, database: str, key: bytes, value: bytes) -> None:
        self._t.put(key, value, db=self._s._dbs[database])

    def delete(self, database: str, key: bytes) -> None:
        self._t.delete(key, db=self._s._dbs[database])

    def get_sealed(self, database: str, key: bytes) -> bytes | None:
        """A value written with put_sealed; CorruptStoreError naming the key if damaged."""
        raw = self._t.get(key, db=self._s._dbs[database])
        return None if raw is None else unseal(self._s.path, database, key, raw)

    def put_sealed(self, database: str, key: bytes, value: bytes) -> None:
        self._t.put(key, seal(key, value), db=self._s._dbs[database])

    def scan(self, database: str, start: bytes, stop: bytes | None = None,
             reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """The records with start <= key < stop (no stop: to the end), in key order, or
        from the last one down with `reverse`. Do not write while iterating."""
        with self._t.cursor(db=self._s._dbs[database]) as cur:
            if not reverse:
                if not cur.set_range(start):
                    return
                for k, v in cur:
                    if stop is not None and k >= stop:
                        return
                    yield k, v
                return
            if stop is None or not cur.set_range(stop):
                if not cur.last():
                    return
            elif not cur.prev():
                return
            for k, v in cur.iterprev():
                if k < start:
                    return
                yield k, v

    # pending: values from peers stamped too far ahead, held until their time (see _pending)
    def pending_entry(self, wall: int, cid: str) -> tuple[str, bytes] | None:
        raw = self.get_sealed("pending", _U64.pack(wall) + cid.encode())
        return None if raw is None else _framed(raw)

    def put_pending(self, wall: int, cid: str, origin: str, payload: bytes) -> None:
        o = origin.encode()
        self.put_sealed("pending", _U64.pack(wall) + cid.encode(), bytes([len(o)]) + o + payload)

    def delete_pending(self, wall: int, cid: str) -> None:
        self.delete("pending", _U64.pack(wall) + cid.encode())

    def first_pending_wall(self) -> int | None:
        """The earliest held time: one cursor probe (every write transaction makes it)."""
        with self._t.cursor(db=self._s._pending) as cur:
            return _u64(cur.key()[:8]) if cur.first() else None

    def pending_upto(self, wall: int) -> list[tuple[int, str, str, bytes]]:
        """(wall, cid, origin, payload) of the values held until `wall` or earlier."""
        return [(_u64(k[:8]), k[8:].decode(), *_framed(unseal(self._s.path, "pending", k, v)))
                for k, v in self.scan("pending", b"", _U64.pack(wall + 1))]

    def pending_count(self) -> int:
        return self._t.stat(self._s._pending)["entries"]


class Store:
    """The LMDB environment of one replica directory."""

    def __init__(self, path: str, durability: str = "sync", create: bool = True):
        if durability not in DURABILITY_MODES:
            raise ValueError(f"durability must be one of {DURABILITY_MODES}, not {durability!r}")
        self.path = path
        self.durability = durability
        self._key = os.path.realpath(path)
        # LMDB must not open one environment twice in a process (its locks are per process):
        # say so plainly instead of failing somewhere inside lmdb.
        if self._key in _OPEN_IN_THIS_PROCESS:
            raise StoreError(f"{path}: already open in this process; share that Replica")
        fresh = _check_directory(path, create)
        try:
            self._env = self._open_environment()
        except lmdb.Error as e:
            raise StoreError(f"{path}: cannot open the database: {e}") from None
        # Another process may already have grown the map: adopt the file's size.
        self._grow(0)
        try:
            self._open_databases()
        except lmdb.Error as e:
            self._env.close()
            raise CorruptStoreError(f"{path}: damaged database: {e}") from None
        self.fresh = fresh
        _OPEN_IN_THIS_PROCESS.add(self._key)

    def close(self) -> None:
        self._env.close()
        _OPEN_IN_THIS_PROCESS.discard(self._key)

    def _grow(self, to: int) -> None:
        try:
            self._env.set_mapsize(to)
        except lmdb.MemoryError:
            # No address space for the larger map (a ulimit -v, a 32-bit process). LMDB has
            # unmapped the old map and py-lmdb has closed the environment and every handle
            # of it: open it again at the size the file records, so that this Store stays
            # usable (specs/storage.md §6), and say what failed.
            self._remap_after_failed_growth()
            raise StoreError(
                f"{self.path}: cannot grow the database map to {to // 2**20} MiB: out of "
                f"memory or address space (see ulimit -v); nothing was written") from None

    def _open_environment(self) -> lmdb.Environment:
        sync = self.durability == "sync"
        return lmdb.open(self.path, map_size=INITIAL_MAP_SIZE, max_dbs=16, sync=sync,
                         metasync=sync, readahead=False, max_readers=256)

    def _remap_after_failed_growth(self) -> None:
        try:
            self._env.close()
        except lmdb.Error:
            pass  # py-lmdb has already closed it
        try:
            self._env = self._open_environment()
            self._env.set_mapsize(0)  # the size the file records: it was mapped a moment ago
            self._open_databases()
        except lmdb.Error as e:
            raise StoreError(f"{self.path}: the database map was lost after a failed growth "
                             f"({e}); close and reopen the replica") from None

    def _open_databases(self) -> None:
        self._dbs: dict[str, Any] = {n.decode(): self._env.open_db(n) for n in DATABASES}
        self._meta, self._convs, self._order = (self._dbs[n] for n in ("meta", "convs", "order"))
        self._log, self._acks, self._pending = (self._dbs[n] for n in ("log", "acks", "pending"))

    def read(self, fn: Callable[[Txn], T]) -> T:
        for _ in range(3):
            try:
                with self._env.begin(write=False) as t:
                    return fn(Txn(t, self))
            except lmdb.MapResizedError:
                self._grow(0)
            except lmdb.Error as e:
                raise lmdb_failure(self.path, e, isinstance(e, _PAGE_DAMAGE)) from None
        raise StoreError(f"{self.path}: the map kept being resized by another process")

    def write(self, fn: Callable[[Txn], T]) -> T:
        """Run `fn` in one write transaction and commit it; all of it happens or none.

        When the map is full the transaction is aborted, the map doubled and `fn` run again,
        so `fn` must compute everything from what it reads in the transaction.
        """
        while True:
            try:
                with self._env.begin(write=True) as t:
                    return fn(Txn(t, self))
            except lmdb.MapFullError:
                self._grow(self._env.info()["map_size"] * 2)
            except lmdb.MapResizedError:
                self._grow(0)
            except lmdb.Error as e:  # disk full, read-only file system...: nothing committed
                raise lmdb_failure(self.path, e, isinstance(e, _PAGE_DAMAGE), "write failed: "
                                   ) from None

    def database(self, name: str) -> Any:
        """The handle of a named database (one of DATABASES), by name."""
        handle = self._dbs.get(name)
        if handle is None:
            raise ValueError(f"no database {name!r}")
        return handle

    def copy_compacted(self, dest: str) -> None:
        """A consistent, compacted copy of the environment into the directory `dest`, read
        in one read transaction (LMDB's copy with MDB_CP_COMPACT): writers go on meanwhile."""
        try:
            self._env.copy(dest, compact=True)
        except lmdb.Error as e:
            raise StoreError(f"{self.path}: copy to {dest} failed: {describe_lmdb_error(e)}"
                             ) from None

    def disk_size(self) -> int:
        return os.path.getsize(os.path.join(self.path, "data.mdb"))

    # -- identity of the directory -------------------------------------------------------------

    def init_meta(self, make_replica_id: Callable[[], str]) -> tuple[str, bool]:
        """Stamp a new replica with magic, format and a fresh id, or check an existing one;
        returns (replica id, whether it was made now)."""

        def init(t: Txn) -> tuple[str, bool]:
            magic = t.meta(b"magic")
            if magic is None:
                if t.conversation_count() or t.meta(b"format") is not None:
                    raise NotAReplicaError(f"{self.path}: database has no crdtim marker")
                t.put_meta(b"magic", MAGIC)
                t.put_meta(b"format", _U64.pack(FORMAT))
                rid = make_replica_id()
                t.put_meta(b"replica_id", rid.encode())
                return rid, True
            rid = checked_identity(self.path, t.meta, FORMAT, MIGRATABLE_FORMATS)
            migrate(t, FORMAT)
            return rid, False

        return self.write(init)

    def replica_id(self) -> str:
        return self.read(self._checked_id)

    def _checked_id(self, t: Txn) -> str:
        return checked_identity(self.path, t.meta, FORMAT)


def _check_directory(path: str, create: bool) -> bool:
    """Refuse, before LMDB writes anything, a path that is not (or cannot become) a replica.

    Returns True when the directory is new or empty, or holds only what a `crdtim init`
    that died half-way leaves (no write was ever acknowledged from it).
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise NotAReplicaError(f"{path}: is a file, not a replica directory")
    if not os.path.exists(path):
        if not create:
            raise NotAReplicaError(f"{path}: no such replica directory (run `crdtim init`)")
        os.makedirs(path)
        return True
    names = set(os.listdir(path))
    data = os.path.join(path, "data.mdb")
    if "data.mdb" in names:
        check_regular_file(data)
    if names <= {"lock.mdb", "data.mdb"} and (
            not os.path.exists(data) or not os.path.getsize(data)):
        # Empty, or LMDB died between making its lock file, its data file and its first pages.
        return _fresh(path, create)
    if "data.mdb" not in names:
        raise NotAReplicaError(
            f"{path}: directory is not empty and holds no crdtim database; refusing to use it"
        )
    # Validate the file read-only first, so that a damaged, foreign or newer-format directory
    # is left exactly as it was. With a lock file present another process may be writing
    # (the CLI while `serve` runs): then read under the lock, as a registered reader, or the
    # writer may reuse the very pages being read. With none, nobody is, and none is made.
    check_data_file(data, retries=3 if "lock.mdb" in names else 1)
    for _ in range(3):
        try:
            return _validate_existing(path, create, lock="lock.mdb" in names)
        except lmdb.MapResizedError:  # a writer grew the map meanwhile: look again
            continue
    raise StoreError(f"{path}: the map kept being resized by another process")


def copy_environment(src: str, dest: str) -> None:
    """A compacted copy of the replica directory `src` into the directory `dest`, for
    `crdtim restore` (specs/storage.md §8b). `src` is validated first as opening validates
    (§8: nothing in it is written but, with a lock file, LMDB's reader table) and read under
    its lock file when it has one, as a registered reader."""
    if not os.path.isdir(src):
        raise NotAReplicaError(f"{src}: no such replica directory")
    _check_directory(src, create=False)
    lock = os.path.exists(os.path.join(src, "lock.mdb"))
    try:
        env = lmdb.open(src, readonly=True, lock=lock, max_dbs=16)
    except lmdb.Error as e:
        raise CorruptStoreError(f"{src}: data.mdb is not a readable LMDB database: {e}") from None
    try:
        env.copy(dest, compact=True)
    except lmdb.Error as e:
        raise StoreError(f"{src}: copy to {dest} failed: {describe_lmdb_error(e)}") from None
    finally:
        env.close()


def _validate_existing(path: str, create: bool, lock: bool) -> bool:
    try:
        env = lmdb.open(path, readonly=True, lock=lock, max_dbs=16)
    except lmdb.Error as e:
        raise CorruptStoreError(f"{path}: data.mdb is not a readable LMDB database: {e}") from None
    foreign = f"{path}: an LMDB database, but not a crdtim replica"
    try:
        with env.begin() as t:
            found = list(t.cursor().iternext(values=False))
            if not set(found) <= set(DATABASES):
                raise NotAReplicaError(foreign)
            dbs = {name: env.open_db(name, txn=t, create=False) for name in found}
            meta = dbs.get(b"meta")
            if meta is not None and t.get(b"magic", db=meta) is not None:
                checked_identity(path, lambda key: t.get(key, db=meta), FORMAT, MIGRATABLE_FORMATS)
                return False
            if any(t.stat(db)["entries"] for db in dbs.values()):
                raise NotAReplicaError(foreign)
    except lmdb.IncompatibleError:  # e.g. a plain key named like one of our databases
        raise NotAReplicaError(foreign) from None
    except lmdb.MapResizedError:
        raise
    except lmdb.Error as e:
        raise CorruptStoreError(f"{path}: damaged database: {e}") from None
    finally:
        env.close()
    # Only crdtim's databases, all empty: `crdtim init` died before stamping the replica.
    return _fresh(path, create)


def _fresh(path: str, create: bool) -> bool:
    if not create:
        raise NotAReplicaError(f"{path}: empty directory, not a replica (run `crdtim init`)")
    return True
