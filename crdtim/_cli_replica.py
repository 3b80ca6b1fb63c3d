"""The `crdtim` commands that read or change the local replica: init, title, pin, unpin,
mute, unmute, arrive, read, show, ls, status and watch, each one `cmd_xxx(args) -> int`
and one row of REPLICA_COMMANDS (which cli.py puts in its table).

Thin by rule: parse nothing (argparse did), call the Replica, shape the output through
_terminal. No CRDT, storage or network logic here, and the reading commands (show, ls,
status, watch) never create a replica: they open it with `existing_replica`.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import time
from collections.abc import Callable

from . import _terminal as term
from ._cli_common import (
    EXIT_OK,
    EXIT_USAGE,
    CommandFailed,
    Subcommand,
    arg,
    data_dir,
    existing_replica,
    positive,
    whole_number,
    writable_replica,
)
from .replica import Change, Replica

__all__ = ["REPLICA_COMMANDS", "WATCH_INTERVAL", "watch_log"]

#: Seconds between two looks at the log in `crdtim watch`: short enough to feel live, long
#: enough to cost nothing (one read transaction per look).
WATCH_INTERVAL = 0.2
#: Columns of `crdtim ls` that are cut, with "...", to stay readable on a terminal.
TITLE_WIDTH = 30
PREVIEW_WIDTH = 40


def _mutate(args: argparse.Namespace, op: Callable[[Replica], object]) -> int:
    with writable_replica(args) as replica:
        op(replica)
    return EXIT_OK


# -- subcommands: one function each, registered in REPLICA_COMMANDS below ----------------------


def cmd_init(args: argparse.Namespace) -> int:
    path = data_dir(args)
    with Replica.open(path) as replica:
        if replica.created:
            term.note(f"initialized a new replica at {path}")
        else:
            term.note(f"a replica already exists at {path}; its id is unchanged")
        print(replica.id)
    return EXIT_OK


def cmd_title(args: argparse.Namespace) -> int:
    return _mutate(args, lambda r: r.set_title(args.cid, args.text))


def cmd_pin(args: argparse.Namespace) -> int:
    return _mutate(args, lambda r: r.pin(args.cid))


def cmd_unpin(args: argparse.Namespace) -> int:
    return _mutate(args, lambda r: r.unpin(args.cid))


def cmd_mute(args: argparse.Namespace) -> int:
    return _mutate(args, lambda r: r.mute(args.cid, until=args.until))


def cmd_unmute(args: argparse.Namespace) -> int:
    return _mutate(args, lambda r: r.unmute(args.cid))


def cmd_arrive(args: argparse.Namespace) -> int:
    return _mutate(args, lambda r: r.message_arrived(args.cid, args.seq, args.preview, args.at))


def cmd_read(args: argparse.Namespace) -> int:
    return _mutate(args, lambda r: r.mark_read(args.cid, args.seq))


def cmd_show(args: argparse.Namespace) -> int:
    with existing_replica(args) as replica:
        conversation = replica.get(args.cid)
    if conversation is None:
        raise CommandFailed(f"no conversation {args.cid!r}")
    fields = conversation.as_dict()
    if args.json:
        term.print_json(fields)
        return EXIT_OK
    shown = {k: term.show_value(k, v) for k, v in fields.items() if k != "extra"}
    shown.update({k: term.show_value(k, v) for k, v in fields.get("extra", {}).items()})
    term.print_pairs(shown)
    return EXIT_OK


def cmd_ls(args: argparse.Namespace) -> int:
    with existing_replica(args) as replica:
        page = replica.list(args.limit, args.cursor, archived=args.archived,
                            unread=True if args.unread else None,
                            pinned=True if args.pinned else None)
    if args.json:
        term.print_json({"items": [c.as_dict() for c in page.items], "cursor": page.cursor,
                     "has_more": page.has_more})
        return EXIT_OK
    if not page.items:
        print("no conversations" if args.cursor is None else "no more conversations")
        return EXIT_OK
    rows = [("PIN", "MUTE", "UNREAD", "ID", "TITLE", "LAST AT", "LAST MESSAGE", "NOTES")]
    for c in page.items:
        rows.append((
            "pin" if c.pinned else "",
            "mute" if c.muted else "",
            str(c.unread) if c.unread else "*" if c.marked_unread else "",
            term.printable(c.id),
            term.cut(term.printable(c.title), TITLE_WIDTH),
            term.local_time(c.last_at) if c.last_at else "-",
            term.cut(term.printable(c.last_preview), PREVIEW_WIDTH),
            term.notes(c),
        ))
    term.print_table(rows, right_aligned={2})
    if page.has_more:
        limit = "" if args.limit == 50 else f" --limit {args.limit}"
        limit += "".join(f" --{name}" for name in ("archived", "unread", "pinned")
                         if getattr(args, name))
        data = "" if args.data is None else f" --data {shlex.quote(args.data)}"
        print(f"more: crdtim{data} ls{limit} --cursor={page.cursor}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    with existing_replica(args) as replica:
        status = replica.status()
    status["path"] = os.path.abspath(status["path"])
    if args.json:
        term.print_json(status)
        return EXIT_OK
    pairs = {
        "replica": status["id"],
        "path": status["path"],
        "conversations": str(status["conversations"]),
        "head": str(status["head"]),
        "log floor": str(status["log_floor"]),
        "peers": str(len(status["peers"])) if status["peers"] else "none",
    }
    held = status["pending"]  # values from peers held until their time (specs/crdt.md §1)
    if held["count"]:
        pairs["pending"] = f'{held["count"]}, the earliest due at {held["earliest"]} ms'
    term.print_pairs(pairs)
    if status["peers"]:
        rows = [("  PEER", "ACK", "MISSING")]
        rows += [(f"  {term.printable(peer)}", str(p["ack"]), str(p["missing"]))
                 for peer, p in status["peers"].items()]
        term.print_table(rows, right_aligned={1, 2})
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    # SIGTERM (a service manager, `kill`) stops watching as quietly as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with existing_replica(args) as replica:
            after = replica.head if args.since is None else args.since
            if after > replica.head:
                raise CommandFailed(f"--since {after} is beyond the log head {replica.head}: "
                                    "nothing has been logged there yet", EXIT_USAGE)
            after = _snapshot_if_trimmed(replica, after, args.json)
            term.note(f"watching {replica.path} (replica {replica.id}) after log entry "
                      f"{after}; Ctrl-C to stop")
            emit = term.change_json if args.json else term.change_line
            watch_log(replica, after, lambda seq, change: print(emit(seq, change), flush=True),
                      on_gap=lambda missed: term.note(
                          f"{missed} log entries were trimmed before they could be shown"))
    except KeyboardInterrupt:
        pass  # the way to stop watching: not an error
    return EXIT_OK


def _snapshot_if_trimmed(replica: Replica, after: int, as_json: bool) -> int:
    """`watch --since` below the log floor: the entries after it were dropped (peers had
    them), so print each conversation's current state, one line each marked as a snapshot,
    and return the floor to follow the log from. Changes logged after the floor were folded
    into the snapshot already and are printed again as they are read: joins are idempotent,
    and so is reading them twice."""
    floor = replica.log_floor  # before the snapshot: whatever is trimmed after it, it holds
    if after >= floor:
        return after
    term.note(f"log entries {after + 1} to {floor} were dropped (every peer had them): "
              f"showing the current state of each conversation, then the log after {floor}")
    for conversation in replica:
        state = conversation.as_dict()
        print(term.snapshot_json(floor, state) if as_json else term.snapshot_line(floor, state),
              flush=True)
    return floor


def watch_log(
    replica: Replica,
    after: int,
    emit: Callable[[int, Change], object],
    *,
    on_gap: Callable[[int], object] = lambda missed: None,
    interval: float = WATCH_INTERVAL,
    sleep: Callable[[float], object] = time.sleep,
    polls: int | None = None,
) -> int:
    """Emit every change logged after `after`, by any process, as it appears; return the last
    sequence seen. Polls `polls` times (forever if None), sleeping `interval` between polls.

    The log, not `Replica.subscribe`, is the source, because subscriptions only see this
    process's commits and watch must see the CLI and `serve` writing from elsewhere. If the
    log was trimmed past what was shown (a server dropped acknowledged entries meanwhile),
    `on_gap` gets how many entries were missed; the state itself is still complete.
    """
    done = 0
    while True:
        head = replica.head  # read before the entries: any gap found below is a real one
        changes = list(replica.changes_since(after))
        # Sequence numbers are consecutive and trimming drops a prefix, so a hole between
        # `after` and the first entry still here means entries were dropped unseen.
        first = changes[0][0] if changes else head + 1
        if first > after + 1:
            on_gap(first - 1 - after)
            after = first - 1
        for seq, change in changes:
            emit(seq, change)
            after = seq
        done += 1
        if polls is not None and done >= polls:
            return after
        sleep(interval)


# -- the command table's rows ------------------------------------------------------------------


def _conversation_id(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("a conversation id cannot be empty")
    return text


CID = arg("cid", metavar="CID", type=_conversation_id, help="conversation id")
SEQ = arg("seq", metavar="SEQ", type=whole_number, help="message sequence number")
JSON = arg("--json", action="store_true", help="print JSON instead of text")

REPLICA_COMMANDS: dict[str, Subcommand] = {
    "init": Subcommand(cmd_init, "create the replica if missing; print its id"),
    "title": Subcommand(cmd_title, "set a conversation's title",
                        (CID, arg("text", metavar="TEXT", help="the new title"))),
    "pin": Subcommand(cmd_pin, "pin a conversation", (CID,)),
    "unpin": Subcommand(cmd_unpin, "unpin a conversation", (CID,)),
    "mute": Subcommand(cmd_mute, "mute a conversation", (
        CID, arg("--until", metavar="MS", type=whole_number, default=None,
                 help="only until this time, ms since the epoch (default: until unmute)"))),
    "unmute": Subcommand(cmd_unmute, "unmute a conversation", (CID,)),
    "arrive": Subcommand(cmd_arrive, "record that message SEQ arrived in a conversation", (
        CID, SEQ,
        arg("--preview", metavar="TEXT", default="", help="the message's preview text"),
        arg("--at", metavar="MS", type=whole_number, default=None,
            help="message time in ms since the epoch (default: now)"),
    )),
    "read": Subcommand(cmd_read, "mark a conversation read up to message SEQ", (CID, SEQ)),
    "show": Subcommand(cmd_show, "show one conversation", (CID, JSON)),
    "ls": Subcommand(cmd_ls, "list conversations: pinned first, then newest message first", (
        arg("--limit", metavar="N", type=positive, default=50, help="page size (default 50)"),
        arg("--cursor", metavar="C", default=None, help="continue after a previous page"),
        arg("--archived", action="store_true", help="list the archive instead"),
        arg("--unread", action="store_true", help="only unread (or marked unread) ones"),
        arg("--pinned", action="store_true", help="only pinned ones"),
        JSON,
    )),
    "status": Subcommand(cmd_status, "replica id, log and peers", (JSON,)),
    "watch": Subcommand(cmd_watch, "print changes as they happen, from any process", (
        arg("--since", metavar="SEQ", type=whole_number, default=None,
            help="start after this log entry (default: the newest)"),
        arg("--json", action="store_true", help="one JSON object per line"),
    )),
}
