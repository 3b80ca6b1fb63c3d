"""The strict decoders (specs/crdt.md §7, "Validation"): bytes -> conversation map, or one
conversation's fields. They must never accept what §7 refuses, let an exception other than
DecodeError escape, or build a state that breaks a lattice invariant (a flag's dots always
lie inside its context).

Speed: decoding is on every read of a conversation and every delta received, so the decoders
check the common, valid shapes inline, with no message text built, and only when a check fails
hand that one item (the header, a conversation id, a field) to the message-building
validators (`_validate`: `dec_header`, `_dec_lww`, ...), which then raise the DecodeError naming
it. The items are visited in the same order either way, so the first thing wrong is the one
named. Keep the valid path as it is: checks inline, and everything it calls per value a
module-level name of this module.
"""

from __future__ import annotations

import dataclasses
import logging
import types
from collections.abc import Callable
from typing import Any

from ..crdt import (
    DEFAULT_SCHEMA,
    CausalContext,
    ConversationMap,
    Flag,
    History,
    Lww,
    MaxReg,
    Schema,
    Stamp,
)
from ..crdt.conversation import Fields, carried_name, clear_covered, trusted_map
from ..errors import DecodeError
from ._history import decode_history
from ._limits import DEFAULT_LIMITS, FORMAT_VERSION, MAX_INT, MAX_REPLICA_ID, Limits
from ._msgpack import unpack
from ._validate import DECODERS, dec_header, dec_str

log = logging.getLogger("crdtim.codec")

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


def header_or_none(obj: Any, limits: Limits) -> tuple[list[str], Any] | None:
    """(replica ids, body) of a valid header; None for dec_header to name what is wrong."""
    if type(obj) is list and len(obj) == 3:
        version, rids, body = obj
        if (type(version) is int and version == FORMAT_VERSION and type(rids) is list
                and len(rids) <= limits.max_replicas):
            for rid in rids:
                if type(rid) is not str or not 0 < len(rid) <= MAX_REPLICA_ID or "\x00" in rid:
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


def decode_field_map(x: Any, rids: list[str], schema: Schema, limits: Limits, cid: str) -> Fields:
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
            carried = decode_carried(tag, value, rids, limits, cid)
            if carried is not None:
                fields[carried_name(tag)] = carried
            continue
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
        elif lattice is Flag:
            flag = _flag(value, rids, nrids, 2 * limits.max_dots)
            if flag is not None:
                if flag is not _BOTTOM_FLAG:
                    fields[f.name] = flag
                continue
        elif lattice is History:
            # Its own decoder, which checks inline and names what is wrong (_history).
            history = decode_history(value, rids, limits, f"conversation {cid!r} {f.name}")
            if not history.is_bottom():
                fields[f.name] = history
            continue
        # LwwInt and MaxMap (rarer fields) have no inline path: their validators decode them.
        # Something is wrong with this field: the slow decoder says what (and, should the
        # inline checks ever refuse a valid field, decodes it).
        state = DECODERS[lattice](value, rids, limits, f"conversation {cid!r} {f.name}")
        if not state.is_bottom():
            fields[f.name] = state
    # A last message covered by cleared_at is dropped, as the join drops it (specs/crdt.md
    # §6): decoded maps are canonical too.
    return clear_covered(fields) if "cleared_at" in fields else fields


def decode_carried(tag: Any, value: Any, rids: list[str], limits: Limits, cid: str) -> Any:
    """A field whose tag the schema does not know (an app's, or a newer crdtim's): decoded
    as the lattice its encoding's shape names, to be carried intact (specs/crdt.md §7,
    "Fields of other schemas"); None when bottom. Logged once per tag per process."""
    if type(tag) is not int or not 0 <= tag < 128:
        raise DecodeError(f"conversation {cid!r}: field tag {tag!r} is not in 0..127")
    lattice = _SHAPES.get((type(value), len(value) if type(value) is list else 0))
    if lattice is None:
        raise DecodeError(f"conversation {cid!r}: field tag {tag} is not a register, a flag, "
                          "a counter or a message history")
    if tag not in _WARNED_TAGS:
        _WARNED_TAGS.add(tag)
        log.warning("conversations hold a field with tag %d, which this schema does not "
                    "know: it is not shown, and is replicated as it is", tag)
    what = f"conversation {cid!r} field tag {tag}"
    if lattice is History:
        state: Any = decode_history(value, rids, limits, what)
    else:
        state = DECODERS[lattice](value, rids, limits, what)
    return None if state.is_bottom() else state


#: The encodings' shapes (§7): a register is [wall, counter, replica, text], a flag [dots,
#: version vector, cloud], a counter an integer, a message history [messages, choices].
_SHAPES: dict[tuple[type, int], type] = {
    (list, 4): Lww, (list, 3): Flag, (int, 0): MaxReg, (list, 2): History}
_WARNED_TAGS: set[int] = set()  # one warning per unknown tag per process


# -- public decoders ---------------------------------------------------------------------------


def decode_map(
    data: bytes, schema: Schema = DEFAULT_SCHEMA, limits: Limits = DEFAULT_LIMITS
) -> ConversationMap:
    return decode_map_parts(data, schema, limits)[0]


def decode_map_parts(
    data: bytes, schema: Schema, limits: Limits
) -> tuple[ConversationMap, list[str], dict[str, Any]]:
    """decode_map, and the replica table and body that it checked (for
    decode_map_as_received, which keeps them)."""
    obj = unpack(data, limits.max_bytes)
    header = header_or_none(obj, limits)
    rids, body = dec_header(obj, limits, "delta") if header is None else header
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
            dec_str(cid, "conversation id", max_cid, 1)  # raises, naming what is wrong
        fields = decode_field_map(x, rids, schema, limits, cid)
        if fields:
            convs[cid] = fields
    return trusted_map(convs, schema), rids, body


def decode_fields(
    data: bytes, schema: Schema = DEFAULT_SCHEMA, limits: Limits = DEFAULT_LIMITS, cid: str = "?"
) -> Fields:
    obj = unpack(data, limits.max_bytes)
    header = header_or_none(obj, limits)
    if header is None:
        header = dec_header(obj, limits, f"conversation {cid!r}")
    rids, body = header
    return decode_field_map(body, rids, schema, limits, cid)
