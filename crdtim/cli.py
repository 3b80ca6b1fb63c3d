"""The `crdtim` command line: a thin shell over `Replica` for people and scripts.

Each subcommand is one `cmd_xxx(args) -> int` function and one row of `COMMANDS`; `main`
parses, runs the row, and turns crdtim's own errors into `crdtim: error: ...` on stderr with
exit status 2 (bad usage or input) or 1 (anything else). It holds no CRDT, storage or network
logic, never prints a traceback for a user mistake, and never creates a replica from a
command that only reads (show, ls, status, watch).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import ipaddress
import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, NoReturn, cast

import trio

from . import __version__
from . import _terminal as term
from .demo import run_demo
from .errors import ConfigError, CrdtimError
from .net import Node, NodeConfig, parse_address
from .protocol import MIN_FRAME_BYTES, SessionConfig
from .replica import MAX_SEQ, Change, InvalidArgument, Replica
from .security import load_security, load_tls

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

DATA_ENV = "CRDTIM_DATA"
DEFAULT_DATA = "crdtim-data"
#: Seconds between two looks at the log in `crdtim watch`: short enough to feel live, long
#: enough to cost nothing (one read transaction per look).
WATCH_INTERVAL = 0.2
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
#: Columns of `crdtim ls` that are cut, with "...", to stay readable on a terminal.
TITLE_WIDTH = 30
PREVIEW_WIDTH = 40


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


class _Parser(argparse.ArgumentParser):
    # argparse would print and sys.exit(2) from deep inside parse_args; raising lets main()
    # return the status (callable in-process) and print every error the same way.
    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage())


# -- the data directory and the replica --------------------------------------------------------


def data_dir(args: argparse.Namespace) -> str:
    """`--data DIR`, else $CRDTIM_DATA, else ./crdtim-data (an empty value counts as unset)."""
    if args.data is not None:
        if not args.data:
            raise UsageError("--data needs a directory, not an empty string")
        path: str = args.data
        return path
    return os.environ.get(DATA_ENV) or DEFAULT_DATA


@contextmanager
def _writable_replica(args: argparse.Namespace) -> Iterator[Replica]:
    """The replica in the data directory, created if missing (and said so on stderr, since a
    mistyped --data would otherwise start a new replica silently)."""
    path = data_dir(args)
    with Replica.open(path) as replica:
        if replica.created:
            term.note(f"created a new replica {replica.id} at {path}")
        yield replica


@contextmanager
def _existing_replica(args: argparse.Namespace) -> Iterator[Replica]:
    """The replica in the data directory; never creates one, nor writes to a directory that
    is not one (Replica.open(create=False) checks before LMDB touches anything)."""
    path = data_dir(args)
    if not os.path.exists(path) or (os.path.isdir(path) and not os.listdir(path)):
        init = "crdtim init" if args.data is None else f"crdtim --data {shlex.quote(path)} init"
        raise CommandFailed(f"no replica at {path} (run `{init}`)")
    with Replica.open(path, create=False) as replica:
        yield replica


def _mutate(args: argparse.Namespace, op: Callable[[Replica], object]) -> int:
    with _writable_replica(args) as replica:
        op(replica)
    return EXIT_OK


# -- subcommands: one function each, registered in COMMANDS below ------------------------------


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
    return _mutate(args, lambda r: r.mute(args.cid))


def cmd_unmute(args: argparse.Namespace) -> int:
    return _mutate(args, lambda r: r.unmute(args.cid))


def cmd_arrive(args: argparse.Namespace) -> int:
    return _mutate(args, lambda r: r.message_arrived(args.cid, args.seq, args.preview, args.at))


def cmd_read(args: argparse.Namespace) -> int:
    return _mutate(args, lambda r: r.mark_read(args.cid, args.seq))


def cmd_show(args: argparse.Namespace) -> int:
    with _existing_replica(args) as replica:
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
    with _existing_replica(args) as replica:
        page = replica.list(args.limit, args.cursor)
    if args.json:
        term.print_json({"items": [c.as_dict() for c in page.items], "cursor": page.cursor,
                     "has_more": page.has_more})
        return EXIT_OK
    if not page.items:
        print("no conversations" if args.cursor is None else "no more conversations")
        return EXIT_OK
    rows = [("PIN", "MUTE", "UNREAD", "ID", "TITLE", "LAST AT", "LAST MESSAGE")]
    for c in page.items:
        rows.append((
            "pin" if c.pinned else "",
            "mute" if c.muted else "",
            str(c.unread) if c.unread else "",
            term.printable(c.id),
            term.cut(term.printable(c.title), TITLE_WIDTH),
            term.local_time(c.last_at) if c.last_at else "-",
            term.cut(term.printable(c.last_preview), PREVIEW_WIDTH),
        ))
    term.print_table(rows, right_aligned={2})
    if page.has_more:
        limit = "" if args.limit == 50 else f" --limit {args.limit}"
        data = "" if args.data is None else f" --data {shlex.quote(args.data)}"
        print(f"more: crdtim{data} ls{limit} --cursor={page.cursor}")
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    with _existing_replica(args) as replica:
        status = replica.status()
    status["path"] = os.path.abspath(status["path"])
    if args.json:
        term.print_json(status)
        return EXIT_OK
    term.print_pairs({
        "replica": status["id"],
        "path": status["path"],
        "conversations": str(status["conversations"]),
        "head": str(status["head"]),
        "log floor": str(status["log_floor"]),
        "peers": str(len(status["peers"])) if status["peers"] else "none",
    })
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
        with _existing_replica(args) as replica:
            after = replica.head if args.since is None else args.since
            term.note(f"watching {replica.path} (replica {replica.id}) after log entry "
                      f"{after}; Ctrl-C to stop")
            emit = term.change_json if args.json else term.change_line
            watch_log(replica, after, lambda seq, change: print(emit(seq, change), flush=True),
                      on_gap=lambda missed: term.note(
                          f"{missed} log entries were trimmed before they could be shown"))
    except KeyboardInterrupt:
        pass  # the way to stop watching: not an error
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = _serve_config(args)  # before the replica: a refused setting creates nothing
    with _writable_replica(args) as replica:
        if args.max_clock_drift is not None:
            replica.max_clock_drift_ms = args.max_clock_drift
        try:
            trio.run(_serve, replica, args.listen, args.peer, args.metrics, config)
        except BaseExceptionGroup as group:
            # A task of the node failed: report the first real cause like any other error.
            leaf = group
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            raise leaf from None
    return EXIT_OK


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"expected seconds from 0 to 86400, not {text!r:.40}")
    return value


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _serve_config(args: argparse.Namespace) -> NodeConfig:
    """The NodeConfig of `crdtim serve`: limits, keys, authorization, TLS (specs/security.md).
    Refuses (exit 2) what would leave the replica open to anyone who can reach it."""
    tls_files = (args.tls_cert, args.tls_key, args.tls_ca)
    if any(tls_files) and not all(tls_files):
        raise CommandFailed("--tls-cert, --tls-key and --tls-ca go together: give all three",
                            EXIT_USAGE)
    if args.key_id is not None and args.secret_file is None:
        raise CommandFailed("--key-id names a key of --secret-file: give that too", EXIT_USAGE)
    authenticated = args.secret_file is not None or all(tls_files)
    if args.authz is not None and not authenticated:
        raise CommandFailed("--authz maps peer identities to what they may replicate, but "
                            "without --secret-file or --tls-* peers have no identity",
                            EXIT_USAGE)
    host, port = args.listen
    if not authenticated and not _is_loopback(host):
        if not args.insecure:
            raise CommandFailed(
                f"refusing to listen on {host}:{port} without authentication: anyone who can "
                "reach it could read and change this replica's conversations. Give "
                "--secret-file FILE and/or --tls-cert/--tls-key/--tls-ca, or --insecure if "
                "the network itself is trusted", EXIT_USAGE)
        logging.getLogger("crdtim.serve").warning(
            "--insecure: listening on %s:%d with no authentication", host, port)
    try:
        security = load_security(args.secret_file, args.authz, args.key_id)
        tls = load_tls(*tls_files) if all(tls_files) else None
    except ConfigError as e:
        raise CommandFailed(str(e), EXIT_USAGE) from None
    if (args.peer and security is not None and security.keys
            and security.dial_key_id is None):
        raise CommandFailed("the secrets file holds several keys: say with --key-id which "
                            "one to use when dialing --peer", EXIT_USAGE)
    if args.metrics is not None and not _is_loopback(args.metrics[0]) and not args.insecure:
        raise CommandFailed(
            f"refusing to serve metrics on {args.metrics[0]}:{args.metrics[1]}: they are not "
            "authenticated and name every peer's replica id. Serve them on loopback (and "
            "scrape through a proxy), or give --insecure if the network itself is trusted",
            EXIT_USAGE)
    if args.metrics is not None and importlib.util.find_spec("prometheus_client") is None:
        raise CommandFailed("--metrics needs prometheus_client: pip install 'crdtim[metrics]'",
                            EXIT_USAGE)
    session = SessionConfig()
    # Peers size their frames to the limit we announce in HELLO, but one conversation's
    # state must still fit in a frame.
    if args.max_frame_bytes is not None and args.max_frame_bytes < MIN_FRAME_BYTES:
        raise CommandFailed(f"--max-frame-bytes {args.max_frame_bytes} is below "
                            f"{MIN_FRAME_BYTES}: one conversation's state may not fit",
                            EXIT_USAGE)
    if args.idle_timeout is not None and args.idle_timeout <= session.ping_interval:
        raise CommandFailed(f"--idle-timeout {args.idle_timeout:g} must be longer than the "
                            f"heartbeat interval ({session.ping_interval:g} s), or idle links "
                            "would be cut between heartbeats", EXIT_USAGE)
    session = dataclasses.replace(
        session,
        max_frame_bytes=args.max_frame_bytes or session.max_frame_bytes,
        idle_timeout=args.idle_timeout or session.idle_timeout,
        handshake_timeout=args.handshake_timeout or session.handshake_timeout)
    defaults = NodeConfig()
    return NodeConfig(session=session, max_peers=args.max_peers or defaults.max_peers,
                      security=security, tls=tls)


async def _serve(replica: Replica, listen: tuple[str, int], peers: list[tuple[str, int]],
                 metrics: tuple[str, int] | None, config: NodeConfig | None = None) -> None:
    log = logging.getLogger("crdtim.serve")
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with Node(replica, listen=listen, peers=peers, config=config) as node:
            host = listen[0]
            log.info("replica %s listening on %s:%d (data %s), %d peer(s) to dial",
                     replica.id, host, node.port, replica.path, len(peers))
            if metrics is not None:
                from .metrics import serve_metrics  # prometheus_client: only when asked for

                serve_metrics(node, *metrics)
                log.info("metrics on http://%s:%d/metrics", *metrics)
            async for signum in signals:
                log.info("stopping (%s)", signal.Signals(signum).name)
                break


def _benchmark_suite() -> Callable[[list[str]], int]:
    """benchmarks.suite.main, or CommandFailed (exit 2) saying what is missing.

    The suite lives in benchmarks/ beside the package, not in the wheel: it runs from a source
    checkout only (pip install -e, or the project directory), with the bench extra (pycrdt,
    matplotlib). Imported by name, when asked for, so that neither the heavy imports nor mypy
    follow it from here.
    """
    no_checkout = CommandFailed("crdtim bench needs a source checkout of crdtim (the "
                                "benchmarks/ folder next to the crdtim package): clone the "
                                "project and run `make bench` there", EXIT_USAGE)
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.isfile(os.path.join(checkout, "benchmarks", "suite.py")):
        raise no_checkout  # another `benchmarks` on sys.path would not be ours
    if checkout not in sys.path:
        sys.path.insert(0, checkout)
    try:
        suite = importlib.import_module("benchmarks.suite")
    except ImportError as e:
        missing = e.name or ""
        if missing == "benchmarks" or missing.startswith("benchmarks."):
            raise no_checkout from None
        raise CommandFailed(f"crdtim bench needs {missing or 'a package'} (the bench extra): "
                            "run `make bench`, or pip install -e '.[bench]' in the checkout",
                            EXIT_USAGE) from None
    return cast(Callable[[list[str]], int], suite.main)


def cmd_demo(args: argparse.Namespace) -> int:
    return run_demo()


def cmd_bench(args: argparse.Namespace) -> int:
    run_suite = _benchmark_suite()
    argv = ["--quick"] if args.quick else []
    argv += ["--tiny"] if args.tiny else []
    argv += [f"--out={args.out}"] if args.out else []
    argv += [f"--dir={args.workdir}"] if args.workdir else []
    argv += [f"--only={args.only}"] if args.only else []
    argv += ["--profile"] if args.profile else []
    return run_suite(argv)


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


# -- the command table -------------------------------------------------------------------------


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


def _whole_number(text: str) -> int:
    # (length first: int() refuses strings of over 4300 digits with a ValueError)
    if not (text.isascii() and text.isdigit()) or len(text) > 20 or int(text) > MAX_SEQ:
        raise argparse.ArgumentTypeError(
            f"expected a whole number from 0 to {MAX_SEQ}, not {text!r:.40}")
    return int(text)


def _positive(text: str) -> int:
    n = _whole_number(text)
    if n == 0:
        raise argparse.ArgumentTypeError("expected a number of 1 or more, not 0")
    return n


def _address(text: str) -> tuple[str, int]:
    try:
        return parse_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _conversation_id(text: str) -> str:
    if not text:
        raise argparse.ArgumentTypeError("a conversation id cannot be empty")
    return text


CID = arg("cid", metavar="CID", type=_conversation_id, help="conversation id")
SEQ = arg("seq", metavar="SEQ", type=_whole_number, help="message sequence number")
JSON = arg("--json", action="store_true", help="print JSON instead of text")

COMMANDS: dict[str, Subcommand] = {
    "init": Subcommand(cmd_init, "create the replica if missing; print its id"),
    "title": Subcommand(cmd_title, "set a conversation's title",
                        (CID, arg("text", metavar="TEXT", help="the new title"))),
    "pin": Subcommand(cmd_pin, "pin a conversation", (CID,)),
    "unpin": Subcommand(cmd_unpin, "unpin a conversation", (CID,)),
    "mute": Subcommand(cmd_mute, "mute a conversation", (CID,)),
    "unmute": Subcommand(cmd_unmute, "unmute a conversation", (CID,)),
    "arrive": Subcommand(cmd_arrive, "record that message SEQ arrived in a conversation", (
        CID, SEQ,
        arg("--preview", metavar="TEXT", default="", help="the message's preview text"),
        arg("--at", metavar="MS", type=_whole_number, default=None,
            help="message time in ms since the epoch (default: now)"),
    )),
    "read": Subcommand(cmd_read, "mark a conversation read up to message SEQ", (CID, SEQ)),
    "show": Subcommand(cmd_show, "show one conversation", (CID, JSON)),
    "ls": Subcommand(cmd_ls, "list conversations: pinned first, then newest message first", (
        arg("--limit", metavar="N", type=_positive, default=50, help="page size (default 50)"),
        arg("--cursor", metavar="C", default=None, help="continue after a previous page"),
        JSON,
    )),
    "status": Subcommand(cmd_status, "replica id, log and peers", (JSON,)),
    "watch": Subcommand(cmd_watch, "print changes as they happen, from any process", (
        arg("--since", metavar="SEQ", type=_whole_number, default=None,
            help="start after this log entry (default: the newest)"),
        arg("--json", action="store_true", help="one JSON object per line"),
    )),
    "serve": Subcommand(cmd_serve, "replicate with peers over TCP until SIGINT/SIGTERM", (
        arg("--listen", metavar="HOST:PORT", type=_address, required=True,
            help="address to accept peers on (port 0: any free port)"),
        arg("--peer", metavar="HOST:PORT", type=_address, action="append", default=[],
            help="a peer to dial (repeatable)"),
        # Security (specs/security.md): a non-loopback --listen needs one of these.
        arg("--secret-file", metavar="FILE", default=None,
            help="pre-shared keys, one `KEY_ID SECRET` a line (or one secret: key id "
                 "'default'); every peer must prove one"),
        arg("--key-id", metavar="KEY_ID", default=None,
            help="the key of --secret-file to use when dialing --peer (default: the only one)"),
        arg("--tls-cert", metavar="FILE", default=None, help="this replica's certificate (PEM)"),
        arg("--tls-key", metavar="FILE", default=None, help="its private key (PEM)"),
        arg("--tls-ca", metavar="FILE", default=None,
            help="the CA that peers' certificates must chain to (mutual TLS)"),
        arg("--authz", metavar="FILE", default=None,
            help="TOML: [scopes] identity = [conversation id prefixes]; others are refused"),
        arg("--insecure", action="store_true",
            help="allow a non-loopback --listen without authentication"),
        arg("--max-peers", metavar="N", type=_positive, default=None,
            help="connections at once (default 64)"),
        arg("--max-frame-bytes", metavar="N", type=_positive, default=None,
            help="largest frame accepted (default 8388608, at least 65536)"),
        arg("--idle-timeout", metavar="S", type=_seconds, default=None,
            help="seconds of peer silence before disconnecting it (default 20, more than "
                 "the 5 s heartbeat)"),
        arg("--handshake-timeout", metavar="S", type=_seconds, default=None,
            help="seconds for a peer to complete TLS, HELLO and AUTH (default 10)"),
        arg("--metrics", metavar="HOST:PORT", type=_address, default=None,
            help="serve Prometheus metrics on this address (loopback unless --insecure)"),
        arg("--quiet", action="store_true", help="log only warnings and errors"),
        arg("--max-clock-drift", metavar="MS", type=_whole_number, default=None,
            help="refuse peers' clock readings further ahead of ours than this "
                 "(default 300000, 5 min)"),
    )),
    "demo": Subcommand(cmd_demo, "three replicas syncing on loopback, step by step"),
    "bench": Subcommand(cmd_bench, "run the benchmark suite (source checkout only); results "
                        "in benchmarks/results/", (
        arg("--quick", action="store_true", help="every benchmark at small sizes (~2 min)"),
        arg("--tiny", action="store_true", help=argparse.SUPPRESS),
        arg("--out", metavar="DIR", default=None, help="results directory"),
        arg("--workdir", metavar="DIR", default=None,
            help="directory for the benchmark databases (the full run needs ~3 GB)"),
        arg("--only", metavar="GROUPS", default=None,
            help="comma-separated groups: hw, local, nosync, session, automerge, sync, "
                 "curves, big"),
        arg("--profile", action="store_true",
            help="write a cProfile summary for every missed goal"),
    )),
}


def build_parser(
    commands: Mapping[str, Subcommand] = COMMANDS,
) -> tuple[argparse.ArgumentParser, Mapping[str, Subcommand]]:
    """The parser for `commands`, and the table itself: main runs `commands[args.command]`."""
    parser = _Parser(
        prog="crdtim",
        description="Conversation state (title, pinned, muted, unread, last message) that "
        "every device can change offline and that converges when they sync.",
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
