"""The checker's rules: what every replica must hold once the faults have healed.

Input: every acknowledged operation -- its *intent* (what the caller asked for: kind,
conversation, flag, text, seq, message time), recorded by the harness independently of what
the implementation did, plus what its commit logged (for the stamp of a title and the dot of
an enable, which only the implementation can choose) -- the operations that may or may not
have happened (a writer killed in the middle of the call), and the final state of every
replica. Output: a `Verdict` listing every divergence, every acknowledged operation whose
effect is missing somewhere or never happened (a lost write), every value the rules do not
give (a wrong value), and every acknowledged operation that could not be checked.

Rules (specs/faults.md §2), stated from the intents:
- read_seq = the largest acknowledged mark_read seq; last_seq = the largest acknowledged
  message_arrived seq; last message = the acknowledged arrival with the greatest
  (time, seq, replica id), then preview;
- title = the text of the acknowledged title write with the greatest stamp
  (wall, counter, replica id), compared as tuples;
- pinned, muted (add-wins): true iff some acknowledged enable's dot is not observed and
  dropped by another acknowledged operation on that flag (in its context, not in its dots).

What it shares with the implementation, and why: it reads the CRDT values' data (a `Lww`'s
stamp and value, a `Flag`'s dots and context's version vector and cloud, a `MaxReg`'s value)
and turns them into plain tuples, sets and dicts at once; from there on it is plain Python.
It calls no join, no comparison, no `contains` and no view of the library, so that a bug in
any of those is caught rather than repeated. Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from crdtim import codec
from crdtim.crdt import ConversationMap, Flag, History, Lww, MaxReg

from .messages import MESSAGE_KINDS, check_messages, plain_history

__all__ = ["AckedOp", "Intent", "Verdict", "call_defect", "check", "expected_view", "plain"]

FLAGS = ("pinned", "muted")
KINDS = ("title", "enable", "disable", "arrive", "read")


@dataclass(frozen=True, slots=True)
class Intent:
    """What one call asked for, recorded by the harness before it is made."""

    kind: str  # title | enable | disable | arrive | read
    cid: str
    flag: str = ""  # enable, disable: pinned | muted
    text: str = ""  # title: the title; arrive: the preview
    seq: int = 0  # arrive: the message's seq; read: the read marker
    at: int = 0  # arrive: the message's time, ms
    #: message kinds (messages.MESSAGE_KINDS): the message made (post, regenerate) or named
    #: (append, edit, switch, delete_message); `ref` the reply_to of a post, the message a
    #: regenerate makes a version of; `role` a post's role; `text` a post's, regenerate's,
    #: append's or edit's text
    mid: str = ""
    ref: str = ""
    role: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "cid": self.cid, "flag": self.flag, "text": self.text,
                "seq": self.seq, "at": self.at, "mid": self.mid, "ref": self.ref,
                "role": self.role}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Intent:
        return cls(obj["kind"], obj["cid"], obj["flag"], obj["text"], obj["seq"], obj["at"],
                   obj.get("mid", ""), obj.get("ref", ""), obj.get("role", ""))


@dataclass(frozen=True, slots=True)
class AckedOp:
    """One call that returned (so it is acknowledged): its intent and what it logged."""

    replica: str  # id of the replica that acknowledged it
    intent: Intent
    delta: ConversationMap | None  # its commit's log entry; None: it logged nothing
    defect: str | None = None  # call_defect's finding right after the call returned
    unrecorded: bool = False  # its log entry was trimmed before it could be read

    @property
    def kind(self) -> str:
        return self.intent.kind

    @property
    def cid(self) -> str:
        return self.intent.cid

    def to_json(self) -> dict[str, Any]:
        return {"replica": self.replica, "intent": self.intent.to_json(),
                "delta": None if self.delta is None
                else base64.b64encode(codec.encode_map(self.delta)).decode(),
                "defect": self.defect, "unrecorded": self.unrecorded}

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> AckedOp:
        delta = (None if obj["delta"] is None
                 else codec.decode_map(base64.b64decode(obj["delta"]), limits=_LIMITS))
        return cls(obj["replica"], Intent.from_json(obj["intent"]), delta, obj["defect"],
                   obj["unrecorded"])


_LIMITS = codec.Limits(max_bytes=2**40, max_conversations=2**40, max_replicas=2**40,
                       max_dots=2**40)


@dataclass
class Verdict:
    diverged: list[str] = field(default_factory=list)  # replica X's state differs from Y's
    lost: list[str] = field(default_factory=list)  # an acknowledged op's effect is missing
    wrong: list[str] = field(default_factory=list)  # a value breaks a semantic rule
    unchecked: list[str] = field(default_factory=list)  # acknowledged, but not checkable
    lost_ops: int = 0  # distinct acknowledged operations missing somewhere

    @property
    def ok(self) -> bool:
        return not (self.diverged or self.lost or self.wrong or self.unchecked)

    def summary(self, limit: int = 5) -> str:
        lines = [*self.diverged[:limit], *self.lost[:limit], *self.wrong[:limit],
                 *self.unchecked[:limit]]
        return "; ".join(lines) if lines else "ok"


# -- plain values ------------------------------------------------------------------------------
#
# title, last_message: ((wall, counter, replica), text); last_seq, read_seq: int;
# a flag: (dots, vv, cloud) with dots and cloud sets of (replica, counter), vv a dict.


def plain(fields: Mapping[str, Any]) -> dict[str, Any]:
    """One conversation's fields as plain tuples, sets and dicts (the values' data only)."""
    out: dict[str, Any] = {}
    for name, s in fields.items():
        if isinstance(s, Lww):
            out[name] = ((s.stamp.wall, s.stamp.counter, s.stamp.replica), s.value)
        elif isinstance(s, Flag):
            out[name] = (frozenset(s.dots),
                         {r: n for r, n in s.context.vv.items() if n > 0},
                         frozenset(s.context.cloud))
        elif isinstance(s, MaxReg):
            out[name] = s.value
        elif isinstance(s, History):
            out[name] = plain_history(s)
        else:
            out[name] = repr(s)
    return out


def _seen(flag: tuple | None, dot: tuple[str, int]) -> bool:
    """Is `dot` in the flag's causal context (version vector ranges, then the cloud)?"""
    if flag is None:
        return False
    _, vv, cloud = flag
    return dot[1] <= vv.get(dot[0], 0) or dot in cloud


def _context_dots(flag: tuple) -> set[tuple[str, int]]:
    """Every dot of a delta's context, one by one (a delta's context is a few dots)."""
    _, vv, cloud = flag
    return {(r, i) for r, n in vv.items() for i in range(1, n + 1)} | set(cloud)


def _own_fields(op: AckedOp) -> dict[str, Any]:
    return {} if op.delta is None else plain(op.delta.fields(op.cid))


def _new_dot(op: AckedOp) -> tuple[str, int] | None:
    """The dot an enable made: in its logged dots, of its own replica."""
    flag = _own_fields(op).get(op.intent.flag)
    mine = [] if flag is None else [d for d in flag[0] if d[0] == op.replica]
    return mine[0] if len(mine) == 1 else None


def _title_stamp(op: AckedOp) -> tuple | None:
    t = _own_fields(op).get("title")
    return None if t is None else t[0]


# -- at the call -------------------------------------------------------------------------------


def call_defect(replica: str, intent: Intent, delta: Mapping[str, Any] | None,
                before: Mapping[str, Any], after: Mapping[str, Any], *,
                exclusive: bool) -> str | None:
    """What is wrong with an acknowledged call, judged right after it returned from its
    intent, its log entry's fields `delta` (None: it logged nothing) and the conversation's
    fields just `before` the call and just `after` it. `exclusive`: nothing else wrote to the
    replica in between (the simulation); otherwise (a server beside the workload) only the
    rules that a concurrent remote write cannot make false are applied. None: no defect."""
    d = None if delta is None else plain(delta)
    b, a = plain(before), plain(after)
    kind = intent.kind
    if kind == "title":  # always logs, its own text, stamped by its own replica
        t = None if d is None else d.get("title")
        if t is None:
            return "title write logged no title"
        if t[1] != intent.text or t[0][2] != replica:
            return f"title write of {intent.text!r} logged {t!r}"
    elif kind == "enable":  # always adds a dot of its own replica that was not seen before
        flag = None if d is None else d.get(intent.flag)
        mine = [] if flag is None else [dot for dot in flag[0] if dot[0] == replica]
        if len(mine) != 1 or _seen(b.get(intent.flag), mine[0]):
            return f"enable of {intent.flag} added no new dot (logged {flag!r})"
    elif kind == "disable":  # removes every enable it saw: none of those may survive it
        kept = (b.get(intent.flag, (frozenset(), {}, frozenset()))[0]
                & a.get(intent.flag, (frozenset(), {}, frozenset()))[0])
        if kept:
            return f"disable of {intent.flag} left the enables {sorted(kept)} it saw"
        flag = None if d is None else d.get(intent.flag)
        if flag is not None and flag[0]:
            return f"disable of {intent.flag} logged enables {sorted(flag[0])}"
        if exclusive and b.get(intent.flag, (frozenset(),))[0] and flag is None:
            return f"disable of an enabled {intent.flag} logged nothing"
    elif kind == "arrive":
        if a.get("last_seq", 0) < intent.seq:
            return f"message {intent.seq} arrived, but last_seq is {a.get('last_seq', 0)}"
        stamp = (intent.at, intent.seq, replica)
        shown = a.get("last_message")
        if shown is None or shown[0] < stamp:
            return f"message {stamp} arrived, but the last message shown is {shown!r}"
        if exclusive and b.get("last_seq", 0) < intent.seq and (d or {}).get(
                "last_seq") != intent.seq:
            return f"message {intent.seq} above last_seq {b.get('last_seq', 0)} did not log it"
    elif kind in MESSAGE_KINDS:
        return _message_call_defect(replica, intent, d, b, a, exclusive=exclusive)
    elif kind == "read":
        if a.get("read_seq", 0) < intent.seq:
            return f"read marker {intent.seq} set, but read_seq is {a.get('read_seq', 0)}"
        if exclusive and b.get("read_seq", 0) < intent.seq and (d or {}).get(
                "read_seq") != intent.seq:
            return f"read marker {intent.seq} above {b.get('read_seq', 0)} did not log it"
    else:
        return f"unknown kind {kind!r}"
    return None


def _message_call_defect(replica: str, intent: Intent, d: Mapping[str, Any] | None,
                         b: Mapping[str, Any], a: Mapping[str, Any], *,
                         exclusive: bool) -> str | None:
    """A message call judged at once: its delta holds what it asked for, made here."""
    logged = None if d is None else d.get("messages")
    mine = None if logged is None else next((m for m in logged[0] if m[0] == intent.mid), None)
    held = a.get("messages")
    now = None if held is None else next((m for m in held[0] if m[0] == intent.mid), None)
    kind = intent.kind
    if kind in ("post", "regenerate"):
        if mine is None or mine[1] is None or mine[2][1] != intent.text \
                or mine[1][6][2] != replica:
            return f"{kind} of {intent.mid!r} logged {mine!r}"
        if kind == "post" and intent.ref and mine[1][0] != intent.ref:
            return f"post replying to {intent.ref!r} logged parent {mine[1][0]!r}"
    elif kind == "append" and intent.text:
        if mine is None or not (any(t == intent.text and s[2] == replica for s, _, t in mine[3])
                                or mine[2][1].endswith(intent.text)):
            return f"append of {intent.text!r} to {intent.mid!r} logged {mine!r}"
    elif kind == "edit":
        if mine is None or mine[2][1] != intent.text:
            return f"edit of {intent.mid!r} logged {mine!r}"
    elif kind == "delete_message":
        if now is None or not now[4]:
            return f"deleted {intent.mid!r}, but it reads {now!r}"
    if exclusive and kind in ("post", "regenerate", "append", "edit") and now is not None \
            and not now[4] and intent.text and intent.text not in _visible_text(now):
        return f"{kind} of {intent.text!r} does not show in {intent.mid!r}: {now!r}"
    return None


def _visible_text(m: tuple) -> str:
    _, _, (base, text), appends, _ = m
    return text + "".join(t for _, bs, t in sorted(appends) if bs == base)


# -- after the heal ------------------------------------------------------------------------------


def _missing_at(op: AckedOp, held: Mapping[str, Any]) -> bool | None:
    """Is the effect of acknowledged `op` missing from a replica's plain fields `held`?
    None: it cannot be told (its log entry, which holds its stamp or dot, was not read)."""
    i = op.intent
    if i.kind in MESSAGE_KINDS:
        return False  # judged by messages.check_messages
    if i.kind == "title":
        stamp = _title_stamp(op)
        if stamp is None:
            return None
        return held.get("title", ((0, 0, ""), ""))[0] < stamp
    if i.kind == "enable":
        dot = _new_dot(op)
        if dot is None:
            return None
        return not _seen(held.get(i.flag), dot)
    if i.kind == "disable":
        flag = _own_fields(op).get(i.flag)
        if flag is None:
            return False if op.delta is not None or not op.unrecorded else None
        current = held.get(i.flag)
        return any(not _seen(current, dot) or dot in current[0] for dot in _context_dots(flag))
    if i.kind == "arrive":
        shown = held.get("last_message")
        return (held.get("last_seq", 0) < i.seq
                or shown is None or shown[0] < (i.at, i.seq, op.replica))
    return held.get("read_seq", 0) < i.seq


def reached(op: AckedOp, held: Mapping[str, Any]) -> bool:
    """Does a replica's plain fields `held` (of the op's conversation) already hold what
    acknowledged `op` wrote? Used when the op's own replica is damaged (specs/faults.md §4):
    an op that reached another replica cannot be lost by that damage; one that reached none
    may be. An op whose stamps are unknown has reached nowhere that can be told."""
    i = op.intent
    if i.kind not in MESSAGE_KINDS:
        return _missing_at(op, held) is False
    if i.kind == "switch":
        return True  # the checker judges no switch by its effect: nothing to lose
    logged = _own_fields(op).get("messages")
    mine = None if logged is None else next((m for m in logged[0] if m[0] == i.mid), None)
    if mine is None:
        return op.delta is not None or not op.unrecorded  # it changed nothing
    h = held.get("messages")
    there = None if h is None else next((m for m in h[0] if m[0] == i.mid), None)
    if there is None:
        return False
    if i.kind in ("post", "regenerate"):
        return there[1] is not None
    if i.kind == "delete_message":
        return bool(there[4])
    if i.kind == "append" and mine[3]:
        return {(s, b) for s, b, _ in mine[3]} <= {(s, b) for s, b, _ in there[3]}
    return there[2][0] >= mine[2][0]  # an edit, or an append folded into the base


def refused_traces(states: Mapping[str, ConversationMap],
                   refused: Iterable[tuple[str, Intent]]) -> list[str]:
    """Traces of refused calls (the replica raised StoreError: nothing may be committed)
    that a final state still shows: a refused post's or regenerate's message id, a refused
    title's text, a refused arrival's preview at its (at, seq). Texts and ids are unique per
    call, so any of these seen anywhere was committed by the refused call."""
    found = []
    for name, state in states.items():
        for replica, i in refused:
            held = plain(state.fields(i.cid)) if i.cid in state.convs else {}
            if i.kind in ("post", "regenerate"):
                h = held.get("messages")
                trace = h is not None and any(m[0] == i.mid for m in h[0])
            elif i.kind == "title":
                trace = held.get("title", (None, None))[1] == i.text
            elif i.kind == "arrive":
                shown = held.get("last_message")
                trace = shown is not None and shown[1] == i.text
            else:
                continue
            if trace:
                found.append(f"{i.kind} {i.to_json()} refused at {replica} shows at {name}")
    return found


def _add_wins(ops: list[AckedOp], flag: str) -> bool:
    """True iff an enable's dot survives: no other op's delta observed it without keeping it.

    An enable's delta is ({d}, {d} + the dots it overwrote); a disable's is ({}, the dots it
    removed). A dot d is removed exactly when some delta's context holds d but its dots do
    not (Almeida et al., EWFlag).
    """
    deltas = [f for f in (_own_fields(op).get(flag) for op in ops) if f is not None]
    for op in ops:
        if op.intent.kind == "enable" and op.intent.flag == flag:
            dot = _new_dot(op)
            if dot is not None and all(dot in other[0] for other in deltas
                                       if _seen(other, dot)):
                return True
    return False


def expected_view(cid: str, ops: Iterable[AckedOp]) -> dict[str, Any]:
    """The conversation as the rules say it must read, from its acknowledged operations:
    title, pinned, muted, last_seq, read_seq, unread, last_preview, last_at; plus the stamps
    of the winning title and message (`title_stamp`, `message_stamp`)."""
    ops = [op for op in ops if op.cid == cid]
    titles = [(_title_stamp(op), op.intent.text) for op in ops if op.kind == "title"]
    titles = [t for t in titles if t[0] is not None]
    arrivals = [((op.intent.at, op.intent.seq, op.replica), op.intent.text)
                for op in ops if op.kind == "arrive"]
    # A post's key: (at, seq, or its created counter without one, replica) (crdt.md §8.8).
    arrivals += [((m[1][4], m[1][5] if m[1][5] is not None else m[1][6][1], op.replica),
                  op.intent.text[:200]) for op in ops
                 if op.kind in ("post", "regenerate") and (m := _made(op)) is not None]
    title = max(titles, default=((0, 0, ""), ""))
    message = max(arrivals, default=((0, 0, ""), ""))
    last_seq = max((op.intent.seq for op in ops if op.kind == "arrive"), default=0)
    read_seq = max((op.intent.seq for op in ops if op.kind == "read"), default=0)
    return {"title": title[1], "pinned": _add_wins(ops, "pinned"),
            "muted": _add_wins(ops, "muted"), "last_seq": last_seq, "read_seq": read_seq,
            "unread": max(0, last_seq - read_seq), "last_preview": message[1],
            "last_at": message[0][0], "title_stamp": title[0], "message_stamp": message[0]}


def _posted(cid: str, ops: Iterable[AckedOp]) -> set[str]:
    """The previews the acknowledged posts and regenerates of `cid` wrote."""
    return {op.intent.text[:200] for op in ops if op.cid == cid
            and op.kind in ("post", "regenerate") and _made(op) is not None}


def _made(op: AckedOp) -> tuple | None:
    """The message a post or regenerate logged (plain), None if it logged none (a retry)."""
    h = _own_fields(op).get("messages")
    m = None if h is None else next((m for m in h[0] if m[0] == op.intent.mid), None)
    return m if m is not None and m[1] is not None else None


def _view(held: Mapping[str, Any]) -> dict[str, Any]:
    """What a replica's plain fields read as (specs/crdt.md §6), in plain Python."""
    title = held.get("title", ((0, 0, ""), ""))
    message = held.get("last_message", ((0, 0, ""), ""))
    last_seq, read_seq = held.get("last_seq", 0), held.get("read_seq", 0)
    return {"title": title[1], "pinned": bool(held.get("pinned", (frozenset(),))[0]),
            "muted": bool(held.get("muted", (frozenset(),))[0]), "last_seq": last_seq,
            "read_seq": read_seq, "unread": max(0, last_seq - read_seq),
            "last_preview": message[1], "last_at": message[0][0], "title_stamp": title[0],
            "message_stamp": message[0]}


def _allowed(want: dict[str, Any], got: dict[str, Any], maybe: list[Intent],
             replicas_of_maybe: set[str], posted: set[str] | None = None) -> list[str]:
    """The fields of `got` that neither the acknowledged ops (`want`) nor any subset of the
    operations that may or may not have happened (`maybe`) explain."""
    bad = []
    seqs = {"last_seq": [m.seq for m in maybe if m.kind == "arrive"],
            "read_seq": [m.seq for m in maybe if m.kind == "read"]}
    for name, extra in seqs.items():
        if got[name] != want[name] and not (got[name] in extra and got[name] > want[name]):
            bad.append(name)
    if got["unread"] != max(0, got["last_seq"] - got["read_seq"]):
        bad.append("unread")
    if (got["title"], got["title_stamp"]) != (want["title"], want["title_stamp"]) and not (
            got["title"] in {m.text for m in maybe if m.kind == "title"}
            and got["title_stamp"] > want["title_stamp"]
            and got["title_stamp"][2] in replicas_of_maybe):
        bad.append("title")
    maybe_messages = {(m.at, m.seq, m.text) for m in maybe if m.kind == "arrive"}
    maybe_posts = {m.text[:200] for m in maybe if m.kind in ("post", "regenerate")}
    # Appends to the last message grow its preview under the same key (crdt.md §8.8): the
    # message's own checks (messages.py) judge its text; here the preview must extend the
    # post's, within the preview's length.
    # Two posts given one `at` may share a key (the created counter breaks ties only among
    # posts made in the same millisecond): then the larger preview wins, grown or not.
    posted = {want["last_preview"], *(posted or ()), *maybe_posts}
    grown = (got["message_stamp"] == want["message_stamp"]
             and any(got["last_preview"].startswith(p) for p in posted)
             and len(got["last_preview"]) <= 200)
    if (got["last_preview"], got["message_stamp"]) != (want["last_preview"],
                                                        want["message_stamp"]) and not grown \
            and not (got["message_stamp"] > want["message_stamp"]
                     and ((*got["message_stamp"][:2], got["last_preview"]) in maybe_messages
                          or any(got["last_preview"].startswith(p) for p in maybe_posts))):
        bad.append("last_preview")
    if got["last_at"] != got["message_stamp"][0]:
        bad.append("last_at")
    for flag in FLAGS:
        if got[flag] != want[flag] and not any(
                m.kind in ("enable", "disable") and m.flag == flag for m in maybe):
            bad.append(flag)
    return bad


def check(states: Mapping[str, ConversationMap], ops: Iterable[AckedOp],
          maybe: Iterable[tuple[str, Intent]] = (),
          pages: Mapping[str, Mapping[str, list[dict[str, Any]]]] | None = None,
          exact: bool = False, at_risk: Iterable[AckedOp] = (),
          refused: Iterable[tuple[str, Intent]] = ()) -> Verdict:
    """Judge the final `states` (replica name -> whole state) against the acknowledged `ops`
    and the calls in `maybe` ((replica id, intent) of each call that was in progress when
    its process was killed: its effect may or may not appear); `pages`, when given: what
    each replica's history pages show (messages.check_messages); `exact`: every delta came
    from an acknowledged call whose log entry was read (the simulation). `at_risk`: some of
    `ops`, acknowledged at a replica whose file was then damaged and repaired before they
    had reached any other replica (specs/faults.md §4): their effect, like a killed call's,
    may or may not appear, but a defect at the call still counts. `refused`: (replica id,
    intent) of calls the replica refused with StoreError: not acknowledged, and no trace
    of them may show (`refused_traces`)."""
    ops = list(ops)
    risky = {id(op) for op in at_risk}
    verdict = Verdict()
    verdict.lost += [f"{op.kind} {op.intent.to_json()} acknowledged by {op.replica} did "
                     f"nothing right: {op.defect}" for op in ops
                     if id(op) in risky and op.defect is not None]
    risky_defects = len(verdict.lost)
    maybe = [*maybe, *((op.replica, op.intent) for op in ops if id(op) in risky)]
    ops = [op for op in ops if id(op) not in risky]
    names = list(states)
    if not names:
        return verdict
    held = {name: {cid: plain(states[name].fields(cid)) for cid in states[name].convs}
            for name in names}
    first = held[names[0]]
    for name in names[1:]:
        if held[name] != first:
            cids = sorted(set(first) | set(held[name]))
            differing = [c for c in cids if first.get(c) != held[name].get(c)]
            verdict.diverged.append(f"{name} differs from {names[0]} in {len(differing)} "
                                    f"conversation(s), e.g. {differing[:3]}")
    lost_ops = set()
    for n, op in enumerate(ops):
        what = f"{op.kind} {op.intent.to_json()} acknowledged by {op.replica}"
        if op.defect is not None:
            lost_ops.add(n)
            verdict.lost.append(f"{what} did nothing right: {op.defect}")
        for name in names:
            missing = _missing_at(op, held[name].get(op.cid, {}))
            if missing is None:
                if op.defect is None:
                    verdict.unchecked.append(
                        f"{what}: no stamp or dot to check it by (its log entry "
                        + ("was trimmed before it was read)" if op.unrecorded else "holds none)"))
                break
            if missing:
                lost_ops.add(n)
                verdict.lost.append(f"{what} is missing at {name}")
    lost, wrong, unchecked = check_messages(states, ops, [i for _, i in maybe], pages,
                                            exact=exact)
    verdict.lost += lost
    verdict.wrong += wrong + refused_traces(states, refused)
    verdict.unchecked += unchecked
    verdict.lost_ops = len(lost_ops) + len(lost) + risky_defects
    cids = sorted({op.cid for op in ops} | {i.cid for _, i in maybe}
                  | {c for name in names for c in held[name]})
    for cid in cids:
        want = expected_view(cid, ops)
        cid_maybe = [i for _, i in maybe if i.cid == cid]
        maybe_replicas = {r for r, i in maybe if i.cid == cid}
        for name in names:
            got = _view(held[name].get(cid, {}))
            bad = _allowed(want, got, cid_maybe, maybe_replicas, _posted(cid, ops))
            if bad:
                verdict.wrong.append(f"{cid} at {name} reads " + ", ".join(
                    f"{k}={got[k]!r} (expected {want[k]!r})" for k in bad))
    return verdict
