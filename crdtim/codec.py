"""msgpack encoding of conversation states and deltas; the only module that imports msgpack.

Layout (specs/crdt.md, "Encoding"): `[version, [replica ids], {cid: {tag: field}}]`. Replica
ids are written once per message and referred to by index, field names by their small schema
tag, so a one-field change costs about 30 bytes.

Decoding is strict: any bytes that are not a valid, canonical-enough encoding raise
DecodeError naming what was wrong; no KeyError, TypeError or IndexError escapes, and nothing
decoded can break a lattice invariant (a flag's dots always lie inside its context).
"""

from __future__ import annotations

from typing import Any, Callable

import msgpack

from .crdt import (
    DEFAULT_SCHEMA,
    CausalContext,
    ConversationMap,
    Flag,
    Lww,
    MaxReg,
    Schema,
    Stamp,
)
from .crdt.conversation import Fields
from .errors import DecodeError

__all__ = [
    "FORMAT_VERSION",
    "Limits",
    "DEFAULT_LIMITS",
    "encode_map",
    "decode_map",
    "encode_fields",
    "decode_fields",
    "pack",
    "unpack",
]

FORMAT_VERSION = 1
MAX_INT = 2**63 - 1
MAX_COUNTER = 2**32 - 1


class Limits:
    """Bounds a decoder enforces; every one has a named default."""

    __slots__ = ("max_bytes", "max_conversations", "max_replicas", "max_text", "max_cid", "max_dots")

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
MAX_REPLICA_ID = 64


# -- generic msgpack -------------------------------------------------------------------------


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


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


# -- validation helpers ----------------------------------------------------------------------


def _int(x: Any, what: str, lo: int = 0, hi: int = MAX_INT) -> int:
    if type(x) is not int:
        raise DecodeError(f"{what}: expected an integer, got {type(x).__name__}")
    if not lo <= x <= hi:
        raise DecodeError(f"{what}: {x} is out of range {lo}..{hi}")
    return x


def _list(x: Any, what: str, length: int | None = None) -> list:
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


# -- per-lattice encoders: lattice state -> plain msgpack-able value ---------------------------


class _Ids:
    """Replica id -> index table, filled while encoding."""

    __slots__ = ("index", "order")

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self.order: list[str] = []

    def __call__(self, rid: str) -> int:
        i = self.index.get(rid)
        if i is None:
            i = self.index[rid] = len(self.order)
            self.order.append(rid)
        return i


def _enc_lww(s: Lww, ids: _Ids) -> list:
    return [s.stamp.wall, s.stamp.counter, ids(s.stamp.replica), s.value]


def _enc_maxreg(s: MaxReg, ids: _Ids) -> int:
    return s.value


def _flat(dots: Any, ids: _Ids) -> list[int]:
    out: list[int] = []
    for replica, n in sorted(dots):
        out += (ids(replica), n)
    return out


def _enc_flag(s: Flag, ids: _Ids) -> list:
    return [_flat(s.dots, ids), _flat(s.context.vv.items(), ids), _flat(s.context.cloud, ids)]


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


_ENCODERS: dict[type, Callable[[Any, _Ids], Any]] = {
    Lww: _enc_lww,
    MaxReg: _enc_maxreg,
    Flag: _enc_flag,
}
_DECODERS: dict[type, Callable[[Any, list[str], Limits, str], Any]] = {
    Lww: _dec_lww,
    MaxReg: _dec_maxreg,
    Flag: _dec_flag,
}


# -- conversation maps -----------------------------------------------------------------------


def _enc_fields(fields: Fields, ids: _Ids, schema: Schema) -> dict[int, Any]:
    by_name = schema.by_name
    out = {}
    for name, state in fields.items():
        f = by_name[name]
        out[f.tag] = _ENCODERS[f.lattice](state, ids)
    return out


def _dec_fields(
    x: Any, rids: list[str], schema: Schema, limits: Limits, cid: str
) -> Fields:
    if type(x) is not dict:
        raise DecodeError(f"conversation {cid!r}: expected a map of fields, got {type(x).__name__}")
    fields = {}
    for tag, value in x.items():
        f = schema.by_tag.get(tag) if type(tag) is int else None
        if f is None:
            raise DecodeError(f"conversation {cid!r}: unknown field tag {tag!r}")
        fields[f.name] = _DECODERS[f.lattice](value, rids, limits, f"conversation {cid!r} {f.name}")
    return fields


def _dec_header(obj: Any, limits: Limits, what: str) -> tuple[list[str], Any]:
    version, rids, body = _list(obj, what, 3)
    if version != FORMAT_VERSION or type(version) is not int:
        raise DecodeError(f"{what}: unsupported format version {version!r} (this is {FORMAT_VERSION})")
    _list(rids, f"{what} replica table")
    if len(rids) > limits.max_replicas:
        raise DecodeError(f"{what}: {len(rids)} replica ids is over the limit of {limits.max_replicas}")
    for rid in rids:
        _str(rid, f"{what} replica id", MAX_REPLICA_ID, 1)
    return rids, body


def encode_map(m: ConversationMap) -> bytes:
    ids = _Ids()
    body = {cid: _enc_fields(fields, ids, m.schema) for cid, fields in m.convs.items()}
    return pack([FORMAT_VERSION, ids.order, body])


def decode_map(
    data: bytes, schema: Schema = DEFAULT_SCHEMA, limits: Limits = DEFAULT_LIMITS
) -> ConversationMap:
    rids, body = _dec_header(unpack(data, limits.max_bytes), limits, "delta")
    if type(body) is not dict:
        raise DecodeError(f"delta: expected a map of conversations, got {type(body).__name__}")
    if len(body) > limits.max_conversations:
        raise DecodeError(
            f"delta: {len(body)} conversations is over the limit of {limits.max_conversations}"
        )
    convs = {}
    for cid, fields in body.items():
        _str(cid, "conversation id", limits.max_cid, 1)
        convs[cid] = _dec_fields(fields, rids, schema, limits, cid)
    return ConversationMap(convs, schema)


def encode_fields(fields: Fields, schema: Schema = DEFAULT_SCHEMA) -> bytes:
    """One conversation's state, as stored on disk."""
    ids = _Ids()
    body = _enc_fields(fields, ids, schema)
    return pack([FORMAT_VERSION, ids.order, body])


def decode_fields(
    data: bytes, schema: Schema = DEFAULT_SCHEMA, limits: Limits = DEFAULT_LIMITS, cid: str = "?"
) -> Fields:
    rids, body = _dec_header(unpack(data, limits.max_bytes), limits, f"conversation {cid!r}")
    fields = _dec_fields(body, rids, schema, limits, cid)
    return {name: s for name, s in fields.items() if not s.is_bottom()}
