"""The checker's rules: what every replica must hold once the faults have healed.

Input: the operations acknowledged to the workload (each with the exact delta its commit
logged, read back from the replica's own log right after the call returned) and the final
state of every replica. Output: a `Verdict` listing every divergence, every acknowledged
operation whose effect is missing somewhere (a lost write), and every conversation whose
value is not what the semantic rules of specs/crdt.md give (specs/faults.md, "The checker").

The rules are stated per field, not by re-running the lattice code on the deltas, so that a
bug in a join would be caught here rather than repeated:
- title: the text of the acknowledged title write with the greatest stamp (HLC order, then
  replica id);
- pinned, muted (add-wins): true iff some acknowledged enable's dot was not observed, as a
  current dot, by any other acknowledged operation on that flag (a disable observes the dots
  it removes; an enable, those it overwrites);
- last_seq, read_seq: the largest acknowledged value; last message: the arrival with the
  greatest (time, seq, replica) stamp.
Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from .. import codec
from ..crdt import Conversation, ConversationMap, Flag, Lww, conversation_view
from ..crdt.conversation import join_fields

__all__ = ["AckedOp", "Verdict", "check", "expected_view"]

FLAGS = ("pinned", "muted")


@dataclass(frozen=True, slots=True)
class AckedOp:
    """One operation whose call returned (so it is acknowledged), and what it logged."""

    replica: str  # id of the replica that acknowledged it
    kind: str  # title | enable | disable | arrive | read
    cid: str
    delta: ConversationMap  # the log entry of its commit (only what it changed)

    def to_json(self) -> dict[str, Any]:
        return {"replica": self.replica, "kind": self.kind, "cid": self.cid,
                "delta": base64.b64encode(codec.encode_map(self.delta)).decode()}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> AckedOp:
        delta = codec.decode_map(base64.b64decode(obj["delta"]), limits=_LIMITS)
        return cls(obj["replica"], obj["kind"], obj["cid"], delta)


_LIMITS = codec.Limits(max_bytes=2**40, max_conversations=2**40, max_replicas=2**40,
                       max_dots=2**40)


@dataclass
class Verdict:
    diverged: list[str] = field(default_factory=list)  # replica X's state differs from Y's
    lost: list[str] = field(default_factory=list)  # an acknowledged op's effect is missing
    wrong: list[str] = field(default_factory=list)  # a value breaks a semantic rule
    lost_ops: int = 0  # distinct acknowledged operations missing somewhere

    @property
    def ok(self) -> bool:
        return not (self.diverged or self.lost or self.wrong)

    def summary(self, limit: int = 5) -> str:
        lines = [*self.diverged[:limit], *self.lost[:limit], *self.wrong[:limit]]
        return "; ".join(lines) if lines else "ok"


def expected_view(cid: str, ops: Iterable[AckedOp]) -> Conversation:
    """The conversation as the rules say it must read, from its acknowledged operations."""
    title: Lww | None = None
    last_message: Lww | None = None
    last_seq = read_seq = 0
    flag_deltas: dict[str, list[Flag]] = {name: [] for name in FLAGS}
    for op in ops:
        fields = op.delta.fields(cid)
        t = fields.get("title")
        if t is not None and (title is None or (t.stamp, t.value) > (title.stamp, title.value)):
            title = t
        m = fields.get("last_message")
        if m is not None and (last_message is None
                              or (m.stamp, m.value) > (last_message.stamp, last_message.value)):
            last_message = m
        if "last_seq" in fields:
            last_seq = max(last_seq, fields["last_seq"].value)
        if "read_seq" in fields:
            read_seq = max(read_seq, fields["read_seq"].value)
        for name in FLAGS:
            if name in fields:
                flag_deltas[name].append(fields[name])
    return Conversation(
        id=cid,
        title="" if title is None else title.value,
        pinned=_add_wins(flag_deltas["pinned"]),
        muted=_add_wins(flag_deltas["muted"]),
        unread=max(0, last_seq - read_seq),
        last_seq=last_seq,
        read_seq=read_seq,
        last_preview="" if last_message is None else last_message.value,
        last_at=0 if last_message is None else last_message.stamp.wall,
    )


def _add_wins(deltas: list[Flag]) -> bool:
    """True iff an enable's dot survives: no other op's delta observed it without keeping it.

    An enable's delta is ({d}, {d} + the dots it overwrote); a disable's is ({}, the dots it
    removed). A dot d is removed exactly when some delta's context holds d but its dots do
    not (Almeida et al., EWFlag).
    """
    for enable in deltas:
        for dot in enable.dots:
            if all(dot in other.dots for other in deltas if other.context.contains(dot)):
                return True
    return False


def check(states: Mapping[str, ConversationMap], ops: Iterable[AckedOp]) -> Verdict:
    """Judge the final `states` (replica name -> whole state) against the acknowledged ops."""
    ops = list(ops)
    verdict = Verdict()
    names = list(states)
    if not names:
        return verdict
    first = states[names[0]]
    for name in names[1:]:
        if states[name] != first:
            cids = sorted(set(first.convs) | set(states[name].convs))
            differing = [c for c in cids if first.fields(c) != states[name].fields(c)]
            verdict.diverged.append(f"{name} differs from {names[0]} in {len(differing)} "
                                    f"conversation(s), e.g. {differing[:3]}")
    by_cid: dict[str, list[AckedOp]] = {}
    lost_ops = set()
    for i, op in enumerate(ops):
        by_cid.setdefault(op.cid, []).append(op)
        for name in names:
            held = states[name].fields(op.cid)
            if join_fields(held, op.delta.fields(op.cid)) != held:
                lost_ops.add(i)
                verdict.lost.append(f"{op.kind} on {op.cid} acknowledged by {op.replica} is "
                                    f"missing at {name}")
    verdict.lost_ops = len(lost_ops)
    for cid, cid_ops in sorted(by_cid.items()):
        want = expected_view(cid, cid_ops)
        for name in names:
            fields = states[name].fields(cid)
            got = conversation_view(cid, fields) if fields else Conversation(cid)
            if got != want:
                verdict.wrong.append(f"{cid} at {name} reads {_diff(got, want)}")
    return verdict


def _diff(got: Conversation, want: Conversation) -> str:
    a, b = got.as_dict(), want.as_dict()
    return ", ".join(f"{k}={a[k]!r} (expected {b[k]!r})" for k in a if a[k] != b[k])
