"""The message-history rules of the checker (specs/faults.md §2.3), from the intents.

An acknowledged `post` (with or without `reply_to`) or `regenerate` made a message whose id
the harness chose; `append`, `edit`, `switch` and `delete_message` name one. What only the
implementation chooses -- a message's created stamp and its parent when posted without
`reply_to`, the stamp of an edit, of an append and of the base it was made on -- is read
from the call's logged delta, as the stamp of a title is. From these, in plain Python:

- every acknowledged post and regenerate is held by every replica, with the intent's role
  (a regenerate: the role of the message it regenerates), the parent the intent names
  (`reply_to`; a regenerate: the parent of the message it regenerates) or, posted without
  one, the parent its commit logged;
- its text is the greatest (stamp, text) of its post and its acknowledged edits, followed by
  the acknowledged appends made on that base, in (stamp, text) order; an acknowledged delete
  leaves it deleted and empty; one never deleted is not deleted;
- the visible path every replica pages (`Replica.history`, newest first) is
  `crdtim.crdt.visible_path` of its joined state; each paged message shows the text, the
  deleted flag and the parent its state holds, and `Replica.versions` gives
  `crdtim.crdt.versions` of it; every replica pages the same messages with the same
  versions;
- (the simulation, where nothing is in doubt) each replica's history equals the join of the
  deltas of the acknowledged calls: nothing lost, nothing made up.

Calls in doubt (a writer killed in the middle of one) relax the rules for the messages they
name: their text and deleted flag may or may not show them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from crdtim.crdt import History, versions, visible_path

__all__ = ["MESSAGE_KINDS", "check_messages", "plain_history"]

MESSAGE_KINDS = ("post", "regenerate", "append", "edit", "switch", "delete_message")
_MAKERS = ("post", "regenerate")


def plain_history(h: History) -> tuple:
    """A history as plain, sorted tuples (its data only), comparable across processes."""
    def stamp(s: Any) -> tuple:
        return (s.wall, s.counter, s.replica)

    messages = []
    for mid, m in sorted(h.messages.items()):
        hd = m.header
        header = None if hd is None else (hd.parent, hd.origin, hd.role, hd.author, hd.at,
                                          hd.seq, stamp(hd.created))
        appends = sorted((stamp(a.stamp), stamp(a.base), a.text) for a in m.appends)
        messages.append((mid, header, (stamp(m.base.stamp), m.base.value), tuple(appends),
                         m.deleted))
    choices = tuple((g, stamp(c.stamp), c.value) for g, c in sorted(h.choices.items()))
    return tuple(messages), choices


def _logged(op: Any) -> tuple | None:
    """The op's logged history of its conversation, plain; None if it logged none."""
    if op.delta is None:
        return None
    h = op.delta.fields(op.cid).get("messages")
    return None if h is None else plain_history(h)


def _logged_message(op: Any) -> tuple | None:
    logged = _logged(op)
    if logged is None:
        return None
    return next((m for m in logged[0] if m[0] == op.intent.mid), None)


def _text_of(m: tuple) -> str:
    """The visible text of a plain message: its base, then the appends made on it."""
    _, _, (base_stamp, text), appends, deleted = m
    if deleted:
        return ""
    return text + "".join(t for _, b, t in sorted((s, b, t) for s, b, t in appends
                                                   if b == base_stamp))


def _expected(ops: list[Any]) -> dict[tuple[str, str], dict[str, Any]]:
    """(cid, mid) -> what the acknowledged calls say of that message."""
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for op in ops:
        i = op.intent
        if i.kind not in MESSAGE_KINDS:
            continue
        e = out.setdefault((i.cid, i.mid), {"made": None, "bases": [], "appends": [],
                                            "deleted": False})
        logged = _logged_message(op)
        if i.kind in _MAKERS and logged is not None and logged[1] is not None:
            e["made"] = (op, logged[1])
            e["bases"].append((logged[2][0], i.text))
        elif i.kind == "edit" and logged is not None:
            e["bases"].append((logged[2][0], i.text))
        elif i.kind == "append" and logged is not None:
            if logged[3]:
                e["appends"] += [(s, b, i.text) for s, b, _ in logged[3]]
            else:  # folded into an edit (specs/crdt.md §8.5.3): the text its commit chose
                e["bases"].append(logged[2])
        elif i.kind == "delete_message":
            e["deleted"] = True
    return out


Pages = Mapping[str, Mapping[str, list[dict[str, Any]]]]  # replica -> cid -> history


def check_messages(states: Mapping[str, Any], ops: Iterable[Any], maybe: Iterable[Any] = (),
                   pages: Pages | None = None,
                   exact: bool = False) -> tuple[list[str], list[str], list[str]]:
    """(lost, wrong, unchecked): the message rules over the final `states` (replica ->
    ConversationMap), the acknowledged `ops`, the intents in doubt `maybe`, and what each
    replica pages (`pages`: replica -> cid -> Message.to_json() of its whole history, newest
    first, each with its "versions_ids"). `exact`: every delta came from an acknowledged
    call whose log entry was read, so each replica's history must equal their join."""
    ops = [op for op in ops if op.intent.kind in MESSAGE_KINDS]
    doubtful = {(i.cid, i.mid) for i in maybe if i.kind in MESSAGE_KINDS}
    expected = _expected(ops)
    lost: list[str] = []
    wrong: list[str] = []
    # A call whose log entry was trimmed before it was read: its stamps are unknown, so the
    # text of its message cannot be told; it is unchecked (which fails the run).
    unchecked = [f"{op.intent.kind} {op.intent.to_json()} acknowledged by {op.replica}: its "
                 f"log entry was trimmed before it was read" for op in ops
                 if op.unrecorded and op.intent.kind in ("post", "regenerate", "append", "edit")]
    doubtful |= {(op.cid, op.intent.mid) for op in ops if op.unrecorded}
    histories = {name: {cid: s.fields(cid).get("messages", History())
                        for cid in {c for c, _ in expected} | set(s.convs)}
                 for name, s in states.items()}
    for (cid, mid), e in sorted(expected.items()):
        if e["made"] is None:
            continue  # a post that was a retry, or an edit of a message made elsewhere
        op, header = e["made"]
        i = op.intent
        for name in states:
            h = histories[name].get(cid, History())
            plain = dict((m[0], m) for m in plain_history(h)[0])
            got = plain.get(mid)
            if got is None or got[1] is None:
                lost.append(f"{i.kind} {mid!r} in {cid} acknowledged by {op.replica} is "
                            f"missing at {name}")
                continue
            of = plain.get(i.ref) if i.kind == "regenerate" else None
            want_role = i.role if i.kind == "post" else (header[2] if of is None or of[1] is None
                                                         else of[1][2])
            if got[1][2] != want_role or got[1][6] != header[6]:
                wrong.append(f"{mid!r} at {name} has header {got[1]}, its post logged {header}")
            want_parent = i.ref if i.kind == "post" and i.ref else header[0]
            if i.kind == "regenerate":
                want_parent = None if of is None or of[1] is None else of[1][0]
            if got[1][0] != want_parent:
                wrong.append(f"{mid!r} at {name} follows {got[1][0]!r}, not {want_parent!r}")
            if (cid, mid) in doubtful:
                continue
            if got[4] != e["deleted"]:
                (lost if e["deleted"] else wrong).append(
                    f"{mid!r} at {name}: deleted={got[4]}, acknowledged calls say "
                    f"{e['deleted']}")
                continue
            if e["deleted"]:
                continue
            base = max(e["bases"])
            want = base[1] + "".join(t for s, b, t in sorted(e["appends"]) if b == base[0])
            if _text_of(got) != want:
                lost.append(f"{mid!r} at {name} reads {_text_of(got)!r}, the acknowledged "
                            f"post, edits and appends make {want!r}")
    for name, by_cid in histories.items():
        for cid, h in by_cid.items():
            if pages is None or h.is_bottom():
                continue
            shown = [m["id"] for m in pages[name].get(cid, [])]
            if shown != visible_path(h)[::-1]:
                wrong.append(f"{cid} at {name} pages {shown[:6]}, its state's visible path "
                             f"is {visible_path(h)[::-1][:6]} (newest first)")
            plain = dict((m[0], m) for m in plain_history(h)[0])
            for m in pages[name].get(cid, []):
                held = plain.get(m["id"])
                if held is None or held[1] is None:
                    continue
                if (m["text"], m["deleted"], m["parent"]) != (_text_of(held), held[4],
                                                                held[1][0]):
                    wrong.append(f"{m['id']!r} at {name} pages text {m['text']!r}, deleted "
                                 f"{m['deleted']}, parent {m['parent']!r}; its state holds "
                                 f"{_text_of(held)!r}, {held[4]}, {held[1][0]!r}")
                if m["versions_ids"] != versions(h, m["id"]):
                    wrong.append(f"{m['id']!r} at {name} pages versions {m['versions_ids']}, "
                                 f"its state's are {versions(h, m['id'])}")
    if pages is not None:
        first = next(iter(pages))
        for name in pages:
            if pages[name] != pages[first]:
                cids = [c for c in set(pages[name]) | set(pages[first])
                        if pages[name].get(c) != pages[first].get(c)]
                wrong.append(f"{name} pages histories (or versions) unlike {first} in "
                             f"{sorted(cids)[:3]}")
    if exact:
        joined: dict[str, History] = {}
        for op in ops:
            if op.delta is not None and "messages" in op.delta.fields(op.cid):
                joined[op.cid] = joined.get(op.cid, History()).join(
                    op.delta.fields(op.cid)["messages"])
        for name, by_cid in histories.items():
            for cid in set(joined) | {c for c, h in by_cid.items() if not h.is_bottom()}:
                if plain_history(by_cid.get(cid, History())) != plain_history(
                        joined.get(cid, History())):
                    wrong.append(f"{cid} at {name}: the history is not the join of the "
                                 f"acknowledged calls' deltas")
    return lost, wrong, unchecked
