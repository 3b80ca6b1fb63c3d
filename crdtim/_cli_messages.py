"""The `crdtim` commands of the message history (specs/crdt.md §8): post, regenerate,
append, edit, switch, delete-message, history and versions, each one `cmd_xxx(args) -> int`
and one row of MESSAGE_COMMANDS (which cli.py puts in its table).

Thin by rule, like _cli_replica: parse nothing (argparse did), call the Replica, which checks
every id, role and text (InvalidArgument: exit status 2, nothing written), and shape the
output through _terminal. The reads (history, versions) never create a replica. A TEXT of
"-" is read from stdin; `append CID MID -` appends each piece as it arrives, so a generator
can be piped straight into a streamed reply. No CRDT, storage or network logic here.
"""

from __future__ import annotations

import argparse
import codecs
import shlex
import sys
from collections.abc import Iterator

from . import _terminal as term
from ._cli_common import (
    EXIT_OK,
    EXIT_USAGE,
    Argument,
    CommandFailed,
    Subcommand,
    arg,
    existing_replica,
    positive,
    whole_number,
    writable_replica,
)
from ._cli_replica import CID, JSON
from .replica import Message

__all__ = ["MESSAGE_COMMANDS"]

#: The TEXT argument that means "read the text from stdin".
STDIN = "-"
#: Bytes read from stdin at once; `append -` appends whatever one read returns.
STDIN_CHUNK = 64 * 1024


def _stdin_pieces() -> Iterator[str]:
    """stdin as UTF-8 text, a piece per read as it arrives (a pipe gives what was written
    so far); a character split between two reads is kept for the next piece."""
    if sys.stdin is None:  # started with stdin closed (a service, pythonw)
        raise CommandFailed("TEXT - reads stdin, but there is no stdin", EXIT_USAGE)
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # stdin replaced by a text stream (an embedding program, a test)
        yield sys.stdin.read()
        return
    read = getattr(stream, "read1", stream.read)
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        while chunk := read(STDIN_CHUNK):
            if piece := decoder.decode(chunk):
                yield piece
        if tail := decoder.decode(b"", final=True):
            yield tail
    except UnicodeDecodeError as e:
        raise CommandFailed(f"stdin is not UTF-8 text ({e.reason} at byte {e.start} of a "
                            "read)", EXIT_USAGE) from None


def _text(text: str) -> str:
    return "".join(_stdin_pieces()) if text == STDIN else text


def cmd_post(args: argparse.Namespace) -> int:
    text = _text(args.text)
    with writable_replica(args) as replica:
        m = replica.post(args.cid, text, role=args.role, reply_to=args.reply_to, id=args.id,
                         seq=args.seq, author=args.author)
    print(m.id)
    return EXIT_OK


def cmd_regenerate(args: argparse.Namespace) -> int:
    text = _text(args.text)
    with writable_replica(args) as replica:
        m = replica.regenerate(args.cid, args.mid, text, role=args.role, id=args.id)
    print(m.id)
    return EXIT_OK


def cmd_append(args: argparse.Namespace) -> int:
    with writable_replica(args) as replica:
        if args.text != STDIN:
            replica.append(args.cid, args.mid, args.text)
            return EXIT_OK
        # One commit per piece, so a server on this directory ships the reply as it grows.
        # An empty append checks the message and writes nothing (specs/crdt.md §8.5.3): a
        # typo fails at once, not when the generator is done.
        replica.append(args.cid, args.mid, "")
        for piece in _stdin_pieces():
            replica.append(args.cid, args.mid, piece)
    return EXIT_OK


def cmd_edit(args: argparse.Namespace) -> int:
    text = _text(args.text)
    with writable_replica(args) as replica:
        replica.edit(args.cid, args.mid, text)
    return EXIT_OK


def cmd_switch(args: argparse.Namespace) -> int:
    with writable_replica(args) as replica:
        replica.switch(args.cid, args.mid)
    return EXIT_OK


def cmd_delete_message(args: argparse.Namespace) -> int:
    with writable_replica(args) as replica:
        replica.delete_message(args.cid, args.mid)
    return EXIT_OK


def cmd_history(args: argparse.Namespace) -> int:
    with existing_replica(args) as replica:
        page = replica.history(args.cid, args.limit, args.cursor)
    if args.json:
        term.print_json({"items": [m.to_json() for m in page.items], "cursor": page.cursor,
                         "has_more": page.has_more})
        return EXIT_OK
    if not page.items:
        print("no messages" if args.cursor is None else "no older messages")
        return EXIT_OK
    oldest_first = page.items[::-1]
    width = max(term.display_width(term.printable(m.id)) for m in oldest_first)
    for m in oldest_first:
        print("\n".join(term.message_lines(m, id_width=width)))
    if page.has_more:
        data = "" if args.data is None else f" --data {shlex.quote(args.data)}"
        limit = "" if args.limit == 50 else f" --limit {args.limit}"
        print(f"older: crdtim{data} history {shlex.quote(args.cid)}{limit} "
              f"--cursor={page.cursor}")
    return EXIT_OK


def cmd_versions(args: argparse.Namespace) -> int:
    with existing_replica(args) as replica:
        versions = replica.versions(args.cid, args.mid)
        if not versions:  # as `show` of an unknown conversation: found nothing, status 1
            raise CommandFailed(f"no message {args.mid!r:.140} in conversation "
                                f"{args.cid!r:.140}")
        visible = _visible_version(versions)
    if args.json:
        term.print_json({"items": [m.to_json() for m in versions], "visible": visible})
        return EXIT_OK
    width = max(term.display_width(term.printable(m.id)) for m in versions)
    for m in versions:
        print("\n".join(term.message_lines(m, id_width=width,
                                           mark="*" if m.id == visible else " ")))
    if visible is None:
        print("(none of them is in the history: an earlier message on their path is a "
              "version not shown, or was deleted for me)")
    return EXIT_OK


def _visible_version(versions: list[Message]) -> str | None:
    """The one of `versions` on the visible path, None if none is."""
    return next((m.id for m in versions if m.visible), None)


# -- the command table's rows ------------------------------------------------------------------

MID = arg("mid", metavar="MID", help="message id")


def _text_arg(what: str, **options: object) -> Argument:
    return arg("text", metavar="TEXT", help=f"{what} (- reads it from stdin)", **options)


MESSAGE_COMMANDS: dict[str, Subcommand] = {
    "post": Subcommand(cmd_post, "post a message after the newest one shown (or --reply-to); "
                       "print its id", (
        CID, _text_arg("the message"),
        arg("--role", metavar="R", default="user",
            help="user (default), assistant, system, ..."),
        arg("--reply-to", metavar="MID", default=None,
            help="post after this message (a new branch if it has a reply already)"),
        arg("--id", metavar="MID", default=None,
            help="the message's id (default: a new random one); posting it again is a no-op"),
        arg("--seq", metavar="N", type=whole_number, default=None,
            help="its sequence number in the conversation (raises last_seq)"),
        arg("--author", metavar="A", default=None,
            help="who wrote it, if not this user (then it counts as unread)"))),
    "regenerate": Subcommand(cmd_regenerate, "a new version of message MID, shown in its "
                             "place; print the new id", (
        CID, MID, _text_arg("the new version's text (default: empty, to append to)",
                            nargs="?", default=""),
        arg("--role", metavar="R", default=None, help="its role (default: MID's)"),
        arg("--id", metavar="NEWID", default=None,
            help="the new version's id (default: a new random one)"))),
    "append": Subcommand(cmd_append, "add TEXT at the end of message MID (a streamed reply; "
                         "- appends stdin piece by piece as it arrives)", (
        CID, MID, _text_arg("the text to add"))),
    "edit": Subcommand(cmd_edit, "replace the text of message MID", (
        CID, MID, _text_arg("the new text"))),
    "switch": Subcommand(cmd_switch, "show version MID (and the thread it is on) in the "
                         "history", (CID, MID)),
    "delete-message": Subcommand(cmd_delete_message, "delete message MID for everyone: its "
                                 "text goes, its place and replies stay", (CID, MID)),
    "history": Subcommand(cmd_history, "the messages shown in a conversation, a page at a "
                          "time: newest page first, oldest first within it", (
        CID,
        arg("--limit", metavar="N", type=positive, default=50,
            help="page size (default 50, at most 10000)"),
        arg("--cursor", metavar="C", default=None, help="continue with older messages"),
        JSON)),
    "versions": Subcommand(cmd_versions, "every version of message MID, oldest first; * marks "
                           "the one the history shows", (CID, MID, JSON)),
}
