"""The `crdtim` command line: a thin shell over `Replica` for people and scripts.

This module is the entry point (`crdtim.cli:main`, `python -m crdtim`): it assembles the
command table from the command modules, builds the parser, runs the chosen row and turns
crdtim's own errors into `crdtim: error: ...` on stderr with exit status 2 (bad usage or
input) or 1 (anything else). The commands live by concern: _cli_replica (the replica's
reads and writes), _cli_features (the conversation features), _cli_messages (the message
history), _cli_serve (`serve`), _cli_tools (`demo`, `bench`); what they share is in
_cli_common. A new command goes in one of those (or a new _cli_xxx module) and its table is
added to COMMANDS here. Never put a command, or CRDT, storage or network logic, in this
module, and never print a traceback for a user mistake.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

from . import __version__
from . import _terminal as term
from ._cli_common import (
    DATA_ENV,
    DEFAULT_DATA,
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    Argument,
    CommandFailed,
    Subcommand,
    UsageError,
    arg,
    data_dir,
)
from ._cli_features import FEATURE_COMMANDS
from ._cli_messages import MESSAGE_COMMANDS
from ._cli_ops import OPS_COMMANDS
from ._cli_replica import REPLICA_COMMANDS, WATCH_INTERVAL, watch_log
from ._cli_serve import SERVE_COMMANDS
from ._cli_tools import TOOL_COMMANDS
from .errors import CrdtimError
from .replica import InvalidArgument

__all__ = [
    "COMMANDS",
    "DATA_ENV",
    "DEFAULT_DATA",
    "WATCH_INTERVAL",
    "Argument",
    "CommandFailed",
    "Subcommand",
    "UsageError",
    "arg",
    "build_parser",
    "data_dir",
    "main",
    "watch_log",
]


class _Parser(argparse.ArgumentParser):
    # argparse would print and sys.exit(2) from deep inside parse_args; raising lets main()
    # return the status (callable in-process) and print every error the same way.
    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage())


# `crdtim --help` lists the commands in this order.
COMMANDS: dict[str, Subcommand] = {**REPLICA_COMMANDS, **FEATURE_COMMANDS,
                                   **MESSAGE_COMMANDS, **SERVE_COMMANDS, **TOOL_COMMANDS}
COMMANDS.update(OPS_COMMANDS)  # verify, backup, restore, unbind-peer (_cli_ops)


def build_parser(
    commands: Mapping[str, Subcommand] = COMMANDS,
) -> tuple[argparse.ArgumentParser, Mapping[str, Subcommand]]:
    """The parser for `commands`, and the table itself: main runs `commands[args.command]`."""
    parser = _Parser(
        prog="crdtim",
        description="Conversation state (title, pinned, muted, unread, last message) and "
        "message history that every device can change offline and that converge when they "
        "sync.",
    )
    parser.add_argument("--version", action="version", version=f"crdtim {__version__}")
    data_help = f"replica directory (default: ${DATA_ENV}, else ./{DEFAULT_DATA})"
    parser.add_argument("--data", metavar="DIR", default=None, help=data_help)
    # --data after the subcommand too; SUPPRESS keeps an absent one from overwriting the
    # value given before the subcommand.
    common = _Parser(add_help=False)
    common.add_argument("--data", metavar="DIR", default=argparse.SUPPRESS, help=data_help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, command in commands.items():
        p = sub.add_parser(name, help=command.help, description=command.help, parents=[common])
        for a in command.arguments:
            p.add_argument(*a.flags, **a.options)
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script exits with it)."""
    term.tolerate_unencodable(sys.stdout)
    term.tolerate_unencodable(sys.stderr)
    parser, commands = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help, --version
            return e.code if isinstance(e.code, int) else EXIT_OK
        return commands[args.command].run(args)
    except UsageError as e:
        sys.stderr.write(e.usage)
        return term.error(str(e), e.status)
    except CommandFailed as e:
        return term.error(str(e), e.status)
    except InvalidArgument as e:
        return term.error(str(e), EXIT_USAGE)
    except BrokenPipeError:
        term.silence_stdout()  # `crdtim ls | head`: the reader left, nothing to report
        return EXIT_FAILURE
    except (CrdtimError, OSError) as e:
        return term.error(str(e) or type(e).__name__, EXIT_FAILURE)
    except KeyboardInterrupt:
        return 130  # the shell's convention for "stopped by SIGINT"
