"""Values from peers stamped too far ahead: held durably, applied when time reaches them.

A remote delta may hold register values whose stamps are more than `max_clock_drift_ms`
ahead of our wall clock (a peer whose clock ran ahead, even once: its hybrid clock never
goes back). Refusing the whole delta stalled every later write of that peer behind it, so
those values alone are split off into the `pending` database, keyed by their stamp's wall
time and conversation, and the rest is applied at once (specs/crdt.md §1, "Rule for
replicas"). A held value is joined, and logged with its origin so that it is forwarded
then, by the first write transaction that finds now + drift at its time, or by
`housekeeping()`. Our clock advances past it only then. No I/O but the store's, no clock
read: `now` is passed in.
"""

from __future__ import annotations

from .. import codec
from ..crdt import ConversationMap, Hlc, Schema, join_fields, novel_fields, trusted_map
from ..crdt.conversation import Fields
from ..errors import CorruptStoreError, DecodeError
from ..store import Txn
from ._reads import too_many_messages
from ._subscriptions import Changed
from ._write import WriteHost, WriteTxn

__all__ = ["Changes", "apply_due", "hold", "split_future"]

#: Values held for one (time, conversation), by field: what `hold` stores.
Later = dict[tuple[int, str], Fields]
#: What a write transaction changed: (conversation id, field names), as WriteTxn.finish says.
Changes = list[Changed]


def split_future(delta: ConversationMap, horizon: int) -> tuple[ConversationMap, Later]:
    """(the part of `delta` to apply now, the register values stamped after `horizon` ms,
    by (stamp wall, conversation)). A field is one lattice state, so it goes whole to one
    side; flags and max registers carry no stamp and are always applied now."""
    now: dict[str, Fields] = {}
    later: Later = {}
    registers = delta.schema.registers
    for cid, fields in delta.convs.items():
        kept = fields
        for name, _ in delta.schema.histories:  # `messages`, and an app's own histories
            history = fields.get(name)
            if history is None:
                continue
            # A history delta is held whole, until its latest stamp or message time.
            clock = history.max_clock()
            wall = max(0 if clock is None else clock.wall, history.max_at())
            if wall > horizon:
                kept = {n: state for n, state in kept.items() if n != name}
                later.setdefault((wall, cid), {})[name] = history
        for name, _ in registers:
            state = fields.get(name)
            if state is None or state.stamp.wall <= horizon:
                continue
            if kept is fields:
                kept = dict(fields)
            del kept[name]
            later.setdefault((state.stamp.wall, cid), {})[name] = state
        if kept:
            now[cid] = kept
    return trusted_map(now, delta.schema), later


def hold(t: Txn, later: Later, origin: str, schema: Schema) -> None:
    """Store the values of `later` in `pending`, joined with any held for the same time and
    conversation (then with no single origin: "", forwarded to every peer)."""
    for (wall, cid), fields in later.items():
        held_origin = origin
        while (held := t.pending_entry(wall, cid)) is not None:
            before, payload = held
            held_fields = _decoded(payload, schema).fields(cid)
            # A held entry is applied as one log entry, which is forwarded and must stay
            # within what a peer decodes in one delta (crdt.md §8.7): past that, this part
            # waits in an entry of its own, a millisecond later.
            if too_many_messages({cid: held_fields}, trusted_map({cid: fields}, schema)):
                wall += 1
                continue
            fields = join_fields(held_fields, fields)
            if before != origin:
                held_origin = ""
            break
        t.put_pending(wall, cid, held_origin,
                      codec.encode_map(trusted_map({cid: fields}, schema)))


def apply_due(host: WriteHost, t: Txn, now: int) -> list[tuple[str, Changes]]:
    """Apply, in transaction `t`, every held value whose time is at most now + drift: each
    as its own log entry with its origin. Returns (origin, changes) per entry applied."""
    first = t.first_pending_wall()
    horizon = now + host.max_clock_drift_ms
    if first is None or first > horizon:
        return []
    applied: list[tuple[str, Changes]] = []
    for wall, cid, origin, payload in t.pending_upto(horizon):
        t.delete_pending(wall, cid)
        w = WriteTxn(host, t)
        fields = _decoded(payload, host.schema).fields(cid)
        clock = _max_clock(fields, host.schema)
        if clock is not None:
            w.observe(clock)
        w.join(cid, novel_fields(w.fields(cid), fields))
        applied.append((origin, w.finish(origin)))
    return applied


def _max_clock(fields: Fields, schema: Schema) -> Hlc | None:
    return trusted_map({"": fields}, schema).stamp_bounds()[0] if fields else None


def _decoded(payload: bytes, schema: Schema) -> ConversationMap:
    try:
        return codec.decode_map(payload, schema, codec.STORAGE_LIMITS)
    except DecodeError as e:
        raise CorruptStoreError(f"a held (pending) value is damaged: {e}") from None
