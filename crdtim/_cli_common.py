"""What every `crdtim` subcommand shares: exit statuses, the errors that become them, the
command table's row types, the argument types used by more than one command, and the
data directory with the two ways of opening its replica.

Split from cli.py so that command modules (_cli_replica, _cli_serve, _cli_tools) and cli.py
can all import it without importing each other. It holds no command, prints nothing but the
one "created a new replica" note, and never creates a replica from `existing_replica`.
"""

from __future__ import annotations

import argparse
import os
import shlex
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from . import _terminal as term
from .replica import MAX_SEQ, Replica

__all__ = [
    "DATA_ENV",
    "DEFAULT_DATA",
    "EXIT_FAILURE",
    "EXIT_OK",
    "EXIT_USAGE",
    "Argument",
    "CommandFailed",
    "Subcommand",
    "UsageError",
    "arg",
    "data_dir",
    "existing_replica",
    "positive",
    "whole_number",
    "writable_replica",
]

DATA_ENV = "CRDTIM_DATA"
DEFAULT_DATA = "crdtim-data"
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class CommandFailed(Exception):
    """A command could not do what was asked; `status` is its exit status."""

    def __init__(self, message: str, status: int = EXIT_FAILURE):
        super().__init__(message)
        self.status = status


class UsageError(CommandFailed):
    """The command line itself is wrong (argparse's complaints land here, not in sys.exit)."""

    def __init__(self, message: str, usage: str = ""):
        super().__init__(message, EXIT_USAGE)
        self.usage = usage


# -- the command table's rows ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Argument:
    flags: tuple[str, ...]
    options: Mapping[str, Any]


def arg(*flags: str, **options: Any) -> Argument:
    """One `add_argument` call, written down for the table: arg("--limit", type=int)."""
    return Argument(flags, options)


@dataclass(frozen=True, slots=True)
class Subcommand:
    """One row of the command table: what runs, its one-line help, and its arguments."""

    run: Callable[[argparse.Namespace], int]
    help: str
    arguments: tuple[Argument, ...] = field(default=())



# -- argument types shared by several commands -------------------------------------------------


def whole_number(text: str) -> int:
    # (length first: int() refuses strings of over 4300 digits with a ValueError)
    if not (text.isascii() and text.isdigit()) or len(text) > 20 or int(text) > MAX_SEQ:
        raise argparse.ArgumentTypeError(
            f"expected a whole number from 0 to {MAX_SEQ}, not {text!r:.40}")
    return int(text)


def positive(text: str) -> int:
    # The same wording as whole_number's, for -1 and 0 alike: one rule, one message.
    try:
        n = whole_number(text)
    except argparse.ArgumentTypeError:
        n = 0
    if n == 0:
        raise argparse.ArgumentTypeError(
            f"expected a whole number from 1 to {MAX_SEQ}, not {text!r:.40}")
    return n


# -- the data directory and the replica --------------------------------------------------------


def data_dir(args: argparse.Namespace) -> str:
    """`--data DIR`, else $CRDTIM_DATA, else ./crdtim-data (an empty value counts as unset)."""
    if args.data is not None:
        if not args.data:
            raise UsageError("--data needs a directory, not an empty string")
        path: str = args.data
    else:
        path = os.environ.get(DATA_ENV) or DEFAULT_DATA
    _check_parents(path)
    return path


def _check_parents(path: str) -> None:
    """A data directory under a file (`--data afile/sub`) is refused naming that file, rather
    than surfacing as the OS's raw "[Errno 20] Not a directory"."""
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.exists(parent):
        up = os.path.dirname(parent)
        if up == parent:
            return
        parent = up
    if parent and not os.path.isdir(parent):
        raise CommandFailed(f"data directory {path}: {parent} is a file, not a directory",
                            EXIT_USAGE)


@contextmanager
def writable_replica(args: argparse.Namespace) -> Iterator[Replica]:
    """The replica in the data directory, created if missing (and said so on stderr, since a
    mistyped --data would otherwise start a new replica silently)."""
    path = data_dir(args)
    with Replica.open(path) as replica:
        if replica.created:
            term.note(f"created a new replica {replica.id} at {path}")
        yield replica


@contextmanager
def existing_replica(args: argparse.Namespace) -> Iterator[Replica]:
    """The replica in the data directory; never creates one, nor writes to a directory that
    is not one (Replica.open(create=False) checks before LMDB touches anything)."""
    path = data_dir(args)
    if not os.path.exists(path) or (os.path.isdir(path) and not os.listdir(path)):
        init = "crdtim init" if args.data is None else f"crdtim --data {shlex.quote(path)} init"
        raise CommandFailed(f"no replica at {path} (run `{init}`)")
    with Replica.open(path, create=False) as replica:
        yield replica
