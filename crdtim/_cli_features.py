"""The `crdtim` commands for the conversation features (specs/crdt.md §6): archive,
unarchive, delete, mark-unread, draft and read-by, each one `cmd_xxx(args) -> int` and one row
of FEATURE_COMMANDS (which cli.py puts in its table). `mute --until` and the `ls` filters
are in _cli_replica, beside the commands they extend.

Thin by rule, like _cli_replica: parse nothing (argparse did), call the Replica, which
checks its arguments (InvalidArgument: exit status 2). No CRDT, storage or network logic.
"""

from __future__ import annotations

import argparse

from ._cli_common import Subcommand, arg
from ._cli_replica import CID, SEQ, _mutate

__all__ = ["FEATURE_COMMANDS"]


def cmd_archive(args: argparse.Namespace) -> int:
    return _mutate(args, lambda r: r.archive(args.cid, keep=args.keep))


def cmd_unarchive(args: argparse.Namespace) -> int:
    return _mutate(args, lambda r: r.unarchive(args.cid))


def cmd_delete(args: argparse.Namespace) -> int:
    return _mutate(args, lambda r: r.delete_conversation(args.cid))


def cmd_mark_unread(args: argparse.Namespace) -> int:
    return _mutate(args, lambda r: r.mark_unread(args.cid))


def cmd_draft(args: argparse.Namespace) -> int:
    return _mutate(args, lambda r: r.set_draft(args.cid, args.text))


def cmd_read_by(args: argparse.Namespace) -> int:
    return _mutate(args, lambda r: r.mark_read_by(args.cid, args.member, args.seq))


FEATURE_COMMANDS: dict[str, Subcommand] = {
    "archive": Subcommand(cmd_archive, "archive a conversation: hidden from ls until a newer "
                          "message arrives", (
        CID, arg("--keep", action="store_true", help="keep it archived until unarchive"))),
    "unarchive": Subcommand(cmd_unarchive, "bring a conversation back from the archive", (CID,)),
    "delete": Subcommand(cmd_delete, "delete a conversation for me, on all my devices: "
                         "hidden, its history dropped, until a newer message", (CID,)),
    "mark-unread": Subcommand(cmd_mark_unread, "show a conversation as unread until it is "
                              "read on any device", (CID,)),
    "draft": Subcommand(cmd_draft, "set a conversation's draft text (\"\" clears it)", (
        CID, arg("text", metavar="TEXT", help="the draft"))),
    "read-by": Subcommand(cmd_read_by, "record that MEMBER has read up to message SEQ", (
        CID, arg("member", metavar="MEMBER", help="the member's name"), SEQ)),
}
