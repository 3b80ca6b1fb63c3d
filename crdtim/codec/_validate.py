"""The slow path of the strict decoders (specs/crdt.md §7, "Validation"): validators that
check one item (the header, a conversation id, a field) and raise DecodeError naming what is
wrong with it and where, or decode it.

The fast decoders (`_decode`) hand an item here only when their inline checks refuse it (or
do not cover its shape), so messages are built only for bad input. Nothing here may accept
what specs/crdt.md §7 refuses, nor let an exception other than DecodeError escape (no
KeyError, TypeError or IndexError from a malformed item). No msgpack here: items arrive
already unpacked.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..crdt import CausalContext, Flag, Lww, LwwInt, MaxMap, MaxReg, Stamp
from ..crdt.maxmap import MAX_MEMBER_NAME, MAX_READ_BY_MEMBERS, valid_member
from ..errors import DecodeError
from ._limits import FORMAT_VERSION, MAX_INT, MAX_REPLICA_ID, Limits


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


def dec_str(x: Any, what: str, max_len: int, min_len: int = 0) -> str:
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
    return Lww(stamp, dec_str(value, f"{what} value", limits.max_text))


def _dec_lww_int(x: Any, rids: list[str], limits: Limits, what: str) -> LwwInt:
    wall, counter, ri, value = _list(x, what, 4)
    stamp = Stamp(_int(wall, f"{what} wall time"), _int(counter, f"{what} counter"),
                  _replica(rids, ri, what))
    return LwwInt(stamp, _int(value, f"{what} value"))


def _dec_maxmap(x: Any, rids: list[str], limits: Limits, what: str) -> MaxMap:
    if type(x) is not dict:
        raise DecodeError(f"{what}: expected a map of member -> seq, got {type(x).__name__}")
    if len(x) > MAX_READ_BY_MEMBERS:
        raise DecodeError(
            f"{what}: {len(x)} members is over the limit of {MAX_READ_BY_MEMBERS}")
    entries = {}
    for member, seq in x.items():
        if not valid_member(member):
            raise DecodeError(f"{what}: member {member!r:.80} is not a name of 1 to "
                              f"{MAX_MEMBER_NAME} characters without control characters")
        n = _int(seq, f"{what} {member!r}")
        if n:  # a zero position is bottom: dropped
            entries[member] = n
    return MaxMap(entries)


def _dec_maxreg(x: Any, rids: list[str], limits: Limits, what: str) -> MaxReg:
    return MaxReg(_int(x, what))


def _dec_dots(x: Any, rids: list[str], limits: Limits, what: str) -> list[tuple[str, int]]:
    flat = _list(x, what)
    if len(flat) % 2:  # specs/crdt.md §7: name what is wrong, not the size bound
        raise DecodeError(f"{what}: odd length {len(flat)}, expected (replica, counter) pairs")
    if len(flat) > 2 * limits.max_dots:
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


DECODERS: dict[type, Callable[[Any, list[str], Limits, str], Any]] = {
    Lww: _dec_lww,
    MaxReg: _dec_maxreg,
    Flag: _dec_flag,
    LwwInt: _dec_lww_int,
    MaxMap: _dec_maxmap,
}


def dec_header(obj: Any, limits: Limits, what: str) -> tuple[list[str], Any]:
    version, rids, body = _list(obj, what, 3)
    if version != FORMAT_VERSION or type(version) is not int:
        raise DecodeError(
            f"{what}: unsupported format version {version!r} (this is {FORMAT_VERSION})")
    _list(rids, f"{what} replica table")
    if len(rids) > limits.max_replicas:
        raise DecodeError(
            f"{what}: {len(rids)} replica ids is over the limit of {limits.max_replicas}")
    for rid in rids:
        dec_str(rid, f"{what} replica id", MAX_REPLICA_ID, 1)
        if "\x00" in rid:
            # Message positions in storage end a replica id with NUL (storage.md §2).
            raise DecodeError(f"{what}: replica id {rid!r:.80} holds a NUL character")
    return rids, body
