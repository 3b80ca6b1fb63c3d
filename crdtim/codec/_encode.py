"""The encoders (specs/crdt.md §7): conversation maps and one conversation's fields -> bytes.

Each replica id is written once per message, in order of first use, and referred to by index;
each field by its schema tag; a flag's pair arrays sorted. The states are trusted as they are
(lattice values, already canonical; the replica's API refuses to make any a decoder would
refuse): this module validates nothing and decodes nothing, and it must stay the cheap side.
"""

from __future__ import annotations

from typing import Any

from ..crdt import DEFAULT_SCHEMA, ConversationMap, History, Lww, LwwInt, MaxMap, MaxReg, Schema
from ..crdt.conversation import Fields, carried_tag
from ._history import encode_history
from ._limits import FORMAT_VERSION
from ._msgpack import pack


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


def encode_field_map(fields: Fields, ids: dict[str, int], schema: Schema) -> dict[int, Any]:
    by_name = schema.by_name
    out: dict[int, Any] = {}
    for name, state in fields.items():
        f = by_name.get(name)
        if f is not None:
            tag, lattice = f.tag, f.lattice
        else:  # a field of another schema, carried: written back under its tag (§7)
            tag, lattice = _carried(name, state)
        if lattice is Lww or lattice is LwwInt:  # the same shape; the value's type differs
            wall, counter, replica = state.stamp
            out[tag] = [wall, counter, ids.setdefault(replica, len(ids)), state.value]
        elif lattice is MaxReg:
            out[tag] = state.value
        elif lattice is MaxMap:  # {member: seq}, members in code point order
            out[tag] = dict(sorted(state.entries.items()))
        elif lattice is History:  # [messages, choices] (_history)
            out[tag] = encode_history(state, ids)
        else:  # Flag; ids are met in the order dots, version vector, cloud
            dots = state.dots
            context = state.context
            vv = context.vv
            if len(dots) == 1 and len(vv) == 1 and not context.cloud:  # enabled once
                ((replica, n),) = dots
                i = ids.setdefault(replica, len(ids))
                ((replica, m),) = vv.items()
                out[tag] = [[i, n], [ids.setdefault(replica, len(ids)), m], []]
            else:
                out[tag] = [_flat(dots, ids), _flat(vv.items(), ids), _flat(context.cloud, ids)]
    return out


def _carried(name: str, state: Any) -> tuple[int, type]:
    tag = carried_tag(name)
    if tag is None:  # a caller's bug: the decoder names carried fields, the API refuses others
        raise KeyError(f"field {name!r} is neither in the schema nor a carried field")
    return tag, type(state)


def encode_map(m: ConversationMap) -> bytes:
    ids: dict[str, int] = {}
    schema = m.schema
    body = {cid: encode_field_map(fields, ids, schema) for cid, fields in m.convs.items()}
    return pack([FORMAT_VERSION, list(ids), body])


def encode_fields(fields: Fields, schema: Schema = DEFAULT_SCHEMA) -> bytes:
    """One conversation's state, as stored on disk."""
    ids: dict[str, int] = {}
    body = encode_field_map(fields, ids, schema)
    return pack([FORMAT_VERSION, list(ids), body])

