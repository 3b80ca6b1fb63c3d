"""The state of all of a user's conversations: a map conversation id -> field -> lattice.

The fields are declared once, in a `Schema` (name, small wire tag, lattice); the map, its join,
its delta mutators, the novel-part function and the codec all read that table, so an
embedding app adds e.g. an `archived` flag with `DEFAULT_SCHEMA.extend(...)` and writes no
other code. A delta is a map of the same shape holding only the fields that changed; states
and deltas share one join (Almeida et al., "Delta State Replicated Data Types", 2018).

Only non-bottom fields are stored, and conversations with none are dropped, so equal states
are equal dicts: equality is structural. No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import features
from .flag import Flag
from .history import History
from .hlc import Hlc
from .lattice import Lattice
from .lww import Lww, LwwInt, Stamp
from .maxmap import MaxMap
from .maxreg import MaxReg

__all__ = [
    "CARRIED_PREFIX",
    "DEFAULT_SCHEMA",
    "Conversation",
    "ConversationMap",
    "Field",
    "Fields",
    "Schema",
    "carried_name",
    "carried_tag",
    "clear_covered",
    "conversation_view",
    "join_fields",
    "message_arrived_delta",
    "novel_fields",
    "trusted_map",
]

#: The lattice types a field may have: the codec has an encoding for each (specs/crdt.md §7).
LATTICES: tuple[type[Lattice], ...] = (Lww, Flag, MaxReg, LwwInt, MaxMap, History)

#: One conversation's state: field name -> non-bottom lattice state. The values are typed
#: Any, not Lattice: callers reach the type-specific parts (a register's stamp, a flag's dots)
#: after looking the field's lattice up in the schema, which mypy cannot follow.
Fields = dict[str, Any]


#: A field whose tag this replica's schema does not know is carried under the name
#: CARRIED_PREFIX + tag (specs/crdt.md §7, "Fields of other schemas"): joined by the lattice
#: its encoding's shape names, never shown, written back under its tag.
CARRIED_PREFIX = "#"


def carried_name(tag: int) -> str:
    return f"{CARRIED_PREFIX}{tag}"


def carried_tag(name: str) -> int | None:
    """The tag of a carried field's name; None for a schema field's name."""
    if name.startswith(CARRIED_PREFIX) and name[1:].isdigit():
        return int(name[1:])
    return None


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    tag: int  # small integer used on the wire and on disk instead of the name
    lattice: type[Lattice]
    # The field's stamps are hybrid-logical-clock readings, so a replica receiving it must
    # advance its clock past them (and refuse readings too far in the future).
    clocked: bool = False


class Schema:
    """The table of conversation fields; the single place a field is declared."""

    def __init__(self, fields: Iterable[Field]):
        self.fields: tuple[Field, ...] = tuple(fields)
        self.by_name: dict[str, Field] = {}
        self.by_tag: dict[int, Field] = {}
        for f in self.fields:
            if f.lattice not in LATTICES:
                raise ValueError(f"field {f.name!r}: unknown lattice {f.lattice!r}")
            if not 0 <= f.tag < 128:
                raise ValueError(f"field {f.name!r}: tag {f.tag} is not in 0..127")
            if f.name.startswith(CARRIED_PREFIX):
                raise ValueError(f"field {f.name!r}: names starting with {CARRIED_PREFIX!r} "
                                 "are kept for fields of other schemas (carried_name)")
            if f.name in self.by_name or f.tag in self.by_tag:
                raise ValueError(f"field {f.name!r} (tag {f.tag}) is declared twice")
            self.by_name[f.name] = f
            self.by_tag[f.tag] = f
        #: (name, clocked) of the fields with stamps (the registers), for stamp_bounds.
        self.registers: tuple[tuple[str, bool], ...] = tuple(
            (f.name, f.clocked) for f in self.fields if f.lattice is Lww or f.lattice is LwwInt)
        #: (name, clocked) of the message-history fields, whose stamps are many
        #: (History.stamps()) and whose message times (History.max_at()) are bounded too.
        self.histories: tuple[tuple[str, bool], ...] = tuple(
            (f.name, f.clocked) for f in self.fields if f.lattice is History)

    def extend(self, *fields: Field) -> Schema:
        """This schema with an app's own fields, whose tags must be in 64..127: 0..63 are
        reserved for crdtim's (specs/crdt.md §6)."""
        for f in fields:
            if f.tag < FIRST_APP_TAG:
                raise ValueError(f"field {f.name!r}: tag {f.tag} is reserved for crdtim's own "
                                 f"fields (0..{FIRST_APP_TAG - 1}); an app's take "
                                 f"{FIRST_APP_TAG}..127")
        return Schema(self.fields + fields)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and self.fields == other.fields

    def __hash__(self) -> int:
        return hash(self.fields)

    def __repr__(self) -> str:
        return f"Schema({[f.name for f in self.fields]})"


DEFAULT_SCHEMA = Schema(
    [
        Field("title", 0, Lww, clocked=True),
        Field("pinned", 1, Flag),
        Field("muted", 2, Flag),
        Field("last_seq", 3, MaxReg),
        Field("read_seq", 4, MaxReg),
        # Keyed by (message time, sequence, replica): the newest message wins, not the
        # newest arrival.
        Field("last_message", 5, Lww),
        # The conversation features (specs/crdt.md §6). Tags 0..63 are crdtim's own, 64..127
        # an embedding app's.
        Field("archived", 6, Flag),
        Field("archived_seq", 7, MaxReg),  # last_seq when archived
        Field("archived_at", 8, MaxReg),  # last_at when archived
        Field("archive_keep", 9, Flag),
        Field("cleared_at", 10, MaxReg),  # delete for me: history through this time is gone
        Field("marked_unread", 11, Flag),
        Field("draft", 12, Lww, clocked=True),
        Field("muted_until", 13, LwwInt, clocked=True),  # ms, 0 = until unmuted
        Field("read_by", 14, MaxMap),
        # The message history (specs/crdt.md §8): messages and version-group choices. Not
        # in the view: the replica shows messages through its own API.
        Field("messages", 15, History, clocked=True),
    ]
)

#: The first tag an embedding app may give its own fields (specs/crdt.md §6).
FIRST_APP_TAG = 64


def clear_covered(fields: Fields) -> Fields:
    """The conversation without its last message if that message is at or before the time
    it was cleared through (delete for me, specs/crdt.md §6 "Join"): the normalization after
    the pointwise join. Returns `fields` itself when nothing is dropped."""
    cleared = fields.get("cleared_at")
    if cleared is not None:
        last = fields.get("last_message")
        if last is not None and last.stamp.wall <= cleared.value:
            out = dict(fields)
            del out["last_message"]
            return out
    return fields


def join_fields(a: Fields, b: Fields) -> Fields:
    """Join of two conversations' field states (neither argument is changed)."""
    if not b:
        return a
    if not a:
        return b
    out = dict(a)
    for name, state in b.items():
        mine = out.get(name)
        out[name] = state if mine is None else mine.join(state)
    return clear_covered(out)


def novel_fields(state: Fields, delta: Fields) -> Fields:
    """The fields of `delta` that would change `state` (Enes et al., ICDE 2019, "removing
    redundant state", at field granularity): state ⊔ result == state ⊔ delta."""
    out = {}
    for name, d in delta.items():
        mine = state.get(name)
        if mine is None or mine.join(d) != mine:
            out[name] = d
    last = out.get("last_message")
    if last is not None and _covered(last.stamp.wall, state, delta):  # the join drops it
        del out["last_message"]
    return out


def _covered(at: int, *parts: Fields) -> bool:
    """Whether a message at `at` ms is at or before a cleared_at of one of `parts`."""
    for fields in parts:
        c = fields.get("cleared_at")
        if c is not None and at <= c.value:
            return True
    return False


def message_arrived_delta(state: Fields, seq: int, preview: str, at: int, replica: str,
                          tiebreak: int | None = None) -> Fields:
    """Delta mutator on one conversation: message `seq` sent at `at` ms has arrived.

    Raises last_seq, and becomes the last message if it is newer (by message time, then
    sequence, or `tiebreak` in its place) than the one shown; only the fields that change are
    in the delta. A post without a sequence passes its created stamp's counter as
    `tiebreak`, so that two posts in one millisecond do not share a key (crdt.md §8.8).
    """
    delta: Fields = {}
    last_seq = state.get("last_seq", MaxReg.bottom()).raise_to(seq)
    if not last_seq.is_bottom():
        delta["last_seq"] = last_seq
    message = Lww(Stamp(at, seq if tiebreak is None else tiebreak, replica), preview)
    shown = state.get("last_message")
    if (shown is None or shown.join(message) != shown) and not _covered(at, state):
        delta["last_message"] = message
    return delta


def _normalized(convs: Mapping[str, Fields]) -> dict[str, Fields]:
    out = {}
    for cid, fields in convs.items():
        kept = clear_covered({name: s for name, s in fields.items() if not s.is_bottom()})
        if kept:
            out[cid] = kept
    return out


def trusted_map(convs: dict[str, Fields], schema: Schema) -> ConversationMap:
    """ConversationMap(convs, schema) for `convs` already normalized (no bottom field, no
    empty conversation), without the normalizing copy: for the join and the decoder, which
    make only normalized maps and would otherwise pay for a copy of every one."""
    m = ConversationMap.__new__(ConversationMap)
    m.schema = schema
    m.convs = convs
    return m


class ConversationMap:
    """A state or a delta: conversation id -> {field name -> lattice state}.

    Immutable in use: join and the mutators return new maps. Equality is structural.
    """

    __slots__ = ("convs", "schema")

    def __init__(self, convs: Mapping[str, Fields] | None = None, schema: Schema = DEFAULT_SCHEMA):
        self.schema = schema
        self.convs: dict[str, Fields] = _normalized(convs) if convs else {}

    # -- lattice ---------------------------------------------------------------------------

    @classmethod
    def bottom(cls, schema: Schema = DEFAULT_SCHEMA) -> ConversationMap:
        return cls(None, schema)

    def is_bottom(self) -> bool:
        return not self.convs

    def join(self, other: ConversationMap) -> ConversationMap:
        return self.join_all((other,))

    def join_all(self, others: Iterable[ConversationMap]) -> ConversationMap:
        """self ⊔ others[0] ⊔ others[1] ⊔ ..., in one pass: the cost is the size of the
        inputs, where folding `join` would copy the growing result once per input.

        No normalization pass: every map is normalized when made (no bottom field, no empty
        conversation), and a join of states that are not bottom is not bottom.
        """
        out = dict(self.convs)
        for other in others:
            for cid, fields in other.convs.items():
                mine = out.get(cid)
                out[cid] = fields if mine is None else join_fields(mine, fields)
        return trusted_map(out, self.schema)

    def novel(self, delta: ConversationMap) -> ConversationMap:
        """The part of `delta` that is new to this state; self ⊔ it == self ⊔ delta."""
        out = {}
        for cid, fields in delta.convs.items():
            part = novel_fields(self.convs.get(cid, {}), fields)
            if part:
                out[cid] = part
        return self._new(out)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ConversationMap):
            return NotImplemented
        return self.convs == other.convs

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ConversationMap({self.convs!r})"

    def __len__(self) -> int:
        return len(self.convs)

    def __iter__(self) -> Iterator[str]:
        return iter(self.convs)

    def fields(self, cid: str) -> Fields:
        return self.convs.get(cid, {})

    def max_clock(self) -> Hlc | None:
        """The largest hybrid-clock reading in the map's clocked fields, if any (every stamp
        of a message history: History.stamps())."""
        best = None
        for stamp in self._clocked_stamps():
            if best is None or stamp[:2] > best:
                best = Hlc(stamp.wall, stamp.counter)
        return best

    def max_counter(self) -> int:
        """The largest hybrid-clock counter in the map's clocked fields (0 if none): every
        reading, not only the largest one, must be bounded, since a forwarded part of this
        map may be all another replica receives."""
        return max((stamp.counter for stamp in self._clocked_stamps()), default=0)

    def _clocked_stamps(self) -> Iterator[Stamp]:
        clocked = [f.name for f in self.schema.fields if f.clocked]
        for fields in self.convs.values():
            for name in clocked:
                s = fields.get(name)
                if s is None:
                    continue
                if type(s) is History:
                    yield from s.stamps()
                else:
                    yield s.stamp

    def stamp_bounds(self) -> tuple[Hlc | None, int, int]:
        """(max_clock(), max_counter(), max_wall()) in one pass over the map."""
        best = None
        counter = wall = 0
        registers = self.schema.registers
        histories = self.schema.histories
        for fields in self.convs.values():
            for name, clocked in registers:
                s = fields.get(name)
                if s is None:
                    continue
                stamp = s.stamp
                if stamp.wall > wall:
                    wall = stamp.wall
                if clocked:
                    if stamp.counter > counter:
                        counter = stamp.counter
                    if best is None or stamp[:2] > best:
                        best = Hlc(stamp.wall, stamp.counter)
            for name, clocked in histories:
                h = fields.get(name)
                if h is None:
                    continue
                # Message times are not clocked but are bounded like last_message's.
                wall = max(wall, h.max_at())
                for stamp in h.stamps():
                    if stamp.wall > wall:
                        wall = stamp.wall
                    if clocked:
                        if stamp.counter > counter:
                            counter = stamp.counter
                        if best is None or stamp[:2] > best:
                            best = Hlc(stamp.wall, stamp.counter)
        return best, counter, wall

    def max_wall(self) -> int:
        """The largest wall time in any register stamp of the map, and of any message-history
        stamp or message time (0 if none): a bound on it keeps a peer's far-future time from
        winning a register forever."""
        best = 0
        for fields in self.convs.values():
            for s in fields.values():
                if type(s) is History:
                    best = max(best, s.max_at(), *(stamp.wall for stamp in s.stamps()))
                    continue
                stamp = getattr(s, "stamp", None)
                if stamp is not None and stamp.wall > best:
                    best = stamp.wall
        return best

    # -- delta mutators: each returns the delta (a map holding just the change) --------------

    def set_register(self, cid: str, name: str, value: str, stamp: Stamp) -> ConversationMap:
        return self._one(cid, name, Lww(stamp, value))

    def set_title(self, cid: str, text: str, stamp: Stamp) -> ConversationMap:
        return self.set_register(cid, "title", text, stamp)

    def enable(self, cid: str, name: str, replica: str) -> ConversationMap:
        return self._one(cid, name, self._field(cid, name).enable(replica))

    def disable(self, cid: str, name: str) -> ConversationMap:
        return self._one(cid, name, self._field(cid, name).disable())

    def raise_to(self, cid: str, name: str, n: int) -> ConversationMap:
        return self._one(cid, name, self._field(cid, name).raise_to(n))

    def message_arrived(
        self, cid: str, seq: int, preview: str, at: int, replica: str
    ) -> ConversationMap:
        return self._new({cid: message_arrived_delta(self.fields(cid), seq, preview, at, replica)})

    def mark_read(self, cid: str, seq: int) -> ConversationMap:
        return self._new({cid: features.mark_read_delta(self.fields(cid), seq)})

    # The conversation features (specs/crdt.md §6, "Feature mutators").

    def archive(self, cid: str, replica: str, keep: bool = False) -> ConversationMap:
        return self._new({cid: features.archive_delta(self.fields(cid), replica, keep)})

    def unarchive(self, cid: str) -> ConversationMap:
        return self._new({cid: features.unarchive_delta(self.fields(cid))})

    def delete(self, cid: str, now: int) -> ConversationMap:
        return self._new({cid: features.delete_delta(self.fields(cid), now)})

    def mark_unread(self, cid: str, replica: str) -> ConversationMap:
        return self._new({cid: features.mark_unread_delta(self.fields(cid), replica)})

    def mute(self, cid: str, replica: str, until: int, stamp: Stamp) -> ConversationMap:
        return self._new({cid: features.mute_delta(self.fields(cid), replica, until, stamp)})

    def mark_read_by(self, cid: str, member: str, seq: int) -> ConversationMap:
        return self._new({cid: features.mark_read_by_delta(self.fields(cid), member, seq)})

    # -- views --------------------------------------------------------------------------------

    def view(self, cid: str, now: int = 0) -> Conversation | None:
        fields = self.convs.get(cid)
        return None if fields is None else conversation_view(cid, fields, self.schema, now)

    # -- helpers ------------------------------------------------------------------------------

    def _field(self, cid: str, name: str) -> Any:
        state = self.convs.get(cid, {}).get(name)
        return self.schema.by_name[name].lattice.bottom() if state is None else state

    def _one(self, cid: str, name: str, state: Any) -> ConversationMap:
        return self._new({cid: {name: state}})

    def _new(self, convs: dict[str, Fields]) -> ConversationMap:
        return ConversationMap(convs, self.schema)


@dataclass(frozen=True, slots=True)
class Conversation:
    """What a user sees of one conversation: the value of its lattices."""

    id: str
    title: str = ""
    pinned: bool = False
    muted: bool = False
    unread: int = 0
    last_seq: int = 0
    read_seq: int = 0
    last_preview: str = ""
    last_at: int = 0
    # The conversation features (specs/crdt.md §6, "View").
    archived: bool = False
    deleted: bool = False
    marked_unread: bool = False
    draft: str = ""
    muted_until: int = 0
    read_by: Mapping[str, int] = field(default_factory=dict)
    # Values of fields an embedding app added to the schema, by name.
    extra: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in _VIEW_NAMES}
        d["read_by"] = dict(self.read_by)
        if self.extra:
            d["extra"] = dict(self.extra)
        return d


_VIEW_NAMES = (
    "id", "title", "pinned", "muted", "unread", "last_seq", "read_seq", "last_preview", "last_at",
    "archived", "deleted", "marked_unread", "draft", "muted_until",
)
_BUILTIN = {f.name for f in DEFAULT_SCHEMA.fields}


def conversation_view(
    cid: str, fields: Fields, schema: Schema = DEFAULT_SCHEMA, now: int = 0
) -> Conversation:
    """The view of specs/crdt.md §6; `now` (ms, the caller's wall clock: this module reads
    none) decides whether a mute with an end time still holds."""
    def val(name: str, default: Any) -> Any:
        s = fields.get(name)
        return default if s is None else s.value

    last_seq = val("last_seq", 0)
    read_seq = val("read_seq", 0)
    last = fields.get("last_message")
    last_at = 0 if last is None else last.stamp.wall
    muted_flag = val("muted", False)
    muted_until = val("muted_until", 0) if muted_flag else 0
    cleared_at = val("cleared_at", 0)
    extra = {
        f.name: (fields[f.name].value if f.name in fields else f.lattice.bottom().value)
        for f in schema.fields
        # Message histories ("messages", or an app's) are read through the replica's
        # message API, never as a conversation's value.
        if f.name not in _BUILTIN and f.lattice is not History
    }
    return Conversation(
        id=cid,
        title=val("title", ""),
        pinned=val("pinned", False),
        muted=muted_flag and (muted_until == 0 or now < muted_until),
        unread=max(0, last_seq - read_seq),
        last_seq=last_seq,
        read_seq=read_seq,
        last_preview="" if last is None else last.value,
        last_at=last_at,
        archived=val("archived", False) and (
            val("archive_keep", False)
            or (last_seq <= val("archived_seq", 0) and last_at <= val("archived_at", 0))),
        deleted=cleared_at > 0 and last_at <= cleared_at,
        marked_unread=val("marked_unread", False),
        draft=val("draft", ""),
        muted_until=muted_until,
        read_by=val("read_by", {}),
        extra=extra,
    )
