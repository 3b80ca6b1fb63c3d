"""`crdtim serve`: replicate the local replica with peers over TCP until SIGINT/SIGTERM.

Turns the serve options (listen and peer addresses, secrets, TLS, authorization, metrics,
limits) into one NodeConfig, refusing with exit 2 what would leave the replica open to anyone
who can reach it (specs/security.md), then runs a `Node` under trio. Every refusal happens
before the replica is opened, so a refused command line never creates one. No sync,
protocol or security logic lives here: net, protocol and security own it.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import ipaddress
import logging
import signal

import trio

from ._cli_common import (
    EXIT_OK,
    EXIT_USAGE,
    CommandFailed,
    Subcommand,
    arg,
    positive,
    whole_number,
    writable_replica,
)
from ._cli_http import HttpSettings, http_settings, serve_http_beside
from ._serve_lock import ServeLock
from .errors import ConfigError
from .net import Node, NodeConfig, parse_address
from .protocol import MIN_FRAME_BYTES, SessionConfig
from .replica import Replica
from .security import load_security, load_tls

__all__ = ["SERVE_COMMANDS"]


def cmd_serve(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.listen is None and args.http is None:
        raise CommandFailed("serve needs --listen HOST:PORT (peers), --http HOST:PORT (the "
                            "HTTP API), or both", EXIT_USAGE)
    config = _serve_config(args)  # before the replica: a refused setting creates nothing
    http = http_settings(args, args.http is not None and _is_loopback(args.http[0]))
    # A second server on the directory is refused (exit 1) before it listens or dials
    # (specs/storage.md §1); the lock is held until the server stops.
    with writable_replica(args) as replica, ServeLock(replica.path):
        if args.max_clock_drift is not None:
            replica.max_clock_drift_ms = args.max_clock_drift
        try:
            trio.run(_serve, replica, args.listen, args.peer, args.metrics, config, http)
        except BaseExceptionGroup as group:
            # A task of the node failed: report the first real cause like any other error.
            leaf = group
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            raise leaf from None
    return EXIT_OK


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
    if args.authz is not None and not authenticated and args.http_tokens is None:
        raise CommandFailed("--authz maps peer identities to what they may replicate, but "
                            "without --secret-file or --tls-* peers have no identity (nor "
                            "HTTP callers without --http-tokens)", EXIT_USAGE)
    host, port = args.listen or ("127.0.0.1", 0)
    if args.listen is not None and not authenticated and not _is_loopback(host):
        if not args.insecure:
            raise CommandFailed(
                f"refusing to listen on {host}:{port} without authentication: anyone who can "
                "reach it could read and change this replica's conversations. Give "
                "--secret-file FILE and/or --tls-cert/--tls-key/--tls-ca, or --insecure if "
                "the network itself is trusted", EXIT_USAGE)
        logging.getLogger("crdtim.serve").warning(
            "--insecure: listening on %s:%d with no authentication", host, port)
    try:
        # --authz with --http-tokens alone limits HTTP tokens, not peers (who have no identity)
        authz = args.authz if authenticated else None
        security = load_security(args.secret_file, authz, args.key_id)
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


async def _serve(replica: Replica, listen: tuple[str, int] | None,
                 peers: list[tuple[str, int]], metrics: tuple[str, int] | None,
                 config: NodeConfig | None = None, http: HttpSettings | None = None) -> None:
    log = logging.getLogger("crdtim.serve")
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with Node(replica, listen=listen, peers=peers, config=config) as node, \
                trio.open_nursery() as beside:
            where = f"listening on {listen[0]}:{node.port}" if listen else "not listening"
            log.info("replica %s %s (data %s), %d peer(s) to dial",
                     replica.id, where, replica.path, len(peers))
            if http is not None:
                await serve_http_beside(beside, replica, http)
            if metrics is not None:
                from .metrics import serve_metrics  # prometheus_client: only when asked for

                serve_metrics(node, *metrics)
                log.info("metrics on http://%s:%d/metrics", *metrics)
            async for signum in signals:
                log.info("stopping (%s)", signal.Signals(signum).name)
                break
            beside.cancel_scope.cancel()


# -- the command table's row: argument types, then the options ---------------------------------


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"expected seconds from 0 to 86400, not {text!r:.40}")
    return value


def _address(text: str) -> tuple[str, int]:
    try:
        return parse_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


SERVE_COMMANDS: dict[str, Subcommand] = {
    "serve": Subcommand(cmd_serve, "replicate with peers over TCP until SIGINT/SIGTERM", (
        arg("--listen", metavar="HOST:PORT", type=_address, default=None,
            help="address to accept peers on (port 0: any free port)"),
        arg("--http", metavar="HOST:PORT", type=_address, default=None,
            help="serve the HTTP API, change feed and web page here (loopback unless "
                 "--http-tokens; the extra crdtim[http])"),
        arg("--http-tokens", metavar="FILE", default=None,
            help="bearer tokens for --http, one `TOKEN_ID TOKEN` a line (rules of "
                 "--secret-file); --authz scopes each token id"),
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
        arg("--max-peers", metavar="N", type=positive, default=None,
            help="connections at once (default 64)"),
        arg("--max-frame-bytes", metavar="N", type=positive, default=None,
            help="largest frame accepted (default 8388608, at least 65536)"),
        arg("--idle-timeout", metavar="S", type=_seconds, default=None,
            help="seconds of peer silence before disconnecting it (default 20, more than "
                 "the 5 s heartbeat)"),
        arg("--handshake-timeout", metavar="S", type=_seconds, default=None,
            help="seconds for a peer to complete TLS, HELLO and AUTH (default 10)"),
        arg("--metrics", metavar="HOST:PORT", type=_address, default=None,
            help="serve Prometheus metrics on this address (loopback unless --insecure)"),
        arg("--quiet", action="store_true", help="log only warnings and errors"),
        arg("--max-clock-drift", metavar="MS", type=whole_number, default=None,
            help="refuse peers' clock readings further ahead of ours than this "
                 "(default 300000, 5 min)"),
    )),
}
