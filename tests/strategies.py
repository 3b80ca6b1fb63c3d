"""Hypothesis strategies for the pure core: lattice states that are reachable or at least valid.

Everything is drawn from small alphabets (four replica ids, three conversation ids, stamps
from a handful of walls and counters, a few texts) so that collisions -- equal stamps with
different values, the same dot seen by two sides, the same conversation written twice -- are
common rather than astronomically rare. Sizes stay small so a law runs in milliseconds.

"Reachable" states come from replaying delta mutators on a few simulated replicas and joining
a random subset of the deltas they made; "valid" states are any state that respects the
lattice invariant (a flag's dots lie inside its causal context), which is what a decoder may
hand us from the wire.
"""

from __future__ import annotations

from functools import reduce
from dataclasses import dataclass
from typing import Any, Callable

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import message_strategies as ms
from crdtim import codec
from crdtim.crdt import (
    DEFAULT_SCHEMA,
    CausalContext,
    ConversationMap,
    Field,
    Flag,
    History,
    Lww,
    LwwInt,
    MaxMap,
    MaxReg,
    MessageError,
    Schema,
    Stamp,
)

#: Settings for the property suites: no deadline (the CI box is a shared 2-core machine and
#: other suites run beside us), and no complaint about the modest filtering some draws do.
FAST = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

REPLICA_IDS = ("A", "B", "C", "D")
CONVERSATION_IDS = ("c1", "c2", "c3")
TEXTS = ("", "a", "b", "hello")

#: The default schema plus one user field, to check that everything is schema-driven.
ARCHIVED = Field("starred", 64, Flag)  # an app's own flag (tags 64..127)
EXTENDED_SCHEMA = DEFAULT_SCHEMA.extend(ARCHIVED)

replica_ids = st.sampled_from(REPLICA_IDS)
conversation_ids = st.sampled_from(CONVERSATION_IDS)
texts = st.sampled_from(TEXTS)

# -- registers ------------------------------------------------------------------------------

stamps = st.builds(
    Stamp, wall=st.integers(0, 3), counter=st.integers(0, 1), replica=replica_ids
)


def lwws(allow_bottom: bool = True) -> st.SearchStrategy[Lww]:
    written = st.builds(Lww, stamps, texts)
    return st.one_of(st.just(Lww.bottom()), written) if allow_bottom else written


def maxregs() -> st.SearchStrategy[MaxReg]:
    return st.integers(0, 8).map(MaxReg)


def lww_ints() -> st.SearchStrategy[LwwInt]:
    """muted_until registers: a few times, 0 (until unmuted) among them."""
    return st.one_of(st.just(LwwInt.bottom()), st.builds(LwwInt, stamps, st.integers(0, 4)))


MEMBERS = ("ann", "bob", "cy", "dee", "eve")


class SmallMaxMap(MaxMap):
    """A read-position map bounded to 3 members, so that draws exercise the join's top-k
    truncation (the real bound, 1024, is out of a small draw's reach)."""

    __slots__ = ()
    LIMIT = 3


def maxmaps(cls: type[MaxMap] = MaxMap) -> st.SearchStrategy[MaxMap]:
    """Any canonical map: members from a small alphabet, positions 0..4 (zeros dropped)."""
    return st.dictionaries(st.sampled_from(MEMBERS), st.integers(0, 4), max_size=5).map(
        cls.bounded)


# -- causal contexts and flags ----------------------------------------------------------------

dots = st.tuples(replica_ids, st.integers(1, 6))


def contexts() -> st.SearchStrategy[CausalContext]:
    """Any canonical context: a version vector plus a cloud of dots beyond it."""
    return st.builds(
        CausalContext.compact,
        st.dictionaries(replica_ids, st.integers(0, 3), max_size=3),
        st.frozensets(dots, max_size=3),
    )


@st.composite
def valid_flags(draw: Callable) -> Flag:
    """An arbitrary flag whose dots lie inside its context (the decoder's invariant)."""
    context = draw(contexts())
    seen = sorted(context.dots())
    alive = draw(st.frozensets(st.sampled_from(seen), max_size=3)) if seen else frozenset()
    return Flag(alive, context)


@st.composite
def reachable_flags(draw: Callable, max_steps: int = 8) -> Flag:
    """A flag some run of enable/disable mutators on a few replicas can reach: each replica
    mutates its own state and joins deltas it receives; the result is the join of a random
    subset of all deltas made (or one replica's state)."""
    local = {r: Flag.bottom() for r in REPLICA_IDS}
    deltas: list[Flag] = []
    for _ in range(draw(st.integers(0, max_steps))):
        r = draw(replica_ids)
        action = draw(st.sampled_from(("enable", "disable", "receive")))
        if action == "receive":
            if deltas:
                local[r] = local[r].join(draw(st.sampled_from(deltas)))
            continue
        delta = local[r].enable(r) if action == "enable" else local[r].disable()
        local[r] = local[r].join(delta)
        deltas.append(delta)
    if deltas and draw(st.booleans()):
        picked = draw(st.lists(st.sampled_from(deltas), max_size=4))
        return reduce(Flag.join, picked, Flag.bottom())
    return local[draw(replica_ids)]


def flags() -> st.SearchStrategy[Flag]:
    return st.one_of(st.just(Flag.bottom()), reachable_flags(), valid_flags())


# -- conversation maps -------------------------------------------------------------------------

_FIELD_STATES: dict[type, Callable[[], st.SearchStrategy]] = {
    Lww: lwws,
    MaxReg: maxregs,
    Flag: flags,
    LwwInt: lww_ints,
    MaxMap: maxmaps,
    History: ms.encodable_histories,  # the "messages" field (specs/crdt.md §8)
}


def field_states(schema: Schema = DEFAULT_SCHEMA) -> st.SearchStrategy[dict[str, Any]]:
    """One conversation's fields: any subset of the schema, each a drawn lattice state."""
    return st.fixed_dictionaries(
        {}, optional={f.name: _FIELD_STATES[f.lattice]() for f in schema.fields}
    )


def arbitrary_maps(schema: Schema = DEFAULT_SCHEMA) -> st.SearchStrategy[ConversationMap]:
    return st.builds(
        lambda convs: ConversationMap(convs, schema),
        st.dictionaries(conversation_ids, field_states(schema), max_size=3),
    )


@st.composite
def map_deltas(draw: Callable, state: ConversationMap) -> ConversationMap:
    """The delta of one map mutator, drawn with its arguments, applied to `state`."""
    schema = state.schema
    cid = draw(conversation_ids)
    flag_names = [f.name for f in schema.fields if f.lattice is Flag]
    op = draw(st.sampled_from(("title", "enable", "disable", "arrive", "read", "archive",
                               "unarchive", "delete", "mark_unread", "mute", "read_by",
                               "post", "append")))
    if op in ("post", "append"):  # the message history, through its own delta mutators
        history = state.fields(cid).get("messages", History())
        mid, text, stamp = draw(ms.message_ids), draw(texts), draw(stamps)
        stamp = stamp._replace(wall=stamp.wall + max((t.wall for t in history.stamps()),
                                                     default=0))  # fresh
        try:
            delta = (history.post(mid, text, stamp) if op == "post"
                     else history.append(mid, text, stamp))
        except MessageError:  # a re-post that differs, an append to no message
            delta = History()
        return ConversationMap({cid: {"messages": delta}}, schema)
    if op == "archive":
        return state.archive(cid, draw(replica_ids), draw(st.booleans()))
    if op == "unarchive":
        return state.unarchive(cid)
    if op == "delete":
        return state.delete(cid, draw(st.integers(0, 4)))
    if op == "mark_unread":
        return state.mark_unread(cid, draw(replica_ids))
    if op == "mute":
        return state.mute(cid, draw(replica_ids), draw(st.integers(0, 4)), draw(stamps))
    if op == "read_by":
        return state.mark_read_by(cid, draw(st.sampled_from(MEMBERS)), draw(st.integers(0, 6)))
    if op == "title":
        return state.set_title(cid, draw(texts), draw(stamps))
    if op == "enable":
        return state.enable(cid, draw(st.sampled_from(flag_names)), draw(replica_ids))
    if op == "disable":
        return state.disable(cid, draw(st.sampled_from(flag_names)))
    if op == "arrive":
        return state.message_arrived(
            cid, draw(st.integers(1, 8)), draw(texts), draw(st.integers(0, 4)), draw(replica_ids)
        )
    return state.mark_read(cid, draw(st.integers(0, 8)))


@st.composite
def reachable_maps(draw: Callable, schema: Schema = DEFAULT_SCHEMA, max_steps: int = 8):
    """A map reached by running mutators on a few replicas that exchange some deltas."""
    local = {r: ConversationMap.bottom(schema) for r in REPLICA_IDS[:3]}
    deltas: list[ConversationMap] = []
    for _ in range(draw(st.integers(0, max_steps))):
        r = draw(st.sampled_from(sorted(local)))
        if deltas and draw(st.booleans()):
            local[r] = local[r].join(draw(st.sampled_from(deltas)))
            continue
        delta = draw(map_deltas(local[r]))
        local[r] = local[r].join(delta)
        deltas.append(delta)
    if deltas and draw(st.booleans()):
        picked = draw(st.lists(st.sampled_from(deltas), max_size=4))
        return reduce(ConversationMap.join, picked, ConversationMap.bottom(schema))
    return local[draw(st.sampled_from(sorted(local)))]


def conversation_maps(schema: Schema = DEFAULT_SCHEMA) -> st.SearchStrategy[ConversationMap]:
    """States and deltas alike (a delta is a small state of the same type)."""
    return st.one_of(arbitrary_maps(schema), reachable_maps(schema))


@st.composite
def sub_maps(draw: Callable, m: ConversationMap) -> ConversationMap:
    """Some of `m`'s conversations with some of their fields: a delta `m` already holds."""
    out = {}
    for cid in draw(st.lists(st.sampled_from(sorted(m.convs)), unique=True)) if m.convs else []:
        fields = m.convs[cid]
        names = draw(st.lists(st.sampled_from(sorted(fields)), unique=True))
        out[cid] = {name: fields[name] for name in names}
    return ConversationMap(out, m.schema)


# -- hostile input: encodings and msgpack objects mutated (codec and wire fuzzing) -------------
# Shared by tests/test_codec_fuzz.py (the codec alone) and tests/test_fuzz_session.py (the
# same mutants as DELTA and STATE_CHUNK payloads inside frames).

INT_EDGES = [-(2**63), -1, 0, 1, 5, 127, 128, 255, 2**32 - 1, 2**32, 2**63 - 1, 2**63, 2**64 - 1]

nasty_keys = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(INT_EDGES),
    st.integers(-3, 130),  # tags just outside and inside the schema's range
    st.floats(allow_nan=False),
    st.text(max_size=3),
    st.binary(max_size=3),
)
nasty_values = st.one_of(
    nasty_keys,
    st.floats(),
    st.just([]),
    st.just({}),
    st.lists(st.sampled_from(INT_EDGES), max_size=5),
    st.lists(st.integers(-1, 8), min_size=2, max_size=8),  # dot-like flat pairs
    st.dictionaries(st.integers(-1, 130), st.integers(-1, 3), max_size=2),
    st.lists(st.just([0, 0, 0]), min_size=3, max_size=3),  # flag-shaped, wrong innards
)


@st.composite
def valid_encodings(draw: Callable, non_empty: bool = False) -> bytes:
    """codec.encode_map of a drawn map (either schema), or encode_fields of one conversation."""
    m = draw(st.one_of(conversation_maps(), conversation_maps(EXTENDED_SCHEMA)))
    if non_empty and not m.convs:
        m = ConversationMap({"c1": {"title": Lww(Stamp(1, 0, "A"), "t")}}, m.schema).join(m)
    if draw(st.booleans()) or not m.convs:
        return codec.encode_map(m)
    return codec.encode_fields(m.convs[draw(st.sampled_from(sorted(m.convs)))], m.schema)


@st.composite
def byte_mutants(draw: Callable) -> bytes:
    """A valid encoding with bytes flipped, inserted, deleted, truncated or duplicated."""
    data = bytearray(draw(valid_encodings()))
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(("flip", "insert", "delete", "truncate", "duplicate")))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if how == "flip" and data:
            data[i] ^= draw(st.integers(1, 255))
        elif how == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=5))
        elif how == "delete" and data:
            del data[i : i + draw(st.integers(1, 4))]
        elif how == "truncate":
            del data[i:]
        elif how == "duplicate":
            data[i:i] = data[i : i + draw(st.integers(1, 8))]
    return bytes(data)


def positions(obj: Any, path: tuple = ()) -> list[tuple]:
    """Every place in a msgpack object tree: list items, dict values and dict keys."""
    out = [path]
    if type(obj) is list:
        for i, item in enumerate(obj):
            out += positions(item, path + (("item", i),))
    elif type(obj) is dict:
        for key, value in obj.items():
            out.append(path + (("key", key),))
            out += positions(value, path + (("value", key),))
    return out


def replaced(obj: Any, path: tuple, change: Callable[[Any], Any]) -> Any:
    """A copy of `obj` with the node at `path` replaced by change(node)."""
    if not path:
        return change(obj)
    (kind, where), rest = path[0], path[1:]
    if type(obj) is list:
        out = list(obj)
        out[where] = replaced(obj[where], rest, change)
        return out
    if kind == "key":
        new_key = change(where)
        return {(new_key if k == where else k): v for k, v in obj.items()}
    return {k: (replaced(v, rest, change) if k == where else v) for k, v in obj.items()}


def node_at(obj: Any, path: tuple) -> Any:
    for _, where in path:
        obj = obj[where]
    return obj


def drop_one(node: Any) -> Any:
    if type(node) is list and node:
        return node[:-1]
    if type(node) is dict and node:
        return dict(list(node.items())[1:])
    return node


def grow(node: Any, key: Any, value: Any) -> Any:
    if type(node) is list:
        return node + [value]
    if type(node) is dict:
        return {**node, key: value}
    return node


@st.composite
def object_mutants(draw: Callable) -> bytes:
    """A valid encoding decoded to its msgpack object, mutated as a tree, packed again: wrong
    types, out-of-range integers, unknown tags, dropped or extra items, misplaced subtrees."""
    obj = codec.unpack(draw(valid_encodings(non_empty=True)))
    for _ in range(draw(st.integers(1, 3))):
        # Mostly inside a conversation's fields, where the per-lattice checks live; the
        # header and the root get their share from the shallower picks.
        depth = draw(st.sampled_from((3, 3, 3, 1, 0)))
        everywhere = positions(obj)
        path = draw(st.sampled_from([p for p in everywhere if len(p) >= depth] or everywhere))
        how = draw(st.sampled_from(("replace", "drop", "grow", "copy")))
        if path and path[-1][0] == "key":
            new_key = draw(nasty_keys)
            obj = replaced(obj, path, lambda _: new_key)
        elif how == "replace":
            new = draw(nasty_values)
            obj = replaced(obj, path, lambda _: new)
        elif how == "drop":
            obj = replaced(obj, path, drop_one)
        elif how == "grow":
            extra_key, extra = draw(nasty_keys), draw(nasty_values)
            obj = replaced(obj, path, lambda node: grow(node, extra_key, extra))
        else:  # put a valid subtree where a different one belongs
            source = draw(st.sampled_from(positions(obj)))
            if source and source[-1][0] != "key":
                subtree = node_at(obj, source)
                obj = replaced(obj, path, lambda _: subtree)
    return codec.pack(obj)


@dataclass(frozen=True)
class LatticeCase:
    """One type under the law suites: its name, a strategy of its states, its bottom."""

    name: str
    states: st.SearchStrategy
    bottom: Any

    def __str__(self) -> str:
        return self.name
