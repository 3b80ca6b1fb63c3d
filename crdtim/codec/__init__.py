"""msgpack encoding of conversation states and deltas; the only module that imports msgpack.

Layout (specs/crdt.md, "Encoding"): `[version, [replica ids], {cid: {tag: field}}]`. Replica
ids are written once per message and referred to by index, field names by their small schema
tag, so a one-field change costs about 30 bytes.

Decoding is strict: any bytes that are not a valid, canonical-enough encoding raise
DecodeError naming what was wrong; no KeyError, TypeError or IndexError escapes, and nothing
decoded can break a lattice invariant (a flag's dots always lie inside its context).

Speed: decoding is on every read of a conversation and every delta received, so the decoders
check the common, valid shapes inline, with no message text built, and only when a check fails
hand that one item (the header, a conversation id, a field) to the message-building
validators (`_dec_header`, `_dec_lww`, ...), which then raise the DecodeError naming it. The
items are visited in the same order either way, so the first thing wrong is the one named.
"""

from __future__ import annotations

import dataclasses
import threading
import types
from collections.abc import Callable
from typing import Any

import msgpack

from ..crdt import (
    DEFAULT_SCHEMA,
    CausalContext,
    ConversationMap,
    Flag,
    Lww,
    MaxReg,
    Schema,
    Stamp,
)
from ..crdt.conversation import Fields, trusted_map
from ..errors import DecodeError

__all__ = [
    "DEFAULT_LIMITS",
    "FORMAT_VERSION",
    "STORAGE_LIMITS",
    "Limits",
    "Received",
    "decode_fields",
    "decode_map",
    "decode_map_as_received",
    "encode_fields",
    "encode_map",
    "encode_stored_map",
    "pack",
    "store_received",
    "trusted_map",  # re-exported from crdt.conversation, its home, for the replica
    "unpack",
]

FORMAT_VERSION = 1
MAX_INT = 2**63 - 1
MAX_COUNTER = 2**32 - 1


class Limits:
    """Bounds a decoder enforces; every one has a named default."""

    __slots__ = (
        "max_bytes", "max_cid", "max_conversations", "max_dots", "max_replicas", "max_text")

    def __init__(
        self,
        max_bytes: int = 16 * 1024 * 1024,
        max_conversations: int = 1_000_000,
        max_replicas: int = 10_000,
        max_text: int = 16 * 1024,  # characters in a title or preview
        max_cid: int = 256,  # characters in a conversation id
        max_dots: int = 10_000,  # dots in one flag's state and context cloud
    ):
        self.max_bytes = max_bytes
        self.max_conversations = max_conversations
        self.max_replicas = max_replicas
        self.max_text = max_text
        self.max_cid = max_cid
        self.max_dots = max_dots


DEFAULT_LIMITS = Limits()
#: Decoding what a replica stored itself (specs/crdt.md §7, "Limits"): the same checks of
#: structure and type, without the per-message caps that protect it from peers (a large local
#: batch, or the join of many deltas, may be over them and must still read back).
STORAGE_LIMITS = Limits(max_bytes=2**62, max_conversations=2**62, max_replicas=2**62,
                        max_dots=2**62)
MAX_REPLICA_ID = 64


# -- generic msgpack -------------------------------------------------------------------------

# A Packer per thread (a Packer is not thread-safe) instead of one per call: packb builds a
# Packer, buffer and all, for every message. A Packer keeps its buffer at the size of the
# largest message it made, so after a big one (a state chunk) the thread drops it; and after
# an exception (unpackable object), which leaves it out too.
_packers = threading.local()
_KEEP_PACKER_BYTES = 1 << 20


def pack(obj: Any) -> bytes:
    mine = _packers.__dict__  # this thread's
    # Taken out while in use, so that a nested call (none is expected) makes its own.
    packer = mine.pop("packer", None)
    if packer is None:
        packer = msgpack.Packer(use_bin_type=True)
    data: bytes = packer.pack(obj)  # msgpack is untyped
    if len(data) <= _KEEP_PACKER_BYTES:
        mine["packer"] = packer
    return data


def _no_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack extension type {code} is not allowed")


def unpack(data: bytes, max_bytes: int = DEFAULT_LIMITS.max_bytes) -> Any:
    """msgpack bytes -> Python object; DecodeError for anything malformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_bytes:
        raise DecodeError(f"{len(data)} bytes is over the limit of {max_bytes}")
    try:
        return msgpack.unpackb(
            data, raw=False, strict_map_key=False, ext_hook=_no_ext
        )
    except DecodeError:
        raise
    except msgpack.ExtraData:
        raise DecodeError("trailing bytes after the msgpack value") from None
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as e:
        # ValueError covers UnicodeDecodeError, FormatError, StackError, "Unpack failed".
        raise DecodeError(f"not valid msgpack: {e}") from None


# -- validation helpers: the slow path, which names what is wrong ------------------------------
#
# The decoders below run these only on an item that failed the inline checks (or on a shape
# the inline checks do not cover); they raise with a message, or decode the item.


def _int(x: Any, what: str, lo: int = 0, hi: int = MAX_INT) -> int:
    if type(x) is not int:
        raise DecodeError(f"{what}: expected an integer, got {type(x).__name__}")
    if not lo <= x <= hi:
        raise DecodeError(f"{what}: {x} is out of range {lo}..{hi}")
    return x


def _list(x: Any, what: str, length: int | None = None) -> list[Any]:
    if type(x) is not list:
        raise DecodeError(f"{what}: expected an array, got {type(x).__name__}")
    if length is not None and len(x) != length:
        raise DecodeError(f"{what}: expected {length} items, got {len(x)}")
    return x


def _str(x: Any, what: str, max_len: int, min_len: int = 0) -> str:
    if type(x) is not str:
        raise DecodeError(f"{what}: expected a string, got {type(x).__name__}")
    if not min_len <= len(x) <= max_len:
        raise DecodeError(f"{what}: length {len(x)} is out of range {min_len}..{max_len}")
    return x


def _replica(rids: list[str], i: Any, what: str) -> str:
    return rids[_int(i, f"{what} replica index", 0, len(rids) - 1)]


def _dec_lww(x: Any, rids: list[str], limits: Limits, what: str) -> Lww:
    wall, counter, ri, value = _list(x, what, 4)
    stamp = Stamp(
        _int(wall, f"{what} wall time"),
        # Not MAX_COUNTER: last_message's stamp carries the message sequence here, and a
        # sequence may be as large as last_seq (0..MAX_INT).
        _int(counter, f"{what} counter", 0, MAX_INT),
        _replica(rids, ri, what),
    )
    return Lww(stamp, _str(value, f"{what} value", limits.max_text))


def _dec_maxreg(x: Any, rids: list[str], limits: Limits, what: str) -> MaxReg:
    return MaxReg(_int(x, what))


def _dec_dots(x: Any, rids: list[str], limits: Limits, what: str) -> list[tuple[str, int]]:
    flat = _list(x, what)
    if len(flat) % 2 or len(flat) > 2 * limits.max_dots:
        raise DecodeError(f"{what}: expected at most {limits.max_dots} (replica, counter) pairs")
    return [
        (_replica(rids, flat[i], what), _int(flat[i + 1], f"{what} counter", 1, MAX_INT))
        for i in range(0, len(flat), 2)
    ]


def _dec_flag(x: Any, rids: list[str], limits: Limits, what: str) -> Flag:
    dots_x, vv_x, cloud_x = _list(x, what, 3)
    dots = _dec_dots(dots_x, rids, limits, f"{what} dots")
    vv_pairs = _dec_dots(vv_x, rids, limits, f"{what} version vector")
    vv = dict(vv_pairs)
    if len(vv) != len(vv_pairs):
        raise DecodeError(f"{what} version vector: a replica appears twice")
    context = CausalContext.compact(vv, _dec_dots(cloud_x, rids, limits, f"{what} context"))
    for dot in dots:
        if not context.contains(dot):
            raise DecodeError(f"{what}: dot {dot} is not in the flag's causal context")
    return Flag(frozenset(dots), context)


_DECODERS: dict[type, Callable[[Any, list[str], Limits, str], Any]] = {
    Lww: _dec_lww,
    MaxReg: _dec_maxreg,
    Flag: _dec_flag,
}


def _dec_header(obj: Any, limits: Limits, what: str) -> tuple[list[str], Any]:
    version, rids, body = _list(obj, what, 3)
    if version != FORMAT_VERSION or type(version) is not int:
        raise DecodeError(
            f"{what}: unsupported format version {version!r} (this is {FORMAT_VERSION})")
    _list(rids, f"{what} replica table")
    if len(rids) > limits.max_replicas:
        raise DecodeError(
            f"{what}: {len(rids)} replica ids is over the limit of {limits.max_replicas}")
    for rid in rids:
        _str(rid, f"{what} replica id", MAX_REPLICA_ID, 1)
    return rids, body


# -- fast constructors -------------------------------------------------------------------------
#
# The lattice states are frozen, slotted dataclasses, whose generated __init__ stores each field
# through object.__setattr__. Storing through the slot descriptors makes the very same object
# (same fields, same ==, same hash) at about half the cost, which counts when a delta holds
# thousands of them; a NamedTuple Stamp is likewise made by tuple.__new__. The shapes are checked
# here, at import: should a class gain a field or a __post_init__, this module refuses to load
# rather than build states its constructor would not.


def _slot_setters(cls: type, *names: str) -> list[Callable[[Any, Any], None]]:
    fields = tuple(f.name for f in dataclasses.fields(cls))
    if fields != names or hasattr(cls, "__post_init__"):
        raise ImportError(f"crdtim.codec: {cls.__name__} changed shape {fields}; update the codec")
    setters = []
    for name in names:
        slot = cls.__dict__.get(name)
        if type(slot) is not types.MemberDescriptorType:
            raise ImportError(f"crdtim.codec: {cls.__name__}.{name} is not a slot")
        setters.append(slot.__set__)
    return setters


if Stamp._fields != ("wall", "counter", "replica") or Stamp.__bases__ != (tuple,):
    raise ImportError(f"crdtim.codec: Stamp changed shape {Stamp._fields}; update the codec")

_new = object.__new__
_tuple_new = tuple.__new__
_EMPTY: frozenset[tuple[str, int]] = frozenset()
_set_lww_stamp, _set_lww_value = _slot_setters(Lww, "stamp", "value")
(_set_maxreg_value,) = _slot_setters(MaxReg, "value")
_set_flag_dots, _set_flag_context = _slot_setters(Flag, "dots", "context")
_set_ctx_vv, _set_ctx_cloud = _slot_setters(CausalContext, "vv", "cloud")


# -- fast decoders -----------------------------------------------------------------------------


def _header(obj: Any, limits: Limits) -> tuple[list[str], Any] | None:
    """(replica ids, body) of a valid header; None for _dec_header to name what is wrong."""
    if type(obj) is list and len(obj) == 3:
        version, rids, body = obj
        if (type(version) is int and version == FORMAT_VERSION and type(rids) is list
                and len(rids) <= limits.max_replicas):
            for rid in rids:
                if type(rid) is not str or not 0 < len(rid) <= MAX_REPLICA_ID:
                    return None
            return rids, body
    return None


def _pairs(flat: list[Any], rids: list[str], nrids: int) -> list[tuple[str, int]] | None:
    """The (replica, counter) pairs of an even-length flat array, or None if one is bad."""
    out = []
    for k in range(0, len(flat), 2):
        i = flat[k]
        n = flat[k + 1]
        if type(i) is not int or type(n) is not int or not 0 <= i < nrids or not 0 < n <= MAX_INT:
            return None
        out.append((rids[i], n))
    return out


def _flag(x: Any, rids: list[str], nrids: int, max_flat: int) -> Flag | None:
    """A flag, _BOTTOM_FLAG for [[], [], []], or None for _dec_flag to name what is wrong.

    One pair per array is the common case (a flag enabled once; a delta enabling or disabling
    it), so it is decoded without loops, sorting or CausalContext.compact.
    """
    if type(x) is not list or len(x) != 3:
        return None
    dots_x, vv_x, cloud_x = x
    if type(dots_x) is not list or type(vv_x) is not list or type(cloud_x) is not list:
        return None
    nd = len(dots_x)
    nv = len(vv_x)
    nc = len(cloud_x)
    if (nd | nv | nc) & 1 or nd > max_flat or nv > max_flat or nc > max_flat:
        return None
    if not (nd or nv or nc):
        return _BOTTOM_FLAG
    # The context: version vector, then the cloud compacted into it (CausalContext.compact).
    if nv == 2:
        i, n = vv_x
        if type(i) is not int or type(n) is not int or not 0 <= i < nrids or not 0 < n <= MAX_INT:
            return None
        vv = {rids[i]: n}
    else:
        vv = {}
        for k in range(0, nv, 2):
            i = vv_x[k]
            n = vv_x[k + 1]
            if (type(i) is not int or type(n) is not int or not 0 <= i < nrids
                    or not 0 < n <= MAX_INT):
                return None
            r = rids[i]
            if r in vv:  # ids may repeat in the table: compare ids, not indexes
                return None
            vv[r] = n
    if not nc:
        cloud = _EMPTY
    elif nc == 2:
        i, n = cloud_x
        if type(i) is not int or type(n) is not int or not 0 <= i < nrids or not 0 < n <= MAX_INT:
            return None
        r = rids[i]
        seen = vv.get(r, 0)
        if n == seen + 1:  # next in line: extends the version vector
            vv[r] = n
            cloud = _EMPTY
        elif n > seen:
            cloud = frozenset(((r, n),))
        else:  # covered
            cloud = _EMPTY
    else:
        pairs = _pairs(cloud_x, rids, nrids)
        if pairs is None:
            return None
        compacted = CausalContext.compact(vv, pairs)
        vv = dict(compacted.vv)  # a dict already; rare path (a cloud of 2+ dots)
        cloud = compacted.cloud
    # The dots, each of which must lie in the context (D ⊆ C).
    if nd == 2:
        i, n = dots_x
        if type(i) is not int or type(n) is not int or not 0 <= i < nrids or not 0 < n <= MAX_INT:
            return None
        dot = (rids[i], n)
        if n > vv.get(dot[0], 0) and dot not in cloud:
            return None
        dots = frozenset((dot,))
    elif nd:
        pairs = _pairs(dots_x, rids, nrids)
        if pairs is None:
            return None
        for dot in pairs:
            if dot[1] > vv.get(dot[0], 0) and dot not in cloud:
                return None
        dots = frozenset(pairs)
    else:
        dots = _EMPTY
    context = _new(CausalContext)
    _set_ctx_vv(context, vv)
    _set_ctx_cloud(context, cloud)
    flag = _new(Flag)
    _set_flag_dots(flag, dots)
    _set_flag_context(flag, context)
    return flag


_BOTTOM_FLAG = Flag.bottom()


def _fields(x: Any, rids: list[str], schema: Schema, limits: Limits, cid: str) -> Fields:
    """One conversation's {tag: field} map -> its fields, bottom ones dropped."""
    if type(x) is not dict:
        raise DecodeError(f"conversation {cid!r}: expected a map of fields, got {type(x).__name__}")
    by_tag = schema.by_tag
    nrids = len(rids)
    max_text = limits.max_text
    fields: Fields = {}
    for tag, value in x.items():
        f = by_tag.get(tag) if type(tag) is int else None
        if f is None:
            raise DecodeError(f"conversation {cid!r}: unknown field tag {tag!r}")
        lattice = f.lattice
        # Tags are distinct and so are names: each name is set at most once.
        if lattice is Lww:
            if type(value) is list and len(value) == 4:
                wall, counter, i, text = value
                if (type(wall) is int and type(counter) is int and type(i) is int
                        and type(text) is str and 0 <= wall <= MAX_INT and 0 <= counter <= MAX_INT
                        and 0 <= i < nrids and len(text) <= max_text):
                    # Never bottom: replica ids are not empty.
                    register = _new(Lww)
                    _set_lww_stamp(register, _tuple_new(Stamp, (wall, counter, rids[i])))
                    _set_lww_value(register, text)
                    fields[f.name] = register
                    continue
        elif lattice is MaxReg:
            if type(value) is int and 0 <= value <= MAX_INT:
                if value:  # 0 is bottom
                    maxreg = _new(MaxReg)
                    _set_maxreg_value(maxreg, value)
                    fields[f.name] = maxreg
                continue
        else:
            flag = _flag(value, rids, nrids, 2 * limits.max_dots)
            if flag is not None:
                if flag is not _BOTTOM_FLAG:
                    fields[f.name] = flag
                continue
        # Something is wrong with this field: the slow decoder says what (and, should the
        # inline checks ever refuse a valid field, decodes it).
        state = _DECODERS[lattice](value, rids, limits, f"conversation {cid!r} {f.name}")
        if not state.is_bottom():
            fields[f.name] = state
    return fields


# -- encoders ----------------------------------------------------------------------------------


def _flat(pairs: Any, ids: dict[str, int]) -> list[int]:
    """(replica, counter) pairs, sorted, as a flat [index, counter, ...] array; `ids` maps
    replica ids to indexes in order of first use and grows as ids are met."""
    if not pairs:
        return []
    if len(pairs) == 1:
        ((replica, n),) = pairs
        return [ids.setdefault(replica, len(ids)), n]
    out: list[int] = []
    for replica, n in sorted(pairs):
        out += (ids.setdefault(replica, len(ids)), n)
    return out


def _enc_fields(fields: Fields, ids: dict[str, int], schema: Schema) -> dict[int, Any]:
    by_name = schema.by_name
    out = {}
    for name, state in fields.items():
        f = by_name[name]
        lattice = f.lattice
        if lattice is Lww:
            wall, counter, replica = state.stamp
            out[f.tag] = [wall, counter, ids.setdefault(replica, len(ids)), state.value]
        elif lattice is MaxReg:
            out[f.tag] = state.value
        else:  # Flag; ids are met in the order dots, version vector, cloud
            dots = state.dots
            context = state.context
            vv = context.vv
            if len(dots) == 1 and len(vv) == 1 and not context.cloud:  # enabled once
                ((replica, n),) = dots
                i = ids.setdefault(replica, len(ids))
                ((replica, m),) = vv.items()
                out[f.tag] = [[i, n], [ids.setdefault(replica, len(ids)), m], []]
            else:
                out[f.tag] = [_flat(dots, ids), _flat(vv.items(), ids), _flat(context.cloud, ids)]
    return out


# -- conversation maps -----------------------------------------------------------------------


def encode_map(m: ConversationMap) -> bytes:
    ids: dict[str, int] = {}
    schema = m.schema
    body = {cid: _enc_fields(fields, ids, schema) for cid, fields in m.convs.items()}
    return pack([FORMAT_VERSION, list(ids), body])


def decode_map(
    data: bytes, schema: Schema = DEFAULT_SCHEMA, limits: Limits = DEFAULT_LIMITS
) -> ConversationMap:
    return decode_map_as_received(data, schema, limits)[0]


class Received:
    """A map as it came: the bytes, and the replica table and per-conversation field maps
    that the decoder checked, so that a receiver can store or log them without encoding the
    decoded states again (store_received, and a log entry of `payload` itself)."""

    __slots__ = ("body", "payload", "rids")

    def __init__(self, payload: bytes, rids: list[str], body: dict[str, Any]):
        self.payload = payload
        self.rids = rids
        self.body = body


#: A received conversation is stored with the message's whole replica table (in place of a
#: table of just the ids it uses) only when that table is this short: the bytes it saves
#: encoding cost at most this many unused ids in the stored value.
MAX_SHARED_TABLE = 4


def store_received(received: Received, cid: str) -> bytes | None:
    """Stored bytes (as encode_fields would make, but for the replica table) of conversation
    `cid` of a map decode_map_as_received accepted; None when its table is too long to share
    (encode the decoded fields instead).

    Safe because the decoder accepted exactly this field map against exactly this table:
    decoding the result gives the same fields (bottom fields in it are dropped on every
    read, as they were on receipt), and stored values are read with limits at least as wide
    as a peer's.
    """
    if len(received.rids) > MAX_SHARED_TABLE:
        return None
    return pack([FORMAT_VERSION, received.rids, received.body[cid]])


def decode_map_as_received(
    data: bytes, schema: Schema = DEFAULT_SCHEMA, limits: Limits = DEFAULT_LIMITS
) -> tuple[ConversationMap, Received]:
    """decode_map, and the checked parts of the message (Received)."""
    obj = unpack(data, limits.max_bytes)
    header = _header(obj, limits)
    rids, body = _dec_header(obj, limits, "delta") if header is None else header
    if type(body) is not dict:
        raise DecodeError(f"delta: expected a map of conversations, got {type(body).__name__}")
    if len(body) > limits.max_conversations:
        raise DecodeError(
            f"delta: {len(body)} conversations is over the limit of {limits.max_conversations}"
        )
    max_cid = limits.max_cid
    convs = {}
    for cid, x in body.items():
        if type(cid) is not str or not 0 < len(cid) <= max_cid:
            _str(cid, "conversation id", max_cid, 1)  # raises, naming what is wrong
        fields = _fields(x, rids, schema, limits, cid)
        if fields:
            convs[cid] = fields
    return trusted_map(convs, schema), Received(data, rids, body)


def encode_stored_map(stored: list[tuple[str, bytes]], schema: Schema = DEFAULT_SCHEMA) -> bytes:
    """encode_map of the conversations whose stored values (encode_fields or store_received
    bytes) are given, in order: the bytes a replica sends of its state.

    A stored value whose replica table is a prefix of the message's table so far (or extends
    it with new ids) has its field map copied as it is, with no decoding; any other is
    decoded and encoded against the message's table. The receiver checks everything, as it
    does every map (a damaged value copied as it is is refused there). DecodeError, naming
    the conversation, for a stored value that is not even shaped like one.
    """
    table: list[str] = []
    ids: dict[str, int] = {}
    body: dict[str, Any] = {}
    for cid, raw in stored:
        try:
            obj = unpack(raw, STORAGE_LIMITS.max_bytes)
        except DecodeError as e:
            raise DecodeError(f"stored conversation {cid!r}: {e}") from None
        if type(obj) is list and len(obj) == 3 and obj[0] == FORMAT_VERSION \
                and type(obj[0]) is int and type(obj[1]) is list and type(obj[2]) is dict:
            rids, x = obj[1], obj[2]
            n = len(rids)
            if n <= len(table):
                if rids == table[:n]:
                    body[cid] = x
                    continue
            elif rids[:len(table)] == table and _new_ids(rids[len(table):], ids):
                for rid in rids[len(table):]:
                    ids[rid] = len(table)
                    table.append(rid)
                body[cid] = x
                continue
        # Another table order (or a damaged value): through the decoder, which names the fault.
        header = _header(obj, STORAGE_LIMITS)
        if header is None:
            header = _dec_header(obj, STORAGE_LIMITS, f"stored conversation {cid!r}")
        fields = _fields(header[1], header[0], schema, STORAGE_LIMITS, cid)
        body[cid] = _enc_fields(fields, ids, schema)
        table.extend(list(ids)[len(table):])
    return pack([FORMAT_VERSION, table, body])


def _new_ids(rids: list[Any], ids: dict[str, int]) -> bool:
    """True if `rids` are distinct strings none of which is in `ids`."""
    return (all(type(r) is str for r in rids) and len(set(rids)) == len(rids)
            and not any(r in ids for r in rids))


def encode_fields(fields: Fields, schema: Schema = DEFAULT_SCHEMA) -> bytes:
    """One conversation's state, as stored on disk."""
    ids: dict[str, int] = {}
    body = _enc_fields(fields, ids, schema)
    return pack([FORMAT_VERSION, list(ids), body])


def decode_fields(
    data: bytes, schema: Schema = DEFAULT_SCHEMA, limits: Limits = DEFAULT_LIMITS, cid: str = "?"
) -> Fields:
    obj = unpack(data, limits.max_bytes)
    header = _header(obj, limits)
    if header is None:
        header = _dec_header(obj, limits, f"conversation {cid!r}")
    rids, body = header
    return _fields(body, rids, schema, limits, cid)
